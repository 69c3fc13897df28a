"""Data-parallel training with Hugging Face accelerate: the course's training loop on several processes.

Started with ``accelerate launch --multi_gpu --num_processes N script.py`` (on a machine without a GPU
accelerate starts the N processes on the CPU and connects them with PyTorch's gloo backend), every
process

* holds a whole copy of the model: the frozen base is replicated, not divided;
* takes its share of every global batch (``split_batches``, :func:`make_accelerator`), so N processes with a global batch
  of B take the steps one process takes with a batch of B;
* averages, after ``backward``, the gradients of the *trainable* parameters with the other processes
  (an all-reduce), so every copy takes the same AdamW step and the copies never drift apart.

Only the PEFT parameters' gradients travel between processes: :func:`gradient_bytes_per_step`.

This module is also the script to launch (:func:`main`), LoRA on the course's sentiment task::

    accelerate launch --multi_gpu --num_processes 2 --module peft_teach.distributed --out runs/two
    python -m peft_teach.distributed --out runs/one       # the same run in a single process

On a machine without a GPU, accelerate starts the processes on the CPU and joins them with PyTorch's gloo
backend; on a machine with N GPUs, ``--num_processes N`` puts one process on each GPU (NCCL). Nothing in
the script changes. Process 0 alone writes, into --out, the LoRA checkpoint and ``history.json``: the loss
of every step, the number of processes and the bytes all-reduced per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from datasets import DatasetDict
from torch import nn

from peft_teach.data import load_task
from peft_teach.files import write_text_atomically
from peft_teach.methods import lora
from peft_teach.models import build_classifier, load_tokenizer
from peft_teach.train import History, check_training_setup, recipe


def make_accelerator() -> Accelerator:
    """The course's accelerator: the batch size is the global batch, split over the processes.

    Without a GPU, ``cpu=True`` makes accelerate join the launched processes over gloo; left
    False on such a machine, each process would train alone, unaware of the others.
    """
    return Accelerator(dataloader_config=DataLoaderConfiguration(split_batches=True),
                       cpu=not torch.cuda.is_available())


def gradient_bytes_per_step(model: nn.Module) -> int:
    """Bytes each process puts into the gradient all-reduce per step: one gradient per trainable parameter."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def check_even_split(examples: int, batch_size: int, processes: int) -> None:
    """Every batch, the last one too, must divide evenly, or the processes would average unequal shares."""
    last = examples % batch_size or batch_size
    if batch_size % processes or last % processes:
        raise ValueError(f"{examples} examples in batches of {batch_size} do not split evenly over {processes} "
                         f"processes (the last batch has {last}). Choose a batch size and a number of examples "
                         f"that are multiples of {processes}.")


def train_data_parallel(
    model: nn.Module,
    tokenizer,
    data: DatasetDict,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    head_lr: float | None = None,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.1,
    seed: int = 0,
    max_length: int = 256,
    accelerator: Accelerator | None = None,
) -> History:
    """:func:`peft_teach.train.train` under accelerate; ``batch_size`` is the global batch.

    The recipe is the same (AdamW, linear warm-up then decay, the seeded order of examples),
    so one process and N processes give the same steps up to floating-point rounding (with
    dropout off: each process draws its own dropout masks). The recorded loss of a step is the
    mean over the whole global batch. Evaluate afterwards, on one process.
    """
    accelerator = accelerator or make_accelerator()
    if not accelerator.split_batches:
        raise ValueError("This accelerator gives every process a whole batch of batch_size, so N processes would "
                         "take N times fewer, larger steps than one. Use peft_teach.distributed.make_accelerator().")
    check_training_setup(model, data, epochs=epochs, lr=lr, batch_size=batch_size, eval_split=None)
    check_even_split(len(data["train"]), batch_size, accelerator.num_processes)
    optimizer, loader, schedule = recipe(model, tokenizer, data, epochs=epochs, lr=lr, head_lr=head_lr,
                                         batch_size=batch_size, weight_decay=weight_decay,
                                         warmup_ratio=warmup_ratio, seed=seed, max_length=max_length)
    history = History(trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad))
    # Wraps the model in DistributedDataParallel, and the loader so each process gets its slice of a batch.
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    for _ in range(epochs):
        model.train()
        for batch in loader:
            start = time.perf_counter()
            labels = batch.pop("labels")
            loss = nn.functional.cross_entropy(model(**batch), labels)  # the mean over this process's share
            accelerator.backward(loss)  # ... and here the gradients are averaged over the processes
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            history.step_seconds.append(time.perf_counter() - start)
            history.train_loss.append(accelerator.reduce(loss.detach(), "mean").item())
    model.eval()
    return history


