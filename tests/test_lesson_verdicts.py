"""The verdicts a lesson's prose states are the ones the comparison helpers compute from the stored runs.

A sentence that ranks two methods, or says they cannot be told apart, is checked here
against :func:`peft_teach.protocol.tiers` / :func:`~peft_teach.protocol.compare` (encoder)
and :func:`peft_teach.llm_experiments.differences` (LLM). When the stored runs change, a
sentence whose verdict no longer holds fails this test instead of staying in the lesson.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_teach import llm_experiments, precomputed, protocol, tickets

ROOT = Path(__file__).resolve().parents[1]


def prose(lesson: str) -> str:
    """A lesson's markdown as one line per cell, with its line breaks turned into spaces."""
    path = next((ROOT / "notebooks").glob(f"{lesson}_*.ipynb"))
    cells = json.loads(path.read_text())["cells"]
    return "\n".join(" ".join("".join(c["source"]).split()) for c in cells if c["cell_type"] == "markdown")


@pytest.fixture(scope="module")
def encoder():
    stored = {task: precomputed.load(f"protocol_{task}") for task in ("sentiment", "sst2")}
    return {task: (protocol.summarize(runs), runs["recipe"]["test_examples"]) for task, runs in stored.items()}


def test_lesson_06_tier_sentences_match_the_tiers(encoder):
    text = prose("06")
    sentiment, n_sentiment = encoder["sentiment"]
    sst2, n_sst2 = encoder["sst2"]
    assert set(protocol.tiers(sentiment, n_sentiment)[0]) == {"full_ft", "pfeiffer", "houlsby", "lora", "prefix_plus"}
    assert "full fine-tuning, both adapters, LoRA and Prefix-Tuning+ form tier 1" in text
    assert set(protocol.tiers(sst2, n_sst2)[0]) == set(sst2) - {"soft_prompt", "head_only"}
    assert "every PEFT method but the soft prompt share tier 1" in text


def test_lesson_06_and_03_say_prompt_tuning_is_not_separable_from_head_only(encoder):
    for summary, n in encoder.values():
        assert protocol.compare(summary, "soft_prompt", "head_only", n)[3] == "not separable here"
    assert "neither difference from head-only is separable here" in prose("06")
    assert "the two are not separable here" in prose("03")


def test_lesson_06_does_not_rank_full_fine_tuning_above_the_peft_methods_on_sst2(encoder):
    summary, n = encoder["sst2"]
    for method in set(summary) - {"full_ft", "soft_prompt", "head_only"}:
        assert protocol.compare(summary, "full_ft", method, n)[3] == "not separable here", method
    assert "cannot say whether a PEFT method falls short of full fine-tuning on SST-2" in prose("06")


def test_lesson_07_ticket_sentences_match_the_intervals():
    runs = precomputed.load("llm_tickets")["runs"]
    summary = llm_experiments.summarize(runs)
    baseline = (f"{llm_experiments.FEW_SHOT}-shot", runs[f"few_shot_k{llm_experiments.FEW_SHOT}"]["test"]["answers"])
    rows = llm_experiments.differences(summary, baseline, tickets.load_tickets()["test"], "all_fields")
    inseparable = [pair for pair, *_, verdict in rows if verdict != "separable"]
    assert inseparable == ["LoRA r=8 on q, v - adapter Pfeiffer m=36", "prefix l=10 - Prefix-Tuning+",
                           "soft prompt l=20 - Prefix-Tuning+"]
    assert "not separable here from the prefix or the soft prompt" in prose("07")
    assert "the adapter and LoRA are not separable here" in prose("07")
    assert "Every other pair is separable" in prose("07") and "every other difference is separable" in prose("07")


