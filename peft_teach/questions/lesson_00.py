"""Graded questions for solutions/00_setup_and_baselines.ipynb.

Each ``Question`` grades one task; failure messages help without giving the answer.
Q4 and Q6 run the real all-MiniLM-L6-v2 classifier; their references are computed by
the package when the check runs.
"""

from __future__ import annotations

import torch

from ..checks import Question, grade_choice, grade_function, grade_number
from ..models import build_classifier, mean_pool
from .real_inputs import assert_same_logits, review_batch

# ----------------------------------------------------------------- Q1: mean pooling


def _pool_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return hidden, mask


q1 = Question("Q1 mean pooling", grade_function(_pool_inputs, mean_pool),
              "Padding positions must add nothing to the sum, and each example is an average over its "
              "own real tokens, not over the padded length. Check how a (batch, tokens) mask can "
              "broadcast against (batch, tokens, d) states.")

# ----------------------------------------------------------------- Q2, Q3: counting

q2 = Question("Q2 head parameters for routing", grade_number(384 * 5 + 5, what="parameter count"),
              "A linear layer from d inputs to C outputs has a weight matrix and a bias vector.")
q3 = Question("Q3 AdamW state in bytes", grade_number(2 * 22_713_216 * 4, what="number of bytes"),
              "Count the tensors AdamW keeps per trained parameter (the weight itself and its gradient "
              "are not part of its state), and the bytes of one float32 number.")

# ----------------------------------------------------------------- Q4: freeze the real classifier


def _grade_freeze(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    model = build_classifier(5, seed=0)  # the real MiniLM classifier for `routing`; everything trains at first
    result = function(model)
    assert result is None or result is model, "Change the model in place (return nothing or the model)."
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    head = {f"head.{name}" for name, _ in model.head.named_parameters()}
    assert trainable, "Nothing is trainable any more: the head must still learn."
    assert head <= trainable, "Part of the head is frozen: the head must still learn."
    encoder = sum(p.numel() for name, p in model.named_parameters() if name in trainable - head)
    assert not encoder, f"{encoder:,} encoder parameters would still receive gradients."


q4 = Question("Q4 freeze all but the head", _grade_freeze,
              "Every parameter carries its own requires_grad flag, and a fresh model has it on everywhere. "
              "Which parameters should keep it on, and how do you reach exactly those?")

# ----------------------------------------------------------------- Q5: explain a result

q5 = Question("Q5 why head-only fails",
              grade_choice("b", ("a", "b", "c")),
              "Each option predicts something you can check in lesson 00: what would more epochs change in "
              "the head-only learning curve, and what does full fine-tuning's accuracy on the same labels "
              "say about them?")

# ----------------------------------------------------------------- Q6: the classifier by hand


def _refuse_model_call(*args, **kwargs):
    raise AssertionError("Your function called the model itself; build the logits from its parts.")


def _grade_classify(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    model = build_classifier(2, seed=0)  # eval mode: the dropout before the head is off
    batch = review_batch("sentiment", count=8)
    with torch.no_grad():
        expected = model(**batch)
        model.forward = _refuse_model_call  # the task is to take the model apart, not to call it
        result = function(model, batch)
    assert_same_logits(result, expected, 1e-5, whose="the classifier's own")


q6 = Question("Q6 the classifier by hand, on real reviews", _grade_classify,
              "Follow a batch through SequenceClassifier: what does the backbone need besides the token ids, "
              "what does it return, which positions may the average include, and what comes last? "
              "Compare your intermediate shapes with the lesson's section 4.")