def save_from_main_process(accelerator: Accelerator, model: nn.Module, save: Callable[[nn.Module, Path], object],
                           folder: str | Path) -> None:
    """Write one checkpoint, from process 0 only: every process holds the same weights."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save(accelerator.unwrap_model(model), Path(folder))
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------- the script to launch

DEMO_RECIPE = {"epochs": 2, "lr": 5e-3, "batch_size": 16, "seed": 0}


def demo_run(examples: int, dropout: float = 0.1):
    """The model, tokenizer and data of the launched run: MiniLM with LoRA (r = 8 on query and value)."""
    data = load_task("sentiment", seed=DEMO_RECIPE["seed"])
    data = DatasetDict(train=data["train"].select(range(examples)))
    model = build_classifier(2, seed=DEMO_RECIPE["seed"])
    lora.add_lora(model, ("query", "value"), r=8, seed=DEMO_RECIPE["seed"])
    set_dropout(model, dropout)
    return model, load_tokenizer(), data


def set_dropout(model: nn.Module, p: float) -> None:
    """Each process draws its own dropout masks; with p = 0, N processes reproduce one process's steps."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


def launch_command(out: str | Path, processes: int = 2, examples: int = 64, dropout: float = 0.1,
                   port: int = 29500) -> list[str]:
    """The ``accelerate launch`` command line of this script, run with this Python."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "--module", "peft_teach.distributed",
            "--out", str(out), "--examples", str(examples), "--dropout", str(dropout)]


def launch_on_cpu(out: str | Path, processes: int = 2, examples: int = 64, dropout: float = 0.1,
                  port: int = 29500, timeout: float = 600) -> dict:
    """Run :func:`launch_command` with every process on the CPU, one thread each; return its history.json.

    The GPUs are hidden from the processes, so the demonstration also runs on a machine with one GPU
    (two processes cannot share one GPU with NCCL).
    """
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(launch_command(out, processes, examples, dropout, port), env=environment,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"accelerate launch failed (exit status {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((Path(out) / "history.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description="LoRA on the sentiment task, data parallel (see the module's doc).")
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoint and history.json")
    parser.add_argument("--examples", type=int, default=64, help="training examples (a multiple of the batch)")
    parser.add_argument("--dropout", type=float, default=0.1, help="0 to compare with a one-process run exactly")
    args = parser.parse_args()
    if (args.out / "history.json").exists():  # a finished run's record: never written over
        raise SystemExit(f"{args.out / 'history.json'} exists: choose a new --out folder.")

    accelerator = make_accelerator()
    model, tokenizer, data = demo_run(args.examples, args.dropout)
    history = train_data_parallel(model, tokenizer, data, **DEMO_RECIPE, accelerator=accelerator)
    save_from_main_process(accelerator, model, lora.save_lora, args.out / "lora")
    if accelerator.is_main_process:
        record = {"processes": accelerator.num_processes, "backend": str(accelerator.distributed_type),
                  "recipe": DEMO_RECIPE, "examples": args.examples, "dropout": args.dropout,
                  "train_loss": history.train_loss, "all_reduce_bytes_per_step": gradient_bytes_per_step(model)}
        write_text_atomically(args.out / "history.json", json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
