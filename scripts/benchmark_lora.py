"""Benchmark our LoRA against peft's, and merged LoRA against the base model.

    python scripts/benchmark_lora.py [--rounds 5] [--batch-size 32] [--json PATH]

What is measured and why: see ``peft_teach/benchmark.py``. Run it on an idle
machine; timings taken while something else runs are not worth keeping.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from peft_teach.benchmark import benchmark_lora, benchmark_report
from peft_teach.data import load_task
from peft_teach.models import load_tokenizer
from peft_teach.train import make_loader, set_seed


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    set_seed(0)
    batch = next(iter(make_loader(load_task("sentiment")["validation"], load_tokenizer(), batch_size=args.batch_size)))
    results = benchmark_lora(batch, r=args.r, alpha=args.alpha, rounds=args.rounds)
    print(benchmark_report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
