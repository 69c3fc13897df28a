"""The length trade-off runs of lesson 04: equal budgets, both lengths, a long prefix."""

from __future__ import annotations

import pytest
from datasets import DatasetDict

from peft_teach import data, lengths, protocol
from peft_teach.models import build_classifier


@pytest.mark.parametrize("key", [k for k in lengths.LENGTH_RUNS if not k.startswith("prefix_64")])
def test_the_three_methods_train_exactly_73728_parameters_besides_the_head(key):
    model = build_classifier(2, seed=0)
    lengths.LENGTH_RUNS[key].add(model, 0)
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert sum(n for name, n in trainable.items() if not name.startswith("head.")) == 73_728


def test_the_long_prefix_has_four_times_the_slots():
    model = build_classifier(2, seed=0)
    lengths.LENGTH_RUNS["prefix_64@short"].add(model, 0)
    assert model.prefix.prefix.shape[2] == 64


def test_every_method_trains_on_both_lengths():
    trained_on = {}
    for key, spec in lengths.LENGTH_RUNS.items():
        trained_on.setdefault(key.split("@")[0], set()).add(spec.train_on)
    assert all(trained_on[m] == {"short", "long"} for m in ("prefix", "prefix_plus", "lora"))


def test_a_run_is_also_tested_on_the_other_length(tokenizer, monkeypatch):
    monkeypatch.setitem(lengths.BUDGETS, "long", dict(epochs=1, batch_size=8))
    tiny = {name: DatasetDict({split: rows.select(range(8)) for split, rows in data.load_task(task).items()})
            for name, task in (("short", "sentiment"), ("long", "sentiment_long"))}
    result = lengths.run("lora@long", tiny, 1e-3, seed=0, tokenizer=tokenizer)
    assert 0.0 <= result["other_test"] <= 1.0 and len(result["validation_curve"]) == 1
    probe = lengths.probe("lora@long", tiny, 1e-3, tokenizer=tokenizer)  # the budget, then more epochs
    assert len(probe["validation_curve"]) == 1 + protocol.PROBE_EXTRA_EPOCHS
    assert 0.0 <= probe["at_budget"]["other_test"] <= 1.0 and 0.0 <= probe["other_test"] <= 1.0


def test_stored_length_runs_follow_the_current_recipe():
    import json

    from peft_teach.precomputed import path

    file = path("length_tradeoff")
    if not file.exists():
        pytest.skip("length_tradeoff.json not precomputed yet (python scripts/precompute.py length_tradeoff)")
    stored = json.loads(file.read_text())
    assert stored["recipe"]["budgets"] == lengths.BUDGETS
    assert stored["recipe"]["lr_grid"] == {key: list(spec.lr_grid) for key, spec in lengths.LENGTH_RUNS.items()}
    for key, run in stored["runs"].items():
        name, _, _, *probe = key.split("|")
        spec = lengths.LENGTH_RUNS[name]
        if probe:  # the one longer run of a method still climbing
            assert key == protocol.probe_key(name, run["lr"])
            budget_epochs = lengths.BUDGETS[spec.train_on]["epochs"]
            assert run["validation_curve"][:budget_epochs] == run["at_budget"]["validation_curve"]
            assert 0.0 <= run["at_budget"]["other_test"] <= 1.0
        epochs = protocol.PROBE_EPOCHS if probe else lengths.BUDGETS[spec.train_on]["epochs"]
        assert len(run["validation_curve"]) == epochs, key
        assert 0.0 <= run["test"] <= 1.0 and 0.0 <= run["other_test"] <= 1.0, key


def test_summary_files_each_accuracy_under_the_length_it_was_tested_on():
    runs = {}
    for key, spec in lengths.LENGTH_RUNS.items():
        same, other = (0.9, 0.6) if spec.train_on == "short" else (0.8, 0.7)  # test, other_test
        for lr in spec.lr_grid:
            runs[f"{key}|lr={lr:g}|seed=0"] = {"lr": lr, "validation": 0.5, "test": same, "other_test": other,
                                               "validation_curve": [0.5], "trainable": 1}
        for seed in (1, 2):
            runs[f"{key}|lr={min(spec.lr_grid):g}|seed={seed}"] = {
                "lr": min(spec.lr_grid), "validation": 0.5, "test": same + 0.01 * seed, "other_test": other,
                "validation_curve": [0.5], "trainable": 1}
    lr = min(lengths.LENGTH_RUNS["lora@long"].lr_grid)
    at_budget = {"lr": lr, "seed": 0, "validation": 0.5, "test": 0.55, "other_test": 0.52, "validation_curve": [0.5]}
    runs[protocol.probe_key("lora@long", lr)] = protocol.continued(at_budget, {
        "lr": lr, "validation": 0.9, "test": 0.95, "other_test": 0.85, "trainable": 1,
        "validation_curve": [0.5] * protocol.PROBE_EXTRA_EPOCHS})
    summary = lengths.summarize({"runs": runs})
    assert summary["lora@short"]["short"][0] == pytest.approx(0.91) and summary["lora@short"]["long"] == (0.6, 0.0)
    assert summary["lora@long"]["long"][0] == pytest.approx(0.81) and summary["lora@long"]["short"] == (0.7, 0.0)
    # the probe is filed by length too, and left out of the seeds' mean
    assert (summary["lora@long"]["probe"]["long"], summary["lora@long"]["probe"]["short"]) == (0.95, 0.85)
    at_budget = summary["lora@long"]["probe"]["at_budget"]
    assert (at_budget["long"], at_budget["short"]) == (0.55, 0.52)
    assert summary["lora@short"]["probe"] is None
