"""Timings, always as ratios measured interleaved: ours against the libraries, and every method against the base.

* :func:`benchmark_lora` / :func:`benchmark_twins`: our LoRA, soft prompt and prefix
  against peft's on the same weights (``scripts/benchmark_lora.py``, ``scripts/benchmark_twins.py``).
* :func:`method_speed` / :func:`fusion_speed`: every method of lesson 06 against the
  base model, and fusion against its number of adapters (``scripts/benchmark_methods.py``).
* :func:`variant_speed`: DoRA, rsLoRA and IA3 against LoRA and the base model (the same script).

The LoRA benchmark in detail:

Used by ``scripts/benchmark_lora.py`` (the full run) and by lesson 05 (a short
run). On the same inputs and the same weights (A and B copied across) it
measures:

* training-step time (forward + backward + AdamW step): ours / peft   (target <= 1.05)
* inference latency: merged LoRA / base model                        (target <= 1.03)
* inference latency: unmerged LoRA / base model                      (the price of not merging)

Every measurement is interleaved (A, B, A, B, ...) so that a slow drift of the
machine does not favour one side. Timings depend on the machine and on what
else runs on it, which is why this is a benchmark and not a timed test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
import warnings

import torch
from torch import nn

from peft_teach.measure import (
    compare_latency,
    compare_times,
    compare_train_step,
    cross_entropy_loss,
    format_ms,
    hidden_state_loss,
    latency,
    ratios,
    training_memory,
)
from peft_teach.methods.lora import add_lora, lora_layers, merge_lora
from peft_teach.methods.prefix import add_prefix
from peft_teach.methods.prompts import add_soft_prompt
from peft_teach.models import build_classifier, load_base_model

TARGETS = ("query", "value")


def lora_benchmark_models(r: int = 8, alpha: float = 16) -> dict[str, nn.Module]:
    """base, ours (unmerged), ours (merged) and peft: same base weights, head, A and B."""
    import peft

    base = build_classifier(2, seed=0)
    ours = copy.deepcopy(base)
    add_lora(ours, targets=TARGETS, r=r, alpha=alpha)
    theirs = copy.deepcopy(base)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(TARGETS), lora_dropout=0.0)
    with warnings.catch_warnings():  # a transformers 5 deprecation that peft reads, not ours
        warnings.simplefilter("ignore", FutureWarning)
        theirs.backbone = peft.get_peft_model(theirs.backbone, config)
    generator = torch.Generator().manual_seed(0)
    peft_modules = dict(theirs.backbone.named_modules())
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            # a non-zero B, so that the LoRA path really computes something
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.01)
            reference = peft_modules["base_model.model." + name.removeprefix("backbone.")]
            reference.lora_A["default"].weight.copy_(layer.lora_A)
            reference.lora_B["default"].weight.copy_(layer.lora_B)
    merged = merge_lora(copy.deepcopy(ours))
    models = {"base": base, "ours": ours, "merged": merged, "peft": theirs}
    return {name: model.eval() for name, model in models.items()}  # eval: dropout off


def benchmark_lora(batch: dict[str, torch.Tensor], r: int = 8, alpha: float = 16, rounds: int = 5,
                   repeats: int = 10) -> dict[str, float]:
    """Time the four models of :func:`lora_benchmark_models` on ``batch``; return seconds and ratios."""
    models = lora_benchmark_models(r, alpha)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():  # same weights -> same logits: the comparison is fair
        parity = (models["ours"](**inputs) - models["peft"](**inputs)).abs().max().item()
        merge_gap = (models["ours"](**inputs) - models["merged"](**inputs)).abs().max().item()
    train = compare_train_step({"ours": models["ours"], "peft": models["peft"]}, batch, rounds=rounds)
    infer = compare_latency({n: models[n] for n in ("base", "merged", "ours")}, batch, rounds=rounds,
                            repeats=repeats)
    return {
        "train_step_ours_s": train["ours"], "train_step_peft_s": train["peft"],
        "train_ratio_ours_over_peft": train["ours"] / train["peft"],
        "latency_base_s": infer["base"], "latency_merged_s": infer["merged"], "latency_unmerged_s": infer["ours"],
        "latency_ratio_merged_over_base": infer["merged"] / infer["base"],
        "latency_ratio_unmerged_over_base": infer["ours"] / infer["base"],
        "logits_max_abs_diff_ours_vs_peft": parity, "logits_max_abs_diff_merged_vs_unmerged": merge_gap,
        "batch_shape": list(batch["input_ids"].shape), "threads": torch.get_num_threads(), "rounds": rounds,
    }


def benchmark_report(results: dict[str, float]) -> str:
    """The results as a small table (times in ms, ratios with their targets)."""
    rows = [
        ("train step: ours", format_ms(results["train_step_ours_s"]), ""),
        ("train step: peft", format_ms(results["train_step_peft_s"]), ""),
        ("  ours / peft", f"{results['train_ratio_ours_over_peft']:.3f}", "target <= 1.05"),
        ("inference: base", format_ms(results["latency_base_s"]), ""),
        ("inference: merged LoRA", format_ms(results["latency_merged_s"]), ""),
        ("inference: unmerged LoRA", format_ms(results["latency_unmerged_s"]), ""),
        ("  merged / base", f"{results['latency_ratio_merged_over_base']:.3f}", "target <= 1.03"),
        ("  unmerged / base", f"{results['latency_ratio_unmerged_over_base']:.3f}", ""),
    ]
    lines = [
        f"LoRA on {TARGETS}, batch {tuple(results['batch_shape'])}, {results['threads']} threads, "
        f"{results['rounds']} interleaved rounds",
        f"logits max |ours - peft| = {results['logits_max_abs_diff_ours_vs_peft']:.1e}, "
        f"max |merged - unmerged| = {results['logits_max_abs_diff_merged_vs_unmerged']:.1e}",
    ]
    lines += [f"{name:<26} {value:>10}  {note}".rstrip() for name, value, note in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- every twin: ours / peft


def prompt_twins(length: int = 20) -> dict[str, nn.Module]:
    """Our soft prompt and peft's prompt tuning on two copies of the base model, same prompt values."""
    from peft import PromptTuningConfig, get_peft_model

    ours = load_base_model()
    add_soft_prompt(ours, length=length, init="vocab", seed=0)
    with warnings.catch_warnings():  # peft notes that a bare backbone has no task head
        warnings.simplefilter("ignore")
        theirs = get_peft_model(load_base_model(), PromptTuningConfig(task_type="FEATURE_EXTRACTION",
                                                                      num_virtual_tokens=length))
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(ours.soft_prompt.weight)
    return {"ours": ours.eval(), "peft": theirs.eval()}


