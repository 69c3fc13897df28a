"""The language-model comparison of lesson 07: prompting and PEFT methods on the ticket task.

One recipe for every method (same data, batch, steps, evaluation and seeds), a learning
rate chosen per method on validation from a small grid, then more seeds at that rate.
``scripts/precompute.py llm_tickets`` runs it (resumable) and stores the results;
lesson 07 reads them and re-trains :data:`LIVE` on the spot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset, DatasetDict
from torch import nn

from peft_teach import llm, protocol, tickets
from peft_teach.methods import lora, prefix, prompts

BUDGET = {"steps": 100, "batch_size": 8, "warmup_ratio": 0.1}  # 800 tickets: 1.3 passes over the 600
MAX_NEW_TOKENS = 28  # the longest answer is 21 tokens; a few more let a model show it would not stop
FEW_SHOT = 3  # in-context examples for the few-shot baseline
SEEDS = protocol.SEEDS  # the encoder lessons' seeds: one protocol for the whole course
SELECTION_METRIC = "all_fields"  # validation score that picks the learning rate


@dataclass(frozen=True)
class LLMMethod:
    """How to add one method to the LLM, and the learning rates to try."""

    label: str
    add: Callable[[nn.Module, object, int], object]  # (model, tokenizer, seed) -> whatever add_* returns
    lr_grid: tuple[float, ...]


METHODS: dict[str, LLMMethod] = {
    "lora": LLMMethod("LoRA r=8 on q, v", lambda model, tok, seed: lora.add_lora(
        model, ("q_proj", "v_proj"), r=8, alpha=16, seed=seed), (1e-3, 3e-3)),
    "prefix": LLMMethod("prefix l=10", lambda model, tok, seed: prefix.add_prefix(
        model, length=10, seed=seed), (1e-2, 3e-2)),
    "soft_prompt": LLMMethod("soft prompt l=20", lambda model, tok, seed: prompts.add_soft_prompt(
        model, length=20, init="text", text=tickets.INSTRUCTION, tokenizer=tok, seed=seed), (3e-2, 1e-1)),
}

# What lesson 07 trains live: LoRA for 30 steps, scored on the first 48 test tickets.
LIVE = {"method": "lora", "lr": 2e-3, "steps": 30, "batch_size": 8, "seed": 0, "test_examples": 48}


def answer_and_score(model: nn.Module, tokenizer, split: Dataset, examples=()) -> dict:
    """Greedy answers to every ticket of ``split`` and their scores field by field."""
    answers = llm.generate(model, tokenizer, split["prompt"], max_new_tokens=MAX_NEW_TOKENS, examples=examples)
    return {"scores": tickets.score_answers(answers, split), "answers": answers}


def prompting(tokenizer, data: DatasetDict, shots: int) -> dict:
    """The base model with ``shots`` solved tickets from the training split in the conversation."""
    examples = tickets.few_shot_examples(data, shots) if shots else ()
    return answer_and_score(llm.load_llm(), tokenizer, data["test"], examples)


def run(method: str, data: DatasetDict, lr: float, seed: int, tokenizer, steps: int = BUDGET["steps"],
        test_examples: int | None = None) -> dict:
    """Train ``method`` on the train split; score validation and test; keep the loss curve."""
    model = llm.load_llm()
    METHODS[method].add(model, tokenizer, seed)
    history = llm.train_lm(model, tokenizer, data["train"], steps=steps, lr=lr, batch_size=BUDGET["batch_size"],
                           warmup_ratio=BUDGET["warmup_ratio"], seed=seed)
    test = data["test"] if test_examples is None else data["test"].select(range(test_examples))
    validation = answer_and_score(model, tokenizer, data["validation"])["scores"]
    return {"validation_scores": validation, "test": answer_and_score(model, tokenizer, test),
            "train_loss": [round(loss, 4) for loss in history.train_loss],
            "trainable_parameters": history.trainable_parameters}


SCORE_FIELDS = ("parse_rate", *tickets.FIELDS, "all_fields")  # the columns of lesson 07's table


def summarize(stored_runs: dict) -> dict[str, dict | None]:
    """Per method, from the stored runs: the chosen rate, its seeds' runs, test and final-loss mean ± sample std.

    The rate is chosen on validation by the protocol's own rule (:func:`protocol.choose_lr`).
    A method whose grid or seeds are not all stored maps to None, so a table can say "not yet".
    """
    summary = {}
    for method, spec in METHODS.items():
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
            "test": {field: protocol.mean_std([run["test"]["scores"][field] for run in runs]) for field in SCORE_FIELDS},
            "final_loss": protocol.mean_std([run["train_loss"][-1] for run in runs]),
            "loss_curve": [sum(losses) / len(losses) for losses in zip(*(run["train_loss"] for run in runs))],
        }
    return summary


def difference_interval(answers_a: Sequence[Sequence[str]], answers_b: Sequence[Sequence[str]], references: Dataset,
                        field: str = "all_fields", resamples: int = 2000, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float, float]:
    """Score of A minus score of B on ``field``, with an interval covering seeds *and* test tickets.

    ``answers_a`` / ``answers_b`` hold one list of answers per seed (one list for a method
    without seeds, such as prompting). Each bootstrap round draws a seed of each side and
    resamples the same tickets for both (paired), so the interval is as wide as the
    seed-to-seed spread and the test set's sampling together make it. Returns
    ``(difference of the means, lower, upper)``.
    """
    def table(runs):
        return torch.tensor([tickets.correct_per_ticket(answers, references)[field] for answers in runs],
                            dtype=torch.float64)  # (seeds, tickets)

    a, b = table(answers_a), table(answers_b)
    generator = torch.Generator().manual_seed(seed)
    tickets_drawn = torch.randint(0, a.shape[1], (resamples, a.shape[1]), generator=generator)
    seed_a = torch.randint(0, a.shape[0], (resamples,), generator=generator)
    seed_b = torch.randint(0, b.shape[0], (resamples,), generator=generator)
    differences = (a[seed_a[:, None], tickets_drawn] - b[seed_b[:, None], tickets_drawn]).mean(dim=1)
    tail = (1 - level) / 2
    lower, upper = torch.quantile(differences, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return (a.mean() - b.mean()).item(), lower, upper
