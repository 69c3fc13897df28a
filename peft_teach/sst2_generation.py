"""SST-2 as generation: the language model reads a movie-review phrase and answers "positive" or "negative".

The real-data column of lesson 07. The phrases are lesson 06's SST-2 column (the packaged
sample offline, GLUE's SST-2 online), each turned into a chat prompt with a one-word answer.
An answer is scored from the words the model writes, so a model that says "The review is
positive." counts as right: the score measures what the model means, not its phrasing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from datasets import Dataset, DatasetDict

from peft_teach.data import load_glue, load_sst2_sample

LABEL_WORDS = ("negative", "positive")  # label 0 and label 1, as in SST-2
INSTRUCTION = "Is this movie review positive or negative? Answer with one word: positive or negative."
MAX_NEW_TOKENS = 10  # room for a sentence around the word; a trained model stops after it
SOURCES = ("sample", "glue")


def review_prompt(text: str) -> str:
    """The user message for one phrase: the instruction, then the review."""
    return f"{INSTRUCTION}\n\nReview: {text}"


def as_generation(data: DatasetDict) -> DatasetDict:
    """A sentiment task (``text``, ``label`` 0/1) with a ``prompt`` and an ``answer`` column added."""
    for name, split in data.items():
        missing = {"text", "label"} - set(split.column_names)
        if missing:
            raise KeyError(f"Split {name!r} lacks the column(s) {sorted(missing)}; SST-2 as generation needs "
                           "'text' and 'label' (0 = negative, 1 = positive), as load_sst2_sample() gives.")
    return DatasetDict({name: split.add_column("prompt", [review_prompt(text) for text in split["text"]])
                                   .add_column("answer", [LABEL_WORDS[label] for label in split["label"]])
                        for name, split in data.items()})


def load_sst2_generation(source: str = "sample") -> DatasetDict:
    """SST-2 phrases as prompts and one-word answers: ``"sample"`` (packaged, offline) or ``"glue"`` (download)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}: 'sample' is the packaged offline sample, "
                         f"'glue' downloads GLUE's SST-2; got {source!r}.")
    return as_generation(load_sst2_sample() if source == "sample" else load_glue("sst2"))


def few_shot_examples(data: DatasetDict, k: int, seed: int = 0) -> list[tuple[str, str]]:
    """``k`` (prompt, answer) pairs from the training split, the two labels taking turns (negative first)."""
    if "train" not in data:
        raise KeyError(f"few_shot_examples draws from the 'train' split; this data has {list(data)}.")
    train = data["train"]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(train):
        raise ValueError(f"k is the number of examples, an integer from 0 to {len(train)}; got {k!r}.")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    by_label = {label: [i for i in order if train[i]["label"] == label] for label in range(len(LABEL_WORDS))}
    picked = [by_label[n % len(LABEL_WORDS)][n // len(LABEL_WORDS)] for n in range(k)]
    return [(train[i]["prompt"], train[i]["answer"]) for i in picked]


def answer_label(text: str) -> str | None:
    """The label word an answer gives: the one of the two words it contains, or None (neither, or both)."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    found = [word for word in LABEL_WORDS if word in words]
    return found[0] if len(found) == 1 else None


def correct_per_review(predictions: Sequence[str], references: Dataset | Sequence[dict]) -> dict[str, list[bool]]:
    """For every phrase: does the answer name exactly one label word (``parse_rate``), and the right one?"""
    if isinstance(predictions, str):
        raise TypeError("predictions must be a list of generated strings, one per phrase, not a single string.")
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references: "
                         "generate exactly one answer per phrase, in the same order.")
    if len(predictions) == 0:
        raise ValueError("Nothing to score: predictions and references are empty.")
    said = [answer_label(p) for p in predictions]
    truth = [LABEL_WORDS[row["label"]] for row in references]
    return {"parse_rate": [s is not None for s in said], "accuracy": [s == t for s, t in zip(said, truth)]}


def score_answers(predictions: Sequence[str], references: Dataset | Sequence[dict]) -> dict[str, float]:
    """``parse_rate`` and ``accuracy``: the means of :func:`correct_per_review`."""
    return {name: sum(flags) / len(flags) for name, flags in correct_per_review(predictions, references).items()}
