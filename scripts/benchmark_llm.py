"""What the methods cost on the LLM: training step against peft, generation against the base model, cache bytes.

    python scripts/benchmark_llm.py [--rounds 5] [--new-tokens 16] [--store]

On SmolLM2 (the course's packaged LLM), with untrained method weights:

* training step (answer loss, AdamW) on 8 training tickets, ours / peft, for LoRA, the
  soft prompt and the prefix, each pair interleaved with a control pair;
* ``generate`` writing exactly ``--new-tokens`` tokens for 1 and for 8 test tickets, every
  method / the base model, interleaved and shuffled per round, with a control;
* the key/value cache after reading one ticket, in bytes, for every method and for peft's
  prefix (which keeps the prefix in the cache).

``--store`` writes peft_teach/precomputed/llm_speed.json (atomically) with the recipe, the
machine and the seconds it took; lesson 07 reads it. Run it on an idle machine: timings
taken while something else runs are not worth keeping.
"""

from __future__ import annotations

import argparse
import sys
import time

from peft_teach import llm, llm_speed, tickets
from peft_teach.precomputed import store
from peft_teach.train import set_seed
from precompute import machine_info  # the same machine record as every precomputed run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--store", action="store_true", help="write peft_teach/precomputed/llm_speed.json")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    set_seed(0)
    tokenizer, base = llm.load_llm_tokenizer(), llm.load_llm()
    data = tickets.load_tickets()
    batches = llm_speed.prompt_batches(tokenizer, data["test"]["prompt"], sizes=(1, 8))
    train_batch = next(iter(llm.make_lm_loader(data["train"], tokenizer, batch_size=8)))

    models = llm_speed.method_models(base)
    cache = {name: llm_speed.cache_bytes(model, batches["batch 1"]) for name, model in models.items()}
    twins = llm_speed.peft_twins(base)
    cache["prefix (peft)"] = llm_speed.cache_bytes(twins["prefix"]["peft"], batches["batch 1"])
    generation = llm_speed.generation_ratios(models, batches, new_tokens=args.new_tokens, rounds=args.rounds)
    train = llm_speed.train_step_ratios(twins, train_batch, rounds=args.rounds)

    for label, row in generation.items():
        print(f"generate {args.new_tokens} tokens, {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
    for method, row in train.items():
        print(f"train step {method}: ours / peft {row['ratio']:.3f} (control {row['control_ratio']:.3f})")
    print("cache bytes after one ticket: " + ", ".join(f"{k} {v:,}" for k, v in cache.items()))
    results = {"generation": generation, "train_step": train, "cache_bytes": cache}
    if args.store:
        recipe = {"rounds": args.rounds, "new_tokens": args.new_tokens,
                  "generation_shapes": {k: list(v["input_ids"].shape) for k, v in batches.items()},
                  "train_shape": list(train_batch["input_ids"].shape), "lora": llm_speed.LORA,
                  "prefix_length": llm_speed.PREFIX_LENGTH, "prompt_length": llm_speed.PROMPT_LENGTH}
        machine = {**machine_info(), "seconds": round(time.perf_counter() - start)}
        print(f"stored in {store('llm_speed', {'results': results, 'recipe': recipe, 'machine': machine})}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
