"""Parity: our prefix tuning against transformers' own cache path and against peft.

1. transformers: a prefix is exactly what a decoder sees when the prefix keys and
   values sit in a prefilled ``DynamicCache`` (the "past"), with the attention mask
   widened by l ones and the real tokens given positions 0..T-1 explicitly. In
   transformers 5.x the BERT encoder also accepts a cache (its mask length is taken
   from the 2-D attention mask), so the same reference works for BERT, GPT-2 and
   Llama (grouped-query: prefix per key/value head).
2. peft's PrefixTuning passes the prefix as past_key_values *without* explicit
   positions, so the model numbers the real tokens l..l+T-1 (as if the prefix were
   text). That is the one known difference: with positions 0..T-1 our outputs differ
   from peft's; with positions shifted by l they match.

Only real (non-padding) tokens are compared: padding positions are garbage in both.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import AutoModel, BertConfig, DynamicCache, GPT2Config, LlamaConfig

from tiny_models import tiny_config
from peft_teach.models import SequenceClassifier
from peft_teach.methods.prefix import add_prefix

LENGTH = 3
TOL = 1e-5


def prefixed_pair(kind: str):
    """(our prefixed classifier, an untouched copy of the same base model, inputs)."""
    torch.manual_seed(0)
    encoder = AutoModel.from_config(tiny_config(kind)).eval()
    reference = copy.deepcopy(encoder)
    model = SequenceClassifier(encoder, 2).eval()
    add_prefix(model, length=LENGTH, init_std=1.0, seed=1)
    ids = torch.randint(1, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # right padding on the second row
    return model, reference, ids, mask


def prefilled_cache(model, reference, batch: int) -> DynamicCache:
    cache = DynamicCache(config=reference.config)
    for layer in range(reference.config.num_hidden_layers):
        key, value = model.prefix.layer_key_value(layer)
        cache.update(key.detach().expand(batch, -1, -1, -1).clone(),
                     value.detach().expand(batch, -1, -1, -1).clone(), layer)
    return cache


def real(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[mask.bool()]


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_matches_transformers_cache_path(kind):
    model, reference, ids, mask = prefixed_pair(kind)
    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
    with torch.no_grad():
        ours = model.backbone(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        wide_mask = torch.cat([torch.ones(ids.shape[0], LENGTH, dtype=torch.long), mask], dim=1)
        theirs = reference(input_ids=ids, attention_mask=wide_mask, position_ids=positions,
                           past_key_values=prefilled_cache(model, reference, ids.shape[0])).last_hidden_state
        base = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (real(ours, mask) - real(theirs, mask)).abs().max().item() <= TOL
    # ...and the prefix really does something (otherwise the match would be vacuous).
    assert (real(ours, mask) - real(base, mask)).abs().max().item() > 1e-3


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_matches_peft_prefix_tuning_up_to_positions(kind):
    from peft import PrefixTuningConfig, get_peft_model

    model, reference, ids, mask = prefixed_pair(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft notes that this base model has no task head
        peft_model = get_peft_model(reference, PrefixTuningConfig(task_type="FEATURE_EXTRACTION",
                                                                  num_virtual_tokens=LENGTH)).eval()
    # peft stores all prefixes as one table: row j = [layer 0 key j, layer 0 value j, layer 1 key j, ...].
    table = model.prefix.full_prefix().detach().permute(2, 0, 1, 3).reshape(LENGTH, -1)
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(table)
        theirs = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
        ours_plain = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        shifted = torch.arange(LENGTH, LENGTH + ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
        ours_shifted = model.backbone(input_ids=ids, attention_mask=mask, position_ids=shifted).last_hidden_state
    assert (real(ours_shifted, mask) - real(theirs, mask)).abs().max().item() <= TOL
    assert (real(ours_plain, mask) - real(theirs, mask)).abs().max().item() > 1e-3  # the position shift matters
