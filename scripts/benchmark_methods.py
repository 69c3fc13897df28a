"""Every method's speed as a ratio to the base model, and fusion's cost per adapter, for lesson 06.

    python scripts/benchmark_methods.py [--rounds 7] [--store] [--only methods|variants]

Inference latency at batch 1 and batch 32 (/ the base model's forward) and the training
step at batch 16 (/ full fine-tuning's step), every method timed interleaved in one run
(``peft_teach.benchmark.method_speed``); AdapterFusion over 1-4 adapters at batch 32
(``fusion_speed``). ``--store`` writes peft_teach/precomputed/method_speed.json, which
lesson 06 places in its triangle beside the ratios it measures live on the learner's machine.
Then LoRA's variants and IA3 (``variant_speed``: inference at batch 32, unmerged and merged, / the
base model; training step / LoRA's), stored in variant_speed.json. ``--only`` runs one of the two.
Run on an idle machine: timings taken while something else runs are not worth keeping.
"""

from __future__ import annotations

import argparse
import sys
import time

from peft_teach.benchmark import design_space_batches, fusion_speed, method_speed, variant_speed
from peft_teach.models import load_tokenizer
from peft_teach.precomputed import store
from peft_teach.train import set_seed
from precompute import machine_info  # the same machine record as every precomputed run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--store", action="store_true",
                        help="write peft_teach/precomputed/method_speed.json and variant_speed.json")
    parser.add_argument("--only", choices=("methods", "variants"), help="time one of the two sets (default: both)")
    args = parser.parse_args(argv)

    set_seed(0)
    batches = design_space_batches(load_tokenizer())
    measured = {}
    if args.only in (None, "methods"):
        measured["method_speed"] = timed_and_stored("method_speed", args, batches, lambda: {
            **method_speed({k: batches[k] for k in ("batch 1", "batch 32")}, batches["train"], rounds=args.rounds),
            "fusion batch 32": fusion_speed(batches["batch 32"], rounds=args.rounds)})
    if args.only in (None, "variants"):
        measured["variant_speed"] = timed_and_stored("variant_speed", args, batches, lambda: variant_speed(
            batches["batch 32"], batches["train"], rounds=args.rounds))
    return measured


def timed_and_stored(name: str, args, batches: dict, measure) -> dict:
    """Run ``measure``, print its ratios and, with ``--store``, write them to ``<name>.json`` with the rounds,
    the batches and the machine."""
    start = time.perf_counter()
    speed = measure()
    for measurement, ratios in speed.items():
        print(f"{measurement}: " + ", ".join(f"{method} {ratio:.3f}" for method, ratio in ratios.items()))
    if args.store:
        stored = {"results": speed, "rounds": args.rounds,
                  "batch_shapes": {k: list(v["input_ids"].shape) for k, v in batches.items()},
                  "machine": {**machine_info(), "seconds": round(time.perf_counter() - start)}}
        store(name, stored)
    return speed


if __name__ == "__main__":
    main(sys.argv[1:])
