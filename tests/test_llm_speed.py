"""The LLM speed measurements (peft_teach.llm_speed).

The timings themselves depend on the machine, so these tests check what the measurements
*are*: which models, the same weights as peft, counted cache bytes equal to their formulas,
and ratios reported beside a control (the shuffled timing itself is tested in test_measure).
"""

from __future__ import annotations

import pytest
import torch

from tiny_models import left_padded, tiny_causal_lm, unpadded
from peft_teach import llm_speed, measure

METHODS = {"base", "lora", "lora_merged", "adapter", "prefix", "prefix_plus", "soft_prompt"}


@pytest.fixture(scope="module")
def base():
    return tiny_causal_lm("llama")


@pytest.fixture(scope="module")
def models(base):
    return llm_speed.method_models(base)


def logits(model, ids, mask, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, **kwargs).logits


def test_method_models_hold_every_method_and_merged_lora_serves_the_same_function(models):
    assert set(models) == METHODS
    ids, mask = left_padded()
    real = mask.bool()
    merged, unmerged, base = (logits(models[n], ids, mask)[real] for n in ("lora_merged", "lora", "base"))
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert (unmerged - base).abs().max() > 1e-4  # the timed LoRA has a real update (B is not zero)


def test_peft_twins_compute_our_function(base):
    twins = llm_speed.peft_twins(base)
    assert set(twins) == {"lora", "soft_prompt", "prefix"}
    ids, mask = unpadded()
    ours, theirs = twins["lora"]["ours"], twins["lora"]["peft"]
    torch.testing.assert_close(logits(ours, ids, mask), logits(theirs, ids, mask), atol=1e-5, rtol=0)
    ours, theirs = twins["soft_prompt"]["ours"], twins["soft_prompt"]["peft"]
    length = llm_speed.PROMPT_LENGTH  # peft also returns the prompt's own positions: drop them
    torch.testing.assert_close(logits(ours, ids, mask), logits(theirs, ids, mask)[:, length:], atol=1e-5, rtol=0)
    ours, theirs = twins["prefix"]["ours"], twins["prefix"]["peft"]
    shifted = torch.arange(ids.shape[1]).expand(ids.shape[0], -1) + llm_speed.PREFIX_LENGTH  # peft's positions
    torch.testing.assert_close(logits(ours, ids, mask, position_ids=shifted), logits(theirs, ids, mask),
                               atol=1e-5, rtol=0)
    assert all(p.requires_grad for pair in twins.values() for p in pair["peft"].parameters() if p.requires_grad)
    assert all(any(p.requires_grad for p in pair["peft"].parameters()) for pair in twins.values())


def test_cache_bytes_are_counted_and_equal_their_formulas(base, models):
    ids, mask = unpadded()
    batch = {"input_ids": ids, "attention_mask": mask}
    config = base.config
    per_token = llm_speed.prefix_cache_formula(config, length=1)  # one position: keys + values, every layer
    assert per_token == 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    counted = {name: llm_speed.cache_bytes(model, batch) for name, model in models.items()}
    assert counted["base"] == ids.numel() * per_token
    assert counted["prefix"] == counted["base"]  # ours joins the prefix in attention, never writes it to the cache
    assert counted["soft_prompt"] == counted["base"] + ids.shape[0] * llm_speed.PROMPT_LENGTH * per_token
    theirs = llm_speed.peft_twins(base)["prefix"]["peft"]
    expected = counted["base"] + ids.shape[0] * llm_speed.prefix_cache_formula(config, llm_speed.PREFIX_LENGTH)
    assert llm_speed.cache_bytes(theirs, batch) == expected  # peft keeps it in the cache


def test_generation_ratios_are_relative_to_the_base_with_a_control(models):
    ids, mask = left_padded()
    batches = {"batch 3": {"input_ids": ids, "attention_mask": mask}}
    result = llm_speed.generation_ratios({n: models[n] for n in ("base", "lora")}, batches, new_tokens=2, rounds=1)
    row = result["batch 3"]
    assert set(row) == {"base", "lora", measure.CONTROL, "base tokens/s"}
    assert row["base"] == 1.0 and row["lora"] > 0 and row[measure.CONTROL] > 0 and row["base tokens/s"] > 0


def test_train_step_ratios_report_ours_over_peft_and_a_control(base):
    pair = llm_speed.peft_twins(base)["lora"]
    ids, mask = left_padded()
    labels = ids.masked_fill(mask == 0, -100)
    result = llm_speed.train_step_ratios({"lora": pair}, {"input_ids": ids, "attention_mask": mask, "labels": labels},
                                         rounds=1, repeats=1)
    row = result["lora"]
    assert row["ratio"] == pytest.approx(row["ours_s"] / row["peft_s"])
    assert row["control_ratio"] > 0


def test_train_step_time_refuses_a_model_with_nothing_to_train(base):
    with pytest.raises(ValueError, match="no trainable parameters|has none"):
        frozen = tiny_causal_lm("llama")
        frozen.requires_grad_(False)
        measure.train_step_time(frozen, {"input_ids": torch.ones(1, 3, dtype=torch.long)})


def test_stored_timings_pass_their_control_check():
    """Every stored timing table was read from a run whose control landed in measure.CONTROL_RANGE."""
    from peft_teach import precomputed

    low, high = measure.CONTROL_RANGE
    rows = list(precomputed.load("llm_speed")["results"]["generation"].values())
    rows += list(precomputed.load("method_speed")["results"].values())
    assert rows and all(low <= row[measure.CONTROL] <= high for row in rows)
    for row in precomputed.load("llm_speed")["results"]["train_step"].values():
        assert low <= row["control_ratio"] <= high
