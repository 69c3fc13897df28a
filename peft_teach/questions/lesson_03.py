"""Graded questions of the prompts and prefix tuning practice notebook
(solutions/03_prompts_and_prefix_tuning.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
Q2 runs the real all-MiniLM-L6-v2; its reference logits come from the package's
``add_soft_prompt`` when the check runs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from peft_teach.checks import Question, grade_choice, grade_function, grade_number, register
from peft_teach.methods import prefix as prefix_method
from peft_teach.methods.prompts import add_soft_prompt, remove_soft_prompt
from peft_teach.models import build_classifier
from peft_teach.questions.real_inputs import (assert_same_gradients, assert_same_logits, attention_function_replaced,
                                             grade_in_the_model, gradients_of, probe_loss, review_batch)

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

# ----------------------------------------------------------------- Q6: prefix attention by hand (real model)

Q6_LENGTH = 6  # not the lesson's 10


def prefixed_model() -> torch.nn.Module:
    """MiniLM with a seeded random prefix of length 6 in every layer (random keys and values matter at once)."""
    model = build_classifier(2, seed=0)
    prefix_method.add_prefix(model, length=Q6_LENGTH, seed=0)
    return model.eval()


@contextmanager
def prefix_attention_replaced_by(model: torch.nn.Module, function):
    """Every layer's attention runs ``function(query, key, value, mask, prefix, layer)`` instead of the package's.

    The function gets the whole prefix table (all layers) and the layer's number: picking and
    splitting its own layer's keys and values into heads is part of the task.
    """
    table = model.prefix.prefix  # the trainable (L, 2, l, d) parameter itself: gradients must reach it

    def attention(module, query, key, value, attention_mask, **kwargs):
        return function(query, key, value, attention_mask, table, module.layer_idx), None

    with attention_function_replaced(prefix_method.ATTENTION_NAME, attention):
        yield


def _heads(prefix: torch.Tensor, layer: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    keys, values = prefix[layer]  # each (l, d)
    return (keys.view(keys.shape[0], heads, -1).transpose(0, 1),
            values.view(values.shape[0], heads, -1).transpose(0, 1))


def _attend(query, key, value, mask, prefix_key, prefix_value, scale=True):
    batch = query.shape[0]
    key = torch.cat([prefix_key.expand(batch, -1, -1, -1), key], dim=2)
    value = torch.cat([prefix_value.expand(batch, -1, -1, -1), value], dim=2)
    scores = query @ key.transpose(-1, -2) / (query.shape[-1] ** 0.5 if scale else 1.0)
    if mask is not None:
        scores = scores + torch.cat([mask.new_zeros(*mask.shape[:-1], prefix_key.shape[1]), mask], dim=-1)
    return (scores.softmax(dim=-1) @ value).transpose(1, 2)


def _layer_zero_everywhere(query, key, value, mask, prefix, layer):
    return _attend(query, key, value, mask, *_heads(prefix, 0, query.shape[1]))


def _heads_split_wrongly(query, key, value, mask, prefix, layer):
    keys, values = prefix[layer]  # (l, d) viewed as (heads, l, d_head) without moving the heads axis
    shape = (query.shape[1], keys.shape[0], -1)
    return _attend(query, key, value, mask, keys.reshape(shape), values.reshape(shape))


def _no_scaling(query, key, value, mask, prefix, layer):
    return _attend(query, key, value, mask, *_heads(prefix, layer, query.shape[1]), scale=False)


def _mask_columns_at_the_end(query, key, value, mask, prefix, layer):
    prefix_key, prefix_value = _heads(prefix, layer, query.shape[1])
    batch, length = query.shape[0], prefix_key.shape[1]
    key = torch.cat([prefix_key.expand(batch, -1, -1, -1), key], dim=2)
    value = torch.cat([prefix_value.expand(batch, -1, -1, -1), value], dim=2)
    wrong = torch.cat([mask, mask.new_zeros(*mask.shape[:-1], length)], dim=-1)  # visible columns behind, not in front
    scores = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5 + wrong
    return (scores.softmax(dim=-1) @ value).transpose(1, 2)


Q6_MISTAKES = {
    "layer 0's prefix used in every layer (a prefix belongs to its layer)": _layer_zero_everywhere,
    "a prefix reshaped to (heads, l, d_head) without moving the heads axis": _heads_split_wrongly,
    "attention scores without the 1/sqrt(d_head) scaling": _no_scaling,
    "the mask's l visible columns added behind the tokens' instead of in front": _mask_columns_at_the_end,
}


def _grade_prefix_attention(function) -> None:
    grade_in_the_model(function, prefixed_model, prefix_attention_replaced_by, task="sentiment",
                       block=((prefix_method, "prefix_attention"), (prefix_method, "extend_mask"),
                              (prefix_method.PrefixEncoder, "layer_key_value")),
                       known_wrong=Q6_MISTAKES, train_steps=3)


q6 = Question(
    title="Q6 prefix attention by hand, in every layer, trained 3 steps",
    grader=_grade_prefix_attention,
    nudge="Three steps: this layer's l keys and l values, split into heads like the real tokens' (d = heads x "
          "d_head, heads first); put them in front of the tokens' keys and values; give the mask l visible "
          "columns in front. Then ordinary scaled dot-product attention.",
    recipe="keys, values = prefix[layer]; view each as (l, heads, d_head) and transpose to (heads, l, d_head); "
           "expand over the batch and torch.cat in front of key and value (dim 2); cat zeros (B, 1, T, l) in "
           "front of the mask; softmax(q k^T / sqrt(d_head) + mask) v; return it transposed to (B, T, heads, "
           "d_head).",
)


register("03_prompts_and_prefix_tuning.ipynb", globals())  # q.solution() finds the solved code by these names
