"""Parity of our LoRA with the ``peft`` library, on the same weights.

Both implementations get identical A and B (copied across, B non-zero so the LoRA
path matters); their logits must match to float precision. Then both directions
of the on-disk format: our export loads in peft, peft's save loads in ours.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from peft_teach.methods.lora import (add_lora, export_to_peft, import_from_peft, load_lora, lora_layers,
                                     lora_parameter_count, lora_parameters, loraplus_parameter_groups, merge_lora,
                                     save_lora, unmerge_lora)
from peft_teach.models import SequenceClassifier

peft = pytest.importorskip("peft")

# transformers 5 warns about a deprecated attribute that peft reads; not our code.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def tiny_bert() -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, attn_implementation="eager")
    return BertModel(config).eval()


def tiny_gpt2() -> GPT2Model:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0,
                        attn_implementation="eager")
    return GPT2Model(config).eval()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def peft_lora(encoder: nn.Module, targets, r=4, alpha=8, **kwargs):
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, **kwargs)
    return peft.get_peft_model(encoder, config)


def peft_layers(peft_model) -> dict[str, nn.Module]:
    """peft's LoRA layers by their name inside the original (unwrapped) model."""
    from peft.tuners.lora import LoraLayer

    return {name.removeprefix("base_model.model."): module for name, module in peft_model.named_modules()
            if isinstance(module, LoraLayer)}


def ours_and_peft(encoder_factory, targets, rslora=False, dora=False):
    """A classifier with our LoRA and one with peft's, same base, head, A and B (and DoRA magnitude)."""
    ours = SequenceClassifier(encoder_factory(), 3).eval()
    theirs = SequenceClassifier(encoder_factory(), 3).eval()
    theirs.head.load_state_dict(ours.head.state_dict())
    add_lora(ours, targets=targets, r=4, alpha=8, rslora=rslora, dora=dora)
    fan_in_fan_out = encoder_factory is tiny_gpt2
    theirs.backbone = peft_lora(theirs.backbone, targets, fan_in_fan_out=fan_in_fan_out, use_rslora=rslora,
                                use_dora=dora)
    generator = torch.Generator().manual_seed(5)
    references = peft_layers(theirs.backbone)
    assert len(references) == len(lora_layers(ours)) > 0
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)
            reference = references[name.removeprefix("backbone.")]
            reference.lora_A["default"].weight.copy_(layer.lora_A)
            reference.lora_B["default"].weight.copy_(layer.lora_B)
            if dora:  # lengths away from their start, so the magnitude matters too
                layer.lora_magnitude.mul_(1 + 0.2 * torch.rand(layer.lora_magnitude.shape, generator=generator))
                reference.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)
    return ours, theirs


@pytest.mark.parametrize("factory, targets", [(tiny_bert, ("query", "value")), (tiny_gpt2, ("c_attn",))])
def test_logits_match_peft(factory, targets):
    ours, theirs = ours_and_peft(factory, targets)
    base = SequenceClassifier(factory(), 3).eval()
    base.head.load_state_dict(ours.head.state_dict())
    with torch.no_grad():
        ours_logits, peft_logits, base_logits = ours(**batch()), theirs(**batch()), base(**batch())
    assert (ours_logits - base_logits).abs().max() > 1e-3  # the LoRA path really matters
    assert (ours_logits - peft_logits).abs().max() <= 1e-6
    merge_lora(ours)
    with torch.no_grad():
        assert (ours(**batch()) - ours_logits).abs().max() <= 1e-5


def test_parameter_count_matches_peft_on_default_model():
    from peft_teach.models import load_base_model

    ours = load_base_model()
    add_lora(ours, r=8, alpha=16)
    theirs = peft_lora(load_base_model(), ["query", "value"], r=8, alpha=16)
    ours_count = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    peft_count, _ = theirs.get_nb_trainable_parameters()
    assert ours_count == peft_count == 2 * 12 * 384 * 8 == 73_728


def test_export_loads_in_peft(tmp_path):
    ours, _ = ours_and_peft(tiny_bert, ("query", "value"))
    export_to_peft(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    loaded = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path)
    theirs = SequenceClassifier(loaded, 3).eval()
    # the head travels beside the adapter (peft's model has no head)
    from safetensors.torch import load_file

    theirs.head.load_state_dict({k.removeprefix("head."): v for k, v in
                                 load_file(tmp_path / "classifier_head.safetensors").items()})
    with torch.no_grad():
        assert (theirs(**batch()) - ours(**batch())).abs().max() <= 1e-6