def prefix_twins(length: int = 10) -> dict[str, nn.Module]:
    """Our prefix and peft's prefix tuning on two copies of the base model, same keys and values."""
    from peft import PrefixTuningConfig, get_peft_model

    ours = load_base_model()
    add_prefix(ours, length=length, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_peft_model(load_base_model(), PrefixTuningConfig(task_type="FEATURE_EXTRACTION",
                                                                      num_virtual_tokens=length))
    with torch.no_grad():
        # peft keeps all prefixes as one table: row j = [layer 0 key j, layer 0 value j, layer 1 key j, ...]
        table = ours.prefix.prefix.permute(2, 0, 1, 3).reshape(length, -1)
        theirs.prompt_encoder["default"].embedding.weight.copy_(table)
    return {"ours": ours.eval(), "peft": theirs.eval()}


def benchmark_twins(batch: dict[str, torch.Tensor], rounds: int = 5) -> dict[str, dict[str, float]]:
    """Training step and inference latency, ours / peft, for LoRA, prompt tuning and prefix tuning.

    Prompt and prefix twins are bare backbones (peft's feature-extraction models), timed with
    :func:`~peft_teach.measure.hidden_state_loss`; LoRA's are classifiers. Each pair is timed
    interleaved in one run. peft's prompt model also returns the l prompt positions (ours
    drops them), a difference of a few positions in the loss, nothing in the transformer.
    """
    results = {}
    lora_models = lora_benchmark_models()
    pairs = {"lora": ({"ours": lora_models["ours"], "peft": lora_models["peft"]}, cross_entropy_loss),
             "soft_prompt": (prompt_twins(), hidden_state_loss),
             "prefix": (prefix_twins(), hidden_state_loss)}
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    for method, (models, loss_fn) in pairs.items():
        train = compare_train_step(models, batch, rounds=rounds, loss_fn=loss_fn)
        infer = compare_latency(models, inputs, rounds=rounds, repeats=5)
        results[method] = {"train_ratio": train["ours"] / train["peft"], "latency_ratio": infer["ours"] / infer["peft"],
                           "train_step_ours_s": train["ours"], "train_step_peft_s": train["peft"],
                           "latency_ours_s": infer["ours"], "latency_peft_s": infer["peft"]}
    return results


# --------------------------------------------------------------------------- every method: ratios to the base model


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def design_space_batches(tokenizer) -> dict[str, dict[str, torch.Tensor]]:
    """The batches lesson 06 times: one review, 32 validation reviews, and a training batch of 16."""
    from peft_teach.data import load_task
    from peft_teach.train import make_loader

    data = load_task("sentiment")
    train = next(iter(make_loader(data["train"], tokenizer, batch_size=16)))
    wide = next(iter(make_loader(data["validation"], tokenizer, batch_size=32)))
    return {"batch 1": {k: v[:1] for k, v in train.items()}, "batch 32": wide, "train": train}


def design_space_memory_batch(tokenizer, batch_size: int) -> dict[str, torch.Tensor]:
    """The batch lesson 06 counts training memory on: the first ``batch_size`` training reviews, unshuffled."""
    from peft_teach.data import load_task
    from peft_teach.train import make_loader

    return next(iter(make_loader(load_task("sentiment")["train"], tokenizer, batch_size=batch_size)))


def method_memory(batch: dict[str, torch.Tensor], num_labels: int = 2) -> dict[str, dict[str, int]]:
    """Counted bytes of one training step (:func:`peft_teach.measure.training_memory`) for every protocol method.

    Counted, not timed: the same batch gives the same bytes on any CPU, so a stored count
    (``make precompute``, job ``design_space_memory``) can stand in for a slow one.
    """
    from peft_teach import protocol

    return {method: training_memory(protocol.build_method(method, num_labels, seed=0), batch)
            for method in protocol.METHODS}


def method_models(num_labels: int = 2) -> dict[str, nn.Module]:
    """Every method of :mod:`peft_teach.protocol` on MiniLM (seed 0), plus LoRA merged, in eval mode.

    Untrained weights are enough: a method's arithmetic, not the values it learned, sets its speed.
    """
    from peft_teach import protocol

    models = {method: protocol.build_method(method, num_labels, seed=0) for method in protocol.METHODS}
    models["lora_merged"] = merge_lora(protocol.build_method("lora", num_labels, seed=0))
    return {name: model.eval() for name, model in models.items()}


def method_speed(inference: dict[str, dict[str, torch.Tensor]], train_batch: dict[str, torch.Tensor],
                 rounds: int = 3, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Inference latency and training-step time of every method, as ratios to the base model.

    ``inference`` names the batches to time a forward pass on (e.g. ``{"batch 1": ..., "batch 32": ...}``);
    each is divided by the base model's forward (head-only's model: a linear head adds nothing measurable).
    Training steps are divided by full fine-tuning's step: the base model with every weight trained.
    All models of one measurement are timed interleaved, in a shuffled order, in one run; the
    row ``"control"`` times the reference a second time (its ratio is the run's noise floor).
    """
    models = method_models()
    speed = {}
    for name, batch in inference.items():
        times = compare_latency(models, _inputs(batch), rounds=rounds, repeats=repeats, control="head_only")
        speed[name] = ratios(times, "head_only")
    trainable = {name: model for name, model in models.items() if name != "lora_merged"}  # merging is for inference
    steps = compare_train_step(trainable, train_batch, rounds=rounds, repeats=repeats, control="full_ft")
    speed["train step"] = ratios(steps, "full_ft")
    return speed


def variant_speed(inference_batch: dict[str, torch.Tensor], train_batch: dict[str, torch.Tensor],
                  rounds: int = 3, repeats: int = 3) -> dict[str, dict[str, float]]:
    """LoRA's variants and IA3 (:data:`peft_teach.protocol.VARIANTS`) beside LoRA, as ratios.

    Inference on ``inference_batch``, unmerged and merged, divided by the base model's forward;
    the training step on ``train_batch`` divided by LoRA's step (what each variant costs on top
    of LoRA). Each measurement is one interleaved run with a control, as in :func:`method_speed`.
    """
    from peft_teach import protocol
    from peft_teach.methods.ia3 import merge_ia3

    def build(method: str) -> nn.Module:
        methods = protocol.VARIANTS if method in protocol.VARIANTS else protocol.METHODS
        return protocol.build_method(method, 2, seed=0, methods=methods)

    trainable = {method: build(method) for method in ("lora", *protocol.VARIANTS)}
    merged = {"lora_merged": merge_lora(build("lora")), "dora_merged": merge_lora(build("dora")),
              "ia3_merged": merge_ia3(build("ia3"))}
    models = {"base": build("head_only"), **trainable, **merged}
    models = {name: model.eval() for name, model in models.items()}
    times = compare_latency(models, _inputs(inference_batch), rounds=rounds, repeats=repeats, control="base")
    steps = compare_train_step(trainable, train_batch, rounds=rounds, repeats=repeats, control="lora")
    return {"inference": ratios(times, "base"), "train step": ratios(steps, "lora")}


def fusion_speed(batch: dict[str, torch.Tensor], max_adapters: int = 4, rounds: int = 3,
                 repeats: int = 3) -> dict[str, float]:
    """Inference latency of AdapterFusion over 1..``max_adapters`` adapters, as ratios to the base model.

    One model holds the adapters and every fusion; switching which one runs between
    timings keeps the weights in memory the same, so only the work per layer differs.
    """
    from peft_teach.methods import adapters, fusion

    model = build_classifier(2, seed=0).eval()
    names = [f"adapter_{i}" for i in range(max_adapters)]
    for seed, name in enumerate(names):
        adapters.add_adapter(model, name, seed=seed)
    setups = {"base": lambda: adapters.set_active(model, None), "1 adapter": lambda: adapters.set_active(model, names[0])}
    for n in range(1, max_adapters + 1):
        fusion.add_fusion(model, names[:n])
        setups[f"fusion N={n}"] = lambda n=n: fusion.set_active_fusion(model, fusion.fusion_name(names[:n]))
    inputs = _inputs(batch)

    def timed(switch: Callable[[], object]) -> float:
        switch()
        return latency(model, inputs, repeats=repeats, warmup=1)

    tasks = {name: (lambda switch=switch: timed(switch)) for name, switch in setups.items()}
    return ratios(compare_times(tasks, rounds=rounds, control="base"), "base")
