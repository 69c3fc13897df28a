"""Measuring what PEFT is about: parameters, time and memory.

Timings and memory depend on the machine, so the lessons print them in a fixed
format (``12.3 ms``, ``45.6 MB``) that the notebook tests know to ignore.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn


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


@torch.no_grad()
def latency(model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of one forward pass on ``batch`` (inference mode)."""
    model.eval()
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        model(**batch)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare_latency(models: dict[str, nn.Module], batch: dict[str, torch.Tensor],
                    rounds: int = 5, repeats: int = 10) -> dict[str, float]:
    """Median latency of several models, measured interleaved.

    Running A, B, A, B, ... instead of all A then all B keeps slow drifts of the
    machine (another program, CPU clock changes) from favouring one model.
    """
    for model in models.values():  # one untimed pass each first: the first model timed must not pay
        latency(model, batch, repeats=1, warmup=0)  # the process' one-off costs (thread pools, kernel choice)
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name].append(latency(model, batch, repeats=repeats, warmup=1))
    return {name: statistics.median(values) for name, values in samples.items()}


def cross_entropy_loss(output, labels: torch.Tensor) -> torch.Tensor:
    """The loss of a classifier's logits (what train() uses)."""
    return nn.functional.cross_entropy(output, labels)


def hidden_state_loss(output, labels: torch.Tensor) -> torch.Tensor:
    """A stand-in loss for a bare backbone (no head): mean square of the last hidden states."""
    return output.last_hidden_state.float().pow(2).mean()


def train_step_time(model: nn.Module, batch: dict[str, torch.Tensor], repeats: int = 5,
                    loss_fn: Callable = cross_entropy_loss) -> float:
    """Median seconds of forward + backward + optimizer step on ``batch``.

    Uses AdamW with learning rate 0, so measuring does not change the weights.
    ``loss_fn(output, labels)``: cross-entropy for a classifier, :func:`hidden_state_loss`
    to time a bare backbone.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    labels = batch.pop("labels")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=0.0, weight_decay=0.0)
    model.train()
    times = []
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        loss = loss_fn(model(**batch), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if i > 0:  # the first step allocates optimizer state
            times.append(time.perf_counter() - start)
    model.eval()
    return statistics.median(times)


def compare_train_step(models: dict[str, nn.Module], batch: dict[str, torch.Tensor],
                       rounds: int = 5, repeats: int = 3, loss_fn: Callable = cross_entropy_loss) -> dict[str, float]:
    """Median training-step time of several models, measured interleaved (see compare_latency)."""
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name].append(train_step_time(model, batch, repeats=repeats, loss_fn=loss_fn))
    return {name: statistics.median(values) for name, values in samples.items()}


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
        "weights": sum(p.numel() * p.element_size() for p in model.parameters()),
        "gradients": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer_state": optimizer_state_bytes(model),
        "activations": saved_activation_bytes(model, batch),
    }
