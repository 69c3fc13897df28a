"""Unit tests of peft_teach.methods.lora on tiny random-weight models (no download)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel
from transformers.pytorch_utils import Conv1D

from safetensors.torch import load_file

from peft_teach.methods.checkpoint import read_checkpoint
from peft_teach.methods.inject import UnknownModuleError
from peft_teach.methods.lora import (
    LoRALinear,
    add_lora,
    load_lora,
    lora_layers,
    lora_matrix_parameter_count,
    lora_parameter_count,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    save_lora,
    unmerge_lora,
)
from peft_teach.models import IncompatibleBaseModelError, SequenceClassifier

HIDDEN, LAYERS = 32, 2


def tiny_bert(hidden: int = HIDDEN, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=LAYERS, num_attention_heads=4,
                        intermediate_size=2 * hidden, attn_implementation="eager")
    return BertModel(config).eval()


def tiny_gpt2() -> GPT2Model:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=100, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0,
                        attn_implementation="eager")
    return GPT2Model(config).eval()


def tiny_llama() -> LlamaModel:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, attn_implementation="eager")
    return LlamaModel(config).eval()


def classifier(encoder: nn.Module | None = None) -> SequenceClassifier:
    return SequenceClassifier(encoder or tiny_bert(), num_labels=3).eval()


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0  # one padded row, so masking is exercised too
    return {"input_ids": ids, "attention_mask": mask}


def randomize_b(model: nn.Module, seed: int = 2) -> None:
    """Give every B a non-zero value, so the LoRA path really changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)


# ----------------------------------------------------------------------------- the layer


def test_layer_forward_equals_the_formula():
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, r=2, alpha=4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6)
    expected = x @ base.weight.T + base.bias + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)
    assert layer.lora_A.shape == (2, 6) and layer.lora_B.shape == (5, 2)


def test_a_init_is_kaiming_uniform_and_seeded():
    make = lambda seed: LoRALinear(nn.Linear(64, 16), r=8, generator=torch.Generator().manual_seed(seed))
    a1, a2, a3 = make(0).lora_A, make(0).lora_A, make(1).lora_A
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    bound = 1 / 64**0.5  # kaiming_uniform_(a=sqrt(5)) on fan_in 64
    assert a1.abs().max() <= bound and a1.abs().max() > 0.8 * bound
    assert torch.count_nonzero(make(0).lora_B) == 0


def test_dropout_only_on_the_lora_path():
    layer = LoRALinear(nn.Linear(8, 8), r=2, dropout=0.5).train()
    x = torch.randn(4, 8)
    # B = 0: dropout on the LoRA path cannot change anything
    torch.testing.assert_close(layer(x), layer.base_layer(x))
    with torch.no_grad():
        layer.lora_B.fill_(1.0)
    torch.manual_seed(0)
    first = layer(x)
    torch.manual_seed(1)
    assert not torch.equal(first, layer(x))  # random in training
    layer.eval()
    assert torch.equal(layer(x), layer(x))  # deterministic in eval


# ----------------------------------------------------------------------------- injection


def test_identity_at_init():
    model = classifier()
    before = model(**batch())
    add_lora(model, r=4, alpha=8)
    assert torch.equal(model(**batch()), before)


def test_only_lora_and_head_trainable_and_only_they_change():
    model = classifier()
    added = add_lora(model, r=4, alpha=8)
    assert list(added) == [f"backbone.encoder.layer.{i}.attention.self.{m}"
                           for i in range(LAYERS) for m in ("query", "value")]
    assert all(isinstance(layer, LoRALinear) and model.get_submodule(n) is layer for n, layer in added.items())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"backbone.encoder.layer.{i}.attention.self.{m}.lora_{x}"
                for i in range(LAYERS) for m in ("query", "value") for x in "AB"} | {"head.weight", "head.bias"}
    assert trainable == expected
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = nn.functional.cross_entropy(model(**batch()), torch.tensor([0, 1, 2]))
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # A gets no gradient in the very first step (B = 0), so it is allowed to stay put.
    assert {n for n in expected if not n.endswith("lora_A")} <= changed <= expected


def test_bare_automodel_trains_only_lora():
    model = tiny_bert()
    add_lora(model, targets=["query"], r=2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == [f"encoder.layer.{i}.attention.self.query.lora_{x}" for i in range(LAYERS) for x in "AB"]


def test_parameter_count_equals_formula():
    model = classifier()
    formula = lora_parameter_count(model, ["query", "value"], r=4)  # from the config, before adding
    add_lora(model, targets=["query", "value"], r=4)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == 2 * (2 * LAYERS) * HIDDEN * 4 == 1024
    assert lora_matrix_parameter_count(HIDDEN, HIDDEN, 4) * 2 * LAYERS == lora
    assert formula == lora_parameters(model) == lora


def test_default_model_count_is_73728():
    from peft_teach.models import build_classifier

    model = build_classifier(2)
    formula = lora_parameter_count(model, r=8)
    add_lora(model, r=8, alpha=16)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == 2 * 12 * 384 * 8 == 73_728 == formula == lora_parameters(model)


def test_seed_makes_injection_reproducible():
    a, b, c = classifier(), classifier(), classifier()
    add_lora(a, seed=3), add_lora(b, seed=3), add_lora(c, seed=4)
    first = lambda m: next(iter(lora_layers(m).values())).lora_A
    assert torch.equal(first(a), first(b)) and not torch.equal(first(a), first(c))


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("r, alpha, match", [(0, 16, "rank r must be a positive"), (-2, 16, "rank r"),
                                             (2.5, 16, "rank r"), (8, 0, "alpha must be positive")])
def test_bad_rank_or_alpha(r, alpha, match):
    with pytest.raises(ValueError, match=match):
        add_lora(classifier(), r=r, alpha=alpha)


def test_unknown_target_lists_available_names():
    with pytest.raises(UnknownModuleError, match=r"qurey.*Available module names.*'query'"):
        add_lora(classifier(), targets=["qurey"])


def test_adding_twice_is_refused():
    model = classifier()
    add_lora(model)
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model)


