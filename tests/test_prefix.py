"""Prefix tuning: counts, masks, trainable set, folding, recording, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModel, BertConfig, GPT2Config, LlamaConfig, T5Config

from tiny_models import names_changed_by_one_step, tiny_config
from peft_teach.models import SequenceClassifier
from peft_teach.methods.prefix import (
    PrefixEncoder,
    add_prefix,
    extend_mask,
    prefix_parameter_count,
    prefix_parameters,
    prefix_share_per_layer,
    record_prefix_attention,
)


def tiny_classifier(kind: str = "bert") -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(AutoModel.from_config(tiny_config(kind)).eval(), 2).eval()


@pytest.mark.parametrize("kind,expected", [("bert", 2 * 2 * 3 * 32), ("gpt2", 2 * 2 * 3 * 32),
                                           ("llama", 2 * 2 * 3 * 2 * 8)])  # llama: 2 kv heads of size 8
def test_parameter_count(kind, expected):
    model = tiny_classifier(kind)
    added = add_prefix(model, length=3)
    assert list(added) == ["prefix"] and isinstance(added["prefix"], PrefixEncoder)
    prefix = added["prefix"]
    assert model.prefix is prefix
    assert prefix.prefix.numel() == expected == prefix_parameter_count(model, 3) == prefix_parameters(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prefix.prefix", "head.weight", "head.bias"}


def test_default_model_count():
    from peft_teach.models import build_classifier

    model = build_classifier(2)
    assert add_prefix(model, length=10)["prefix"].prefix.numel() == 46_080  # 2 * 6 * 10 * 384
    assert prefix_parameter_count(model, 10) == prefix_parameters(model) == 46_080


def test_extend_mask_adds_visible_columns():
    mask = torch.tensor([[0.0, -1e9], [0.0, 0.0]]).view(1, 1, 2, 2)
    wide = extend_mask(mask, 3)
    assert wide.shape == (1, 1, 2, 5) and torch.equal(wide[..., :3], torch.zeros(1, 1, 2, 3))
    assert torch.equal(wide[..., 3:], mask) and extend_mask(None, 3) is None


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_padding_changes_nothing_for_real_tokens(kind):
    model = tiny_classifier(kind)
    add_prefix(model, length=3, init_std=1.0)
    ids = torch.randint(1, 100, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 4])
    with torch.no_grad():
        short = model.backbone(input_ids=ids).last_hidden_state
        long = model.backbone(input_ids=padded, attention_mask=mask).last_hidden_state
    assert torch.allclose(short, long[:, :5], atol=1e-5)


def test_prefix_changes_outputs_and_is_visible_to_first_decoder_token():
    model = tiny_classifier("gpt2")
    reference = copy.deepcopy(model.backbone)
    add_prefix(model, length=3, init_std=1.0)
    ids = torch.randint(1, 100, (1, 4))
    with torch.no_grad():
        ours = model.backbone(input_ids=ids).last_hidden_state
        base = reference(input_ids=ids).last_hidden_state
    # Token 0 sees only itself in the base model; with a prefix it sees the prefix too.
    assert (ours[:, 0] - base[:, 0]).abs().max() > 1e-3


def test_one_step_changes_only_prefix_and_head():
    model = tiny_classifier()
    add_prefix(model, length=3)
    changed = names_changed_by_one_step(model)
    assert changed == {"prefix.prefix", "head.weight", "head.bias"}


def test_reparameterization_trains_mlp_then_folds_exactly():
    model = tiny_classifier()
    prefix = add_prefix(model, length=3, reparameterize=True, mlp_hidden=16)["prefix"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prefix.seed_table", "prefix.mlp.0.weight", "prefix.mlp.0.bias", "prefix.mlp.2.weight",
                         "prefix.mlp.2.bias", "head.weight", "head.bias"}
    ids = torch.randint(1, 100, (2, 6))
    with torch.no_grad():
        before = model(input_ids=ids)
    prefix.fold()
    with torch.no_grad():
        after = model(input_ids=ids)
    assert torch.allclose(before, after, atol=1e-6)
    assert [n for n, _ in prefix.named_parameters()] == ["prefix"]
    assert prefix.prefix.numel() == prefix_parameter_count(model, 3) == prefix_parameters(model)


def test_recorded_share_is_a_probability_and_grows_with_prefix_strength():
    model = tiny_classifier()
    prefix = add_prefix(model, length=3)["prefix"]
    ids = torch.randint(1, 100, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    with torch.no_grad(), record_prefix_attention() as shares:
        model(input_ids=ids, attention_mask=mask)
    small = prefix_share_per_layer(shares, mask)
    assert len(small) == 2 and all(0.0 < s < 1.0 for s in small)
    with torch.no_grad():  # keys aligned with typical queries get more attention
        prefix.prefix[:, 0] *= 0
        prefix.prefix[:, 0] += 50 * model.backbone.encoder.layer[0].attention.self.key.bias.view(1, 1, -1).sign()
    with torch.no_grad(), record_prefix_attention() as shares:
        model(input_ids=ids, attention_mask=mask)
    assert prefix_share_per_layer(shares, mask) != small


@pytest.mark.parametrize("length", [0, -1, 1.5])
def test_bad_length_raises(length):
    with pytest.raises(ValueError, match="positive integer"):
        add_prefix(tiny_classifier(), length=length)


def test_unknown_model_type_raises():
    config = T5Config(vocab_size=100, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    model = SequenceClassifier(AutoModel.from_config(config).get_encoder(), 2)
    with pytest.raises(ValueError, match="Supported model types"):
        add_prefix(model, length=3)
