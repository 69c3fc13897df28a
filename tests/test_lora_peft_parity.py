"""Parity of our LoRA with the ``peft`` library, on the same weights.

Both implementations get identical A and B (copied across, B non-zero so the LoRA
path matters); their logits must match to float precision. Then both directions
of the on-disk format: our export loads in peft, peft's save loads in ours.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from peft_teach.methods.lora import add_lora, export_to_peft, import_from_peft, lora_layers, merge_lora
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


def ours_and_peft(encoder_factory, targets):
    """A classifier with our LoRA and one with peft's, same base, head, A and B."""
    ours = SequenceClassifier(encoder_factory(), 3).eval()
    theirs = SequenceClassifier(encoder_factory(), 3).eval()
    theirs.head.load_state_dict(ours.head.state_dict())
    add_lora(ours, targets=targets, r=4, alpha=8)
    fan_in_fan_out = encoder_factory is tiny_gpt2
    theirs.backbone = peft_lora(theirs.backbone, targets, fan_in_fan_out=fan_in_fan_out)
    generator = torch.Generator().manual_seed(5)
    references = peft_layers(theirs.backbone)
    assert len(references) == len(lora_layers(ours)) > 0
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)
            reference = references[name.removeprefix("backbone.")]
            reference.lora_A["default"].weight.copy_(layer.lora_A)
            reference.lora_B["default"].weight.copy_(layer.lora_B)
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