# ----------------------------------------------------------------------------- merging


def test_merge_unmerge_exact_and_idempotent():
    model = classifier()
    add_lora(model, r=4, alpha=8)
    randomize_b(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer.weight" in n}
    unmerged = model(**batch())
    merge_lora(model)
    merged_once = model(**batch())
    weights_once = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer.weight" in n}
    merge_lora(model)  # second merge: nothing more happens
    assert all(torch.equal(p, weights_once[n]) for n, p in model.named_parameters() if n in weights_once)
    torch.testing.assert_close(merged_once, unmerged, atol=1e-5, rtol=0)
    assert not torch.equal(weights_once[next(iter(weights))], weights[next(iter(weights))])
    unmerge_lora(model)
    unmerge_lora(model)
    for name, parameter in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(parameter, weights[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(**batch()), unmerged, atol=1e-5, rtol=0)


def test_merged_forward_skips_the_lora_path():
    layer = LoRALinear(nn.Linear(4, 4), r=2)
    with torch.no_grad():
        layer.lora_B.fill_(1.0)
    layer.merge()
    with torch.no_grad():
        layer.lora_B.fill_(100.0)  # would change the output if the path still ran
    x = torch.randn(2, 4)
    torch.testing.assert_close(layer(x), layer.base_layer(x))


# ----------------------------------------------------------------------------- other architectures


def test_gpt2_conv1d_fused_c_attn():
    model = tiny_gpt2()
    before = model(**batch()).last_hidden_state
    formula = lora_parameter_count(model, ["c_attn"], r=4)  # from the config, before adding
    added = add_lora(model, targets=["c_attn"], r=4, alpha=4)
    assert isinstance(next(iter(added.values())).base_layer, Conv1D)
    assert torch.equal(model(**batch()).last_hidden_state, before)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == LAYERS * lora_matrix_parameter_count(HIDDEN, 3 * HIDDEN, 4) == 1024
    assert lora_parameters(model) == formula == lora
    randomize_b(model)
    unmerged = model(**batch()).last_hidden_state
    assert not torch.allclose(unmerged, before, atol=1e-3)
    merge_lora(model)
    torch.testing.assert_close(model(**batch()).last_hidden_state, unmerged, atol=1e-5, rtol=0)


def test_llama_q_v_proj():
    model = tiny_llama()
    before = model(**batch()).last_hidden_state
    formula = lora_parameter_count(model, ["q_proj", "v_proj"], r=2)  # from the config, before adding
    add_lora(model, targets=["q_proj", "v_proj"], r=2, alpha=4)
    assert torch.equal(model(**batch()).last_hidden_state, before)
    # grouped-query attention: v_proj is 32 -> 16 (2 KV heads of 8)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == LAYERS * (lora_matrix_parameter_count(32, 32, 2) + lora_matrix_parameter_count(32, 16, 2)) == 448
    assert lora_parameters(model) == formula == lora
    randomize_b(model)
    unmerged = model(**batch()).last_hidden_state
    merge_lora(model)
    torch.testing.assert_close(model(**batch()).last_hidden_state, unmerged, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- save / load


def test_state_dict_holds_only_lora_and_head(tmp_path):
    model = classifier()
    add_lora(model, r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    # names inside the backbone: the LoRA tensors are exactly the trainable ones but the head
    assert {f"backbone.{n}" for n in lora_state_dict(model)} == trainable - {"head.weight", "head.bias"}
    # the checkpoint holds exactly the trainable tensors (names relative to the backbone)
    save_lora(model, tmp_path / "lora")
    assert set(load_file(tmp_path / "lora" / "weights.safetensors")) == {n.removeprefix("backbone.") for n in trainable}


def test_save_load_round_trip(tmp_path):
    model = classifier()
    add_lora(model, r=4, alpha=8)
    randomize_b(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    expected = model(**batch())
    path = save_lora(model, tmp_path / "lora")
    assert path == tmp_path / "lora"
    assert (path / "weights.safetensors").stat().st_size < 20_000  # A, B and the head only, not the whole model
    config, _ = read_checkpoint(path, "lora", model)
    assert (config["r"], config["alpha"], config["dropout"]) == (4, 8, 0.0)
    assert config["targets"] == [f"encoder.layer.{i}.attention.self.{m}"
                                 for i in range(LAYERS) for m in ("query", "value")]
    fresh = classifier()  # same seed -> same base weights, fresh head, no LoRA yet
    assert not torch.allclose(fresh(**batch()), expected, atol=1e-3)
    loaded = load_lora(fresh, path)
    assert set(loaded) == set(lora_layers(model))
    torch.testing.assert_close(fresh(**batch()), expected, atol=1e-6, rtol=0)
    assert sum(p.numel() for p in fresh.parameters() if p.requires_grad) == 1024 + 3 * HIDDEN + 3


def test_load_into_wrong_base_model_is_refused(tmp_path):
    model = classifier()
    add_lora(model, r=4)
    path = save_lora(model, tmp_path / "lora")
    other = classifier(tiny_bert(hidden=48))
    with pytest.raises(IncompatibleBaseModelError, match=r"another base model.*'hidden_size': \(32, 48\)"):
        load_lora(other, path)
    assert not lora_layers(other)  # nothing was added


def test_saving_merged_model_is_refused(tmp_path):
    model = classifier()
    add_lora(model)
    merge_lora(model)
    with pytest.raises(ValueError, match="Unmerge first"):
        save_lora(model, tmp_path / "x")
