"""Graded questions of the LoRA practice notebook (solutions/05_lora.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
"""

from __future__ import annotations

import torch

from peft_teach.checks import Question, grade_choice, grade_function, grade_number

# ----------------------------------------------------------------------------- Q1: forward


def _forward_inputs() -> tuple:
    generator = torch.Generator().manual_seed(51)
    d_in, d_out, r = 12, 10, 3
    x = torch.randn(4, 7, d_in, generator=generator)  # (batch, tokens, d_in)
    weight = torch.randn(d_out, d_in, generator=generator)
    bias = torch.randn(d_out, generator=generator)
    lora_a = torch.randn(r, d_in, generator=generator)
    lora_b = torch.randn(d_out, r, generator=generator)  # non-zero, so the LoRA path counts
    return x, weight, bias, lora_a, lora_b, 6.0, r


def _forward_reference(x, weight, bias, lora_a, lora_b, alpha, r) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight, bias) + (alpha / r) * (x @ lora_a.T) @ lora_b.T


q1 = Question(
    title="Q1 LoRA forward pass",
    grader=grade_function(_forward_inputs, _forward_reference, atol=1e-4),
    hint="The frozen path is x W0^T + b. The LoRA path first maps x to r numbers with A, "
         "then to d_out with B, and is scaled by alpha / r.",
)

# ----------------------------------------------------------------------------- Q2: count

# r = 16 on query, value (384 x 384) and intermediate.dense (384 -> 1536) in 6 layers
Q2_EXPECTED = 6 * (2 * 16 * (384 + 384) + 16 * (384 + 1536))

q2 = Question(
    title="Q2 LoRA parameter count",
    grader=grade_number(Q2_EXPECTED, what="parameter count"),
    hint="Per adapted matrix LoRA adds A (r x d_in) and B (d_out x r). intermediate.dense is "
         "not square: d_in = 384, d_out = 1536. Then multiply by the number of layers.",
)

# ----------------------------------------------------------------------------- Q3: merge


def _merge_inputs() -> tuple:
    generator = torch.Generator().manual_seed(53)
    d_in, d_out, r = 9, 6, 2
    return (torch.randn(d_out, d_in, generator=generator), torch.randn(r, d_in, generator=generator),
            torch.randn(d_out, r, generator=generator), 8.0, r)


def _merge_reference(weight, lora_a, lora_b, alpha, r) -> torch.Tensor:
    return weight + (alpha / r) * lora_b @ lora_a


def _grade_merge(function) -> None:
    inputs = _merge_inputs()
    original = inputs[0].clone()
    grade_function(_merge_inputs, _merge_reference, atol=1e-5)(function)
    function(*inputs)
    assert torch.equal(inputs[0], original), (
        "Your function changed the weight it was given; return a new tensor instead.")


q3 = Question(
    title="Q3 merge LoRA into the weight",
    grader=_grade_merge,
    hint="W0 has shape (d_out, d_in). Which product of A (r x d_in) and B (d_out x r) has that "
         "shape? Do not forget the scaling.",
)

# ----------------------------------------------------------------------------- Q4: energy


def _energy_inputs() -> tuple:
    generator = torch.Generator().manual_seed(54)
    low_rank = torch.randn(30, 3, generator=generator) @ torch.randn(3, 20, generator=generator)
    return low_rank + 0.1 * torch.randn(30, 20, generator=generator), 2


def _energy_reference(matrix, r) -> torch.Tensor:
    singular = torch.linalg.svdvals(matrix)
    return (singular[:r] ** 2).sum() / (singular**2).sum()


q4 = Question(
    title="Q4 energy in the top-r directions",
    grader=grade_function(_energy_inputs, _energy_reference, atol=1e-5),
    hint="Energy is the sum of squared singular values (the squared Frobenius norm). "
         "torch.linalg.svdvals returns them sorted from largest to smallest.",
)

# ----------------------------------------------------------------------------- Q5: rank analysis

Q5_OPTIONS = ("a", "b", "c")
q5 = Question(
    title="Q5 what the rank analysis supports",
    grader=grade_choice("b", Q5_OPTIONS),
    hint="If dropping 6 of the 8 directions changes nothing, how many directions does the model "
         "actually use? And what does dropping to 1 direction tell you?",
)

# ----------------------------------------------------------------------------- Q6: overhead

q6 = Question(
    title="Q6 extra matrix multiplications after merging",
    grader=grade_number(0, what="number of extra matrix multiplications"),
    hint="After merging, what does the layer's forward pass compute? Look at LoRALinear.forward "
         "when merged is True.",
)

QUESTIONS = {"q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q6": q6}
