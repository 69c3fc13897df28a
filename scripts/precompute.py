"""Run the comparisons that do not fit a lesson's CPU budget; store them for the lessons.

    python scripts/precompute.py fusion_comparison # lesson 02: 4 methods x 3 seeds, sequential full FT
    python scripts/precompute.py lora_sweep        # lesson 05: ranks and target modules
    python scripts/precompute.py prefix_lengths    # lesson 03: prefix length sweep
    python scripts/precompute.py prefix_methods    # lesson 04: 3 methods x 3 seeds, short and long inputs
    python scripts/precompute.py protocol_sentiment protocol_sst2   # lesson 06: every method under the protocol

Each writes ``peft_teach/precomputed/<name>.json`` with the results, the recipe and
how long it took. The protocol jobs are long (9 methods x (3 learning rates + 2 more
seeds)), so they store every finished run at once and skip stored runs when started
again: stop them any time, re-run the same command to go on. The training code is ``peft_teach.experiments``, the same functions
the lessons call for their live spot-checks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from pathlib import Path

from peft_teach import experiments, protocol
from peft_teach.data import SOURCE_TASKS, load_task, load_tsv_task
from peft_teach.models import load_tokenizer
from peft_teach.precomputed import path
from peft_teach.train import enable_determinism, get_device


def fusion_comparison(tokenizer) -> tuple[dict, dict]:
    model = experiments.source_adapter_model(tokenizer)
    routing = load_task("routing")
    tasks = {"sentiment": load_task("sentiment"), "aspect": load_task("aspect"), "routing": routing}
    seeds = experiments.SEEDS
    without_topic = [task for task in SOURCE_TASKS if task != "topic"]
    results = {
        "head-only": [experiments.run_head_only(tokenizer, routing, seed) for seed in seeds],
        "single adapter": [experiments.run_single_adapter(model, tokenizer, routing, seed) for seed in seeds],
        "joint multi-task": [experiments.run_joint_multitask(model, tokenizer, tasks, "routing", seed)
                             for seed in seeds],
        "fusion (4 adapters)": [experiments.run_fusion(model, tokenizer, routing, SOURCE_TASKS, seed)
                                for seed in seeds],
        "fusion without topic": [experiments.run_fusion(model, tokenizer, routing, without_topic, seed)
                                 for seed in seeds],
        "sequential full FT": experiments.run_sequential_full_ft(tokenizer, tasks["sentiment"], routing),
    }
    recipe = {"target": "routing (256 training examples)", **experiments.TARGET_BUDGET,
              "fusion_lr": experiments.FUSION_LR, "adapter_lr": experiments.ADAPTER_LR,
              "full_ft": experiments.FULL_FT, "seeds": list(seeds),
              "metric": f"test accuracy on the first {experiments.TEST_EXAMPLES} test examples"}
    return results, recipe


def lora_sweep(tokenizer) -> tuple[dict, dict]:
    data = load_task("sentiment")
    ranks = {str(r): experiments.run_lora(tokenizer, data, ("query", "value"), r) for r in experiments.LORA_RANKS}
    targets = {name: experiments.run_lora(tokenizer, data, targets, r)
               for name, (targets, r) in experiments.LORA_TARGET_SETS.items()}
    recipe = {**experiments.LORA_BUDGET, "alpha": 16, "seed": 0, "metric": "sentiment validation accuracy"}
    return {"ranks": ranks, "targets": targets}, recipe


def prefix_lengths(tokenizer) -> tuple[dict, dict]:
    data = load_task("sentiment")
    results = {str(length): experiments.run_prefix(tokenizer, data, length) for length in experiments.PREFIX_LENGTHS}
    recipe = {**experiments.PREFIX_BUDGET, "lr": experiments.PREFIX_LR, "seed": 0, "metric": "sentiment validation accuracy"}
    return results, recipe


def prefix_methods(tokenizer) -> tuple[dict, dict]:
    short, long = load_task("sentiment"), load_task("sentiment_long")
    results = {method: {str(seed): experiments.run_method(tokenizer, method, seed, short, long)
                        for seed in experiments.SEEDS}
               for method in experiments.METHOD_LR}
    recipe = {**experiments.PREFIX_BUDGET, "lr": experiments.METHOD_LR, "seeds": list(experiments.SEEDS),
              "metric": "validation accuracy: sentiment (short) and sentiment_long (long)"}
    return results, recipe


# The real sentences: CI and developers have them beside the repository; learners never need them.
SST2_FOLDER = Path(os.environ.get("PEFT_TEACH_SST2", Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"))
TRAIN_EXAMPLES = 1200  # the synthetic task's training size: the same budget on both


def machine_info() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(get_device())}


def run_protocol(name: str, data, tokenizer, description: str) -> None:
    """Every method of peft_teach.protocol: learning-rate grid (seed 0), then the other seeds; resumable."""
    file = path(name)
    recipe = {"task": description, **protocol.BUDGET, "head_lr": protocol.HEAD_LR, "seeds": list(protocol.SEEDS),
              "lr_grid": {m: list(spec.lr_grid) for m, spec in protocol.METHODS.items()},
              "train_examples": len(data["train"]), "validation_examples": len(data["validation"]),
              "test_examples": len(data["test"]),
              "selection": "final validation accuracy of seed 0; ties to the smaller learning rate",
              "metric": "accuracy; validation after every epoch, test at the end"}
    stored = json.loads(file.read_text()) if file.exists() else {}
    if stored.get("recipe") != recipe:
        stored = {"recipe": recipe, "runs": {}, "machine": machine_info(), "seconds": 0}

    def one(method: str, lr: float, seed: int) -> dict:
        key = f"{method}|lr={lr:g}|seed={seed}"
        if key not in stored["runs"]:
            start = time.perf_counter()
            stored["runs"][key] = {**protocol.run(method, data, lr, seed, tokenizer),
                                   "seconds": round(time.perf_counter() - start)}
            stored["seconds"] += stored["runs"][key]["seconds"]
            file.write_text(json.dumps(stored, indent=2) + "\n")  # every finished run is kept
            print(f"{name}: {key} -> test {stored['runs'][key]['test']:.3f} ({stored['runs'][key]['seconds']} s)",
                  flush=True)
        return stored["runs"][key]

    for method, spec in protocol.METHODS.items():
        chosen = protocol.choose_lr([one(method, lr, protocol.SEEDS[0]) for lr in spec.lr_grid])
        for seed in protocol.SEEDS[1:]:
            one(method, chosen, seed)


def protocol_sentiment(tokenizer) -> None:
    run_protocol("protocol_sentiment", load_task("sentiment"), tokenizer,
                 "sentiment (generated reviews), 1,200 / 300 / 600 examples")


def protocol_sst2(tokenizer) -> None:
    if not SST2_FOLDER.is_dir():
        raise SystemExit(f"No SST-2 sample at {SST2_FOLDER}; set PEFT_TEACH_SST2 to the folder holding train.tsv.")
    data = load_tsv_task(SST2_FOLDER)
    data["train"] = data["train"].select(range(TRAIN_EXAMPLES))
    run_protocol("protocol_sst2", data, tokenizer,
                 f"SST-2 sample (real movie-review sentences), first {TRAIN_EXAMPLES:,} training sentences")


JOBS = {"fusion_comparison": fusion_comparison, "lora_sweep": lora_sweep, "prefix_lengths": prefix_lengths,
        "prefix_methods": prefix_methods}
RESUMABLE = {"protocol_sentiment": protocol_sentiment, "protocol_sst2": protocol_sst2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", choices=sorted(JOBS) + sorted(RESUMABLE))
    args = parser.parse_args()
    os.environ.setdefault("PEFT_TEACH_PROGRESS", "0")
    enable_determinism()
    tokenizer = load_tokenizer()
    for name in args.jobs:
        if name in RESUMABLE:  # they store as they go
            RESUMABLE[name](tokenizer)
            continue
        start = time.perf_counter()
        results, recipe = JOBS[name](tokenizer)
        seconds = time.perf_counter() - start
        machine = {**machine_info(), "seconds": round(seconds)}
        path(name).write_text(json.dumps({"results": results, "recipe": recipe, "machine": machine}, indent=2) + "\n")
        print(f"{name}: {seconds:.0f} s -> {path(name)}")


if __name__ == "__main__":
    main()
