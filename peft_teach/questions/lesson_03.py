"""Graded questions of the prompts and prefix tuning practice notebook
(solutions/03_prompts_and_prefix_tuning.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
Q2 runs the real all-MiniLM-L6-v2; its reference logits come from the package's
``add_soft_prompt`` when the check runs.
"""

from __future__ import annotations

import torch

from peft_teach.checks import Question, grade_choice, grade_function, grade_number, register
from peft_teach.methods.prompts import add_soft_prompt, remove_soft_prompt
from peft_teach.models import build_classifier
from peft_teach.questions.real_inputs import assert_same_gradients, assert_same_logits, gradients_of, probe_loss, review_batch

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
    nudge="Every example sees the same prompt, in front of its own tokens. Which dimension is the "
         "sequence, and what shape must the prompt have before it can be joined to a (B, T, d) tensor?",
    recipe="Expand the prompt (l, d) to (batch, l, d) with unsqueeze(0).expand, then torch.cat([prompt, "
           "embeds], dim=1).",
)

# ----------------------------------------------------------------- Q2: a soft prompt by hand (real model)

PROMPT_LENGTH = 5


def _grade_prompt_logits(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    model = build_classifier(2, seed=0)
    add_soft_prompt(model, length=PROMPT_LENGTH, init="vocab", seed=0)
    batch = review_batch("sentiment", count=8)
    expected = model(**batch)  # the package's prompt-tuned classifier (eval mode)
    probe_loss(expected).backward()
    theirs = gradients_of({"the prompt": model.soft_prompt.weight})
    prompt = model.soft_prompt.weight.detach().clone().requires_grad_(True)  # what trains: the prompt alone
    remove_soft_prompt(model)  # the backbone is the plain base model again: no hook does the work for you
    result = function(model.backbone, prompt, model.head, batch)
    assert_same_logits(result, expected.detach(), 1e-5, whose="the package's prompt-tuned model")
    probe_loss(result).backward()
    assert_same_gradients(gradients_of({"the prompt": prompt}), theirs, atol=1e-5)


q2 = Question(
    title="Q2 a soft prompt by hand, on the real model",
    grader=_grade_prompt_logits,
    nudge="Three things change when a prompt goes in front: what the encoder reads, which positions "
         "every token may attend to, and which output positions the head averages. The module "
         "docstring of peft_teach/methods/prompts.py states the course's pooling decision.",
    recipe="Embed the tokens, put the prompt in front, extend the mask with l ones in front, run the backbone"
           " on inputs_embeds, pool only the original tokens' positions (drop the first l), then the head.",
)

# ----------------------------------------------------------------- Q3: parameter count

# Prefix tuning on all-MiniLM-L6-v2 (6 layers, d = 384) with l = 20, no MLP.
Q3_EXPECTED = 2 * 6 * 20 * 384

q3 = Question(
    title="Q3 prefix tuning parameter count",
    grader=grade_number(Q3_EXPECTED, what="parameter count"),
    nudge="What exactly does prefix tuning add to each layer's attention, how many of them, and how "
         "long is each vector? The folded-away MLP no longer counts.",
    recipe='Each layer adds l keys and l values of size d: 2 x layers x l x d.',
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
    nudge="A share is a probability mass. Which operation turns one query's scores into "
         "probabilities, over which keys must it run for the prefix to compete with the tokens, "
         "and which of those probabilities belong to the prefix?",
    recipe="Softmax each query's scores over all keys (prefix and real together), then sum the probabilities "
           "of the first `length` keys.",
)

# ----------------------------------------------------------------- Q5: positions in peft

Q5_OPTIONS = ("0..T-1", "l..l+T-1", "no positions")

q5 = Question(
    title="Q5 positions of real tokens under peft's PrefixTuning",
    grader=grade_choice("l..l+T-1", Q5_OPTIONS),
    nudge="Re-read the lesson's comparison with peft: what did our own model's call need before "
         "its output matched peft's exactly?",
    recipe="peft's prefix shifts the real tokens' positions by the prefix length l: the first real token sits"
           " at position l.",
)


register("03_prompts_and_prefix_tuning.ipynb", globals())  # q.solution() finds the solved code by these names
