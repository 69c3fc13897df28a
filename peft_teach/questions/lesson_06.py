"""Graded questions of the design-space practice notebook (solutions/06_design_space.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
"""

from __future__ import annotations

import math

import torch

from peft_teach import measure
from peft_teach.checks import Question, grade_choice, grade_function, grade_number, register

# ----------------------------------------------------------------- Q1: mean and sample std


def _accuracy_inputs() -> tuple:
    generator = torch.Generator().manual_seed(6)
    return (0.8 + 0.1 * torch.rand(4, 3, generator=generator, dtype=torch.float64),)  # 4 methods x 3 seeds


def _mean_and_sample_std(accuracies: torch.Tensor) -> torch.Tensor:
    n = accuracies.shape[1]
    mean = accuracies.mean(dim=1)
    variance = ((accuracies - mean[:, None]) ** 2).sum(dim=1) / (n - 1)
    return torch.stack([mean, variance.sqrt()], dim=1)


q1 = Question(
    title="Q1 mean ± sample standard deviation over seeds",
    grader=grade_function(_accuracy_inputs, _mean_and_sample_std, atol=1e-9),
    nudge="With only a few seeds, the spread measured around the *estimated* mean is too small; "
         "the sample standard deviation corrects for that in its denominator.",
    recipe='mean over seeds (dim 1); sample std: square root of the sum of squared deviations divided by n - 1.',
)

# ----------------------------------------------------------------- Q2: optimizer state in bytes

# LoRA r = 8 on query and value of MiniLM (6 layers, d = 384) plus a 2-label head, float32, AdamW.
_LORA = 6 * 2 * 8 * (384 + 384)
_HEAD = 384 * 2 + 2
q2 = Question(
    title="Q2 AdamW's state for LoRA r = 8 (q, v) + head on MiniLM, in bytes",
    grader=grade_number(2 * 4 * (_LORA + _HEAD), what="number of bytes"),
    nudge="Count the trainable values first (each adapted matrix adds A and B; do not forget the head). "
         "AdamW keeps a few float32 tensors per trainable value.",
    recipe="Trainable values: 6 layers x 2 matrices x r (384 + 384), plus the head (384 x 2 + 2); AdamW keeps"
           " 2 float32 values per trainable value: x 2 x 4 bytes.",
)

# ----------------------------------------------------------------- Q3: barycentric coordinates

CORNERS = torch.tensor([[0.5, math.sqrt(3) / 2], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)  # C, M, S


def _score_inputs() -> tuple:
    generator = torch.Generator().manual_seed(7)
    return (torch.rand(5, 3, generator=generator, dtype=torch.float64) + 0.05,)


def _to_triangle(scores: torch.Tensor) -> torch.Tensor:
    return scores / scores.sum(dim=1, keepdim=True) @ CORNERS


q3 = Question(
    title="Q3 place (capacity, memory, speed) scores in the triangle",
    grader=grade_function(_score_inputs, _to_triangle, atol=1e-9),
    nudge="Normalise each row so its three scores sum to 1, then use them as weights of the three corners.",
    recipe='Divide each row by its sum; multiply the (rows, 3) weights by the (3, 2) corner coordinates.',
)

# ----------------------------------------------------------------- Q4: counting saved activations


def _activation_inputs() -> tuple:
    from peft_teach.methods import lora
    from peft_teach.models import build_classifier, load_tokenizer

    model = build_classifier(2, seed=0)
    lora.add_lora(model, ("query", "value"), r=8)
    batch = load_tokenizer()(["A quiet hotel with a superb breakfast.", "The waiter was rude."],
                             padding=True, return_tensors="pt")
    return model, {k: batch[k] for k in ("input_ids", "attention_mask")}


def _saved_bytes(model, batch) -> torch.Tensor:
    from peft_teach.measure import saved_activation_bytes

    return torch.tensor(float(saved_activation_bytes(model, batch)))


q4 = Question(
    title="Q4 count the bytes autograd keeps for backward (MiniLM + LoRA)",
    grader=grade_function(_activation_inputs, _saved_bytes, atol=0.5, block=((measure, "saved_activation_bytes"),)),
    nudge="Wrap one training-mode forward in torch.autograd.graph.saved_tensors_hooks. Count each storage "
         "once, and leave out the model's own parameters and buffers: they exist anyway.",
    recipe="Note the storages of the parameters and buffers; inside saved_tensors_hooks record every packed "
           "tensor's storage pointer and byte size; run one training-mode forward; sum the bytes of the "
           "storages seen once that are not the model's own.",
)

# ----------------------------------------------------------------- Q5: which method keeps no activations

q5 = Question(
    title="Q5 which method keeps almost no activations for backward?",
    grader=grade_choice("head only", ("head only", "LoRA", "soft prompt", "prefix", "adapter")),
    nudge="A layer needs its activations kept only if a gradient must flow through it. Where is the lowest "
         "trainable parameter of each method?",
    recipe="For each method, find the lowest layer with a trainable parameter: activations below it need no "
           "gradient.",
)

# ----------------------------------------------------------------- Q6: capacity on real sentences, from the stored runs


def _grade_capacity(function) -> None:
    from peft_teach import precomputed, protocol

    assert callable(function), "Pass the function itself (no parentheses)."
    summary = protocol.summarize(precomputed.load("protocol_sst2"))
    head, full = summary["head_only"]["mean"], summary["full_ft"]["mean"]
    for method in ("lora", "pfeiffer", "soft_prompt"):
        if method not in summary:
            continue  # not precomputed (yet)
        expected = min(max((summary[method]["mean"] - head) / (full - head), 0.0), 1.0)
        answer = function(summary, method)
        assert isinstance(answer, (int, float)), f"Return a number, not {type(answer).__name__}."
        assert abs(answer - expected) <= 1e-9, f"The score of {method!r} does not match."


q6 = Question(
    title="Q6 a method's capacity score on SST-2, from the stored protocol runs",
    grader=_grade_capacity,
    nudge="Place the method's mean test accuracy on a scale whose two ends are the two baselines' means: "
         "0 at one end, 1 at the other.",
    recipe='(method mean - head-only mean) / (full fine-tuning mean - head-only mean), from the stored summary.',
)


register("06_design_space.ipynb", globals())  # q.solution() finds the solved code by these names
