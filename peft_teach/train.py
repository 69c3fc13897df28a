"""One small, seeded training loop used by every lesson.

It trains whatever parameters have ``requires_grad=True`` (so each PEFT method
only has to freeze the rest), evaluates once per epoch and records a history.
"""

from __future__ import annotations

import math
import numbers
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch import nn
from torch.utils.data import DataLoader


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and GPU) in one call."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, e.g. set_seed(0), got {seed!r}.")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def enable_determinism() -> None:
    """Ask PyTorch for deterministic kernels, so a rerun gives the same numbers.

    ``warn_only`` keeps the few ops without a deterministic version usable.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def get_device() -> torch.device:
    """The best available device: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def progress_enabled() -> bool:
    """Progress bars are on, unless PEFT_TEACH_PROGRESS=0 (the tests set it)."""
    return os.environ.get("PEFT_TEACH_PROGRESS", "1") != "0"


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Optimizer steps in one pass over ``examples``: the last, smaller batch counts as a step too."""
    return math.ceil(examples / batch_size)


def make_loader(
    dataset: Dataset, tokenizer, batch_size: int = 32, shuffle: bool = False,
    seed: int = 0, max_length: int = 256,
) -> DataLoader:
    """Batches of tokenized text, padded to the longest example in each batch."""

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        texts = [row["text"] for row in rows]
        pairs = [row["text_pair"] for row in rows] if "text_pair" in rows[0] else None  # RTE, MRPC
        batch = tokenizer(texts, pairs, padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        batch = {key: batch[key] for key in ("input_ids", "attention_mask")}
        batch["labels"] = torch.tensor([row["label"] for row in rows])
        return batch

    # An explicit generator makes the shuffling order part of the seed.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=generator)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, tokenizer, batch_size: int = 64,
            max_length: int = 256) -> torch.Tensor:
    """Logits for every example of ``dataset`` (on the CPU)."""
    if isinstance(dataset, DatasetDict):
        raise TypeError(f"Pass one split, e.g. data['test'], not the whole DatasetDict (splits: {list(dataset)}).")
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for batch in make_loader(dataset, tokenizer, batch_size, max_length=max_length):
        batch = _to(batch, device)
        batch.pop("labels")
        outputs.append(model(**batch).float().cpu())
    return torch.cat(outputs)


def evaluate(model: nn.Module, dataset: Dataset, tokenizer, batch_size: int = 64,
             max_length: int = 256) -> float:
    """Accuracy of ``model`` on ``dataset`` (a fraction between 0 and 1)."""
    logits = predict(model, dataset, tokenizer, batch_size, max_length)
    labels = torch.tensor(dataset["label"])
    return (logits.argmax(dim=-1) == labels).float().mean().item()


@dataclass
class History:
    """What happened during training, for tables and plots."""

    train_loss: list[float] = field(default_factory=list)  # one value per step
    eval_accuracy: list[float] = field(default_factory=list)  # one value per epoch
    step_seconds: list[float] = field(default_factory=list)  # wall time per step
    trainable_parameters: int = 0

    @property
    def final_accuracy(self) -> float:
        return self.eval_accuracy[-1] if self.eval_accuracy else float("nan")

    @property
    def seconds_per_step(self) -> float:
        """Median step time, first step (warm-up) excluded."""
        times = self.step_seconds[1:] or self.step_seconds
        return float(np.median(times)) if times else float("nan")


def parameter_groups(model: nn.Module, lr: float, head_lr: float | None = None,
                     lr_scale: Callable[[str, nn.Parameter], float] | None = None) -> list[dict]:
    """Trainable parameters as optimizer groups: one group, or the head apart with ``head_lr``.

    ``lr_scale(name, parameter)`` multiplies ``lr`` for the parameters outside the head, one group
    per factor: LoRA+ gives every B a larger rate this way (``lora.loraplus_lr_scale``).
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    head_apart = head_lr is not None
    head = [p for name, p in trainable if head_apart and name.startswith("head.")]
    by_factor: dict[float, list[nn.Parameter]] = {}
    for name, parameter in trainable:
        if not (head_apart and name.startswith("head.")):
            factor = lr_scale(name, parameter) if lr_scale is not None else 1.0
            by_factor.setdefault(factor, []).append(parameter)
    groups = [{"params": params, "lr": lr * factor} for factor, params in by_factor.items()]
    return groups + ([{"params": head, "lr": head_lr}] if head else [])


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1):
    """Linear warm-up over the first ``warmup_ratio`` of the steps, then linear decay towards 0."""
    warmup = max(1, int(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup + 1)))
    )


