"""Our methods against their production twins, timed side by side: ours / peft and ours / AdapterHub.

    python scripts/benchmark_twins.py [--rounds 5] [--batch-size 32] [--store]

Prints, for LoRA, prompt tuning and prefix tuning, the training-step and inference
ratios ours / peft (target <= 1.05), each pair timed interleaved in one run. The
bottleneck adapter's twin lives in the AdapterHub environment (transformers 4.57):
``make benchmark`` also runs ``tests/adapterhub/benchmark_adapter.py`` there.
``--store`` writes the ratios to peft_teach/precomputed/twin_benchmark.json for lesson 06.
Run on an idle machine: timings taken while something else runs are not worth keeping.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from peft_teach.benchmark import benchmark_twins
from peft_teach.data import load_task
from peft_teach.models import load_tokenizer
from peft_teach.precomputed import path, write_atomically
from peft_teach.train import make_loader, set_seed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--store", action="store_true", help="write peft_teach/precomputed/twin_benchmark.json")
    args = parser.parse_args(argv)

    set_seed(0)
    batch = next(iter(make_loader(load_task("sentiment")["validation"], load_tokenizer(), batch_size=args.batch_size)))
    results = benchmark_twins(batch, rounds=args.rounds)
    print(f"ours / peft, batch {tuple(batch['input_ids'].shape)}, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds (target <= 1.05)")
    for method, row in results.items():
        print(f"{method:<12} train step {row['train_ratio']:.3f}   inference {row['latency_ratio']:.3f}")
    if args.store:
        file = path("twin_benchmark")
        stored = json.loads(file.read_text()) if file.exists() else {}
        stored["peft"] = {"results": results, "batch_shape": list(batch["input_ids"].shape), "rounds": args.rounds,
                          "machine": {"cpu": platform.processor() or platform.machine(),
                                      "threads": torch.get_num_threads(), "torch": torch.__version__}}
        write_atomically(file, json.dumps(stored, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
