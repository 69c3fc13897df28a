"""Graded questions of the bottleneck adapters practice notebook
(solutions/01_bottleneck_adapters.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
"""

from __future__ import annotations

import torch

from peft_teach.checks import Question, grade_choice, grade_function, grade_number
from peft_teach.methods.adapters import BottleneckAdapter

# ----------------------------------------------------------------- Q1: adapter forward


def _forward_inputs() -> tuple:
    generator = torch.Generator().manual_seed(11)
    d, m = 8, 3
    hidden = torch.randn(2, 4, d, generator=generator)
    return (hidden, torch.randn(m, d, generator=generator), torch.randn(m, generator=generator),
            torch.randn(d, m, generator=generator), torch.randn(d, generator=generator))


def _forward_reference(hidden, w_down, b_down, w_up, b_up) -> torch.Tensor:
    return hidden + torch.relu(hidden @ w_down.T + b_down) @ w_up.T + b_up


q1 = Question(
    title="Q1 the adapter's forward pass",
    grader=grade_function(_forward_inputs, _forward_reference),
    hint="Project down (weights are stored out x in, like nn.Linear), apply ReLU, project up, "
         "and do not forget the adapter's own skip connection.",
)

# ----------------------------------------------------------------- Q2: Houlsby parameter count

q2 = Question(
    title="Q2 Houlsby adapters on MiniLM",
    grader=grade_number(2 * 6 * (2 * 384 * 24 + 24 + 384), what="parameter count"),
    hint="One adapter has 2md + m + d parameters; count how many adapters each layer gets "
         "with this placement, and how many layers there are.",
)

# ----------------------------------------------------------------- Q3: storage per task

q3 = Question(
    title="Q3 bytes to store one task",
    grader=grade_number(4 * (6 * (2 * 384 * 24 + 24 + 384) + 2 * 384 + 2), what="number of bytes"),
    hint="A task is the Pfeiffer adapter of every layer plus its 2-class head; a float32 takes 4 bytes.",
)

# ----------------------------------------------------------------- Q4: near-identity init


def _grade_init(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    adapter = BottleneckAdapter(16, 4, seed=3)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0.0, 0.5)
    result = function(adapter)
    assert result is None or result is adapter, "Change the adapter in place."
    hidden = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(adapter(hidden), hidden, atol=1e-6), "The adapter does not return its input unchanged."
    assert adapter.down.weight.abs().sum() > 0, (
        "Every down-projection weight is zero: then the up-projection gets no gradient and nothing can learn.")


q4 = Question(
    title="Q4 start as the identity",
    grader=_grade_init,
    hint="The skip connection already passes h through; make the *added* term exactly zero "
         "while keeping a random down-projection.",
)

# ----------------------------------------------------------------- Q5: what trains

q5 = Question(
    title="Q5 what changes after one step",
    grader=grade_choice("b", ("a", "b", "c", "d")),
    hint="train_adapter freezes everything, then unfreezes one adapter and the head it uses.",
)
