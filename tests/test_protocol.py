"""The comparison protocol (lesson 06) and the exact memory counts it reports."""

from __future__ import annotations

import pytest
import torch

from peft_teach import protocol
from peft_teach.measure import optimizer_state_bytes, saved_activation_bytes, training_memory
from peft_teach.methods.inject import trainable_names

from tiny_models import padded_batch, tiny_bert_classifier


def test_sample_std_uses_n_minus_one():
    mean, std = protocol.mean_std([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert std == pytest.approx(0.1)  # population std would be 0.0816


def test_learning_rate_is_chosen_on_validation_with_ties_to_the_smaller_rate():
    runs = [{"lr": 1e-2, "validation": 0.9, "test": 0.5}, {"lr": 1e-3, "validation": 0.9, "test": 0.99},
            {"lr": 3e-3, "validation": 0.8, "test": 1.0}]
    assert protocol.choose_lr(runs) == 1e-3  # never the test score's favourite (3e-3)


def fake_store(methods=("lora",), missing_seed=False):
    runs = {}
    for method in methods:
        for i, lr in enumerate(protocol.METHODS[method].lr_grid):
            runs[f"{method}|lr={lr:g}|seed=0"] = {"lr": lr, "validation": 0.5 + 0.1 * i, "test": 0.6,
                                                  "validation_curve": [0.4, 0.5 + 0.1 * i], "trainable": 10}
        best = protocol.METHODS[method].lr_grid[-1]
        for seed in protocol.SEEDS[1:2 if missing_seed else None]:
            runs[f"{method}|lr={best:g}|seed={seed}"] = {"lr": best, "validation": 0.7, "test": 0.7 + 0.1 * seed,
                                                         "validation_curve": [0.5, 0.7], "trainable": 10}
    return {"runs": runs}


def test_summary_reports_the_chosen_rate_and_test_mean_std():
    row = protocol.summarize(fake_store())["lora"]
    assert row["lr"] == protocol.METHODS["lora"].lr_grid[-1]
    assert row["test"] == pytest.approx([0.6, 0.8, 0.9])
    assert row["mean"] == pytest.approx(0.7666, abs=1e-3)
    assert row["std"] == pytest.approx(0.1528, abs=1e-3)


def test_summary_leaves_out_methods_with_missing_runs():
    assert protocol.summarize(fake_store(missing_seed=True)) == {}


@pytest.mark.parametrize("method", list(protocol.METHODS))
def test_each_method_trains_what_it_should(method):
    model = tiny_bert_classifier()
    protocol.METHODS[method].add(model, 0)
    names = trainable_names(model)
    assert {"head.weight", "head.bias"} <= set(names)
    if method == "head_only":
        assert names == ["head.weight", "head.bias"]
    elif method == "full_ft":
        assert len(names) == len(list(model.parameters()))
    else:
        assert len(names) > 2 and len(names) < len(list(model.parameters()))


def test_disk_per_task_full_model_is_largest(tmp_path):
    sizes = {}
    for method in ("head_only", "lora", "full_ft"):
        model = tiny_bert_classifier()
        protocol.METHODS[method].add(model, 0)
        sizes[method] = protocol.save_for_task(method, model, tmp_path / method)
    assert sizes["head_only"] < sizes["lora"] < sizes["full_ft"]


def test_memory_counts_are_exact_and_repeatable():
    model = tiny_bert_classifier()
    protocol.METHODS["lora"].add(model, 0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert optimizer_state_bytes(model) == 2 * 4 * trainable  # AdamW: two float32 moments per value
    assert saved_activation_bytes(model, padded_batch()) == saved_activation_bytes(model, padded_batch())
    memory = training_memory(model, padded_batch())
    assert memory["gradients"] == 4 * trainable
    assert memory["weights"] == 4 * sum(p.numel() for p in model.parameters())
    assert memory["optimizer_state"] == 2 * memory["gradients"]


def test_activations_depend_on_where_the_trainable_parameters_sit():
    head_only, full = tiny_bert_classifier(), tiny_bert_classifier()
    protocol.METHODS["head_only"].add(head_only, 0)
    protocol.METHODS["full_ft"].add(full, 0)
    kept_head, kept_full = saved_activation_bytes(head_only, padded_batch()), saved_activation_bytes(full, padded_batch())
    assert kept_head < kept_full / 20  # the frozen network below the head keeps (almost) nothing


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match="'lora'"):
        protocol.build_method("LoRA (r=8, q+v)", 2, 0)


@pytest.mark.parametrize("name", ["protocol_sentiment", "protocol_sst2"])
def test_stored_protocol_runs_follow_the_current_recipe(name):
    """Stored runs are only worth showing if made by today's protocol (the job resumes from them)."""
    from peft_teach import precomputed

    try:
        stored = precomputed.load(name)
    except FileNotFoundError:
        pytest.skip(f"{name} not precomputed yet: python scripts/precompute.py {name}")
    recipe = stored["recipe"]
    assert {k: recipe[k] for k in protocol.BUDGET} == protocol.BUDGET
    assert recipe["head_lr"] == protocol.HEAD_LR and recipe["seeds"] == list(protocol.SEEDS)
    assert recipe["lr_grid"] == {m: list(spec.lr_grid) for m, spec in protocol.METHODS.items()}
    for key, run in stored["runs"].items():
        method, lr, seed, *probe = key.split("|")
        assert method in protocol.METHODS and float(lr.removeprefix("lr=")) == run["lr"]
        if probe:  # the one longer run of a method still climbing
            assert key == protocol.probe_key(method, run["lr"])
            assert_it_continues_the_budget(run, protocol.BUDGET["epochs"])
        epochs = protocol.PROBE_EPOCHS if probe else protocol.BUDGET["epochs"]
        assert 0.0 <= run["test"] <= 1.0 and len(run["validation_curve"]) == epochs


def assert_it_continues_the_budget(probe: dict, budget_epochs: int) -> None:
    """A stored probe holds its run after the budget, and one curve that goes on from it."""
    at_budget = probe["at_budget"]
    assert len(at_budget["validation_curve"]) == budget_epochs and 0.0 <= at_budget["test"] <= 1.0
    assert probe["validation_curve"][:budget_epochs] == at_budget["validation_curve"]
    assert len(probe["validation_curve"]) == budget_epochs + protocol.PROBE_EXTRA_EPOCHS


@pytest.mark.parametrize("name", ["protocol_sentiment", "protocol_sst2", "qlora_sst2", "variants_sst2",
                                  "length_tradeoff"])
def test_stored_probes_were_made_by_todays_probe_rule(name):
    """The recipe's probe entry decides the probes alone: a changed rule recomputes them, and only them."""
    import sys
    from pathlib import Path

    from peft_teach import precomputed

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import precompute

    stored = precomputed.load(name)
    assert stored["recipe"]["probe"] == precompute.PROBE
    probes = [key for key in stored["runs"] if precompute.is_probe(key)]
    if not probes:
        pytest.skip(f"{name}: no method was still climbing, so there is no probe")
    changed = {**stored["recipe"], "probe": {**precompute.PROBE, "schedule": "something else"}}
    assert set(precompute.still_valid(stored["runs"], stored["recipe"], changed)) == set(stored["runs"]) - set(probes)
    for key in probes:  # each re-trains the table's seed-0 run before going on. Not bit for bit: the probes ran on
        # another machine and thread count, and rounding differences grow over a run, so allow a point, or two
        # sample stds of the method's seeds where those are wider (the soft prompt at its high rate).
        probe, budget_run = stored["runs"][key], stored["runs"][key.rsplit("|", 1)[0]]
        method, lr = key.split("|")[:2]
        seeds = [stored["runs"][f"{method}|{lr}|seed={seed}"]["test"] for seed in protocol.SEEDS]
        tolerance = max(0.01, 2 * protocol.mean_std(seeds)[1])
        for number in ("validation", "test"):
            assert probe["at_budget"][number] == pytest.approx(budget_run[number], abs=tolerance), (key, number)


def test_tables_mark_the_chosen_rate_and_print_mean_and_sample_std():
    summary = protocol.summarize(fake_store())
    chosen = protocol.METHODS["lora"].lr_grid[-1]
    assert f"{chosen:g}: 0.700*" in protocol.format_grid(summary)
    assert "0.767 ± 0.153" in protocol.format_results(summary)


def test_tables_line_up_when_a_label_is_longer_than_the_default_column():
    summary = protocol.summarize(fake_store(methods=("lora", "pfeiffer")))
    first = next(iter(summary))
    summary[first] = {**summary[first], "label": "a label of more than twenty-two characters"}
    labels = [row["label"] for row in summary.values()]
    for table in (protocol.format_grid(summary), protocol.format_results(summary)):
        rows = table.splitlines()[-len(labels):]
        # where each row's numbers start, after its label and the padding
        starts = {len(row) - len(row.removeprefix(label).lstrip()) for row, label in zip(rows, labels)}
        assert len(rows) == 2 and len(starts) == 1, table


@pytest.mark.parametrize("tried, chosen, beyond", [
    ((1e-3, 3e-3, 1e-2), 1e-2, 3e-2), ((1e-3, 3e-3, 1e-2), 1e-3, 3e-4), ((0.03, 0.1, 0.3), 0.03, 0.01),
    ((0.03, 0.1, 0.3), 0.3, 1.0), ((3e-5, 1e-4, 3e-4), 3e-5, 1e-5), ((1e-3, 3e-3, 1e-2), 3e-3, None),
])
def test_a_best_rate_at_the_edge_of_the_grid_extends_it_by_a_half_decade(tried, chosen, beyond):
    assert protocol.rate_beyond_edge(list(tried), chosen) == beyond


def test_a_curve_still_rising_in_its_last_epoch_is_flagged():
    assert protocol.still_climbing([[0.5, 0.6, 0.65], [0.5, 0.6, 0.64]])
    assert not protocol.still_climbing([[0.9, 1.0, 1.0], [0.9, 0.99, 0.995]])


def test_summary_chooses_among_extended_rates_and_ignores_longer_probes():
    store = fake_store()
    best = protocol.METHODS["lora"].lr_grid[-1]
    beyond = protocol.rate_beyond_edge(list(protocol.METHODS["lora"].lr_grid), best)
    store["runs"][f"lora|lr={beyond:g}|seed=0"] = {"lr": beyond, "validation": 0.95, "test": 0.9,
                                                   "validation_curve": [0.5, 0.95], "trainable": 10}
    store["runs"][protocol.probe_key("lora", best)] = {"lr": best, "validation": 0.99, "test": 0.99,
                                                       "validation_curve": [0.5] * 16, "trainable": 10}
    row = protocol.summarize(store)
    assert "lora" not in row  # the extension won, but its other seeds are not stored yet
    assert list(protocol.grid_runs(store["runs"], "lora")) == sorted([*protocol.METHODS["lora"].lr_grid, beyond])


def test_a_probe_is_reported_beside_the_budget_run_and_never_swapped_in():
    store = fake_store()
    best = protocol.METHODS["lora"].lr_grid[-1]
    at_budget = {"lr": best, "seed": 0, "validation": 0.71, "test": 0.61, "validation_curve": [0.5, 0.71]}
    more = {"lr": best, "seed": 100, "validation": 0.8, "test": 0.95, "validation_curve": [0.9] + [0.8] * 11}
    store["runs"][protocol.probe_key("lora", best)] = protocol.continued(at_budget, more)
    row = protocol.summarize(store)["lora"]
    assert row["probe"]["test"] == 0.95 and row["probe"]["seed"] == 0
    assert row["test"] == pytest.approx([0.6, 0.8, 0.9])  # the table still reports the budget's runs
    line = protocol.format_probes({"lora": row})
    assert "2 epochs: validation 0.710, test 0.610" in line  # the probe's own budget, not the table's seed 0
    assert "+12 epochs: validation 0.800, test 0.950 (best validation 0.900 at epoch 3 of 14)" in line
    assert protocol.format_probe_curve(row["probe"], digits=2) == "0.50 0.71 | 0.90 " + " ".join(["0.80"] * 11)


def test_a_probe_continues_the_budget_run_from_its_weights(tokenizer, monkeypatch):
    from datasets import DatasetDict

    from peft_teach import data

    tiny = DatasetDict({split: rows.select(range(8)) for split, rows in data.load_task("sentiment").items()})
    calls = []
    fit = protocol.fit
    monkeypatch.setattr(protocol, "fit", lambda model, *args, **kwargs: calls.append((model, args, kwargs))
                        or fit(model, *args, **kwargs))
    result = protocol.probe("lora", tiny, 1e-3, tokenizer)
    (first, first_args, first_kwargs), (then, then_args, then_kwargs) = calls
    assert then is first  # the same model goes on training: no fresh start
    assert first_args[2] == 0 and then_args[2] == protocol.CONTINUATION_SEED_OFFSET  # its own batches
    assert then_kwargs["budget"]["epochs"] == protocol.PROBE_EXTRA_EPOCHS
    assert len(result["at_budget"]["validation_curve"]) == protocol.BUDGET["epochs"]
    assert len(result["validation_curve"]) == protocol.PROBE_EPOCHS
    # and the budget part is seed 0's ordinary run
    assert result["at_budget"]["test"] == protocol.run("lora", tiny, 1e-3, 0, tokenizer)["test"]


def test_without_probes_the_report_says_so():
    summary = protocol.summarize(fake_store())
    assert summary["lora"]["probe"] is None
    assert protocol.format_probes(summary) == "no method was still climbing"


def test_convergence_report_flags_the_last_epoch_and_shows_the_slower_trend():
    summary = {"a": {"label": "rising", "curves": [[0.4, 0.5, 0.6, 0.7, 0.8, 0.9]] * 3},
               "b": {"label": "flat", "curves": [[0.5, 0.9, 0.9, 0.9, 0.9, 0.9]] * 3}}
    rising, flat = protocol.format_convergence(summary).splitlines()
    assert "still climbing: yes" in rising and "gain over the last 4 epochs +0.400" in rising
    assert "still climbing: no" in flat and "+0.000" in flat


def test_convergence_window_follows_short_curves_and_refuses_one_they_cannot_give():
    summary = {"a": {"label": "four epochs", "curves": [[0.5, 0.6, 0.7, 0.8]] * 3}}
    assert "gain over the last 3 epochs +0.300" in protocol.format_convergence(summary)  # the protocol's 4 epochs
    with pytest.raises(ValueError, match="window must be 1 to 3 epochs"):
        protocol.format_convergence(summary, window=4)


def test_a_verdict_ranks_only_when_the_interval_excludes_zero():
    assert protocol.verdict(0.01, 0.2) == protocol.verdict(-0.3, -0.02) == "separable"
    assert protocol.verdict(-0.01, 0.2) == protocol.verdict(0.0, 0.2) == "not separable here"


def test_difference_interval_covers_seeds_and_test_sampling():
    same = protocol.difference_interval([0.80, 0.81, 0.79], [0.80, 0.81, 0.79], 1000)
    assert same[0] == pytest.approx(0.0) and same[1] < 0 < same[2]
    apart = protocol.difference_interval([0.95, 0.96, 0.95], [0.60, 0.61, 0.62], 1000)
    assert apart[1] > 0.3 and protocol.verdict(*apart[1:]) == "separable"
    # a smaller test set, or seeds that disagree, widen the interval
    width = lambda result: result[2] - result[1]
    assert width(protocol.difference_interval([0.8, 0.8, 0.8], [0.7, 0.7, 0.7], 100)) > \
        width(protocol.difference_interval([0.8, 0.8, 0.8], [0.7, 0.7, 0.7], 10000))
    assert width(protocol.difference_interval([0.7, 0.8, 0.9], [0.7, 0.7, 0.7], 1000)) > \
        width(protocol.difference_interval([0.8, 0.8, 0.8], [0.7, 0.7, 0.7], 1000))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        protocol.difference_interval([0.8], [0.7, 0.7], 1000)


def test_tiers_group_the_methods_the_interval_cannot_separate():
    def row(*tests):
        return {"test": list(tests), "mean": sum(tests) / len(tests)}

    summary = {"a": row(0.90, 0.91, 0.90), "b": row(0.90, 0.90, 0.89), "c": row(0.70, 0.71, 0.70),
               "d": row(0.50, 0.52, 0.51)}
    found = protocol.tiers(summary, 1000)
    assert found == [["a", "b"], ["c"], ["d"]]
    assert [protocol.tier_of(found, m) for m in "abcd"] == [1, 1, 2, 3]
    assert protocol.compare(summary, "a", "c", 1000)[3] == "separable"


def test_single_run_interval_covers_only_the_evaluation_sampling():
    difference, lower, upper = protocol.single_run_interval(0.80, 0.80, 500)
    assert difference == 0.0 and lower < 0 < upper  # one run each: sampling alone spreads it
    assert protocol.verdict(*protocol.single_run_interval(0.90, 0.70, 500)[1:]) == "separable"
    assert protocol.verdict(*protocol.single_run_interval(0.81, 0.80, 500)[1:]) == "not separable here"
    # narrower than the interval of three seeds that disagree
    narrow = protocol.single_run_interval(0.80, 0.75, 500)
    wide = protocol.difference_interval([0.70, 0.80, 0.90], [0.75, 0.75, 0.75], 500)
    assert narrow[2] - narrow[1] < wide[2] - wide[1]


def test_head_rate_check_reads_seed_0_at_the_chosen_rate_and_keeps_the_head_rate_unless_separably_better():
    def summary_row(lr, validation, test):
        return {"lr": lr, "runs": [{"validation": validation, "test": test}]}

    summary = {"lora": summary_row(3e-3, 0.80, 0.79), "prefix": summary_row(0.03, 0.70, 0.71),
               "pfeiffer": summary_row(1e-3, 0.80, 0.80)}
    head_runs = {"lora|lr=0.003|seed=0": {"validation": 0.81, "test": 0.80},
                 "prefix|lr=0.03|seed=0": {"validation": 0.60, "test": 0.61},
                 "pfeiffer|lr=0.003|seed=0": {"validation": 0.99, "test": 0.99}}  # another rate: not this check's run
    rows = protocol.head_rate_check(summary, head_runs, 500)
    assert set(rows) == {"lora", "prefix"}
    assert rows["lora"]["validation"] == (0.80, 0.81) and rows["lora"]["verdict"] == "not separable here"
    assert rows["prefix"]["verdict"] == "separable" and rows["prefix"]["difference"] < 0
    assert protocol.head_rate_choice(rows) == protocol.HEAD_LR  # worse, or not separable: keep 3e-3
    rows["lora"].update(verdict="separable", difference=0.05)
    assert protocol.head_rate_choice(rows) == protocol.HEAD_RATE_CHECK


@pytest.mark.parametrize("method", list(protocol.VARIANTS))
def test_each_variant_trains_exactly_its_formula_count_and_the_head(method):
    """Tiny BERT: hidden 32, 2 layers, intermediate 64, a 3-label head (32 * 3 + 3 = 99 parameters)."""
    model = tiny_bert_classifier()
    protocol.VARIANTS[method].add(model, 0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora_count = 2 * 2 * 8 * (32 + 32)  # 2 layers x (query, value) x r (d_in + d_out)
    expected = {"dora": lora_count + 2 * 2 * 32,  # + one magnitude per output row
                "rslora": lora_count,  # the same matrices, another scale
                "loraplus": lora_count,  # the same matrices, another rate for B
                "ia3": 2 * (32 + 32 + 64)}[method]  # keys and values (d_out), the second feed-forward matrix's input
    assert trainable == expected + 99


def test_variants_save_their_own_tensors_for_a_task(tmp_path):
    sizes = {}
    for method in ("lora", "dora", "ia3"):
        model = tiny_bert_classifier()
        {**protocol.METHODS, **protocol.VARIANTS}[method].add(model, 0)
        sizes[method] = protocol.save_for_task(method, model, tmp_path / method)
    assert sizes["ia3"] < sizes["lora"] < sizes["dora"]


@pytest.mark.parametrize("name, table", [("qlora_sst2", "QUANTIZED"), ("variants_sst2", "VARIANTS")])
def test_stored_runs_beside_the_protocol_follow_its_recipe(name, table):
    """Lessons 05 and 06 compare these jobs with protocol_sst2's LoRA: all must follow the same protocol."""
    from peft_teach import precomputed

    methods = getattr(protocol, table)
    stored, fp32 = precomputed.load(name), precomputed.load("protocol_sst2")
    recipe = stored["recipe"]
    shared = ("task", "epochs", "batch_size", "head_lr", "seeds", "train_examples", "validation_examples",
              "test_examples")
    assert {k: recipe[k] for k in shared} == {k: fp32["recipe"][k] for k in shared}
    assert recipe["lr_grid"] == {m: list(spec.lr_grid) for m, spec in methods.items()}
    for method in {"lora_nf4", "dora"} & set(methods):  # LoRA's own grid, as the float32 LoRA they are read against
        assert recipe["lr_grid"][method] == fp32["recipe"]["lr_grid"]["lora"]
    summary = protocol.summarize(stored, methods)
    assert set(summary) == set(methods)  # every grid and all 3 seeds stored
    for method, row in summary.items():  # and the longer probe of every method still climbing
        assert (row["probe"] is not None) == protocol.still_climbing(row["curves"]), method


def test_loraplus_under_the_protocol_trains_b_faster_and_the_head_at_its_own_rate():
    from peft_teach.methods import lora
    from peft_teach.train import parameter_groups

    spec = protocol.VARIANTS["loraplus"]
    model = tiny_bert_classifier()
    spec.add(model, 0)
    groups = parameter_groups(model, 1e-3, head_lr=protocol.HEAD_LR, lr_scale=spec.lr_scale)
    by_rate = {group["lr"]: {id(p) for p in group["params"]} for group in groups}
    named = dict(model.named_parameters())
    assert by_rate[1e-3] == {id(p) for name, p in named.items() if name.endswith("lora_A")}
    assert by_rate[1e-3 * protocol.LORAPLUS_RATIO] == {id(p) for name, p in named.items() if name.endswith("lora_B")}
    assert by_rate[protocol.HEAD_LR] == {id(named["head.weight"]), id(named["head.bias"])}
    # the same split as lora.loraplus_parameter_groups (checked against peft) once the head is set aside
    slow, fast = lora.loraplus_parameter_groups(model, 1e-3, protocol.LORAPLUS_RATIO)
    assert {id(p) for p in slow["params"]} - by_rate[1e-3] == {id(named["head.weight"])}
    assert {id(p) for p in fast["params"]} - by_rate[1e-3 * protocol.LORAPLUS_RATIO] == {id(named["head.bias"])}