def test_import_from_peft_checkpoint(tmp_path):
    ours, theirs = ours_and_peft(tiny_bert, ("query", "value"))
    theirs.backbone.save_pretrained(tmp_path)  # peft's own writer
    fresh = SequenceClassifier(tiny_bert(), 3).eval()
    fresh.head.load_state_dict(ours.head.state_dict())
    import_from_peft(fresh, tmp_path)
    assert set(lora_layers(fresh)) == set(lora_layers(ours))
    with torch.no_grad():
        assert (fresh(**batch()) - theirs(**batch())).abs().max() <= 1e-6


def test_round_trip_through_peft_format_keeps_head(tmp_path):
    ours, _ = ours_and_peft(tiny_bert, ("query", "value"))
    with torch.no_grad():
        ours.head.weight.mul_(3.0)
    export_to_peft(ours, tmp_path)
    fresh = SequenceClassifier(tiny_bert(), 3).eval()
    import_from_peft(fresh, tmp_path)
    with torch.no_grad():
        assert (fresh(**batch()) - ours(**batch())).abs().max() <= 1e-6
    copy.deepcopy(fresh)  # a loaded model is an ordinary module


def test_benchmark_compares_identical_models_and_reports_ratios(tokenizer):
    from peft_teach.benchmark import benchmark_lora, benchmark_report
    from peft_teach.data import load_task
    from peft_teach.train import make_loader

    batch = next(iter(make_loader(load_task("sentiment")["validation"].select(range(4)), tokenizer, batch_size=4)))
    results = benchmark_lora(batch, rounds=1, repeats=1)
    assert results["logits_max_abs_diff_ours_vs_peft"] <= 1e-6
    assert results["logits_max_abs_diff_merged_vs_unmerged"] <= 1e-5
    assert results["train_ratio_ours_over_peft"] == results["train_step_ours_s"] / results["train_step_peft_s"]
    assert all(results[key] > 0 for key in ("train_step_ours_s", "latency_base_s", "latency_merged_s"))
    report = benchmark_report(results)
    assert "ours / peft" in report and "merged / base" in report


# --------------------------------------------------------------------------- rsLoRA, DoRA, LoRA+

VARIANTS = [pytest.param({"rslora": True}, id="rslora"), pytest.param({"dora": True}, id="dora"),
            pytest.param({"rslora": True, "dora": True}, id="rslora+dora")]


def trainable_name(name: str) -> str:
    """A LoRA tensor's name in our layout, from ours or from peft's (``.default.weight``, ``_vector`` dropped)."""
    name = name.replace("base_model.model.", "").replace(".default.weight", "").replace(".default", "")
    return name.replace("lora_magnitude_vector", "lora_magnitude")


def trainable_gradients(model) -> dict[str, torch.Tensor]:
    """Gradients of the LoRA tensors, by :func:`trainable_name`."""
    return {trainable_name(name): p.grad for name, p in model.named_parameters() if p.requires_grad and "lora_" in name}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("factory, targets", [(tiny_bert, ("query", "value")), (tiny_gpt2, ("c_attn",))])
def test_variants_match_peft_on_logits_gradients_and_merge(factory, targets, variant):
    ours, theirs = ours_and_peft(factory, targets, **variant)
    plain, _ = ours_and_peft(factory, targets)  # the same A and B without the variant
    with torch.no_grad():
        plain_logits = plain(**batch())
    ours_logits, peft_logits = ours(**batch()), theirs(**batch())
    assert (ours_logits - plain_logits).abs().max() > 1e-4  # the variant changes the model
    assert (ours_logits - peft_logits).abs().max() <= 1e-5
    weights = torch.randn(ours_logits.shape, generator=torch.Generator().manual_seed(3))
    (ours_logits * weights).sum().backward()
    (peft_logits * weights).sum().backward()
    ours_grads, peft_grads = trainable_gradients(ours.backbone), trainable_gradients(theirs.backbone)
    assert set(ours_grads) == set(peft_grads) and len(ours_grads) == len(lora_layers(ours)) * (2 + bool(
        variant.get("dora")))
    for name, grad in ours_grads.items():
        assert torch.allclose(grad, peft_grads[name], atol=1e-6, rtol=1e-4), name
    merge_lora(ours)
    with torch.no_grad():
        assert (ours(**batch()) - ours_logits).abs().max() <= 1e-5


