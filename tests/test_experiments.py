"""The shared training recipes and the precomputed results the lessons read.

A stored result is only worth showing if it was produced by the current recipe:
these tests fail when a recipe constant changes without re-running
``scripts/precompute.py``, and check the stored numbers are complete and sane.
"""

from __future__ import annotations

import pytest
import torch
from datasets import DatasetDict

from peft_teach import data, experiments, precomputed
from peft_teach.methods import adapters
from peft_teach.models import build_classifier


def _accuracies_are_valid(values) -> bool:
    return all(0.0 <= value <= 1.0 for value in values)


def test_unknown_precomputed_name_says_how_to_create_it():
    with pytest.raises(FileNotFoundError, match="scripts/precompute.py"):
        precomputed.load("no_such_results")


def test_lora_sweep_matches_the_current_recipe():
    stored = precomputed.load("lora_sweep")
    recipe = stored["recipe"]
    assert {k: recipe[k] for k in experiments.LORA_BUDGET} == experiments.LORA_BUDGET
    ranks = stored["results"]["ranks"]
    assert sorted(int(r) for r in ranks) == sorted(experiments.LORA_RANKS)
    for r, row in ranks.items():
        assert row["lora_parameters"] == 12 * int(r) * (384 + 384)  # 12 query/value matrices, 384 x 384
    assert list(stored["results"]["targets"]) == list(experiments.LORA_TARGET_SETS)
    assert _accuracies_are_valid(row["accuracy"] for row in ranks.values())


def test_prefix_results_match_the_current_recipe():
    lengths = precomputed.load("prefix_lengths")
    assert {k: lengths["recipe"][k] for k in experiments.PREFIX_BUDGET} == experiments.PREFIX_BUDGET
    assert lengths["recipe"]["lr"] == experiments.PREFIX_LR
    assert sorted(int(n) for n in lengths["results"]) == sorted(experiments.PREFIX_LENGTHS)
    for length, row in lengths["results"].items():
        assert row["prefix_parameters"] == 2 * 6 * int(length) * 384

    methods = precomputed.load("prefix_methods")
    assert methods["recipe"]["lr"] == experiments.METHOD_LR
    assert methods["recipe"]["seeds"] == list(experiments.SEEDS)
    for runs in methods["results"].values():
        assert sorted(runs) == [str(seed) for seed in experiments.SEEDS]
        assert {run["trainable"] for run in runs.values()} == {73_728 + 770}  # same budget + the head
        assert _accuracies_are_valid(value for run in runs.values() for value in (run["short"], run["long"]))


def test_stored_prefix_checkpoint_is_the_seed0_run_of_the_current_recipe():
    from peft_teach.methods import prefix

    stored = precomputed.load("prefix_seed0")
    assert {k: stored["recipe"][k] for k in experiments.PREFIX_BUDGET} == experiments.PREFIX_BUDGET
    assert stored["recipe"]["lr"] == experiments.METHOD_LR["prefix"] and stored["recipe"]["seed"] == 0
    model = build_classifier(2, seed=0)
    prefix.load_prefix(model, precomputed.checkpoint("prefix_seed0"))
    assert prefix.prefix_parameters(model) == 2 * 6 * 16 * 384  # the lesson's l = 16, without the MLP
    assert stored["results"]["validation_curve"][-1] == stored["results"]["short"]


def test_a_missing_checkpoint_says_how_to_create_it():
    with pytest.raises(FileNotFoundError, match="scripts/precompute.py no_such_checkpoint"):
        precomputed.checkpoint("no_such_checkpoint")


def test_fusion_comparison_matches_the_current_recipe():
    stored = precomputed.load("fusion_comparison")
    recipe = stored["recipe"]
    assert {k: recipe[k] for k in experiments.TARGET_BUDGET} == experiments.TARGET_BUDGET
    assert (recipe["fusion_lr"], recipe["adapter_lr"]) == (experiments.FUSION_LR, experiments.ADAPTER_LR)
    assert recipe["full_ft"] == experiments.FULL_FT
    results = stored["results"]
    for method in ["head-only", "single adapter", "joint multi-task", "fusion (4 adapters)", "fusion without topic"]:
        assert len(results[method]) == len(experiments.SEEDS) and _accuracies_are_valid(results[method])
    assert _accuracies_are_valid(results["sequential full FT"].values())


def test_joint_multitask_trains_a_shared_adapter_and_leaves_the_others_alone(tokenizer, monkeypatch):
    monkeypatch.setitem(experiments.TARGET_BUDGET, "epochs", 1)
    monkeypatch.setitem(experiments.TARGET_BUDGET, "batch_size", 8)

    def tiny(task: str) -> DatasetDict:
        suite = data.load_task(task)
        return DatasetDict(train=suite["train"].select(range(16)), test=suite["test"].select(range(8)))

    monkeypatch.setattr(experiments, "TEST_EXAMPLES", 8)
    model = build_classifier(2, seed=0)
    adapters.add_adapter(model, "existing", seed=0)
    existing = {k: v.clone() for k, v in adapters.adapter_state_dict(model, "existing").items()}
    tasks = {"aspect": tiny("aspect"), "routing": tiny("routing")}
    accuracy = experiments.run_joint_multitask(model, tokenizer, tasks, "routing", seed=0)
    assert 0.0 <= accuracy <= 1.0
    assert adapters.adapter_names(model) == ["existing"]  # the shared adapter is removed afterwards
    after = adapters.adapter_state_dict(model, "existing")
    assert all(torch.equal(value, after[key]) for key, value in existing.items())


def test_stored_rank_scaling_is_complete_and_follows_the_current_recipe():
    """Every scale x rank x seed of the rank_scaling job, each with the recipe's budget (lesson 05, section 9)."""
    from peft_teach import protocol
    from peft_teach.data import load_task
    from peft_teach.train import steps_per_epoch

    stored = precomputed.load("rank_scaling")
    recipe = stored["recipe"]
    assert {k: recipe[k] for k in experiments.LORA_BUDGET} == experiments.LORA_BUDGET
    assert recipe["ranks"] == list(experiments.SCALING_RANKS) and recipe["scalings"] == list(experiments.SCALINGS)
    assert recipe["seeds"] == list(protocol.SEEDS)
    expected = {f"{scaling}|r={r}|seed={seed}" for scaling in experiments.SCALINGS
                for r in experiments.SCALING_RANKS for seed in protocol.SEEDS}
    assert set(stored["runs"]) == expected
    train_examples = len(load_task("sentiment")["train"])
    steps = experiments.LORA_BUDGET["epochs"] * steps_per_epoch(train_examples, experiments.LORA_BUDGET["batch_size"])
    for run in stored["runs"].values():
        assert len(run["validation"]) == experiments.LORA_BUDGET["epochs"] and len(run["train_loss"]) == steps
        assert _accuracies_are_valid(run["validation"] + [run["test"]])


def test_an_unknown_scaling_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="alpha/sqrt"):
        experiments.run_lora_scaling(None, None, 8, "alpha/r^2", 0)
