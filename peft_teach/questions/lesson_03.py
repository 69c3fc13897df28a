"""Graded questions of the prompts and prefix tuning practice notebook
(solutions/03_prompts_and_prefix_tuning.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
"""

from __future__ import annotations

import torch

from peft_teach.checks import Question, grade_choice, grade_function, grade_number

# ----------------------------------------------------------------- Q1: prompt concatenation


def _concat_inputs() -> tuple:
    generator = torch.Generator().manual_seed(31)
    prompt = torch.randn(4, 6, generator=generator)  # (l, d)
    embeds = torch.randn(3, 5, 6, generator=generator)  # (B, T, d)
    return prompt, embeds


def _concat_reference(prompt: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
    return torch.cat([prompt.unsqueeze(0).expand(embeds.shape[0], -1, -1), embeds], dim=1)


q1 = Question(
    title="Q1 prepend the soft prompt",
    grader=grade_function(_concat_inputs, _concat_reference),
    hint="Every example in the batch gets the same l prompt vectors, placed *before* its "
         "token embeddings: give the prompt a batch dimension, then concatenate along the "
         "sequence dimension.",
)

# ----------------------------------------------------------------- Q2: mask extension


def _mask_inputs() -> tuple:
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    return mask, 3


def _mask_reference(mask: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([torch.ones(mask.shape[0], length, dtype=mask.dtype), mask], dim=1)


q2 = Question(
    title="Q2 widen the attention mask",
    grader=grade_function(_mask_inputs, _mask_reference),
    hint="The prompt positions are real inputs that every example may attend to, and they "
         "come first. Keep the dtype of the original mask.",
)

# ----------------------------------------------------------------- Q3: parameter count

# Prefix tuning on all-MiniLM-L6-v2 (6 layers, d = 384) with l = 20, no MLP.
Q3_EXPECTED = 2 * 6 * 20 * 384

q3 = Question(
    title="Q3 prefix tuning parameter count",
    grader=grade_number(Q3_EXPECTED, what="parameter count"),
    hint="Each layer gets l key vectors and l value vectors, each of size d. Count for one "
         "layer, then for all layers.",
)

# ----------------------------------------------------------------- Q4: prefix attention share


def _share_inputs() -> tuple:
    generator = torch.Generator().manual_seed(34)
    scores = 3 * torch.randn(2, 5, 4 + 5, generator=generator)  # (heads, T queries, l + T keys)
    return scores, 4


def _share_reference(scores: torch.Tensor, length: int) -> torch.Tensor:
    return scores.softmax(dim=-1)[..., :length].sum(dim=-1)


q4 = Question(
    title="Q4 attention share of the prefix",
    grader=grade_function(_share_inputs, _share_reference),
    hint="Scores are logits before the softmax. Turn each query's row into probabilities over "
         "all l + T keys, then add up the probabilities of the first l keys (the prefix).",
)

# ----------------------------------------------------------------- Q5: positions in peft

Q5_OPTIONS = ("0..T-1", "l..l+T-1", "no positions")

q5 = Question(
    title="Q5 positions of real tokens under peft's PrefixTuning",
    grader=grade_choice("l..l+T-1", Q5_OPTIONS),
    hint="peft hands the prefix to the model as past keys and values and passes no position "
         "ids. How does a model number new tokens when its cache already holds l entries?",
)
