"""The transfer protocol: a low-resource target task, learned with or without the source tasks.

Lessons 02 and 06 (AdapterFusion vs joint multi-task training vs a single adapter per
task vs multi-task prompt tuning) compare methods under these rules, which
are :mod:`peft_teach.protocol`'s rules applied to the target task:

* **Target:** ``routing`` (256 training examples), TARGET_BUDGET for every method:
  20 epochs of batch 16 = 320 steps, validation after every epoch (the learning curve).
* **Learning rate** from each method's grid on validation with seed 0; **test** mean ±
  sample std over seeds 0-2 at that rate. Heads train at ``protocol.HEAD_LR``.
* **Sources:** the four source tasks (sentiment, aspect, topic, negation). Stage 1 of
  ``fusion`` is lesson 01's adapters (``experiments.source_adapter_model``: 38-113 steps of
  batch 32 each), while the joint and multi-task prompt runs see every source for 320
  steps: that source budget favours joint training and the shared prompt, not fusion.
  ``fusion_matched`` removes the difference: its four source adapters are trained as long
  as joint training sees each source (``matched_source_recipe``), so fusion against joint
  training compares the two ways of combining tasks, not two source budgets.

The methods (identifiers are keys of :data:`TARGET_METHODS`):

* ``head_only``, ``full_ft``, ``adapter`` (one new Pfeiffer adapter), ``soft_prompt``
  (l = 20): the target alone, as in :mod:`peft_teach.protocol`.
* ``fusion``: a fusion layer over the four source adapters (+ head), with fusion's
  pull of the value matrix toward identity (``fusion.value_regularization``).
* ``fusion_matched``: the same, over source adapters trained at joint training's budget.
* ``fusion_average``: the averaging baseline; the same four adapters, each weighted 1/N
  in every layer (no attention to learn), only a new head trains (its grid is the head's).
* ``joint``: one adapter shared by the four sources *and* the target, one head per
  task; every step a batch of every task (Pfeiffer et al. 2021's MT-A baseline).
* ``mt_prompt``: one soft prompt trained on the four sources together (stage 1, under the
  protocol too: its rate chosen from the soft prompt's grid on the sources' mean validation
  accuracy, seed 0; seeds 0-2 at that rate), then tuned on the target with a new head,
  each seed starting from the stage-1 prompt of the same seed (SPoT-style transfer, Vu et
  al., ACL 2022). Stage 1's runs are stored as ``mt_prompt_stage1``.

And the measurements the table needs, each at the chosen learning rate, seeds 0-2:

* ``fusion_without``: fusion with one source adapter left out (knowledge composition);
* ``sources_alone``: each source task with its own adapter, as many steps and the same
  learning rate as ``joint`` (negative transfer = joint's source accuracy minus this);
* ``sequential_full_ft``: full fine-tuning on sentiment, then on the target; the
  sentiment accuracy before and after (catastrophic forgetting).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache, partial

import torch
from datasets import DatasetDict
from torch import nn

from peft_teach import protocol
from peft_teach.data import SOURCE_TASKS, TARGET_TASK, label_names, load_task
from peft_teach.experiments import artifacts_folder, source_adapter_model, train_or_load_adapter
from peft_teach.methods import adapters, fusion, prompts
from peft_teach.models import build_classifier
from peft_teach.train import evaluate, steps_per_epoch, train, train_multitask, using_head

TARGET_BUDGET = dict(epochs=20, batch_size=16)  # 320 steps on the 256 routing examples
STEPS = TARGET_BUDGET["epochs"] * steps_per_epoch(256, TARGET_BUDGET["batch_size"])
PROMPT_LENGTH = 20
STAGE1 = "mt_prompt_stage1"  # the stored runs of multi-task prompt tuning's first stage
STAGE1_GRID = protocol.METHODS["soft_prompt"].lr_grid  # a prompt on the sources: the soft prompt's grid
LEFT_OUT = ("aspect", "topic")  # fusion without the adapter routing needs, and without one it does not
# fusion_matched's source adapters train at joint training's chosen rate (tests/test_transfer.py checks it
# against the stored runs), so that the two differ only in how they combine the sources.
MATCHED_SOURCE_LR = 3e-3


@dataclass(frozen=True)
class TargetMethod:
    label: str
    lr_grid: tuple[float, ...]
    run: Callable[..., dict]  # (tokenizer, data, lr, seed) -> the stored numbers of one run


def load_tasks() -> dict[str, DatasetDict]:
    """The four source tasks and the target, by name."""
    return {task: load_task(task) for task in (*SOURCE_TASKS, TARGET_TASK)}


def _new_head(model: nn.Module, data: DatasetDict, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(model.head.in_features, len(label_names(data)))


def _alone(method: str) -> Callable[..., dict]:
    """A single-task method of the protocol, trained on the target only."""
    def run(tokenizer, tasks, lr, seed):
        return protocol.run(method, tasks[TARGET_TASK], lr, seed, tokenizer, budget=TARGET_BUDGET)
    return run


@lru_cache(maxsize=1)
def _library(tokenizer) -> nn.Module:
    """Lesson 01's four source adapters on one frozen MiniLM (trained once, then loaded from artifacts/)."""
    return source_adapter_model(tokenizer)


