"""The language-model comparisons of lesson 07: prompting and PEFT methods on two generation tasks.

Support tickets to JSON (generated, :mod:`peft_teach.tickets`) and SST-2 phrases answered with
"positive" or "negative" (real, :mod:`peft_teach.sst2_generation`). For each, one recipe for every
method (same data, batch, steps, evaluation and seeds), a learning rate chosen per method on
validation from a small grid, then more seeds at that rate. ``scripts/precompute.py llm_tickets``
and ``llm_sst2`` run them (resumable) and store the results; lesson 07 reads them and re-trains
:data:`LIVE` on the spot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset, DatasetDict
from torch import nn

from peft_teach import llm, protocol, sst2_generation, tickets
from peft_teach.methods import adapters, lora, prefix, prefix_plus, prompts

BUDGET = {"steps": 100, "batch_size": 8, "warmup_ratio": 0.1}  # 800 examples: 1.3 passes over 600 tickets
MAX_NEW_TOKENS = 28  # tickets: the longest answer is 21 tokens; a few more let a model show it would not stop
FEW_SHOT = 3  # in-context examples for the few-shot baseline
SEEDS = protocol.SEEDS  # the encoder lessons' seeds: one protocol for the whole course
SELECTION_METRIC = "all_fields"  # the tickets' validation score that picks the learning rate


@dataclass(frozen=True)
class LLMMethod:
    """How to add one method to the LLM, and the learning rates to try."""

    label: str
    add: Callable[[nn.Module, object, int], object]  # (model, tokenizer, seed) -> whatever add_* returns
    lr_grid: tuple[float, ...]


def peft_methods(instruction: str, grids: dict[str, tuple[float, ...]]) -> dict[str, LLMMethod]:
    """The methods named in ``grids``, as lesson 07 configures them; the soft prompt starts from ``instruction``."""
    adds = {
        "lora": ("LoRA r=8 on q, v", lambda model, tok, seed: lora.add_lora(
            model, ("q_proj", "v_proj"), r=8, alpha=16, seed=seed)),
        "prefix": ("prefix l=10", lambda model, tok, seed: prefix.add_prefix(model, length=10, seed=seed)),
        "soft_prompt": ("soft prompt l=20", lambda model, tok, seed: prompts.add_soft_prompt(
            model, length=20, init="text", text=instruction, tokenizer=tok, seed=seed)),
        "adapter": ("adapter Pfeiffer m=36", lambda model, tok, seed: adapters.add_adapter(
            model, "task", adapters.AdapterConfig(placement="pfeiffer", reduction_factor=16), seed=seed)),
        "prefix_plus": ("Prefix-Tuning+", lambda model, tok, seed: prefix_plus.add_prefix_plus(model, seed=seed)),
    }
    return {name: LLMMethod(*adds[name], grid) for name, grid in grids.items()}


METHODS = peft_methods(tickets.INSTRUCTION, {"lora": (1e-3, 3e-3), "prefix": (1e-2, 3e-2), "soft_prompt": (3e-2, 1e-1),
                                             "adapter": (3e-3, 1e-2), "prefix_plus": (3e-3, 1e-2)})
SCORE_FIELDS = ("parse_rate", *tickets.FIELDS, "all_fields")  # the columns of lesson 07's ticket table


@dataclass(frozen=True)
class GenerationTask:
    """What a comparison needs to know about a task: its data, how answers are scored, its methods."""

    name: str
    load: Callable[[], DatasetDict]  # splits with "prompt" and "answer" columns
    correct: Callable[[Sequence[str], Dataset], dict[str, list[bool]]]  # per example, per score field
    few_shot: Callable[[DatasetDict, int], list[tuple[str, str]]]
    max_new_tokens: int
    score_fields: tuple[str, ...]
    selection_metric: str
    methods: dict[str, LLMMethod]


TICKETS = GenerationTask("support tickets -> JSON", tickets.load_tickets, tickets.correct_per_ticket,
                         tickets.few_shot_examples, MAX_NEW_TOKENS, SCORE_FIELDS, SELECTION_METRIC, METHODS)
# SST-2's grids are centred on the rates the ticket task chose (LoRA 1e-2, prefix 0.1, soft prompt 1e-2).
SST2 = GenerationTask("SST-2 phrases -> positive/negative", sst2_generation.load_sst2_generation,
                      sst2_generation.correct_per_review, sst2_generation.few_shot_examples,
                      sst2_generation.MAX_NEW_TOKENS, ("parse_rate", "accuracy"), "accuracy",
                      peft_methods(sst2_generation.INSTRUCTION, {"lora": (3e-3, 1e-2, 3e-2), "prefix": (3e-2, 1e-1, 3e-1),
                                                                 "soft_prompt": (3e-3, 1e-2, 3e-2)}))

# What lesson 07 trains live: LoRA for 6 steps at the rate the grid chose, scored on the first 32 test tickets.
# A lesson must stay within 4 minutes on a 2-core CPU, and one step of 8 tickets takes about 8 s of it there.
LIVE = {"method": "lora", "lr": 1e-2, "steps": 6, "batch_size": 8, "seed": 0, "test_examples": 32}


def score(task: GenerationTask, answers: Sequence[str], split: Dataset) -> dict[str, float]:
    """Each score field of ``task``: the share of examples it marks correct."""
    return {name: sum(flags) / len(flags) for name, flags in task.correct(answers, split).items()}


def answer_and_score(model: nn.Module, tokenizer, split: Dataset, examples=(), task: GenerationTask = TICKETS) -> dict:
    """Greedy answers to every example of ``split`` and their scores field by field."""
    answers = llm.generate(model, tokenizer, split["prompt"], max_new_tokens=task.max_new_tokens, examples=examples)
    return {"scores": score(task, answers, split), "answers": answers}


def prompting(tokenizer, data: DatasetDict, shots: int, task: GenerationTask = TICKETS) -> dict:
    """The base model with ``shots`` solved examples from the training split in the conversation."""
    examples = task.few_shot(data, shots) if shots else ()
    return answer_and_score(llm.load_llm(), tokenizer, data["test"], examples, task)


def run(method: str, data: DatasetDict, lr: float, seed: int, tokenizer, steps: int = BUDGET["steps"],
        test_examples: int | None = None, task: GenerationTask = TICKETS) -> dict:
    """Train ``method`` on the train split; score validation and test; keep the loss curve."""
    model = llm.load_llm()
    task.methods[method].add(model, tokenizer, seed)
    history = llm.train_lm(model, tokenizer, data["train"], steps=steps, lr=lr, batch_size=BUDGET["batch_size"],
                           warmup_ratio=BUDGET["warmup_ratio"], seed=seed)
    test = data["test"] if test_examples is None else data["test"].select(range(test_examples))
    validation = answer_and_score(model, tokenizer, data["validation"], task=task)["scores"]
    return {"validation_scores": validation, "test": answer_and_score(model, tokenizer, test, task=task),
            "train_loss": [round(loss, 4) for loss in history.train_loss],
            "trainable_parameters": history.trainable_parameters}


def summarize(stored_runs: dict, task: GenerationTask = TICKETS) -> dict[str, dict | None]:
    """Per method, from the stored runs: the chosen rate, its seeds' runs, test and final-loss mean ± sample std.

    The rate is chosen on validation by the protocol's own rule (:func:`protocol.choose_lr`).
    A method whose grid or seeds are not all stored maps to None, so a table can say "not yet".
    """
    summary = {}
    for method, spec in task.methods.items():
        grid = protocol.grid_runs(stored_runs, method)
        if not set(spec.lr_grid) <= set(grid):
            summary[method] = None
            continue
        lr = protocol.choose_lr(list(grid.values()))
        runs = [stored_runs.get(f"{method}|lr={lr:g}|seed={seed}") for seed in SEEDS]
        if None in runs:
            summary[method] = None
            continue
        summary[method] = {
            "label": spec.label, "lr": lr, "runs": runs, "trainable": runs[0]["trainable_parameters"],
            "grid": {rate: run["validation"] for rate, run in grid.items()},
            "test": {field: protocol.mean_std([run["test"]["scores"][field] for run in runs])
                     for field in task.score_fields},
            "final_loss": protocol.mean_std([run["train_loss"][-1] for run in runs]),
            "loss_curve": [sum(losses) / len(losses) for losses in zip(*(run["train_loss"] for run in runs))],
        }
    return summary


def difference_interval(answers_a: Sequence[Sequence[str]], answers_b: Sequence[Sequence[str]], references: Dataset,
                        field: str = "all_fields", resamples: int = 2000, level: float = 0.95,
                        seed: int = 0, task: GenerationTask = TICKETS) -> tuple[float, float, float]:
    """Score of A minus score of B on ``field``, with an interval covering seeds *and* test tickets.

    ``answers_a`` / ``answers_b`` hold one list of answers per seed (one list for a method
    without seeds, such as prompting). Each bootstrap round draws a seed of each side and
    resamples the same tickets for both (paired), so the interval is as wide as the
    seed-to-seed spread and the test set's sampling together make it. Returns
    ``(difference of the means, lower, upper)``.
    """
    def table(runs):
        return torch.tensor([task.correct(answers, references)[field] for answers in runs],
                            dtype=torch.float64)  # (seeds, examples)

    a, b = table(answers_a), table(answers_b)
    generator = torch.Generator().manual_seed(seed)
    tickets_drawn = torch.randint(0, a.shape[1], (resamples, a.shape[1]), generator=generator)
    seed_a = torch.randint(0, a.shape[0], (resamples,), generator=generator)
    seed_b = torch.randint(0, b.shape[0], (resamples,), generator=generator)
    differences = (a[seed_a[:, None], tickets_drawn] - b[seed_b[:, None], tickets_drawn]).mean(dim=1)
    tail = (1 - level) / 2
    lower, upper = torch.quantile(differences, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return (a.mean() - b.mean()).item(), lower, upper


def differences(summary: dict, baseline: tuple[str, Sequence[str]], references: Dataset, field: str,
                task: GenerationTask = TICKETS) -> list[tuple[str, float, float, float, str]]:
    """Every stored method against a seedless baseline, then every pair of methods.

    ``baseline`` is (label, answers), e.g. 3-shot prompting. Each row is ``(pair, difference,
    lower, upper, verdict)`` for first minus second, with the interval of
    :func:`difference_interval` and :func:`protocol.verdict` reading it.
    """
    answers = {row["label"]: [run["test"]["answers"] for run in row["runs"]]
               for row in summary.values() if row is not None}
    labels = list(answers)
    pairs = [(label, baseline[0]) for label in labels]
    pairs += [(first, second) for i, first in enumerate(labels) for second in labels[i + 1:]]
    answers[baseline[0]] = [list(baseline[1])]
    rows = []
    for first, second in pairs:
        difference, lower, upper = difference_interval(answers[first], answers[second], references, field, task=task)
        rows.append((f"{first} - {second}", difference, lower, upper, protocol.verdict(lower, upper)))
    return rows
