"""Graded questions for solutions/00_setup_and_baselines.ipynb."""

from __future__ import annotations

import torch
from torch import nn

from ..checks import Question, grade_choice, grade_function, grade_number
from ..models import mean_pool


def _pool_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return hidden, mask


def _grade_freeze(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    model = nn.ModuleDict({"encoder": nn.Linear(3, 3), "head": nn.Linear(3, 2)})
    result = function(model)
    assert result is None or result is model, "Change the model in place (return nothing or the model)."
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable, "Nothing is trainable any more: the head must still learn."
    assert trainable == ["head.bias", "head.weight"], f"These parameters would train: {trainable}."


q1 = Question("Q1 mean pooling", grade_function(_pool_inputs, mean_pool),
              "Multiply by the mask (as float, with a trailing dimension), sum over tokens, "
              "divide by the number of real tokens.")
q2 = Question("Q2 head parameters for routing", grade_number(384 * 5 + 5, what="parameter count"),
              "A linear layer from d inputs to C outputs has a weight matrix and a bias vector.")
q3 = Question("Q3 AdamW state in bytes", grade_number(2 * 22_713_216 * 4, what="number of bytes"),
              "AdamW keeps two float32 numbers per trained parameter; a float32 takes 4 bytes.")
q4 = Question("Q4 freeze all but the head", _grade_freeze,
              "First switch every parameter off, then switch the head's back on.")
q5 = Question("Q5 why head-only fails",
              grade_choice("b", ("a", "b", "c")),
              "Compare what mean pooling keeps (which words occur) with what the labels depend on.")
