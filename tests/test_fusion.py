"""Unit tests of the from-scratch AdapterFusion (tiny random BERT, no download)."""

from __future__ import annotations

import pytest
import torch

from tiny_models import padded_batch, hidden, perturb
from tiny_models import tiny_bert_classifier as tiny_model
from peft_teach.measure import count_parameters
from peft_teach.methods import adapters as A
from peft_teach.methods import fusion as F
from peft_teach.methods.inject import trainable_names
from peft_teach.train import train

D, LAYERS = 32, 2  # the tiny model's hidden size and depth


@pytest.fixture
def batch():
    return padded_batch()


NAMES = ["a", "b", "c"]


def fused_model(names=NAMES):
    model = tiny_model()
    for i, name in enumerate(names):
        A.add_adapter(model, name, seed=i)
        perturb(model, name, seed=10 + i)
    added = F.add_fusion(model, names, num_labels=5)
    name = F.fusion_name(names)
    assert len(added) == LAYERS and all(isinstance(f, F.FusionLayer) for f in added.values())
    assert all(model.get_submodule(n) is f for n, f in added.items())
    assert list(added.values()) == F.fusion_layers(model, name)
    return model, name


def test_fusion_layer_formula():
    torch.manual_seed(0)
    layer = F.FusionLayer(D, NAMES, seed=0)
    torch.nn.init.normal_(layer.value.weight, std=0.2)
    h, z = torch.randn(2, 4, D), torch.randn(2, 4, 3, D)
    q, k, v = layer.query(h), layer.key(z), z @ layer.value.weight.T
    s = torch.softmax(torch.stack([(q * k[:, :, n]).sum(-1) for n in range(3)], -1), -1)
    expected = sum(s[..., n : n + 1] * v[:, :, n] for n in range(3))
    assert torch.allclose(layer(h, z), expected, atol=1e-5)


def test_value_starts_near_identity_and_count():
    layer = F.FusionLayer(D, NAMES)
    assert torch.allclose(layer.value.weight, torch.eye(D), atol=1e-6)
    assert not torch.equal(layer.value.weight, torch.eye(D))  # + 1e-6 off the diagonal
    assert layer.value.bias is None and layer.query.bias is not None
    assert count_parameters(layer) == F.fusion_layer_parameter_count(D) == 3 * D * D + 2 * D


def test_brief_counts_for_minilm():
    assert F.fusion_layer_parameter_count(384) == 443_136
    assert 6 * F.fusion_layer_parameter_count(384) == 2_658_816


@pytest.mark.parametrize("n", [1, 2, 3])
def test_fusion_parameters_independent_of_n(n):
    model, name = fused_model(NAMES[:n])
    total = sum(count_parameters(f) for f in F.fusion_layers(model, name))
    assert total == LAYERS * F.fusion_layer_parameter_count(D)
    assert F.fusion_parameters(model, name) == F.fusion_parameter_count(model, NAMES[:n]) == total


def test_weights_sum_to_one_per_layer_and_example(batch):
    model, name = fused_model()
    weights = F.fusion_weights(model, name, batch)
    assert weights.shape == (4, LAYERS, 3)
    assert torch.allclose(weights.sum(-1), torch.ones(4, LAYERS), atol=1e-5)
    assert (weights > 0).all()


def test_single_adapter_fusion_equals_that_adapter_with_identity_value(batch):
    """With N = 1 the softmax is 1 and V = I: fusion must reproduce the adapter."""
    model, name = fused_model(["a"])
    for fusion in F.fusion_layers(model, name):
        with torch.no_grad():
            fusion.value.weight.copy_(torch.eye(D))
    fused = hidden(model, batch)
    A.set_active(model, "a")
    assert torch.allclose(fused, hidden(model, batch), atol=1e-5)
    F.set_active_fusion(model, name)
    assert torch.allclose(hidden(model, batch), fused)


def test_stage_two_changes_only_fusion_and_head(batch):
    model, name = fused_model()
    trainable_after_add = [n for n, p in model.named_parameters() if p.requires_grad]
    trainable = F.train_fusion(model, name)
    assert trainable == trainable_after_add  # add_fusion already trains only the fusion + its head
    assert all(".fusions." in n or n.startswith("head.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(**batch), torch.tensor([0, 1, 2, 4]))
    (loss + F.value_regularization(name)(model)).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= set(trainable)
    assert any("fusions" in n and "query" in n for n in changed)
    assert any(n.startswith("head.") for n in changed)
    assert not any(".adapters." in n for n in changed)


def test_value_regularisation_is_zero_at_identity_and_grows():
    model, name = fused_model()
    reg = F.value_regularization(name, weight=0.01)
    small = reg(model).item()
    assert 0 < small < 1e-6  # only the 1e-6 off-diagonal entries
    with torch.no_grad():
        F.fusion_layers(model, name)[0].value.weight.add_(0.1)
    assert reg(model).item() == pytest.approx(small + 0.01 * D * D * 0.01, rel=1e-2)


def test_mismatched_hidden_sizes_fail_clearly():
    adapters = {"small": A.BottleneckAdapter(32, 4), "big": A.BottleneckAdapter(48, 4)}
    with pytest.raises(ValueError, match="different hidden sizes"):
        F.check_fusable(adapters)


def test_mixed_placements_and_unknown_names_fail_clearly():
    model = tiny_model()
    A.add_adapter(model, "a")
    with pytest.raises(KeyError, match="Available adapters"):
        F.add_fusion(model, ["a", "nope"])
    with pytest.raises(KeyError, match="Available fusions"):
        F.set_active_fusion(model, "Fuse[x]")


def test_add_and_remove_adapter_from_fusion(batch):
    model, name = fused_model()
    F.remove_fusion(model, name)
    F.add_fusion(model, ["a", "b"], num_labels=5)
    smaller = F.fusion_name(["a", "b"])
    assert F.fusion_weights(model, smaller, batch).shape[-1] == 2
    assert F.fusion_names(model) == [smaller]


def test_extra_loss_works_with_train_loop():
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    class Tok:  # a whitespace "tokenizer" for the tiny vocabulary
        def __call__(self, texts, *args, max_length=16, **kwargs):
            ids = [[5 + ord(w[0]) % 90 for w in t.split()][:max_length] for t in texts]
            width = max(map(len, ids))
            return {"input_ids": torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                    "attention_mask": torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])}

    features = Features({"text": Value("string"), "label": ClassLabel(num_classes=5)})
    rows = {"text": ["a b c", "d e", "f g h i", "j"] * 4, "label": [0, 1, 2, 3] * 4}
    data = DatasetDict(train=Dataset.from_dict(rows, features=features))
    model, name = fused_model()
    F.train_fusion(model, name)
    history = train(model, Tok(), data, epochs=1, batch_size=8, eval_split=None,
                    extra_loss=F.value_regularization(name), device=torch.device("cpu"))
    assert len(history.train_loss) == 2
    assert history.trainable_parameters == LAYERS * F.fusion_layer_parameter_count(D) + D * 5 + 5


def test_averaging_baseline_weights_every_adapter_equally_and_trains_only_the_head():
    model = tiny_model()
    for name in ("a", "b", "c"):
        A.add_adapter(model, name, seed=len(name))
        perturb(model, name, seed=ord(name))
    F.add_fusion(model, ["a", "b", "c"])
    F.average_adapters(model, "Fuse[a,b,c]")
    weights = F.fusion_weights(model, "Fuse[a,b,c]", padded_batch())
    assert torch.allclose(weights, torch.full_like(weights, 1 / 3))
    assert trainable_names(model) == ["head.weight", "head.bias"]
