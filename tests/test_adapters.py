"""Unit tests of the from-scratch bottleneck adapters (tiny random BERT, no download)."""

from __future__ import annotations

import pytest
import torch

from tiny_models import padded_batch, hidden, perturb
from tiny_models import tiny_bert_classifier as tiny_model
from peft_teach import experiments
from peft_teach.measure import count_parameters
from peft_teach.methods import adapters as A
from peft_teach.models import IncompatibleBaseModelError

D, LAYERS = 32, 2  # the tiny model's hidden size and depth


@pytest.fixture
def batch():
    return padded_batch()


def test_module_is_identity_at_init_and_count_matches_formula():
    adapter = A.BottleneckAdapter(D, 4, seed=0)
    h = torch.randn(2, 5, D)
    assert torch.equal(adapter(h), h)
    assert count_parameters(adapter) == A.bottleneck_parameter_count(D, 4) == 2 * D * 4 + 4 + D
    assert adapter.down.weight.abs().sum() > 0  # only the up-projection is zero


def test_module_forward_is_skip_plus_bottleneck():
    adapter = A.BottleneckAdapter(D, 4, non_linearity="relu", scaling=0.5, seed=0)
    torch.nn.init.normal_(adapter.up.weight)
    h = torch.randn(2, 5, D)
    expected = h + 0.5 * (torch.relu(h @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T
                          + adapter.up.bias)
    assert torch.allclose(adapter(h), expected, atol=1e-6)


@pytest.mark.parametrize("placement, per_layer", [("pfeiffer", 1), ("houlsby", 2)])
def test_injection_identity_and_counts(batch, placement, per_layer):
    model = tiny_model()
    before = hidden(model, batch)
    config = A.AdapterConfig(placement=placement, reduction_factor=8)
    added = A.add_adapter(model, "t", config)
    assert torch.equal(hidden(model, batch), before)  # up = 0: exactly the base model
    m = D // 8
    assert len(added) == LAYERS * per_layer
    assert all(isinstance(a, A.BottleneckAdapter) and model.get_submodule(n) is a for n, a in added.items())
    assert A.adapter_parameters(model, "t") == LAYERS * per_layer * A.bottleneck_parameter_count(D, m)
    assert A.adapter_parameters(model, "t") == A.adapter_parameter_count(model, config)
    assert A.adapter_parameters(model, "t") == sum(count_parameters(a) for a in added.values())
    perturb(model, "t")
    assert not torch.allclose(hidden(model, batch), before)


def test_pfeiffer_placement_equation(batch):
    """y = LN(h + delta(LN(h + r)) + r) in the FFN output of every layer."""
    model = tiny_model()
    A.add_adapter(model, "t")
    perturb(model, "t")
    layer = model.backbone.encoder.layer[0].output
    x, r = torch.randn(2, 3, 2 * D), torch.randn(2, 3, D)
    h = layer.dense(x)
    expected = layer.LayerNorm(h + layer.adapters["t"].delta(layer.LayerNorm(h + r)) + r)
    assert torch.allclose(layer(x, r), expected, atol=1e-6)


def test_houlsby_placement_equation():
    model = tiny_model()
    A.add_adapter(model, "t", A.AdapterConfig(placement="houlsby"))
    perturb(model, "t")
    layer = model.backbone.encoder.layer[0].attention.output
    x, r = torch.randn(2, 3, D), torch.randn(2, 3, D)
    h = layer.dense(x)
    assert torch.allclose(layer(x, r), layer.LayerNorm(h + layer.adapters["t"].delta(h) + r), atol=1e-6)


def test_only_active_adapter_and_head_trainable_and_changed(batch):
    model = tiny_model()
    A.add_adapter(model, "a")
    A.add_adapter(model, "b")
    trainable_after_add = [n for n, p in model.named_parameters() if p.requires_grad]
    names = A.train_adapter(model, "b")
    assert names == trainable_after_add  # add_adapter already trains only the new adapter + its head
    assert names and all(".adapters.b." in n or n.startswith("head.") for n in names)
    assert any(n.startswith("head.") for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(**batch), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(names)
    assert any("adapters.b.up" in n for n in changed)


def test_parameter_reduction_on_default_shape():
    """The brief's numbers: d = 384, m = 24 -> 18,840 per layer, 113,040 for 6 layers."""
    assert A.AdapterConfig().bottleneck(384) == 24
    assert A.bottleneck_parameter_count(384, 24) == 18_840
    assert 6 * A.bottleneck_parameter_count(384, 24) == 113_040
    with torch.device("meta"):  # the default model's shape, without allocating its weights
        minilm = tiny_model(hidden=384, layers=6)
    assert A.adapter_parameter_count(minilm) == 113_040
    assert A.adapter_parameter_count(minilm, A.AdapterConfig(placement="houlsby")) == 2 * 113_040


def test_switching_adapters_changes_outputs_and_heads(batch):
    model = tiny_model()
    A.add_adapter(model, "a")
    A.add_adapter(model, "b", num_labels=5, seed=1)
    perturb(model, "a", seed=1)
    perturb(model, "b", seed=2)
    A.set_active(model, "a")
    out_a, logits_a = hidden(model, batch), model(**batch)
    A.set_active(model, "b")
    out_b, logits_b = hidden(model, batch), model(**batch)
    assert logits_a.shape[-1] == 3 and logits_b.shape[-1] == 5
    assert not torch.allclose(out_a, out_b)
    A.set_active(model, "a")
    assert torch.equal(hidden(model, batch), out_a)
    A.set_active(model, None)
    assert torch.equal(hidden(model, batch), hidden(tiny_model(), batch))


def test_unknown_adapter_name_lists_available():
    model = tiny_model()
    A.add_adapter(model, "sentiment")
    with pytest.raises(KeyError, match="Available adapters: \\['sentiment'\\]"):
        A.set_active(model, "sentimnet")
    with pytest.raises(ValueError, match="already exists"):
        A.add_adapter(model, "sentiment")


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="placement"):
        A.AdapterConfig(placement="middle")
    with pytest.raises(ValueError, match="reduction_factor"):
        A.AdapterConfig(reduction_factor=0)


def test_save_load_roundtrip(tmp_path, batch):
    model = tiny_model()
    added = A.add_adapter(model, "t", num_labels=4)
    perturb(model, "t")
    expected = model(**batch)
    A.save_adapter(model, "t", tmp_path / "t")
    assert (tmp_path / "t" / "weights.safetensors").is_file() and (tmp_path / "t" / "config.json").is_file()
    fresh = tiny_model()  # same base weights (same seed)
    loaded = A.load_adapter(fresh, tmp_path / "t")
    assert set(loaded) == set(added) and A.adapter_names(fresh) == ["t"]
    assert all(fresh.get_submodule(n) is a for n, a in loaded.items())
    assert torch.equal(fresh(**batch), expected)
    assert set(A.adapter_state_dict(fresh, "t")) == set(A.adapter_state_dict(model, "t"))


def test_load_into_wrong_base_is_refused(tmp_path):
    model = tiny_model()
    A.add_adapter(model, "t")
    A.save_adapter(model, "t", tmp_path / "t")
    other = tiny_model(layers=3)
    with pytest.raises(IncompatibleBaseModelError, match="num_hidden_layers"):
        A.load_adapter(other, tmp_path / "t")
    assert A.adapter_names(other) == []


def test_remove_adapter(batch):
    model = tiny_model()
    A.add_adapter(model, "t")
    A.remove_adapter(model, "t")
    assert A.adapter_names(model) == []
    assert all(not layer.adapters for layer in A.adapter_layers(model).values())
    assert set(model.state_dict()) == set(tiny_model().state_dict())  # the original modules are back
    assert torch.equal(hidden(model, batch), hidden(tiny_model(), batch))


class _WordTokenizer:
    """A whitespace tokenizer for the tiny vocabulary (no download)."""

    def __call__(self, texts, *args, max_length=16, **kwargs):
        texts = [texts] if isinstance(texts, str) else texts
        ids = [[5 + ord(word[0]) % 90 for word in text.split()][:max_length] for text in texts]
        width = max(map(len, ids))
        return {"input_ids": torch.tensor([row + [0] * (width - len(row)) for row in ids]),
                "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])}


def _tiny_data(flip: bool = False):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(num_classes=3)})
    rows = {"text": ["a b c", "d e", "f g h i", "j k"] * 4, "label": ([2, 1, 0, 0] if flip else [0, 1, 2, 0]) * 4}
    split = Dataset.from_dict(rows, features=features)
    return DatasetDict(train=split, validation=split)


def test_train_or_load_reuses_only_the_same_recipe(tmp_path, batch):
    settings = dict(epochs=1, lr=1e-2, batch_size=8, seed=0, device=torch.device("cpu"))
    first = tiny_model()
    train_or_load = experiments.train_or_load_adapter
    assert train_or_load(first, _WordTokenizer(), _tiny_data(), "t", tmp_path, **settings) == "trained"
    second = tiny_model()
    assert train_or_load(second, _WordTokenizer(), _tiny_data(), "t", tmp_path, **settings) == "loaded"
    assert torch.equal(second(**batch), first(**batch))
    other = tiny_model()  # other labels -> other data fingerprint -> retrain
    assert train_or_load(other, _WordTokenizer(), _tiny_data(flip=True), "t", tmp_path, **settings) == "trained"
