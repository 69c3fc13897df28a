"""Our from-scratch adapters and fusion vs AdapterHub ``adapters`` on the same weights.

Run in the AdapterHub environment:

    .venv-adapterhub/bin/python -m pytest tests/adapterhub -q

Both sides start from the packaged all-MiniLM-L6-v2. We give AdapterHub's
adapters large random weights (so the adapters change the output a lot), copy
them into ours, and compare the encoder outputs in eval mode.
"""

from __future__ import annotations

import pytest

adapters = pytest.importorskip("adapters")  # a clean skip wherever `adapters` is missing

import torch  # noqa: E402
from adapters import DoubleSeqBnConfig, Fuse, SeqBnConfig  # noqa: E402

from peft_teach.methods import adapters as ours  # noqa: E402
from peft_teach.methods import fusion as our_fusion  # noqa: E402
from peft_teach.models import load_base_model, load_tokenizer  # noqa: E402

TOL = 1e-5
TEXTS = ["The waiter did not seem friendly, but the soup was superb.",
         "Check-in was quick.", "Although the price tag was steep, the battery proved excellent."]
NAMES = ["sentiment", "aspect", "topic"]


@pytest.fixture(scope="module")
def batch():
    return load_tokenizer()(TEXTS, padding=True, return_tensors="pt")


