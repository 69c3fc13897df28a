"""Benchmark our LoRA against peft's, and merged LoRA against the base model.

    python scripts/benchmark_lora.py [--rounds 5] [--batch-size 32] [--json PATH]

On the same inputs and the same weights (A and B copied across) it measures:

* training-step time (forward + backward + AdamW step): ours / peft   (target <= 1.05)
* inference latency: merged LoRA / base model                        (target <= 1.03)
* inference latency: unmerged LoRA / base model                      (the price of not merging)

Measurements are interleaved (A, B, A, B, ...) so a slow drift of the machine does
not favour one side. Timings depend on the machine and on what else runs on it;
this is a script, not a timed test.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch

from peft_teach.data import load_task
from peft_teach.measure import compare_latency, format_ms, train_step_time
from peft_teach.methods.lora import add_lora, lora_layers, merge_lora
from peft_teach.models import build_classifier, load_tokenizer
from peft_teach.train import make_loader, set_seed

TARGETS = ("query", "value")


def build_models(r: int, alpha: float) -> dict[str, torch.nn.Module]:
    """base, ours (unmerged), ours (merged), peft: same base weights, head, A and B."""
    import peft

    base = build_classifier(2, seed=0)
    ours = copy.deepcopy(base)
    add_lora(ours, targets=TARGETS, r=r, alpha=alpha)
    theirs = copy.deepcopy(base)
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(TARGETS), lora_dropout=0.0)
    with warnings.catch_warnings():  # transformers 5 deprecation read by peft, not ours
        warnings.simplefilter("ignore", FutureWarning)
        theirs.encoder = peft.get_peft_model(theirs.encoder, config)
    generator = torch.Generator().manual_seed(0)
    peft_modules = dict(theirs.encoder.named_modules())
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.01)
            reference = peft_modules["base_model.model." + name.removeprefix("encoder.")]
            reference.lora_A["default"].weight.copy_(layer.lora_A)
            reference.lora_B["default"].weight.copy_(layer.lora_B)
    merged = merge_lora(copy.deepcopy(ours))
    models = {"base": base, "ours": ours, "merged": merged, "peft": theirs}
    return {name: model.eval() for name, model in models.items()}  # eval: dropout off


def interleaved_train_steps(models: dict[str, torch.nn.Module], batch, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name].append(train_step_time(model, batch, repeats=3))
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    set_seed(0)
    tokenizer = load_tokenizer()
    data = load_task("sentiment")
    batch = next(iter(make_loader(data["validation"], tokenizer, batch_size=args.batch_size)))
    models = build_models(args.r, args.alpha)
    with torch.no_grad():  # same weights -> same logits: the comparison is fair
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        parity = (models["ours"](**inputs) - models["peft"](**inputs)).abs().max().item()
        merge_gap = (models["ours"](**inputs) - models["merged"](**inputs)).abs().max().item()

    train = interleaved_train_steps({"ours": models["ours"], "peft": models["peft"]}, batch, args.rounds)
    infer = compare_latency({n: models[n] for n in ("base", "merged", "ours")}, batch,
                            rounds=args.rounds, repeats=10)
    results = {
        "train_step_ours_s": train["ours"], "train_step_peft_s": train["peft"],
        "train_ratio_ours_over_peft": train["ours"] / train["peft"],
        "latency_base_s": infer["base"], "latency_merged_s": infer["merged"], "latency_unmerged_s": infer["ours"],
        "latency_ratio_merged_over_base": infer["merged"] / infer["base"],
        "latency_ratio_unmerged_over_base": infer["ours"] / infer["base"],
        "logits_max_abs_diff_ours_vs_peft": parity, "logits_max_abs_diff_merged_vs_unmerged": merge_gap,
        "batch_shape": list(batch["input_ids"].shape), "threads": torch.get_num_threads(),
    }

    rows = [
        ("train step: ours", format_ms(train["ours"]), ""),
        ("train step: peft", format_ms(train["peft"]), ""),
        ("  ours / peft", f"{results['train_ratio_ours_over_peft']:.3f}", "target <= 1.05"),
        ("inference: base", format_ms(infer["base"]), ""),
        ("inference: merged LoRA", format_ms(infer["merged"]), ""),
        ("inference: unmerged LoRA", format_ms(infer["ours"]), ""),
        ("  merged / base", f"{results['latency_ratio_merged_over_base']:.3f}", "target <= 1.03"),
        ("  unmerged / base", f"{results['latency_ratio_unmerged_over_base']:.3f}", ""),
    ]
    print(f"LoRA r={args.r} on {TARGETS}, batch {tuple(batch['input_ids'].shape)}, "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    print(f"logits max |ours - peft| = {parity:.1e}, max |merged - unmerged| = {merge_gap:.1e}")
    for name, value, note in rows:
        print(f"{name:<26} {value:>10}  {note}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
