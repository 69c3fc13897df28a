"""The transfer protocol (lessons 02 and 06) and the multi-task training loop it uses."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import DatasetDict

from peft_teach import data, protocol, transfer
from peft_teach.methods import adapters
from peft_teach.models import build_classifier
from peft_teach.precomputed import path
from peft_teach.train import train_multitask, using_head


def tiny(task: str, n: int = 16) -> DatasetDict:
    suite = data.load_task(task)
    return DatasetDict({split: suite[split].select(range(n)) for split in suite})


@pytest.fixture
def tiny_tasks(monkeypatch):
    monkeypatch.setattr(transfer, "STEPS", 2)
    monkeypatch.setattr(transfer, "TARGET_BUDGET", dict(epochs=1, batch_size=8))
    return {task: tiny(task) for task in (*data.SOURCE_TASKS, data.TARGET_TASK)}


def test_using_head_puts_the_original_head_back_even_after_an_error():
    model = build_classifier(2, seed=0)
    original, other = model.head, torch.nn.Linear(384, 5)
    with pytest.raises(RuntimeError), using_head(model, other):
        assert model.head is other
        raise RuntimeError("boom")
    assert model.head is original


def test_multitask_training_needs_one_head_per_task(tokenizer):
    model = build_classifier(2, seed=0)
    with pytest.raises(ValueError, match="one head per task"):
        train_multitask(model, tokenizer, {"aspect": tiny("aspect")}, {}, steps=1, lr=1e-3)


def test_multitask_training_moves_the_shared_adapter_and_every_head_but_not_the_base(tokenizer):
    model = build_classifier(2, seed=0)
    adapters.add_adapter(model, "shared", seed=0)
    tasks = {"sentiment": tiny("sentiment"), "aspect": tiny("aspect")}
    heads = {"sentiment": model.head, "aspect": torch.nn.Linear(384, 4)}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    aspect_before = heads["aspect"].weight.detach().clone()
    history = train_multitask(model, tokenizer, tasks, heads, steps=2, lr=1e-2, head_lr=1e-2, batch_size=8,
                              eval_task="sentiment", eval_every=1)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all(".adapters.shared." in name or name.startswith("head.") for name in moved)
    assert any(name.startswith("head.") for name in moved)
    assert not torch.equal(heads["aspect"].weight, aspect_before)
    assert len(history.train_loss) == 2 and len(history.eval_accuracy) == 2


def test_joint_run_reports_the_target_and_every_source(tokenizer, tiny_tasks):
    result = transfer.run_joint(tokenizer, tiny_tasks, 1e-3, seed=0)
    assert set(result["sources"]) == set(data.SOURCE_TASKS)
    assert 0.0 <= result["test"] <= 1.0 and len(result["validation_curve"]) == 1


def test_multitask_prompt_tuning_starts_from_the_shared_prompt(tokenizer, tiny_tasks, monkeypatch):
    shared = torch.randn(transfer.PROMPT_LENGTH, 384)
    monkeypatch.setattr(transfer, "shared_prompt",
                        lambda tok, lr, seed: (shared, {"lr": lr, "seed": seed, "sources_test": {"sentiment": 0.5}}))
    seen = {}

    def fake_fit(model, *args, **kwargs):
        seen["prompt"] = model.soft_prompt.weight.detach().clone()
        return {"test": 0.0}

    monkeypatch.setattr(protocol, "fit", fake_fit)
    result = transfer.run_mt_prompt(tokenizer, tiny_tasks, 0.1, seed=1, stage1_lr=0.03)
    assert torch.equal(seen["prompt"], shared)
    assert result["stage1_sources"] == {"sentiment": 0.5} and result["stage1_lr"] == 0.03


def test_every_runnable_method_takes_the_same_arguments_and_mt_prompt_gets_stage1s_rate(monkeypatch):
    seen = {}
    monkeypatch.setattr(transfer, "run_mt_prompt", lambda *args, **kwargs: seen.update(kwargs) or {"test": 0.0})
    methods = transfer.runnable_methods(0.3)
    assert set(methods) == set(transfer.TARGET_METHODS)
    methods["mt_prompt"].run(None, {}, 0.1, 2)
    assert seen == {"stage1_lr": 0.3}
    with pytest.raises(TypeError):  # the bare table's mt_prompt cannot run without stage 1's rate
        transfer.TARGET_METHODS["mt_prompt"].run(None, {}, 0.1, 2)


def test_stage1_trains_one_prompt_on_every_source_and_reports_each(tokenizer, monkeypatch):
    monkeypatch.setattr(transfer, "STEPS", 2)
    monkeypatch.setattr(transfer, "TARGET_BUDGET", dict(epochs=1, batch_size=8))
    monkeypatch.setattr(transfer, "load_task", lambda task: tiny(task))
    transfer.shared_prompt.cache_clear()
    try:
        prompt, stage1 = transfer.shared_prompt(tokenizer, 0.1, 0)
    finally:
        transfer.shared_prompt.cache_clear()  # a tiny prompt must not serve a later caller
    assert prompt.shape == (transfer.PROMPT_LENGTH, 384)
    assert set(stage1["sources_validation"]) == set(stage1["sources_test"]) == set(data.SOURCE_TASKS)
    assert stage1["validation"] == pytest.approx(sum(stage1["sources_validation"].values()) / 4)


def test_summary_reads_stage1_like_a_method():
    store = fake_transfer_store()
    for lr in transfer.STAGE1_GRID:
        for seed in protocol.SEEDS if lr == transfer.STAGE1_GRID[0] else protocol.SEEDS[:1]:
            store["runs"][f"{transfer.STAGE1}|lr={lr:g}|seed={seed}"] = {
                "lr": lr, "seed": seed, "validation": 0.9 if lr == transfer.STAGE1_GRID[0] else 0.7,
                "sources_test": {task: 0.8 + 0.01 * seed for task in data.SOURCE_TASKS}}
    stage1 = transfer.summarize(store)["stage1"]
    assert stage1["lr"] == transfer.STAGE1_GRID[0]
    assert stage1["sources_test"]["aspect"] == pytest.approx([0.8, 0.81, 0.82])


def test_sequential_full_fine_tuning_measures_the_source_before_and_after(tokenizer, tiny_tasks, monkeypatch):
    monkeypatch.setattr(protocol, "BUDGET", dict(epochs=1, batch_size=8))
    result = transfer.run_sequential_full_ft(tokenizer, tiny_tasks, 1e-4, seed=0)
    assert {"source_before", "source_after", "target"} <= set(result)


def test_every_target_method_has_a_grid_and_the_budget_is_320_steps():
    assert transfer.STEPS == 320
    assert all(len(spec.lr_grid) == 3 for spec in transfer.TARGET_METHODS.values())


def reachable_rates(grid, extensions: int = protocol.GRID_EXTENSIONS) -> set[float]:
    """The grid plus the rates the precompute may add past either edge (scripts/precompute.py: grid_then_seeds)."""
    rates = set(grid)
    for edge in (min, max):
        tried = list(grid)
        for _ in range(extensions):
            beyond = protocol.rate_beyond_edge(tried, edge(tried))
            tried.append(beyond)
            rates.add(beyond)
    return rates


def test_reachable_rates_grow_the_grid_two_steps_each_way():
    assert reachable_rates((1e-3, 3e-3, 1e-2)) == {1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1}


def test_stored_transfer_runs_follow_the_current_recipe():
    file = path("transfer_routing")
    if not file.exists():
        pytest.skip("transfer_routing.json not precomputed yet (python scripts/precompute.py transfer_routing)")
    stored = json.loads(file.read_text())
    assert stored["recipe"]["epochs"] == transfer.TARGET_BUDGET["epochs"]
    chosen_like_methods = {**transfer.TARGET_METHODS, **transfer.STAGE1_METHODS}
    assert stored["recipe"]["lr_grid"] == {m: list(s.lr_grid) for m, s in chosen_like_methods.items()}
    for key, run in stored["runs"].items():
        method = key.split("|")[0]
        if method in chosen_like_methods:
            assert run["lr"] in reachable_rates(chosen_like_methods[method].lr_grid), (key, run["lr"])
        assert all(0.0 <= v <= 1.0 for v in (run.get("test"), run.get("target")) if v is not None)


def fake_transfer_store() -> dict:
    runs = {}
    for method, spec in transfer.TARGET_METHODS.items():
        for lr in spec.lr_grid:
            runs[f"{method}|lr={lr:g}|seed=0"] = {"lr": lr, "validation": 0.5 if lr != spec.lr_grid[1] else 0.8,
                                                  "test": 0.7, "validation_curve": [0.5], "trainable": 1,
                                                  "sources": {t: 0.9 for t in data.SOURCE_TASKS}}
        for seed in (1, 2):
            runs[f"{method}|lr={spec.lr_grid[1]:g}|seed={seed}"] = {
                "lr": spec.lr_grid[1], "validation": 0.8, "test": 0.6 + 0.1 * seed, "validation_curve": [0.5],
                "trainable": 1, "sources": {t: 0.8 for t in data.SOURCE_TASKS}}
    joint_lr = transfer.TARGET_METHODS["joint"].lr_grid[1]
    for seed in protocol.SEEDS:
        for task in data.SOURCE_TASKS:
            runs[f"source_alone={task}|lr={joint_lr:g}|seed={seed}"] = {"test": 0.95}
    return {"runs": runs}


def test_summary_pairs_each_source_under_joint_training_with_the_same_source_alone():
    summary = transfer.summarize(fake_transfer_store())
    assert set(summary["methods"]) == set(transfer.TARGET_METHODS)
    assert summary["methods"]["fusion"]["lr"] == transfer.TARGET_METHODS["fusion"].lr_grid[1]  # best validation
    assert summary["negative_transfer"]["aspect"] == {"joint": [0.9, 0.8, 0.8], "alone": [0.95] * 3}
    assert "fusion_without" not in summary or summary["fusion_without"] == {}  # not stored: left out
    assert "forgetting" not in summary


def test_fusion_matched_fuses_sources_that_saw_their_tasks_as_long_as_joint_training(monkeypatch):
    recipe = transfer.matched_source_recipe(data.load_task("sentiment"))
    steps = recipe["epochs"] * (1200 // recipe["batch_size"])
    assert recipe["batch_size"] == transfer.TARGET_BUDGET["batch_size"]
    assert transfer.STEPS <= steps < transfer.STEPS + 1200 // recipe["batch_size"]  # 320 steps, in whole epochs
    seen = {}
    monkeypatch.setattr(transfer, "run_fusion", lambda *args, **kwargs: seen.update(kwargs) or {"test": 0.0})
    transfer.run_fusion_matched(None, {}, 1e-3, seed=0)
    assert seen["library"] is transfer._matched_library


def test_fusion_matched_sources_train_at_the_rate_joint_training_chose():
    file = path("transfer_routing")
    if not file.exists():
        pytest.skip("transfer_routing.json not precomputed yet (python scripts/precompute.py transfer_routing)")
    summary = transfer.summarize(json.loads(file.read_text()))
    assert summary["methods"]["joint"]["lr"] == transfer.MATCHED_SOURCE_LR
