"""Real inputs for the graders of tasks that run the real MiniLM.

A grader builds its own model with the package and feeds it a few reviews of a course
task, so the reference it compares with is computed at grading time, never stored.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..checks import assert_same_tensor
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
