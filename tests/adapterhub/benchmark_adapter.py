"""Our bottleneck adapter / AdapterHub's, timed side by side (run in the AdapterHub environment).

    .venv-adapterhub/bin/python tests/adapterhub/benchmark_adapter.py [--rounds 5] [--store]

Both sides: the packaged MiniLM with one Pfeiffer adapter (AdapterHub ``seq_bn``,
reduction factor 16), the same adapter weights, only the adapter trainable. Training
step (loss on the last hidden states) and inference latency on one batch of 32
sentiment reviews, interleaved. Not a test: a benchmark (timings depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import platform

import adapters
import torch
from adapters import SeqBnConfig

from peft_teach.data import load_task
from peft_teach.measure import compare_latency, compare_train_step, hidden_state_loss
from peft_teach.methods import adapters as ours_adapters
from peft_teach.models import load_base_model, load_tokenizer
from peft_teach.precomputed import path, write_atomically
from peft_teach.train import make_loader, set_seed


def twins() -> dict[str, torch.nn.Module]:
    hub = load_base_model()
    adapters.init(hub)
    hub.add_adapter("task", config=SeqBnConfig(reduction_factor=16))
    hub.train_adapter("task")
    ours = load_base_model()
    ours_adapters.add_adapter(ours, "task")
    hub_parameters = dict(hub.named_parameters())
    with torch.no_grad():  # the same (non-zero) adapter weights on both sides
        for point_name, point in ours_adapters.adapter_layers(ours).items():
            adapter = point.adapters["task"]
            prefix = f"{point_name}.adapters.task"
            for ours_part, hub_part in (("down", "adapter_down.0"), ("up", "adapter_up")):
                for kind in ("weight", "bias"):
                    value = torch.randn_like(getattr(getattr(adapter, ours_part), kind)) * 0.02
                    getattr(getattr(adapter, ours_part), kind).copy_(value)
                    hub_parameters[f"{prefix}.{hub_part}.{kind}"].copy_(value)
    return {"ours": ours.eval(), "adapterhub": hub.eval()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", action="store_true", help="add the ratios to peft_teach/precomputed/twin_benchmark.json")
    args = parser.parse_args()
    set_seed(0)
    batch = next(iter(make_loader(load_task("sentiment")["validation"], load_tokenizer(), batch_size=32)))
    models = twins()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        gap = (models["ours"](**inputs).last_hidden_state - models["adapterhub"](**inputs).last_hidden_state).abs().max()
    train = compare_train_step(models, batch, rounds=args.rounds, loss_fn=hidden_state_loss)
    infer = compare_latency(models, inputs, rounds=args.rounds, repeats=5)
    row = {"train_ratio": train["ours"] / train["adapterhub"], "latency_ratio": infer["ours"] / infer["adapterhub"],
           "train_step_ours_s": train["ours"], "train_step_adapterhub_s": train["adapterhub"],
           "latency_ours_s": infer["ours"], "latency_adapterhub_s": infer["adapterhub"],
           "max_abs_diff": gap.item()}
    print(f"ours / AdapterHub (Pfeiffer adapter), batch {tuple(batch['input_ids'].shape)}, "
          f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds; outputs differ by {gap:.1e}")
    print(f"adapter      train step {row['train_ratio']:.3f}   inference {row['latency_ratio']:.3f}")
    if args.store:
        file = path("twin_benchmark")
        stored = json.loads(file.read_text()) if file.exists() else {}
        stored["adapterhub"] = {"results": {"adapter": row}, "rounds": args.rounds,
                                "machine": {"cpu": platform.processor() or platform.machine(),
                                            "threads": torch.get_num_threads(), "torch": torch.__version__,
                                            "adapters": adapters.__version__}}
        write_atomically(file, json.dumps(stored, indent=2) + "\n")


if __name__ == "__main__":
    main()
