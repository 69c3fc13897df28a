"""Real inputs for the graders of tasks that run the real MiniLM.

A grader builds its own model with the package and feeds it a few reviews of a course
task, so the reference it compares with is computed at grading time, never stored.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..checks import assert_not_the_package, assert_same_tensor, blocked
from ..data import load_task
from ..models import load_tokenizer


@lru_cache(maxsize=1)
def tokenizer():
    """The packaged model's tokenizer, loaded once per session."""
    return load_tokenizer()


def review_batch(task: str = "sentiment", count: int = 8, split: str = "validation",
                 with_labels: bool = False) -> dict[str, torch.Tensor]:
    """The first ``count`` reviews of ``task`` as a padded batch, like ``make_loader`` gives them.

    Reviews of different lengths on purpose: the shorter ones are padded, so code that
    forgets the attention mask gives other numbers.
    """
    rows = load_task(task)[split][:count]
    encoded = tokenizer()(rows["text"], padding=True, return_tensors="pt")
    batch = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if with_labels:
        batch["labels"] = torch.tensor(rows["label"])
    return batch


def review_ids(task: str, index: int = 0, max_length: int | None = None) -> torch.Tensor:
    """One validation review of ``task`` as input ids of shape (1, T), cut to ``max_length`` tokens."""
    text = load_task(task)["validation"]["text"][index]
    return tokenizer()(text, truncation=max_length is not None, max_length=max_length,
                       return_tensors="pt")["input_ids"]


def assert_same_logits(result, expected: torch.Tensor, atol: float, whose: str) -> None:
    """The learner's class scores on a :func:`review_batch` against ``whose`` (the package's model)."""
    assert_same_tensor(result, expected, atol, shape_note=" One row of class scores per review.",
                       values_note=f"The shape is right, but the logits differ from {whose} "
                                   f"on these {len(expected)} real reviews.")


def probe_loss(logits: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient reaches every logit with a different weight (seeded, the same every time).

    Graders backpropagate it through the learner's code and through the package's: equal logits
    with different gradients mean the learner's code cut the graph (``.detach()``, ``.data``).
    """
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(99))
    return (logits * weights.to(logits.dtype)).sum()


def gradients_of(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """Each tensor's gradient (cloned, or None), then the gradients are cleared for the next pass."""
    grads = {name: None if t.grad is None else t.grad.detach().clone() for name, t in named.items()}
    for tensor in named.values():
        tensor.grad = None
    return grads


def assert_same_gradients(mine: dict[str, torch.Tensor | None], theirs: dict[str, torch.Tensor | None],
                          atol: float = 1e-5) -> None:
    """The learner's gradients against the package's, tensor by tensor, with a message naming the first one off.

    Tensors the package's own forward leaves without a gradient (an unused pooler) are skipped.
    """
    reached = {name: grad for name, grad in theirs.items() if grad is not None}
    assert reached, "Grader bug: no gradient reached any tensor of the package's model."
    for name, expected in reached.items():
        grad = mine.get(name)
        assert grad is not None, (f"No gradient reached {name}: your code cuts it from the graph "
                                  "(.detach(), .data or torch.no_grad), so it could never train.")
        largest = (grad - expected).abs().max().item()
        assert largest <= atol + 1e-3 * expected.abs().max().item(), (
            f"The outputs agree but the gradient of {name} does not (largest difference {largest:.1e}).")


def classification_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of ``model``'s class scores against the batch's labels."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    return torch.nn.functional.cross_entropy(model(**inputs), batch["labels"])


def trained_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, lr: float,
                   loss_of: Callable = classification_loss) -> list[float]:
    """The loss of ``steps`` AdamW steps on one labelled batch (eval mode: no dropout, the same every time)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = loss_of(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def assert_trains_alike(yours: list[float], package: list[float], what: str = "your module") -> None:
    """Two training runs from the same start: the learner's losses must follow the package's, step by step."""
    assert package[-1] < package[0], "Grader bug: the package's own training did not lower the loss."
    assert all(abs(a - b) <= 1e-3 * abs(b) + 1e-5 for a, b in zip(yours, package)), (
        f"Trained for {len(package)} AdamW steps, {what}'s losses ({', '.join(f'{x:.4f}' for x in yours)}) "
        f"do not follow the package's ({', '.join(f'{x:.4f}' for x in package)}).")


def grade_in_the_model(answer, build_model: Callable[[], torch.nn.Module], install: Callable, task: str,
                       atol: float = 1e-4, block: tuple = (), known_wrong: dict | None = None,
                       train_steps: int = 0, lr: float = 1e-2) -> None:
    """Grade the learner's piece of a method inside the real MiniLM, as the package runs it.

    ``build_model()`` gives the package's model (eval mode, weights perturbed so that every part
    matters); ``install(model, answer)`` is a context manager that puts ``answer`` in the place of
    the package's code in every layer. Checked in order: the logits on 8 real reviews of ``task``,
    the gradients of every trainable tensor (a probe loss through both), and, with ``train_steps``,
    a short training run whose losses must fall exactly like the package's. ``known_wrong`` maps a
    classic mistake, in words, to an answer that makes it: a wrong answer that gives the same
    logits is told that mistake by name. ``block``: package functions that refuse to run meanwhile.
    """
    assert_not_the_package(answer, *block)
    batch = review_batch(task, count=8, with_labels=True)
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    model = build_model()
    untouched = copy.deepcopy(model) if train_steps else None  # both training runs start from here
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    expected = model(**inputs)  # the package's method in every layer
    probe_loss(expected).backward()
    theirs = gradients_of(trained)
    with blocked(*block), install(model, answer):
        result = model(**inputs)
        # read inside: the learner's module may own its tensors
        yours = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if isinstance(result, torch.Tensor) and result.shape == expected.shape:
            probe_loss(result).backward()
        mine = gradients_of(yours)
    if isinstance(result, torch.Tensor) and result.shape == expected.shape and not torch.allclose(
            result, expected, atol=atol, rtol=0):
        for mistake, wrong in (known_wrong or {}).items():
            with torch.no_grad(), install(model, wrong):
                if torch.allclose(result, model(**inputs), atol=atol, rtol=0):
                    raise AssertionError(f"Your logits are exactly what {mistake} gives.")
    assert_same_logits(result, expected.detach(), atol, whose="the package's model (yours is in every layer)")
    extra = sorted(set(yours) - set(trained))
    assert not extra, (f"{len(extra)} tensors that must stay frozen are trainable in your code, e.g. {extra[0]}: "
                       "only the method's own parameters may train.")
    assert_same_gradients(mine, theirs, atol=atol / 10)
    if train_steps:
        package_run = trained_losses(copy.deepcopy(untouched), batch, train_steps, lr)
        with blocked(*block), install(untouched, answer):
            your_run = trained_losses(untouched, batch, train_steps, lr)
        assert_trains_alike(your_run, package_run)


@contextmanager
def attention_function_replaced(name: str, function: Callable) -> Iterator[None]:
    """transformers runs ``function`` for attention implementation ``name``; the one registered before comes back."""
    previous = ALL_ATTENTION_FUNCTIONS[name]  # read now: a blocked package function must not be restored instead
    AttentionInterface.register(name, function)
    try:
        yield
    finally:
        AttentionInterface.register(name, previous)
