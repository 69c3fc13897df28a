"""Graded questions of the Prefix-Tuning+ practice notebook
(solutions/04_prefix_tuning_plus.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
"""

from __future__ import annotations

import torch

from peft_teach.checks import Question, grade_choice, grade_function, grade_number

# ----------------------------------------------------------------- Q1: dilution by length

# Prefix length 10, 118 real tokens, every attention logit equal: the prefix's share.
Q1_EXPECTED = 10 / (10 + 118)

q1 = Question(
    title="Q1 the prefix share when all logits are equal",
    grader=grade_number(Q1_EXPECTED, tol=1e-4, what="share"),
    hint="With equal logits the softmax spreads the mass evenly over every key the query "
         "can see: the prefix keys and the real tokens.",
)

# ----------------------------------------------------------------- Q2: the gate lambda


def _gate_inputs() -> tuple:
    generator = torch.Generator().manual_seed(42)
    query = torch.randn(5, 8, generator=generator)  # (T, d_head)
    prefix_keys = torch.randn(3, 8, generator=generator)  # (l, d_head)
    keys = torch.randn(5, 8, generator=generator)  # (T, d_head)
    return query, prefix_keys, keys


def _gate_reference(query, prefix_keys, keys) -> torch.Tensor:
    scale = query.shape[-1] ** -0.5
    prefix = torch.exp(query @ prefix_keys.T * scale).sum(-1)
    tokens = torch.exp(query @ keys.T * scale).sum(-1)
    return prefix / (prefix + tokens)


q2 = Question(
    title="Q2 the unified view's gate lambda(x)",
    grader=grade_function(_gate_inputs, _gate_reference),
    hint="lambda for query i is the softmax mass on the prefix: the sum of exp(scaled scores) "
         "over prefix keys divided by the same sum over prefix keys and real keys. Scale "
         "scores by 1 / sqrt(d_head).",
)

# ----------------------------------------------------------------- Q3: memory read


def _read_inputs() -> tuple:
    generator = torch.Generator().manual_seed(43)
    query = torch.randn(2, 3, 4, 6, generator=generator)  # (B, heads, T, d_head)
    memory = torch.randn(3, 6, 6, generator=generator)  # (heads, d_head, d_head)
    return query, memory


def _read_reference(query, memory) -> torch.Tensor:
    return torch.einsum("bhtd,hde->bhte", torch.nn.functional.elu(query), memory)


q3 = Question(
    title="Q3 the Prefix-Tuning+ memory read",
    grader=grade_function(_read_inputs, _read_reference),
    hint="Apply elu to the queries first, then multiply each head's (T, d_head) block by that "
         "head's own (d_head, d_head) matrix. torch.einsum or broadcasting matmul both work.",
)

# ----------------------------------------------------------------- Q4: parameter count

# Per-head memory on all-MiniLM-L6-v2: 6 layers, 12 heads of size 32.
Q4_EXPECTED = 6 * 12 * 32 * 32

q4 = Question(
    title="Q4 Prefix-Tuning+ parameter count",
    grader=grade_number(Q4_EXPECTED, what="parameter count"),
    hint="Each head of each layer has one square matrix whose side is the head size "
         "(hidden size / heads).",
)

# ----------------------------------------------------------------- Q5: zero init

Q5_OPTIONS = ("the base model", "prefix tuning with a zero prefix", "neither")

q5 = Question(
    title="Q5 what a zero memory reproduces",
    grader=grade_choice("the base model", Q5_OPTIONS),
    hint="A zero prefix key still gets a logit of 0, i.e. softmax weight exp(0) > 0. Does a "
         "zero memory take any attention mass away from the real tokens?",
)