def test_dora_starts_as_the_base_model_and_unmerges_back():
    base = SequenceClassifier(tiny_bert(), 3).eval()
    ours = copy.deepcopy(base)
    added = add_lora(ours, targets=("query", "value"), r=4, alpha=8, dora=True)
    with torch.no_grad():
        assert (ours(**batch()) - base(**batch())).abs().max() <= 1e-6  # B = 0 and m = ||W0||
        for layer in added.values():
            layer.lora_B.normal_(std=0.1)
            layer.lora_magnitude.mul_(1.5)
        before = ours(**batch())
        weights = {name: layer.base_layer.weight.clone() for name, layer in added.items()}
        merge_lora(ours)
        assert (ours(**batch()) - before).abs().max() <= 1e-5
        unmerge_lora(ours)  # DoRA's merged change depends on W0: taken out exactly as it was put in
        for name, layer in added.items():
            assert (layer.base_layer.weight - weights[name]).abs().max() <= 1e-6


def test_dora_and_rslora_counts_match_peft_on_default_model():
    from peft_teach.models import load_base_model

    ours = load_base_model()
    add_lora(ours, r=8, alpha=16, dora=True)
    theirs = peft_lora(load_base_model(), ["query", "value"], r=8, alpha=16, use_dora=True)
    peft_count, _ = theirs.get_nb_trainable_parameters()
    assert lora_parameters(ours) == peft_count == lora_parameter_count(load_base_model(), r=8, dora=True)
    assert peft_count == 12 * (8 * (384 + 384) + 384) == 78_336  # 12 matrices: A, B and 384 lengths each
    assert lora_parameters(ours) == sum(p.numel() for p in ours.parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_travel_both_ways_through_the_peft_format(tmp_path, variant):
    ours, theirs = ours_and_peft(tiny_bert, ("query", "value"), **variant)
    export_to_peft(ours, tmp_path / "ours")
    loaded = SequenceClassifier(peft.PeftModel.from_pretrained(tiny_bert(), tmp_path / "ours"), 3).eval()
    loaded.head.load_state_dict(ours.head.state_dict())
    theirs.backbone.save_pretrained(tmp_path / "peft")
    imported = SequenceClassifier(tiny_bert(), 3).eval()
    imported.head.load_state_dict(ours.head.state_dict())
    import_from_peft(imported, tmp_path / "peft")
    with torch.no_grad():
        expected = ours(**batch())
        assert (loaded(**batch()) - expected).abs().max() <= 1e-5
        assert (imported(**batch()) - expected).abs().max() <= 1e-5
    first = next(iter(lora_layers(imported).values()))
    assert (first.rslora, first.dora) == (variant.get("rslora", False), variant.get("dora", False))


def test_dora_checkpoint_round_trip(tmp_path):
    ours, _ = ours_and_peft(tiny_bert, ("query", "value"), rslora=True, dora=True)
    save_lora(ours, tmp_path / "dora")
    fresh = SequenceClassifier(tiny_bert(), 3).eval()
    load_lora(fresh, tmp_path / "dora")
    with torch.no_grad():
        assert (fresh(**batch()) - ours(**batch())).abs().max() == 0


@pytest.mark.parametrize("dora", [False, True])
def test_loraplus_groups_match_peft(dora):
    from peft.optimizers import create_loraplus_optimizer

    ours, theirs = ours_and_peft(tiny_bert, ("query", "value"), dora=dora)
    optimizer = create_loraplus_optimizer(theirs.backbone, torch.optim.AdamW, lr=1e-4, loraplus_lr_ratio=16)
    by_name = {id(p): n for n, p in theirs.backbone.named_parameters()}
    peft_groups = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            peft_groups[trainable_name(by_name[id(parameter)])] = group["lr"]
    ours_names = {id(p): n for n, p in ours.backbone.named_parameters()}
    ours_groups = {ours_names[id(p)]: group["lr"] for group in loraplus_parameter_groups(ours.backbone, 1e-4, 16)
                   for p in group["params"]}
    assert ours_groups == peft_groups
    assert sorted(set(ours_groups.values())) == [1e-4, 1.6e-3]
    assert all(lr == 1.6e-3 for name, lr in ours_groups.items() if name.endswith("lora_B"))

