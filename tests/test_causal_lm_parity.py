"""Parity with peft on a causal language model: LoRA, prompt tuning, prefix tuning.

A tiny random ``LlamaForCausalLM`` (grouped-query attention, tied embeddings, like the
course's SmolLM2) gets our method; an identical copy gets peft's, with our trained-looking
tensors copied in. Compared: the logits of the real (non-padding) tokens (max abs diff
<= 1e-5) and the greedy tokens of ``generate`` with the key/value cache on a left-padded
batch (identical, and their logits within 1e-5).

Positions, the one place where the libraries differ (both differences are documented
conventions, not bugs, and each test shows that they matter):

* **LoRA** touches no positions: both models run with exactly the same inputs.
* **Prompt tuning**: in a plain forward both give the prompt positions 0..l-1 and the
  input l..l+T-1. In ``generate``, peft drops the ``position_ids`` that transformers
  derives from the attention mask ("Position ids are not supported ... Ignoring"), so
  the model numbers every column, left padding included; ours keeps generate's
  positions (padding skipped) and moves them up by l. Without padding the two agree
  as they are; with left padding the fair comparison hands our ``generate`` the
  positions peft's model ends up using (0, 1, ... over all columns).
* **Prefix tuning**: peft puts the prefix into the key/value cache, so the model counts
  it and numbers the real tokens from l; ours keeps positions 0..T-1 (the prefix has no
  position, see tests/test_prefix_parity.py). The fair comparison gives ours positions
  shifted by l.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from tiny_models import generated, left_padded, mask_positions, tiny_causal_lm, unpadded
from peft_teach.methods import lora, prefix, prompts

LENGTH = 4  # virtual tokens
TOL = 1e-5
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def peft_model(base, config):
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(copy.deepcopy(base), config).eval()


def quiet_generate(model, ids, mask, **kwargs):
    with warnings.catch_warnings():  # peft warns that it ignores position_ids (see the module docstring)
        warnings.simplefilter("ignore")
        return generated(model, ids, mask, **kwargs)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def assert_same_generation(ours, theirs, ids, mask, **our_kwargs) -> None:
    our_tokens, our_logits = quiet_generate(ours, ids, mask, **our_kwargs)
    their_tokens, their_logits = quiet_generate(theirs, ids, mask)
    assert torch.equal(our_tokens, their_tokens)
    assert max_diff(our_logits, their_logits) <= TOL


def test_lora_matches_peft():
    from peft import LoraConfig

    base = tiny_causal_lm("llama")
    ours = copy.deepcopy(base)
    layers = lora.add_lora(ours, TARGETS, r=2, alpha=4)
    generator = torch.Generator().manual_seed(1)
    theirs = peft_model(base, LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=list(TARGETS)))
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=generator))  # B = 0 would test nothing
            their_layer = theirs.get_submodule(f"base_model.model.{name}")
            their_layer.lora_A["default"].weight.copy_(layer.lora_A)
            their_layer.lora_B["default"].weight.copy_(layer.lora_B)
    ids, mask = left_padded()
    with torch.no_grad():
        our_logits = ours(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        their_logits = theirs(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        base_logits = base(input_ids=ids, attention_mask=mask).logits[mask.bool()]
    assert max_diff(our_logits, their_logits) <= TOL
    assert max_diff(our_logits, base_logits) > 1e-3  # LoRA acts: the match is not vacuous
    assert_same_generation(ours, theirs, ids, mask)


def test_prompt_tuning_matches_peft():
    from peft import PromptTuningConfig

    base = tiny_causal_lm("llama")
    ours = copy.deepcopy(base)
    prompt = prompts.add_soft_prompt(ours, LENGTH, init="vocab", seed=2)["soft_prompt"]
    theirs = peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=LENGTH))
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(prompt.weight)
    ids, mask = left_padded()
    with torch.no_grad():
        our_logits = ours(input_ids=ids, attention_mask=mask).logits
        their_logits = theirs(input_ids=ids, attention_mask=mask).logits[:, LENGTH:]  # peft keeps the prompt's
        base_logits = base(input_ids=ids, attention_mask=mask).logits
    assert max_diff(our_logits[mask.bool()], their_logits[mask.bool()]) <= TOL
    assert max_diff(our_logits[mask.bool()], base_logits[mask.bool()]) > 1e-3
    # generate: without padding, as they are; with left padding, at the positions peft's model uses
    assert_same_generation(ours, theirs, *unpadded())
    every_column = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    assert_same_generation(ours, theirs, ids, mask, position_ids=every_column)
    padded_rows = (mask == 0).any(dim=1)
    assert not torch.equal(quiet_generate(ours, ids, mask)[1][padded_rows],
                           quiet_generate(theirs, ids, mask)[1][padded_rows])  # the difference is real


def test_prefix_tuning_matches_peft_up_to_positions():
    from peft import PrefixTuningConfig

    base = tiny_causal_lm("llama")
    ours = copy.deepcopy(base)
    encoder = prefix.add_prefix(ours, LENGTH, init_std=1.0, seed=1)["prefix"]
    theirs = peft_model(base, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=LENGTH))
    # peft's table: row j = [layer 0 key j, layer 0 value j, layer 1 key j, ...]
    table = encoder.full_prefix().detach().permute(2, 0, 1, 3).reshape(LENGTH, -1)
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(table)
    ids, mask = left_padded()
    shifted = torch.arange(LENGTH, LENGTH + ids.shape[1]).expand(ids.shape[0], -1)
    with torch.no_grad():
        our_logits = ours(input_ids=ids, attention_mask=mask, position_ids=shifted).logits[mask.bool()]
        their_logits = theirs(input_ids=ids, attention_mask=mask).logits[mask.bool()]
        unshifted = ours(input_ids=ids, attention_mask=mask).logits[mask.bool()]
    assert max_diff(our_logits, their_logits) <= TOL
    assert max_diff(unshifted, their_logits) > 1e-3  # the position shift is the one difference, and it matters
    assert_same_generation(ours, theirs, ids, mask, position_ids=mask_positions(mask) + LENGTH)


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix"])
def test_peft_parity_is_not_vacuous_for_generation(method):
    """Each method changes what the model writes, so identical greedy tokens above mean something."""
    base = tiny_causal_lm("llama")
    model = copy.deepcopy(base)
    if method == "lora":
        for layer in lora.add_lora(model, TARGETS, r=2, alpha=4).values():
            torch.nn.init.normal_(layer.lora_B, std=0.3)
    elif method == "prompt":
        prompts.add_soft_prompt(model, LENGTH, init="vocab", seed=2)
    else:
        prefix.add_prefix(model, LENGTH, init_std=1.0, seed=1)
    ids, mask = left_padded()
    assert not torch.equal(generated(model, ids, mask)[0], generated(base, ids, mask)[0])
