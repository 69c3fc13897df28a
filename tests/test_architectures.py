"""Adapters and AdapterFusion on each block layout: post-LN BERT, pre-LN GPT-2 and Llama (tiny, random)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel

from tiny_models import hidden, names_changed_by_one_step, padded_batch, perturb, tiny_config
from peft_teach.methods import adapters as A
from peft_teach.methods import fusion as F
from peft_teach.models import SequenceClassifier

KINDS = ["bert", "roberta", "gpt2", "llama"]
PLACEMENTS = {"pfeiffer": 1, "houlsby": 2}  # adapter points per layer
HEAD = {"head.weight", "head.bias"}


def classifier(kind: str) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(AutoModel.from_config(tiny_config(kind)).eval(), 3).eval()


def parameter_names(model, added: dict) -> set[str]:
    """Full names in ``model`` of the parameters of the modules an ``add_*`` returned."""
    return {f"{key}.{name}" for key, module in added.items() for name, _ in module.named_parameters()}


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_adapter_is_identity_counts_and_trains_only_itself(kind, placement):
    model, batch = classifier(kind), padded_batch()
    base = hidden(model, batch)
    config = A.AdapterConfig(placement=placement, reduction_factor=8)
    added = A.add_adapter(model, "t", config)
    layers = model.backbone.config.num_hidden_layers
    assert len(added) == layers * PLACEMENTS[placement]
    assert torch.equal(hidden(model, batch), base)  # W_up = 0: exactly the base model
    assert A.adapter_parameters(model, "t") == A.adapter_parameter_count(model, config) \
        == layers * PLACEMENTS[placement] * A.bottleneck_parameter_count(32, 4)
    expected = parameter_names(model, added) | HEAD
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    # First step: W_up = 0 blocks the gradient of W_down, so exactly every W_up and b_up and the head move.
    assert names_changed_by_one_step(model) == {n for n in expected if ".up." in n} | HEAD
    perturb(model.eval(), "t")
    assert not torch.allclose(hidden(model, batch), base, atol=1e-4)  # the identity above was not vacuous


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("kind", KINDS)
def test_fusion_counts_trains_only_fusion_and_head_and_changes_output(kind, placement):
    model, batch = classifier(kind), padded_batch()
    base = hidden(model, batch)
    config = A.AdapterConfig(placement=placement, reduction_factor=8)
    for seed, name in enumerate(["a", "b"]):
        A.add_adapter(model, name, config, seed=seed)
        perturb(model, name, seed=10 + seed)
    added = F.add_fusion(model, ["a", "b"], num_labels=4)
    name = F.fusion_name(["a", "b"])
    points = model.backbone.config.num_hidden_layers * PLACEMENTS[placement]
    assert len(added) == points and all(isinstance(layer, F.FusionLayer) for layer in added.values())
    assert F.fusion_parameters(model, name) == F.fusion_parameter_count(model, ["a", "b"]) \
        == points * F.fusion_layer_parameter_count(32)
    assert not torch.allclose(hidden(model, batch), base, atol=1e-4)  # the fused adapters act
    expected = parameter_names(model, added) | HEAD
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    changed = names_changed_by_one_step(model)
    assert HEAD | {n for n in expected if n.endswith("value.weight")} <= changed <= expected