def source_epochs(data: DatasetDict) -> int:
    """Whole epochs of a source task that cover joint training's 320 steps (1,200 examples: 5 epochs, 375 steps)."""
    return math.ceil(STEPS / steps_per_epoch(len(data["train"]), TARGET_BUDGET["batch_size"]))


def matched_source_recipe(data: DatasetDict, lr: float = MATCHED_SOURCE_LR, seed: int = 0) -> dict:
    """How one source adapter trains when it must see its task as long as joint training does (``train``'s kwargs)."""
    return dict(lr=lr, seed=seed, head_lr=protocol.HEAD_LR, eval_split=None, epochs=source_epochs(data),
                batch_size=TARGET_BUDGET["batch_size"])


@lru_cache(maxsize=1)
def _matched_library(tokenizer) -> nn.Module:
    """The four source adapters at joint training's budget (seed 0), trained once, then loaded from artifacts/."""
    model = build_classifier(num_labels=2, seed=0).eval()
    for task in SOURCE_TASKS:
        data = load_task(task)
        train_or_load_adapter(model, tokenizer, data, task, artifacts_folder().parent / "matched_sources" / task,
                              adapters.AdapterConfig("pfeiffer"), **matched_source_recipe(data))
    return model


def run_fusion(tokenizer, tasks, lr, seed, names=SOURCE_TASKS, library=_library) -> dict:
    """Stage 2 of AdapterFusion on the target: a fresh fusion over ``names`` and a new head.

    ``library`` gives the frozen model holding the source adapters (lesson 01's by default).
    """
    model = copy.deepcopy(library(tokenizer))
    fusion.add_fusion(model, list(names), num_labels=len(label_names(tasks[TARGET_TASK])), seed=seed)
    name = fusion.fusion_name(list(names))
    return protocol.fit(model, tasks[TARGET_TASK], lr, seed, tokenizer, budget=TARGET_BUDGET,
                        extra_loss=fusion.value_regularization(name))


def run_fusion_matched(tokenizer, tasks, lr, seed) -> dict:
    """AdapterFusion over source adapters that saw their tasks as long as joint training does."""
    return run_fusion(tokenizer, tasks, lr, seed, library=_matched_library)


def run_fusion_average(tokenizer, tasks, lr, seed) -> dict:
    """The averaging baseline: the four source adapters weighted 1/N each in every layer; only a new head trains."""
    model = copy.deepcopy(_library(tokenizer))
    fusion.add_fusion(model, list(SOURCE_TASKS), num_labels=len(label_names(tasks[TARGET_TASK])), seed=seed)
    fusion.average_adapters(model, fusion.fusion_name(list(SOURCE_TASKS)))
    return protocol.fit(model, tasks[TARGET_TASK], lr, seed, tokenizer, budget=TARGET_BUDGET, head_apart=False)