def test_lesson_07_sst2_sentences_match_the_intervals():
    runs = precomputed.load("llm_sst2")["runs"]
    task = llm_experiments.SST2
    summary = llm_experiments.summarize(runs, task)
    baseline = (f"{llm_experiments.FEW_SHOT}-shot", runs[f"few_shot_k{llm_experiments.FEW_SHOT}"]["test"]["answers"])
    verdicts = {pair: verdict for pair, *_, verdict in
                llm_experiments.differences(summary, baseline, task.load()["test"], "accuracy", task)}
    labels = {method: summary[method]["label"] for method in ("lora", "prefix", "soft_prompt")}
    assert all(verdicts[f"{label} - 3-shot"] == "separable" for label in labels.values())
    assert verdicts[f"{labels['lora']} - {labels['prefix']}"] == "separable"
    assert verdicts[f"{labels['lora']} - {labels['soft_prompt']}"] == "separable"
    assert verdicts[f"{labels['prefix']} - {labels['soft_prompt']}"] == "not separable here"
    text = prose("07")
    assert "Every method beats 3-shot prompting by a separable margin" in text
    assert "the prefix and the soft prompt are not separable here" in text
    # across the two models, the verdicts the reading states
    encoder = protocol.summarize(precomputed.load("protocol_sst2"))
    llm_lora = [run["test"]["scores"]["accuracy"] for run in summary["lora"]["runs"]]
    verdict = {method: protocol.verdict(*protocol.difference_interval(llm_lora, encoder[method]["test"], 1000)[1:])
               for method in ("full_ft", "lora")}
    assert verdict == {"full_ft": "not separable here", "lora": "separable"}
    assert "MiniLM fully fine-tuned are not separable here" in text


def test_lesson_05_rank_scaling_sentences_match_the_intervals():
    stored = precomputed.load("rank_scaling")
    recipe = stored["recipe"]

    def tests(scale: str, r: int) -> list[float]:
        return [stored["runs"][f"{scale}|r={r}|seed={seed}"]["test"] for seed in recipe["seeds"]]

    verdicts = {}
    for r in recipe["ranks"]:
        difference, lower, upper = protocol.difference_interval(tests("alpha/sqrt(r)", r), tests("alpha/r", r),
                                                                recipe["test_examples"])
        verdicts[r] = (protocol.verdict(lower, upper), difference < 0)
    assert verdicts[2][0] == verdicts[8][0] == "not separable here"
    assert verdicts[32] == verdicts[128] == ("separable", True)
    text = prose("05")
    assert "At r = 2 and r = 8 the two scales are not separable here" in text
    assert "At r = 32 and r = 128 α/√r is lower, and the interval excludes 0" in text


def test_lesson_06_variant_sentences_match_the_intervals(encoder):
    sst2, n = encoder["sst2"]
    beside_lora = {"lora": sst2["lora"], **protocol.summarize(precomputed.load("variants_sst2"), protocol.VARIANTS)}
    assert set(beside_lora) == {"lora", *protocol.VARIANTS}
    for method in protocol.VARIANTS:
        assert protocol.compare(beside_lora, method, "lora", n)[3] == "not separable here", method
    text = prose("06")
    assert "none of the four is separable from LoRA here" in text
    assert "DoRA, rsLoRA, LoRA+ and IA3 are each not separable from LoRA here" in text


def test_lesson_06_transfer_sentences_match_the_intervals():
    from peft_teach import transfer
    from peft_teach.data import TARGET_TASK, load_task

    summary = transfer.summarize(precomputed.load("transfer_routing"))
    methods, n = summary["methods"], len(load_task(TARGET_TASK)["test"])
    verdicts = {pair: protocol.compare(methods, *pair, n)[3] for pair in
                (("joint", "fusion"), ("joint", "fusion_matched"), ("fusion_matched", "fusion"),
                 ("fusion", "full_ft"), ("mt_prompt", "soft_prompt"))}
    assert verdicts == {("joint", "fusion"): "separable", ("joint", "fusion_matched"): "not separable here",
                        ("fusion_matched", "fusion"): "not separable here", ("fusion", "full_ft"): "separable",
                        ("mt_prompt", "soft_prompt"): "separable"}
    text = prose("06")
    assert "joint training is ahead of fusion, +0.018 [+0.005, +0.035], separable" in text
    assert "+0.005 [-0.005, +0.015], not separable here" in text
    assert "So the honest verdict is a tie at matched budgets" in text
    for task in transfer.LEFT_OUT:  # composition: neither removal is separable from fusion over all four
        lower, upper = protocol.difference_interval(methods["fusion"]["test"], summary["fusion_without"][task], n)[1:]
        assert protocol.verdict(lower, upper) == "not separable here", task
    assert "but neither difference is separable here" in text
