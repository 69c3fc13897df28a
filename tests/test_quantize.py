"""The 4-bit base (peft_teach.quantize): NF4 bit for bit against bitsandbytes, int8, and LoRA on top (QLoRA)."""

from __future__ import annotations

import bitsandbytes.functional as bnb
import pytest
import torch
from torch import nn

from peft_teach import quantize
from peft_teach.methods import lora
from peft_teach.models import build_classifier


def weights(rows: int = 384, columns: int = 1536, seed: int = 0) -> torch.Tensor:
    return 0.05 * torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def minilm_layer() -> nn.Linear:
    return build_classifier(2).backbone.encoder.layer[0].intermediate.dense  # real weights, 384 -> 1536


def test_the_nf4_code_derived_from_the_normal_distribution_is_the_published_one():
    published = bnb.get_4bit_type("nf4", device="cpu")
    assert torch.equal(torch.tensor(quantize.NF4_VALUES), published)
    assert torch.allclose(quantize.nf4_code(), published, atol=2e-7, rtol=0)  # the paper rounds one probability
    assert (quantize.nf4_code() == 0).sum() == 1 and quantize.nf4_code()[[0, -1]].tolist() == [-1.0, 1.0]


def test_nf4_equals_bitsandbytes_bit_for_bit():
    weight = weights()
    ours = quantize.quantize(weight, "nf4")
    packed, state = bnb.quantize_4bit(weight, blocksize=quantize.BLOCK, quant_type="nf4")
    assert torch.equal(ours.absmax, state.absmax)
    assert torch.equal(ours.data, packed.reshape(-1))  # the same index for every value, packed the same way
    assert torch.equal(quantize.dequantize(ours), bnb.dequantize_4bit(packed, state))


def test_on_every_minilm_layer_nf4_differs_from_bitsandbytes_only_at_ties():
    """Both pick the nearest code value; a value within float rounding of the midpoint between two may go either way."""
    differing, total = 0, 0
    midpoints = (torch.tensor(quantize.NF4_VALUES)[1:] + torch.tensor(quantize.NF4_VALUES)[:-1]) / 2
    for layer in build_classifier(2).backbone.modules():
        if isinstance(layer, nn.Linear):
            weight = layer.weight.detach()
            packed, state = bnb.quantize_4bit(weight, blocksize=quantize.BLOCK, quant_type="nf4")
            ours = quantize.quantize(weight, "nf4")
            assert torch.equal(ours.absmax, state.absmax)
            other = (quantize.dequantize(ours) != bnb.dequantize_4bit(packed, state)).reshape(-1, quantize.BLOCK)
            scaled = weight.reshape(-1, quantize.BLOCK) / ours.absmax[:, None]
            assert ((scaled[other][:, None] - midpoints).abs().min(-1).values < 1e-6).all()
            differing, total = differing + int(other.sum()), total + weight.numel()
    assert total == 6 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 384 and differing <= 2  # with the pooler; measured: 1


def test_nf4_picks_the_nearest_code_value():
    weight = weights(4, 64)
    restored = quantize.dequantize(quantize.quantize(weight, "nf4"))
    absmax = weight.reshape(-1, 64).abs().amax(1, keepdim=True)
    candidates = torch.tensor(quantize.NF4_VALUES)[None, :] * absmax.reshape(-1, 1, 1)  # every code value, in each block's scale
    best = (weight.reshape(-1, 64, 1) - candidates).abs().min(-1).values
    assert torch.allclose((weight - restored).abs().reshape(-1, 64), best, atol=1e-7)


def test_int8_rounds_to_half_a_step_at_most():
    weight = weights()
    restored = quantize.dequantize(quantize.quantize(weight, "int8"))
    step = weight.reshape(-1, 64).abs().amax(1, keepdim=True) / 127
    assert ((weight - restored).abs().reshape(-1, 64) <= step / 2 + 1e-8).all()
    assert quantize.relative_error(weight, "int8") < quantize.relative_error(weight, "nf4")  # 255 levels vs 16


def test_bytes_are_counted():
    quantized = quantize.quantize(weights(), "nf4")
    assert quantized.nbytes() == 384 * 1536 // 2 + 4 * 384 * 1536 // 64  # 4 bits a value + a float32 per block
    assert quantize.quantize(weights(), "int8").nbytes() == 384 * 1536 + 4 * 384 * 1536 // 64


def test_bad_input_says_what_to_do():
    with pytest.raises(ValueError, match="multiple of 64"):
        quantize.quantize(torch.ones(10, 10))
    with pytest.raises(ValueError, match="nf4"):
        quantize.quantize(weights(), "fp4")


def test_a_quantized_layer_computes_with_its_dequantized_weight(minilm_layer):
    layer = quantize.QuantizedLinear(minilm_layer, "nf4")
    x = torch.randn(3, 5, 384)
    expected = nn.functional.linear(x, quantize.dequantize(quantize.quantize(minilm_layer.weight, "nf4")),
                                    minilm_layer.bias)
    assert torch.equal(layer(x), expected)
    assert list(layer.parameters()) == []  # nothing in it can train


def test_a_quantized_layer_keeps_nothing_for_backward_but_passes_the_gradient(minilm_layer):
    layer = quantize.QuantizedLinear(minilm_layer, "nf4")
    x = torch.randn(3, 5, 384, requires_grad=True)
    weight = layer.dequantized_weight()
    reference_x = x.detach().clone().requires_grad_(True)
    (nn.functional.linear(reference_x, weight, layer.bias) ** 2).sum().backward()
    (layer(x) ** 2).sum().backward()
    assert torch.allclose(x.grad, reference_x.grad, atol=1e-6)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer(torch.randn(3, 5, 384, requires_grad=True)).sum()
    assert saved == []  # through nn.functional.linear, autograd would keep the float32 weight


def test_qlora_trains_only_a_and_b_on_a_4_bit_base():
    model = build_classifier(2, seed=0)
    fp32_bytes = quantize.stored_bytes(model)
    replaced = quantize.quantize_linear_layers(model, "nf4")
    assert len(replaced) == 6 * 6 + 1  # q, k, v, attention output, intermediate, output in 6 layers; the pooler
    linear_values = sum(layer.in_features * layer.out_features for layer in replaced.values())
    assert fp32_bytes - quantize.stored_bytes(model) == 4 * linear_values - (linear_values // 2 + 4 * linear_values // 64)
    added = lora.add_lora(model, ("query", "value"), r=8)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if "lora_" in n or n.startswith("head.")}
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 2307, 102]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    nn.functional.cross_entropy(model(**batch), torch.tensor([1])).backward()
    assert all(layer.lora_A.grad is not None and layer.lora_B.grad.abs().sum() > 0 for layer in added.values())
    with pytest.raises(TypeError, match="dequantize_linear_layers"):
        lora.merge_lora(model)


def test_merging_after_dequantizing_keeps_the_outputs():
    model = build_classifier(2, seed=0).eval()
    quantize.quantize_linear_layers(model, "nf4")
    added = lora.add_lora(model, ("query", "value"), r=8)
    with torch.no_grad():
        for layer in added.values():
            layer.lora_B.normal_(0, 0.02)
    batch = {"input_ids": torch.tensor([[101, 2023, 2003, 2307, 102]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():
        before = model(**batch)
        quantize.dequantize_linear_layers(model)
        lora.merge_lora(model)
        assert torch.allclose(model(**batch), before, atol=1e-5)