def _randomise(model: torch.nn.Module, keyword: str, seed: int, std: float = 0.1) -> None:
    """Large random values for every parameter whose name contains ``keyword``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if keyword in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def _copy_adapter(hub_model, our_model, name: str) -> None:
    """AdapterHub names: ...output.adapters.NAME.adapter_down.0 / adapter_up."""
    hub = dict(hub_model.named_parameters())
    for layer_name, layer in ours.adapter_layers(our_model).items():
        adapter = layer.adapters[name]
        prefix = f"{layer_name}.adapters.{name}"
        with torch.no_grad():
            adapter.down.weight.copy_(hub[f"{prefix}.adapter_down.0.weight"])
            adapter.down.bias.copy_(hub[f"{prefix}.adapter_down.0.bias"])
            adapter.up.weight.copy_(hub[f"{prefix}.adapter_up.weight"])
            adapter.up.bias.copy_(hub[f"{prefix}.adapter_up.bias"])


def _outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(**batch).last_hidden_state


@pytest.mark.parametrize("placement, hub_config", [
    ("pfeiffer", SeqBnConfig(reduction_factor=16)),
    ("houlsby", DoubleSeqBnConfig(reduction_factor=16, non_linearity="relu")),
])
def test_single_adapter_matches_adapterhub(batch, placement, hub_config):
    base = _outputs(load_base_model(), batch)
    hub_model = load_base_model()
    adapters.init(hub_model)
    hub_model.add_adapter("sentiment", config=hub_config)
    hub_model.set_active_adapters("sentiment")
    _randomise(hub_model, "adapters.sentiment", seed=1)
    our_model = load_base_model()
    ours.add_adapter(our_model, "sentiment", ours.AdapterConfig(placement=placement))
    _copy_adapter(hub_model, our_model, "sentiment")

    hub_out, our_out = _outputs(hub_model, batch), _outputs(our_model, batch)
    n_hub = sum(p.numel() for n, p in hub_model.named_parameters() if "adapters.sentiment" in n)
    assert ours.adapter_parameters(our_model, "sentiment") == n_hub
    assert (hub_out - base).abs().max() > 0.1, "the adapter should change the output (else the test proves nothing)"
    diff = (our_out - hub_out).abs().max().item()
    print(f"{placement}: max abs diff vs AdapterHub = {diff:.2e}")
    assert diff <= TOL


def test_fusion_matches_adapterhub_dynamic(batch):
    hub_model = load_base_model()
    adapters.init(hub_model)
    our_model = load_base_model()
    for seed, name in enumerate(NAMES):
        hub_model.add_adapter(name, config=SeqBnConfig(reduction_factor=16))
        _randomise(hub_model, f"adapters.{name}.", seed=10 + seed)
        ours.add_adapter(our_model, name)
        _copy_adapter(hub_model, our_model, name)
    hub_model.add_adapter_fusion(Fuse(*NAMES), "dynamic")
    hub_model.set_active_adapters(Fuse(*NAMES))
    # Random Q, K (BERT-init scale) and a V away from the identity, so every part of
    # the formula matters. Much larger Q, K make the softmax so sharp that float32
    # rounding alone reaches ~1e-4 (the float64 comparison below shows the formulas agree).
    _randomise(hub_model, "adapter_fusion_layer", seed=99, std=0.02)
    with torch.no_grad():
        for name, parameter in hub_model.named_parameters():
            if "adapter_fusion_layer" in name and name.endswith("value.weight"):
                parameter.add_(torch.eye(parameter.shape[0]))
    fuse = our_fusion.add_fusion(our_model, NAMES)
    hub = dict(hub_model.named_parameters())
    key = ",".join(NAMES)
    for layer_name, layer in ours.adapter_layers(our_model).items():
        fusion = layer.fusions[fuse]
        with torch.no_grad():
            for part in ("query", "key", "value"):
                getattr(fusion, part).weight.copy_(hub[f"{layer_name}.adapter_fusion_layer.{key}.{part}.weight"])
            for part in ("query", "key"):
                getattr(fusion, part).bias.copy_(hub[f"{layer_name}.adapter_fusion_layer.{key}.{part}.bias"])

    n_hub = sum(p.numel() for n, p in hub_model.named_parameters() if "adapter_fusion_layer" in n)
    n_ours = sum(p.numel() for f in our_fusion.fusion_layers(our_model, fuse) for p in f.parameters())
    assert n_ours == n_hub == 6 * our_fusion.fusion_parameter_count(384) == 2_658_816

    hub_out, our_out = _outputs(hub_model, batch), _outputs(our_model, batch)
    ours.set_active(our_model, "sentiment")
    single = _outputs(our_model, batch)
    assert (hub_out - single).abs().max() > 0.05, "fusion should differ from a single adapter"
    diff = (our_out - hub_out).abs().max().item()
    print(f"fusion: max abs diff vs AdapterHub = {diff:.2e}")
    assert diff <= TOL
    our_fusion.set_active_fusion(our_model, fuse)
    diff64 = (_outputs(our_model.double(), batch) - _outputs(hub_model.double(), batch)).abs().max().item()
    print(f"fusion (float64): max abs diff vs AdapterHub = {diff64:.2e}")
    assert diff64 <= 1e-10
    our_model.float(), hub_model.float()

    # The per-layer attention weights agree too.
    with torch.no_grad():
        hub_model(**batch, output_adapter_fusion_attentions=True)
    our_weights = our_fusion.fusion_weights(our_model, fuse, dict(batch))   # (B, L, N) token-averaged
    assert our_weights.shape == (len(TEXTS), 6, 3)
    assert torch.allclose(our_weights.sum(-1), torch.ones(len(TEXTS), 6), atol=1e-5)


def test_value_regularisation_matches_adapterhub():
    hub_model = load_base_model()
    adapters.init(hub_model)
    our_model = load_base_model()
    for name in NAMES:
        hub_model.add_adapter(name, config=SeqBnConfig(reduction_factor=16))
        ours.add_adapter(our_model, name)
    hub_model.add_adapter_fusion(Fuse(*NAMES), "dynamic")
    hub_model.train_adapter_fusion(Fuse(*NAMES))
    _randomise(hub_model, "adapter_fusion_layer", seed=5, std=0.05)
    fuse = our_fusion.add_fusion(our_model, NAMES)
    key = ",".join(NAMES)
    hub = dict(hub_model.named_parameters())
    for layer_name, layer in ours.adapter_layers(our_model).items():
        with torch.no_grad():
            layer.fusions[fuse].value.weight.copy_(hub[f"{layer_name}.adapter_fusion_layer.{key}.value.weight"])
    expected = hub_model.get_fusion_regularization_loss().item()
    ours_loss = our_fusion.value_regularization(fuse)(our_model).item()
    assert abs(ours_loss - expected) <= 1e-4 * expected
