"""SST-2 as generation (lesson 07's real-data column): prompts, answers read as words, exact scores."""

from __future__ import annotations

import pytest
from datasets import Dataset, DatasetDict

from peft_teach import llm_experiments as E
from peft_teach import sst2_generation as S


@pytest.fixture(scope="module")
def data():
    return S.load_sst2_generation()


def test_the_packaged_sample_becomes_prompts_and_one_word_answers(data):
    assert {name: len(split) for name, split in data.items()} == {"train": 3000, "validation": 500, "test": 1000}
    row = data["test"][0]
    assert row["prompt"] == S.review_prompt(row["text"]) and row["prompt"].startswith(S.INSTRUCTION)
    assert row["prompt"].endswith(row["text"]) and row["answer"] == S.LABEL_WORDS[row["label"]]


@pytest.mark.parametrize("answer, said", [
    ("positive", "positive"), ("Negative.", "negative"), ("The review is POSITIVE!", "positive"),
    ("positive or negative", None),  # both words: no answer
    ("positively great", None), ("", None), ("I cannot tell.", None),
])
def test_an_answer_is_read_as_the_one_label_word_it_contains(answer, said):
    assert S.answer_label(answer) == said


def test_scores_count_parsed_and_right_answers():
    references = [{"label": 1}, {"label": 0}, {"label": 1}, {"label": 0}]
    answers = ["positive", "positive", "It is positive.", "no idea"]
    assert S.correct_per_review(answers, references) == {
        "parse_rate": [True, True, True, False], "accuracy": [True, False, True, False]}
    assert S.score_answers(answers, references) == {"parse_rate": 0.75, "accuracy": 0.5}
    assert E.score(E.SST2, answers, references) == {"parse_rate": 0.75, "accuracy": 0.5}


def test_few_shot_examples_come_from_train_and_take_turns_over_the_labels(data):
    examples = S.few_shot_examples(data, 4)
    assert [answer for _, answer in examples] == ["negative", "positive", "negative", "positive"]
    assert all(prompt in data["train"]["prompt"] for prompt, _ in examples)
    assert S.few_shot_examples(data, 0) == []


@pytest.mark.parametrize("call, error, fix", [
    (lambda d: S.load_sst2_generation("imdb"), ValueError, "'sample' is the packaged offline sample"),
    (lambda d: S.few_shot_examples(d, -1), ValueError, "an integer from 0"),
    (lambda d: S.few_shot_examples(DatasetDict({"test": d["test"]}), 2), KeyError, "draws from the 'train' split"),
    (lambda d: S.correct_per_review("positive", [{"label": 1}]), TypeError, "a list of generated strings"),
    (lambda d: S.correct_per_review(["positive"], [{"label": 1}, {"label": 0}]), ValueError, "one answer per phrase"),
    (lambda d: S.correct_per_review([], []), ValueError, "Nothing to score"),
    (lambda d: S.as_generation(DatasetDict({"train": Dataset.from_dict({"sentence": ["x"], "label": [0]})})),
     KeyError, "needs 'text' and 'label'"),
])
def test_bad_input_says_what_to_fix(data, call, error, fix):
    with pytest.raises(error, match=fix):
        call(data)


def test_the_difference_interval_reads_sst2_answers(data):
    references = data["test"].select(range(40))
    right = list(references["answer"])
    flipped = [S.LABEL_WORDS[1 - label] for label in references["label"]]
    assert E.difference_interval([right], [flipped], references, field="accuracy", task=E.SST2) == (1.0, 1.0, 1.0)


def test_the_sst2_comparison_has_the_ticket_methods_with_grids_around_their_ticket_rates():
    # SST-2 runs the three methods stored before the adapter and Prefix-Tuning+ joined the ticket comparison
    assert set(E.SST2.methods) == {"lora", "prefix", "soft_prompt"} < set(E.TICKETS.methods)
    chosen_on_tickets = {"lora": 1e-2, "prefix": 1e-1, "soft_prompt": 1e-2}
    for method, spec in E.SST2.methods.items():
        assert sorted(spec.lr_grid)[1] == chosen_on_tickets[method], method