def check_training_setup(model: nn.Module, data: DatasetDict, *, epochs: int, lr: float, batch_size: int,
                         eval_split: str | None) -> None:
    """Fail before training starts, with the fix, on settings that cannot work."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr (learning rate) must be a positive number, e.g. 1e-3 (not the text '1e-3'), got {lr!r}.")
    if not isinstance(data, DatasetDict) or "train" not in data:
        raise ValueError("data must be a DatasetDict with a 'train' split, e.g. load_task('sentiment').")
    if len(data["train"]) == 0:
        raise ValueError("The 'train' split is empty: nothing to learn from. Check how it was built (a filter or "
                         "select that kept no rows?), e.g. len(data['train']) should be > 0.")
    if eval_split is not None and eval_split not in data:
        raise ValueError(f"eval_split {eval_split!r} is not in the data (splits: {list(data)}); "
                         "use one of those, or eval_split=None to skip evaluation.")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("No parameter requires a gradient: nothing to train. Add a method (add_lora, "
                         "add_adapter, ...) or unfreeze some parameters first.")
    head = getattr(model, "head", None)
    labels = data["train"]["label"]
    if isinstance(head, nn.Linear) and labels and max(labels) >= head.out_features:
        classes = max(labels) + 1
        raise ValueError(f"The task has {classes} classes but the model's head has {head.out_features} outputs. "
                         "Build the model for this task: build_classifier(num_labels=len(label_names(data))).")


def _update(loss: torch.Tensor, optimizer, schedule, history: History, start: float) -> None:
    """One optimisation step from ``loss``; record the step's wall time and loss."""
    loss.backward()
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    history.step_seconds.append(time.perf_counter() - start)
    history.train_loss.append(loss.item())


def recipe(model: nn.Module, tokenizer, data: DatasetDict, *, epochs: int, lr: float, head_lr: float | None,
           batch_size: int, weight_decay: float, warmup_ratio: float, seed: int, max_length: int, lr_scale=None):
    """The course's recipe, seeded: AdamW (the head at ``head_lr`` if given), the shuffled batches, warm-up then decay."""
    set_seed(seed)
    optimizer = torch.optim.AdamW(parameter_groups(model, lr, head_lr, lr_scale), lr=lr, weight_decay=weight_decay)
    loader = make_loader(data["train"], tokenizer, batch_size, shuffle=True, seed=seed, max_length=max_length)
    return optimizer, loader, linear_schedule(optimizer, epochs * len(loader), warmup_ratio)