def _multitask(model: nn.Module, tokenizer, tasks: dict[str, DatasetDict], lr: float, seed: int,
               eval_task: str | None) -> tuple[dict[str, nn.Module], object]:
    heads = {task: (model.head if task == eval_task else _new_head(model, data, seed + 1 + i))
             for i, (task, data) in enumerate(tasks.items())}
    history = train_multitask(model, tokenizer, tasks, heads, steps=STEPS, lr=lr, head_lr=protocol.HEAD_LR,
                              batch_size=TARGET_BUDGET["batch_size"], seed=seed, eval_task=eval_task,
                              eval_every=STEPS // TARGET_BUDGET["epochs"])
    return heads, history


def run_joint(tokenizer, tasks, lr, seed) -> dict:
    """One adapter shared by every source and the target; the target's numbers and each source's test accuracy."""
    model = build_classifier(len(label_names(tasks[TARGET_TASK])), seed=seed)
    adapters.add_adapter(model, "joint", adapters.AdapterConfig("pfeiffer"), seed=seed)
    heads, history = _multitask(model, tokenizer, tasks, lr, seed, eval_task=TARGET_TASK)
    tests = _accuracy_each(model, tokenizer, tasks, heads, "test")
    return {"lr": lr, "seed": seed, "trainable": history.trainable_parameters,
            "validation_curve": history.eval_accuracy, "validation": history.final_accuracy,
            "test": tests.pop(TARGET_TASK), "sources": tests}


def _accuracy_each(model: nn.Module, tokenizer, tasks: dict[str, DatasetDict], heads: dict[str, nn.Module],
                   split: str) -> dict[str, float]:
    accuracies = {}
    for task, head in heads.items():
        with using_head(model, head):
            accuracies[task] = evaluate(model, tasks[task][split], tokenizer)
    return accuracies


@lru_cache(maxsize=None)  # one entry per (rate, seed) a job trains: a 20 x 384 prompt and a few numbers, no model
def shared_prompt(tokenizer, lr: float, seed: int) -> tuple[torch.Tensor, dict]:
    """Stage 1 of multi-task prompt tuning: one prompt trained on all four sources at ``lr`` with ``seed``.

    Returns the prompt and stage 1's numbers: each source's validation and test accuracy (with its
    own head), and ``validation``, their mean, on which stage 1's rate is chosen.
    """
    sources = {task: load_task(task) for task in SOURCE_TASKS}
    model = build_classifier(2, seed=seed)
    prompts.add_soft_prompt(model, length=PROMPT_LENGTH, init="vocab", seed=seed)
    heads, _ = _multitask(model, tokenizer, sources, lr, seed=seed, eval_task=None)
    validation = _accuracy_each(model, tokenizer, sources, heads, "validation")
    return model.soft_prompt.weight.detach().clone(), {
        "lr": lr, "seed": seed, "validation": statistics.mean(validation.values()), "sources_validation": validation,
        "sources_test": _accuracy_each(model, tokenizer, sources, heads, "test")}


def run_stage1(tokenizer, tasks, lr, seed) -> dict:
    """Stage 1 alone, for the precompute: the numbers of :func:`shared_prompt` (which loads the sources itself)."""
    return shared_prompt(tokenizer, lr, seed)[1]


def run_mt_prompt(tokenizer, tasks, lr, seed, *, stage1_lr: float) -> dict:
    """Stage 2 of multi-task prompt tuning: start from the shared prompt of the same seed (trained at
    ``stage1_lr``), tune it and a new head on the target."""
    prompt, stage1 = shared_prompt(tokenizer, stage1_lr, seed)
    model = build_classifier(len(label_names(tasks[TARGET_TASK])), seed=seed)
    prompts.add_soft_prompt(model, length=PROMPT_LENGTH, seed=seed)
    with torch.no_grad():
        model.soft_prompt.weight.copy_(prompt)
    return {**protocol.fit(model, tasks[TARGET_TASK], lr, seed, tokenizer, budget=TARGET_BUDGET),
            "stage1_lr": stage1_lr, "stage1_sources": stage1["sources_test"]}


def run_source_alone(tokenizer, tasks, task: str, lr: float, seed: int) -> float:
    """One source task with its own Pfeiffer adapter, the same steps and batch as ``joint``; test accuracy."""
    data = tasks[task]
    model = build_classifier(len(label_names(data)), seed=seed)
    adapters.add_adapter(model, task, adapters.AdapterConfig("pfeiffer"), seed=seed)
    train(model, tokenizer, data, **matched_source_recipe(data, lr, seed))
    return evaluate(model, data["test"], tokenizer)


def run_sequential_full_ft(tokenizer, tasks, lr, seed) -> dict:
    """Full fine-tuning on sentiment (protocol budget), then on the target: does sentiment survive?"""
    source = tasks["sentiment"]
    model = build_classifier(len(label_names(source)), seed=seed)
    protocol.METHODS["full_ft"].add(model, seed)
    train(model, tokenizer, source, lr=lr, seed=seed, head_lr=protocol.HEAD_LR, eval_split=None, **protocol.BUDGET)
    before = evaluate(model, source["test"], tokenizer)
    source_head = model.head
    model.head = _new_head(model, tasks[TARGET_TASK], seed)
    train(model, tokenizer, tasks[TARGET_TASK], lr=lr, seed=seed, head_lr=protocol.HEAD_LR, eval_split=None,
          **TARGET_BUDGET)
    target = evaluate(model, tasks[TARGET_TASK]["test"], tokenizer)
    with using_head(model, source_head):  # the source head never moved: any drop is the shared weights'
        after = evaluate(model, source["test"], tokenizer)
    return {"lr": lr, "seed": seed, "source_before": before, "source_after": after, "target": target}


# The order is the tables' order and the precompute's: lesson 02's four (head-only, full fine-tuning, a single
# adapter, fusion) come first, so that a partial precompute already answers its question.
TARGET_METHODS: dict[str, TargetMethod] = {
    "head_only": TargetMethod("head only", protocol.METHODS["head_only"].lr_grid, _alone("head_only")),
    "full_ft": TargetMethod("full fine-tuning", protocol.METHODS["full_ft"].lr_grid, _alone("full_ft")),
    "adapter": TargetMethod("single adapter (target only)", protocol.METHODS["pfeiffer"].lr_grid,
                            _alone("pfeiffer")),
    "fusion": TargetMethod("AdapterFusion (4 source adapters)", (1e-3, 3e-3, 1e-2), run_fusion),
    "fusion_matched": TargetMethod("AdapterFusion (4 sources at joint's budget)", (1e-3, 3e-3, 1e-2),
                                   run_fusion_matched),
    "fusion_average": TargetMethod("average of the 4 adapters (no attention)", protocol.METHODS["head_only"].lr_grid,
                                   run_fusion_average),
    "joint": TargetMethod("joint multi-task adapter", protocol.METHODS["pfeiffer"].lr_grid, run_joint),
    "soft_prompt": TargetMethod("soft prompt (target only)", protocol.METHODS["soft_prompt"].lr_grid,
                                _alone("soft_prompt")),
    "mt_prompt": TargetMethod("multi-task prompt tuning", protocol.METHODS["soft_prompt"].lr_grid, run_mt_prompt),
}


# Stage 1 of multi-task prompt tuning, chosen like a method: its runs return "lr" and "validation" as the
# protocol's do, so protocol.choose_lr reads them.
STAGE1_METHODS: dict[str, TargetMethod] = {
    STAGE1: TargetMethod("multi-task prompt, stage 1 (4 sources)", STAGE1_GRID, run_stage1)}


def runnable_methods(stage1_lr: float) -> dict[str, TargetMethod]:
    """TARGET_METHODS, each ``run(tokenizer, tasks, lr, seed)`` ready to call.

    Only ``mt_prompt`` needs more: the rate stage 1 chose, which exists once stage 1 has run.
    """
    return {**TARGET_METHODS, "mt_prompt": replace(TARGET_METHODS["mt_prompt"],
                                                   run=partial(run_mt_prompt, stage1_lr=stage1_lr))}


def _at_seeds(runs: dict, key: str, lr: float) -> list[dict] | None:
    found = [runs.get(f"{key}|lr={lr:g}|seed={seed}") for seed in protocol.SEEDS]
    return None if any(run is None for run in found) else found


def summarize(stored: dict) -> dict:
    """The target methods (as ``protocol.summarize``) and the three transfer measurements, where stored.

    ``negative_transfer``: per source task, its test accuracies under joint training and
    alone; ``fusion_without``: fusion's test accuracies with one source adapter left out;
    ``stage1``: multi-task prompt tuning's first stage (its grid on the sources' mean
    validation accuracy, the chosen rate, each source's test accuracy per seed);
    ``forgetting``: sequential full fine-tuning's sentiment accuracy before/after.
    """
    runs = stored["runs"]
    methods = protocol.summarize(stored, TARGET_METHODS)
    summary = {"methods": methods}
    if "joint" in methods:
        joint = methods["joint"]
        alone = {task: _at_seeds(runs, f"source_alone={task}", joint["lr"]) for task in SOURCE_TASKS}
        summary["negative_transfer"] = {
            task: {"joint": [run["sources"][task] for run in joint["runs"]], "alone": [run["test"] for run in alone[task]]}
            for task in SOURCE_TASKS if alone[task] is not None}
    if "fusion" in methods:
        summary["fusion_without"] = {
            task: [run["test"] for run in found] for task in LEFT_OUT
            if (found := _at_seeds(runs, f"fusion_without={task}", methods["fusion"]["lr"])) is not None}
    stage1 = protocol.grid_runs(runs, STAGE1)
    if set(STAGE1_GRID) <= set(stage1):
        lr = protocol.choose_lr(list(stage1.values()))
        found = _at_seeds(runs, STAGE1, lr)
        summary["stage1"] = {"lr": lr, "grid": {rate: run["validation"] for rate, run in sorted(stage1.items())},
                             "sources_test": None if found is None else
                             {task: [run["sources_test"][task] for run in found] for task in SOURCE_TASKS}}
    if "full_ft" in methods:
        found = _at_seeds(runs, "sequential_full_ft", methods["full_ft"]["lr"])
        if found is not None:
            summary["forgetting"] = {key: [run[key] for run in found] for key in ("source_before", "source_after", "target")}
    return summary
