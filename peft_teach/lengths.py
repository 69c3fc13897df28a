"""Prefix tuning's length trade-off, measured under the protocol (lesson 04).

A prefix shares one softmax with the input: on long inputs each prefix slot gets a
smaller share of attention; on short inputs a long prefix can swamp the input.
Prefix-Tuning+ (Wang et al., 2025) moves the prefix's contribution outside the softmax.
These runs test both halves of the trade-off with :mod:`peft_teach.protocol`'s rules
(a learning rate per method chosen on validation with seed 0, test mean ± sample std
over seeds 0-2, the head at ``protocol.HEAD_LR``):

* three methods with exactly 73,728 trainable parameters (+ the head): prefix tuning
  (l = 16), Prefix-Tuning+ and LoRA (r = 8 on query and value), each trained on short
  reviews (``sentiment``, the protocol's 300 steps) **and** on long ones
  (``sentiment_long``: the same sentiment clause among 16-20 neutral sentences, >= 128
  tokens; 4 epochs of batch 16 = 152 steps, the same 4 passes over the data);
* every run is also tested on the other length (``other_test``);
* a long prefix (l = 64) on the short reviews: the other half of the trade-off.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datasets import DatasetDict
from torch import nn

from peft_teach import protocol
from peft_teach.methods import lora, prefix, prefix_plus
from peft_teach.models import build_classifier
from peft_teach.train import evaluate

LONG_BUDGET = dict(epochs=4, batch_size=16)  # 152 steps on the 600 long training reviews
BUDGETS = {"short": protocol.BUDGET, "long": LONG_BUDGET}


@dataclass(frozen=True)
class LengthRun:
    label: str
    lr_grid: tuple[float, ...]
    add: Callable[[nn.Module, int], object]
    train_on: str  # "short" or "long"


def _prefix(length: int) -> Callable[[nn.Module, int], object]:
    return lambda model, seed: prefix.add_prefix(model, length=length, seed=seed)


_METHODS = {
    "prefix": ("prefix (l=16)", protocol.METHODS["prefix"].lr_grid, _prefix(16)),
    "prefix_plus": ("Prefix-Tuning+", protocol.METHODS["prefix_plus"].lr_grid,
                    lambda model, seed: prefix_plus.add_prefix_plus(model, seed=seed)),
    "lora": ("LoRA (r=8, q+v)", protocol.METHODS["lora"].lr_grid,
             lambda model, seed: lora.add_lora(model, ("query", "value"), r=8, seed=seed)),
}


def _trained_on(inputs: str) -> dict[str, LengthRun]:
    """The three methods of :data:`_METHODS`, each trained on ``inputs`` ("short" or "long")."""
    return {f"{method}@{inputs}": LengthRun(f"{label}, trained on {inputs}", grid, add, inputs)
            for method, (label, grid, add) in _METHODS.items()}


# Identifiers read "<method>@<inputs it trains on>". The precompute runs them in this order, most informative
# first (the job spans sessions): training on long inputs is the paper's case, then the long prefix on short inputs,
# then the short-trained runs, whose accuracy on short inputs lesson 04's stored comparison already shows.
LENGTH_RUNS: dict[str, LengthRun] = {
    **_trained_on("long"),
    "prefix_64@short": LengthRun("prefix (l=64), trained on short", protocol.METHODS["prefix"].lr_grid,
                                 _prefix(64), "short"),
    **_trained_on("short"),
}


def other_length(inputs: str) -> str:
    return "long" if inputs == "short" else "short"


def run(key: str, tasks: dict[str, DatasetDict], lr: float, seed: int, tokenizer) -> dict:
    """Train ``LENGTH_RUNS[key]`` once; its protocol numbers plus the test accuracy on the other length."""
    model = _built(key, seed)
    spec = LENGTH_RUNS[key]
    result = protocol.fit(model, tasks[spec.train_on], lr, seed, tokenizer, budget=BUDGETS[spec.train_on])
    return _tested_on_the_other_length(result, model, key, tasks, tokenizer)


def probe(key: str, tasks: dict[str, DatasetDict], lr: float, tokenizer) -> dict:
    """Seed 0's run of ``LENGTH_RUNS[key]``, then ``protocol.PROBE_EXTRA_EPOCHS`` more epochs from where it ended."""
    train_on = LENGTH_RUNS[key].train_on
    return protocol.fit_then_continue(
        _built(key, protocol.SEEDS[0]), tasks[train_on], lr, tokenizer, budget=BUDGETS[train_on],
        measure=lambda model, numbers: _tested_on_the_other_length(numbers, model, key, tasks, tokenizer))


def _built(key: str, seed: int) -> nn.Module:
    model = build_classifier(2, seed=seed)
    LENGTH_RUNS[key].add(model, seed)
    return model


def _tested_on_the_other_length(result: dict, model: nn.Module, key: str, tasks: dict[str, DatasetDict],
                                tokenizer) -> dict:
    other = tasks[other_length(LENGTH_RUNS[key].train_on)]["test"]
    return {**result, "other_test": evaluate(model, other, tokenizer)}


def summarize(stored: dict) -> dict[str, dict]:
    """``protocol.summarize`` of the stored runs, plus each run's test accuracy by input length.

    Every row gains ``"short"`` and ``"long"``: (mean, sample std) over the seeds of the test
    accuracy on short and on long reviews, whichever of the two the method trained on. A row
    with a probe (``row["probe"]``) gains the probe's ``"short"`` and ``"long"`` test accuracy too, after the
    budget (``row["probe"]["at_budget"]``) and after the extra epochs.
    """
    summary = protocol.summarize(stored, LENGTH_RUNS)
    for key, row in summary.items():
        trained_on = LENGTH_RUNS[key].train_on
        row[trained_on] = protocol.mean_std(row["test"])
        row[other_length(trained_on)] = protocol.mean_std([run["other_test"] for run in row["runs"]])
        if row["probe"] is not None:
            by_length = lambda run: {**run, trained_on: run["test"], other_length(trained_on): run["other_test"]}
            row["probe"] = {**by_length(row["probe"]), "at_budget": by_length(row["probe"]["at_budget"])}
    return summary