def train(
    model: nn.Module,
    tokenizer,
    data: DatasetDict,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    head_lr: float | None = None,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    max_length: int = 256,
    eval_split: str | None = "validation",
    extra_loss=None,
    device: torch.device | None = None,
    lr_scale: Callable[[str, nn.Parameter], float] | None = None,
) -> History:
    """Train the parameters of ``model`` that require gradients.

    AdamW with linear warm-up then linear decay; cross-entropy on ``labels``.
    ``extra_loss(model)`` may return a regulariser added to the loss (fusion's
    pull toward identity uses it). ``head_lr`` gives the classification head
    (parameters named ``head.*``) its own learning rate: prompts and prefixes
    want a large one, a linear head a small one. ``lr_scale`` gives other parameters a multiple of
    ``lr`` (see :func:`parameter_groups`). Returns a :class:`History`.
    """
    check_training_setup(model, data, epochs=epochs, lr=lr, batch_size=batch_size, eval_split=eval_split)
    device = device or get_device()
    model.to(device)
    optimizer, loader, schedule = recipe(model, tokenizer, data, epochs=epochs, lr=lr, head_lr=head_lr,
                                         batch_size=batch_size, weight_decay=weight_decay,
                                         warmup_ratio=warmup_ratio, seed=seed, max_length=max_length,
                                         lr_scale=lr_scale)
    history = History(trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    bar = _progress(epochs * len(loader))
    for _ in range(epochs):
        model.train()
        for batch in loader:
            start = time.perf_counter()
            batch = _to(batch, device)
            labels = batch.pop("labels")
            loss = nn.functional.cross_entropy(model(**batch), labels)
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            _update(loss, optimizer, schedule, history, start)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if eval_split is not None:
            history.eval_accuracy.append(evaluate(model, data[eval_split], tokenizer, max_length=max_length))
    if bar is not None:
        bar.close()
    model.eval()
    return history


@torch.no_grad()
def pooled_features(model: nn.Module, dataset: Dataset, tokenizer, batch_size: int = 64,
                    max_length: int = 256) -> torch.Tensor:
    """The head's input, ``model.features(...)``, for every example of ``dataset`` (eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for batch in make_loader(dataset, tokenizer, batch_size, max_length=max_length):
        outputs.append(model.features(batch["input_ids"].to(device), batch["attention_mask"].to(device)))
    return torch.cat(outputs)


def train_head_on_features(
    model: nn.Module,
    tokenizer,
    data: DatasetDict,
    *,
    epochs: int = 3,
    lr: float = 1e-2,
    batch_size: int = 32,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    max_length: int = 256,
    eval_split: str | None = "validation",
    device: torch.device | None = None,
) -> History:
    """Head-only training, fast: run the frozen backbone once, then train the head on its outputs.

    When nothing below the head trains, every epoch would feed the head the same
    pooled vectors, so we compute them once and loop over those. Same optimizer,
    schedule and shuffling as :func:`train`; the one difference is that the
    backbone's own dropout is off (its features are computed in eval mode).
    """
    if any(p.requires_grad for name, p in model.named_parameters() if not name.startswith("head.")):
        raise ValueError("train_head_on_features trains the head alone, but parameters outside it require "
                         "gradients. Freeze them first (freeze(model); unfreeze_matching(model, 'head.')) "
                         "or use train().")
    check_training_setup(model, data, epochs=epochs, lr=lr, batch_size=batch_size, eval_split=eval_split)
    set_seed(seed)
    device = device or get_device()
    model.to(device)
    features = pooled_features(model, data["train"], tokenizer, max_length=max_length)
    labels = torch.tensor(data["train"]["label"], device=device)
    if eval_split is not None:
        eval_features = pooled_features(model, data[eval_split], tokenizer, max_length=max_length)
        eval_labels = torch.tensor(data[eval_split]["label"], device=device)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=lr, weight_decay=0.0)
    # Batches of row numbers, shuffled exactly as make_loader shuffles the texts.
    rows_loader = DataLoader(range(len(labels)), batch_size=batch_size, shuffle=True,
                             generator=torch.Generator().manual_seed(seed))
    schedule = linear_schedule(optimizer, epochs * len(rows_loader), warmup_ratio)
    history = History(trainable_parameters=sum(p.numel() for p in model.head.parameters()))
    for _ in range(epochs):
        model.train()
        for rows in rows_loader:
            start = time.perf_counter()
            rows = rows.to(device)
            loss = nn.functional.cross_entropy(model.head(model.dropout(features[rows])), labels[rows])
            _update(loss, optimizer, schedule, history, start)
        if eval_split is not None:
            model.eval()
            with torch.no_grad():
                correct = model.head(eval_features).argmax(dim=-1) == eval_labels
            history.eval_accuracy.append(correct.float().mean().item())
    model.eval()
    return history


@contextmanager
def using_head(model: nn.Module, head: nn.Module) -> Iterator[nn.Module]:
    """Classify with ``head`` inside the ``with`` block (multi-task models keep one head per task)."""
    original = model.head
    model.head = head
    try:
        yield model
    finally:
        model.head = original


def endless_batches(dataset: Dataset, tokenizer, batch_size: int, seed: int) -> Iterator[dict]:
    """Shuffled batches for ever: each pass over ``dataset`` is a new epoch with its own order."""
    epoch = 0
    while True:
        yield from make_loader(dataset, tokenizer, batch_size, shuffle=True, seed=seed * 1000 + epoch)
        epoch += 1


def train_multitask(
    model: nn.Module,
    tokenizer,
    tasks: dict[str, DatasetDict],
    heads: dict[str, nn.Module],
    *,
    steps: int,
    lr: float,
    head_lr: float | None = None,
    batch_size: int = 16,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    eval_task: str | None = None,
    eval_every: int | None = None,
) -> History:
    """Train one shared model on several tasks at once, one head per task.

    Every step takes one batch of *every* task, runs each through the shared model
    and its task's head, and sums the losses: the shared parameters see all tasks at
    every update (joint multi-task training). Same optimizer and schedule as
    :func:`train`; the heads train at ``head_lr``. With ``eval_task``, validation
    accuracy of that task is recorded every ``eval_every`` steps.
    """
    if set(heads) != set(tasks):
        raise ValueError(f"Give one head per task: tasks {sorted(tasks)}, heads {sorted(heads)}.")
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    set_seed(seed)
    device = next(model.parameters()).device
    for head in heads.values():
        head.to(device).requires_grad_(True)
    shared = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head.")]
    head_parameters = [p for head in heads.values() for p in head.parameters()]
    optimizer = torch.optim.AdamW([{"params": shared, "lr": lr}, {"params": head_parameters, "lr": head_lr or lr}],
                                  lr=lr, weight_decay=0.0)
    schedule = linear_schedule(optimizer, steps, warmup_ratio)
    batches = {task: endless_batches(data["train"], tokenizer, batch_size, seed + i)
               for i, (task, data) in enumerate(tasks.items())}
    history = History(trainable_parameters=sum(p.numel() for p in shared + head_parameters))
    model.train()
    for step in range(1, steps + 1):
        start = time.perf_counter()
        loss = 0.0
        for task, head in heads.items():
            batch = _to(next(batches[task]), device)
            labels = batch.pop("labels")
            with using_head(model, head):
                loss = loss + nn.functional.cross_entropy(model(**batch), labels)
        _update(loss, optimizer, schedule, history, start)
        if eval_task is not None and eval_every and step % eval_every == 0:
            with using_head(model, heads[eval_task]):
                history.eval_accuracy.append(evaluate(model, tasks[eval_task]["validation"], tokenizer))
            model.train()
    model.eval()
    return history


def _progress(total: int):
    """A plain-text progress bar (on stdout), or None when switched off.

    Text, not a notebook widget: a saved notebook keeps a widget bar's view but not
    its state, so on reopening it shows "Error displaying widget: model not found".
    """
    if not progress_enabled():
        return None
    import sys

    from tqdm.std import tqdm

    return tqdm(total=total, desc="training", leave=False, file=sys.stdout, mininterval=0.5)
