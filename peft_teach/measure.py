"""Measuring what PEFT is about: parameters, time and memory.

Timings and memory depend on the machine, so the lessons print them in a fixed
format (``12.3 ms``, ``45.6 MB``) that the notebook tests know to ignore.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from peft_teach.quantize import stored_bytes


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) in seen or (trainable_only and not parameter.requires_grad):
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def trainable_summary(model: nn.Module) -> str:
    """One line: trainable / total parameters and the percentage."""
    trainable = count_parameters(model, trainable_only=True)
    total = count_parameters(model)
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"


def trainable_by_module(model: nn.Module, depth: int = 3) -> dict[str, int]:
    """Trainable parameters grouped by the first ``depth`` parts of their names.

    Layer numbers become ``*`` and do not count as a part, so every layer adds
    up in one row: ``encoder.layer.*.attention`` for depth 3.
    """
    groups: dict[str, int] = defaultdict(int)
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        kept, named = [], 0
        for part in name.split("."):
            if named == depth:
                break
            kept.append("*" if part.isdigit() else part)
            named += not part.isdigit()
        groups[".".join(kept)] += parameter.numel()
    return dict(groups)


def format_ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


def format_mb(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f} MB"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


CONTROL = "control"  # the key under which compare_* report their control timing


def compare_times(tasks: dict[str, Callable[[], float]], rounds: int = 5, control: str | None = None,
                  seed: int = 0) -> dict[str, float]:
    """Run timing tasks interleaved, in a new random order every round; the median per task.

    Each task times one thing and returns seconds. Interleaving (A, B, C, then again) keeps a
    slow drift of the machine (another program, the CPU's clock) from favouring one task, and
    shuffling the order each round keeps a *position* effect (the first task after a switch
    paying for cold caches) from favouring one either. ``control`` names a task to time a
    second time as if it were another one: its result, under :data:`CONTROL`, divided by the
    first is the ratio two identical things get on this machine, the noise floor of every
    other ratio in the table.
    """
    if control is not None:
        if control not in tasks:
            raise ValueError(f"control={control!r} is not one of the timed tasks {sorted(tasks)}; name one of them.")
        tasks = {**tasks, CONTROL: tasks[control]}
    order = list(tasks)
    shuffler = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(rounds):
        shuffler.shuffle(order)
        for name in order:
            samples[name].append(tasks[name]())
    return {name: statistics.median(samples[name]) for name in tasks}


@torch.no_grad()
def latency(model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass on ``batch`` (inference mode)."""
    model.eval()
    device = device_of(model)
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    return median_seconds(lambda: model(**batch), device, repeats, warmup)


def compare_latency(models: dict[str, nn.Module], batch: dict[str, torch.Tensor], rounds: int = 5,
                    repeats: int = 10, control: str | None = None, seed: int = 0) -> dict[str, float]:
    """Median latency of several models, measured interleaved in a shuffled order (see :func:`compare_times`)."""
    for model in models.values():  # one untimed pass each first: the first model timed must not pay
        latency(model, batch, repeats=1, warmup=0)  # the process' one-off costs (thread pools, kernel choice)
    tasks = {name: (lambda model=model: latency(model, batch, repeats=repeats, warmup=1)) for name, model in models.items()}
    return compare_times(tasks, rounds=rounds, control=control, seed=seed)


def cross_entropy_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss of a classifier's logits (what train() uses)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return nn.functional.cross_entropy(model(**inputs), batch["labels"])


def hidden_state_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A stand-in loss for a bare backbone (no head): mean square of the last hidden states."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).last_hidden_state.float().pow(2).mean()


def train_step_time(model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 5,
                    loss_fn: Callable = cross_entropy_loss) -> float:
    """Median seconds of forward + backward + optimizer step on ``batch``.

    Uses AdamW with learning rate 0, so measuring does not change the weights.
    ``loss_fn(model, batch)``: :func:`cross_entropy_loss` for a classifier,
    :func:`hidden_state_loss` to time a bare backbone, ``llm.answer_loss`` for a causal LM.
    """
    device = device_of(model)
    batch = {k: v.to(device) for k, v in batch.items()}
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("train_step_time needs a model with trainable parameters; this one has none "
                         "(add a method, or time the frozen model's forward with latency()).")
    optimizer = torch.optim.AdamW(parameters, lr=0.0, weight_decay=0.0)

    def step() -> None:
        loss_fn(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    try:
        return median_seconds(step, device, repeats, warmup=1)  # the untimed first step allocates AdamW's state
    finally:
        model.eval()


def compare_train_step(models: dict[str, nn.Module], batch: dict[str, torch.Tensor], rounds: int = 5,
                       repeats: int = 3, loss_fn: Callable = cross_entropy_loss, control: str | None = None,
                       seed: int = 0) -> dict[str, float]:
    """Median training-step time of several models, measured interleaved in a shuffled order (see compare_times)."""
    tasks = {name: (lambda model=model: train_step_time(model, batch, repeats=repeats, loss_fn=loss_fn))
             for name, model in models.items()}
    return compare_times(tasks, rounds=rounds, control=control, seed=seed)


def ratios(times: dict[str, float], reference: str) -> dict[str, float]:
    """Every time divided by ``times[reference]``: 1.10 means 10 % slower than the reference."""
    return {name: seconds / times[reference] for name, seconds in times.items()}


CONTROL_RANGE = (0.95, 1.05)  # where two identical timings must land for a run to be read at all


def _control(relative: dict[str, float]) -> float:
    """The control's ratio in a row of ratios, or a clear error when the run timed none."""
    if CONTROL not in relative:
        raise ValueError(f"No {CONTROL!r} entry among {sorted(relative)}: time the reference twice with "
                         "compare_times(..., control=<the reference>) to know the run's noise.")
    return relative[CONTROL]


def control_note(relative: dict[str, float]) -> str:
    """A line to print under a timing table: the control's ratio, and a warning when it leaves CONTROL_RANGE."""
    control = _control(relative)
    low, high = CONTROL_RANGE
    if low <= control <= high:
        return f"control {control:.2f} (two identical runs): differences within {abs(control - 1):.2f} of 1 are noise"
    return (f"WARNING: control {control:.2f} is outside [{low}, {high}]: two identical runs disagree, so this "
            "table is noise. Close other programs, or time more rounds (rounds=...), and run it again.")


def beyond_control(relative: dict[str, float], reference: str) -> dict[str, float]:
    """The ratios farther from 1 than the control's: the differences one run resolves.

    ``relative`` holds ratios to ``reference`` and the control (the reference timed a second
    time in the same run, see :func:`compare_times`). Two identical timings landing at
    ``control`` instead of 1.00 show the run's noise; a method closer to 1 than that
    cannot be told apart from the reference by this run.
    """
    noise = abs(_control(relative) - 1)
    return {name: ratio for name, ratio in relative.items()
            if name not in (reference, CONTROL) and abs(ratio - 1) > noise}


def fastest_within_control(relative: dict[str, float], names: list[str]) -> list[str]:
    """Of ``names``, the fastest and every one within the control's distance of it: a tie this run cannot split.

    ``relative`` is a row of ratios holding the control, as for :func:`beyond_control`.
    """
    noise = abs(_control(relative) - 1)
    best = min(relative[name] for name in names)
    return [name for name in names if relative[name] - best <= noise]


def cuda_peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak extra GPU memory (bytes) that PyTorch's allocator handed out while ``fn()`` ran.

    GPU only: on the CPU PyTorch keeps no such counter, and sampling the process'
    resident memory misses short peaks and memory reused from earlier frees. For
    exact numbers on any device, count the bytes with :func:`training_memory`.
    """
    if torch.device(device).type != "cuda":
        raise ValueError(f"cuda_peak_memory needs a CUDA device, got {device!r}: PyTorch keeps no allocator peak "
                         "on the CPU. Use measure.training_memory(model, batch), which counts the bytes exactly.")
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# --------------------------------------------------------------------------- exact training memory


def saved_activation_bytes(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training forward.

    Counted, not sampled: every tensor saved for backward passes through a
    ``saved_tensors_hooks`` pack hook, and we add up the distinct storages that are
    not parameters or buffers. The same inputs give the same number on any CPU.
    Frozen layers below the first trainable parameter save nothing (no gradient has
    to flow through them), which is where methods differ.
    """
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(**inputs)
    del output  # free the graph: we only wanted to see what it keeps
    model.train(was_training)
    return sum(saved.values())


def optimizer_state_bytes(model: nn.Module) -> int:
    """Bytes of AdamW's state after one step, counted on a real optimizer (two moments per trainable value)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=0.0)
    for p in parameters:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    total = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
                if torch.is_tensor(t) and t.dim() > 0)  # the scalar step counters are left out
    for p in parameters:
        p.grad = None
    return total


def training_memory(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Counted bytes of one training step: weights, gradients, AdamW state, saved activations."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {
        "weights": stored_bytes(model),  # parameters, plus the codes of quantized layers (peft_teach.quantize)
        "gradients": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer_state": optimizer_state_bytes(model),
        "activations": saved_activation_bytes(model, batch),
    }
