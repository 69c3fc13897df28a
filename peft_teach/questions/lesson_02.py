"""Graded questions of the AdapterFusion practice notebook
(solutions/02_adapter_fusion.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
"""

from __future__ import annotations

import torch

from peft_teach.checks import Question, grade_choice, grade_function, grade_number

# ----------------------------------------------------------------- Q1: attention scores


def _score_inputs() -> tuple:
    generator = torch.Generator().manual_seed(21)
    query = torch.randn(2, 5, 6, generator=generator)      # (B, T, d), already Q h + b
    keys = torch.randn(2, 5, 3, 6, generator=generator)    # (B, T, N, d), already K z_n + b
    return query, keys


def _score_reference(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return torch.softmax((query.unsqueeze(2) * keys).sum(-1), dim=-1)


q1 = Question(
    title="Q1 attention over adapters",
    grader=grade_function(_score_inputs, _score_reference),
    hint="One dot product per token and adapter (over the last dimension), then a softmax "
         "over the adapter dimension, not over tokens.",
)

# ----------------------------------------------------------------- Q2: weighted sum


def _mix_inputs() -> tuple:
    generator = torch.Generator().manual_seed(22)
    weights = torch.softmax(torch.randn(2, 5, 3, generator=generator), dim=-1)
    values = torch.randn(2, 5, 3, 6, generator=generator)
    return weights, values


def _mix_reference(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return (weights.unsqueeze(-1) * values).sum(dim=2)


q2 = Question(
    title="Q2 mix the adapters' values",
    grader=grade_function(_mix_inputs, _mix_reference),
    hint="Each token's output is a weighted average of its N value vectors: broadcast the "
         "weights over the feature dimension and sum over adapters.",
)

# ----------------------------------------------------------------- Q3: fusion parameters on BERT-base

q3 = Question(
    title="Q3 fusion parameters per layer, d = 768",
    grader=grade_number(3 * 768 * 768 + 2 * 768, what="parameter count"),
    hint="Query and key are d x d with a bias each; the value matrix is d x d without bias.",
)

# ----------------------------------------------------------------- Q4: scaling with N

q4 = Question(
    title="Q4 more adapters, more fusion parameters?",
    grader=grade_choice("a", ("a", "b", "c")),
    hint="Look at the shapes of Q, K and V: does any of them depend on the number of adapters?",
)

# ----------------------------------------------------------------- Q5: read a heatmap

q5 = Question(
    title="Q5 read the heatmap",
    grader=grade_choice("aspect", ("sentiment", "aspect", "topic", "negation")),
    hint="Look only at the last row (the top layer) and find its largest entry.",
)
