"""Run the comparisons that do not fit a lesson's CPU budget; store them for the lessons.

    python scripts/precompute.py fusion_comparison # lesson 02: 4 methods x 3 seeds, sequential full FT
    python scripts/precompute.py lora_sweep        # lesson 05: ranks and target modules
    python scripts/precompute.py prefix_lengths    # lesson 03: prefix length sweep
    python scripts/precompute.py prefix_methods    # lesson 04: 3 methods x 3 seeds, short and long inputs

Each writes ``peft_teach/precomputed/<name>.json`` with the results, the recipe and
how long it took. The training code is ``peft_teach.experiments``, the same functions
the lessons call for their live spot-checks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from peft_teach import experiments
from peft_teach.data import SOURCE_TASKS, load_task
from peft_teach.models import load_tokenizer
from peft_teach.precomputed import path
from peft_teach.train import enable_determinism


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


JOBS = {"fusion_comparison": fusion_comparison, "lora_sweep": lora_sweep, "prefix_lengths": prefix_lengths, "prefix_methods": prefix_methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", choices=sorted(JOBS))
    args = parser.parse_args()
    os.environ.setdefault("PEFT_TEACH_PROGRESS", "0")
    enable_determinism()
    tokenizer = load_tokenizer()
    for name in args.jobs:
        start = time.perf_counter()
        results, recipe = JOBS[name](tokenizer)
        seconds = time.perf_counter() - start
        machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                   "torch": torch.__version__, "seconds": round(seconds)}
        path(name).write_text(json.dumps({"results": results, "recipe": recipe, "machine": machine}, indent=2) + "\n")
        print(f"{name}: {seconds:.0f} s -> {path(name)}")


if __name__ == "__main__":
    main()
