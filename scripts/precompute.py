"""Run the comparisons that do not fit a lesson's CPU budget; store them for the lessons.

    python scripts/precompute.py fusion_comparison # lesson 02: 4 methods x 3 seeds, sequential full FT
    python scripts/precompute.py lora_sweep        # lesson 05: ranks and target modules
    python scripts/precompute.py prefix_lengths    # lesson 03: prefix length sweep
    python scripts/precompute.py prefix_methods    # lesson 04: 3 methods x 3 seeds, short and long inputs
    python scripts/precompute.py prefix_seed0      # lesson 04: the seed-0 prefix of prefix_methods, saved
    python scripts/precompute.py full_ft_update_spectrum  # lesson 05: how low-rank a converged update is
    python scripts/precompute.py fusion_heatmap    # practice 02: a trained fusion's weights on real reviews
    python scripts/precompute.py protocol_sentiment protocol_sst2   # lesson 06: every method under the protocol
    python scripts/precompute.py design_space_memory  # lesson 06: training memory of every method at batch 16 and 128
    python scripts/precompute.py head_rate_sst2    # lesson 06: the head at 1e-2 instead of 3e-3 (after protocol_sst2)
    python scripts/precompute.py transfer_routing  # lessons 02 and 06: the target task with and without sources
    python scripts/precompute.py length_tradeoff   # lesson 04: short and long inputs, and a long prefix
    python scripts/precompute.py llm_tickets       # lesson 07: prompting and PEFT methods on the packaged LLM
    python scripts/precompute.py llm_sst2          # lesson 07: the same on SST-2 phrases (real data)
    python scripts/precompute.py qlora_sst2        # lesson 05: LoRA on a 4-bit (NF4) base under the protocol, SST-2
    python scripts/precompute.py variants_sst2     # lesson 06: DoRA, rsLoRA and IA3 under the protocol, SST-2

Each writes ``peft_teach/precomputed/<name>.json`` with the results, the recipe and
how long it took. The protocol and transfer jobs are long (9 methods x (3 learning
rates + 2 more seeds)), so they store every finished run at once and skip stored runs when started
again: stop them any time, re-run the same command to go on. The training code is ``peft_teach.experiments``, the same functions
the lessons call for their live spot-checks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from pathlib import Path

from peft_teach import benchmark, experiments, lengths, llm, llm_experiments, protocol, sst2_generation, tickets, transfer
from peft_teach.data import SOURCE_TASKS, SST2_SAMPLE, label_names, load_task, load_tsv_task
from peft_teach.models import load_tokenizer
from peft_teach.methods import fusion, prefix
from peft_teach.precomputed import FOLDER, path, write_atomically
from peft_teach.train import enable_determinism, evaluate, get_device, make_loader, steps_per_epoch


def fusion_comparison(tokenizer) -> tuple[dict, dict]:
    model = experiments.source_adapter_model(tokenizer)
    routing = load_task("routing")
    tasks = {"sentiment": load_task("sentiment"), "aspect": load_task("aspect"), "routing": routing}
    seeds = experiments.SEEDS
    without_topic = [task for task in SOURCE_TASKS if task != "topic"]
    results = {
        "head-only": [experiments.run_head_only(tokenizer, routing, seed) for seed in seeds],
        "single adapter": [experiments.run_single_adapter(model, tokenizer, routing, seed) for seed in seeds],
        "joint multi-task": [experiments.run_joint_multitask(model, tokenizer, tasks, "routing", seed)
                             for seed in seeds],
        "fusion (4 adapters)": [experiments.run_fusion(model, tokenizer, routing, SOURCE_TASKS, seed)
                                for seed in seeds],
        "fusion without topic": [experiments.run_fusion(model, tokenizer, routing, without_topic, seed)
                                 for seed in seeds],
        "sequential full FT": experiments.run_sequential_full_ft(tokenizer, tasks["sentiment"], routing),
    }
    recipe = {"target": "routing (256 training examples)", **experiments.TARGET_BUDGET,
              "fusion_lr": experiments.FUSION_LR, "adapter_lr": experiments.ADAPTER_LR,
              "full_ft": experiments.FULL_FT, "seeds": list(seeds),
              "metric": f"test accuracy on the first {experiments.TEST_EXAMPLES} test examples"}
    return results, recipe


MEMORY_BATCH_SIZES = (16, 128)  # lesson 06's triangle: memory moves with the batch


def design_space_memory(tokenizer) -> tuple[dict, dict]:
    """Lesson 06: every method's training memory, counted, at the two batch sizes of its triangle."""
    results = {}
    for size in MEMORY_BATCH_SIZES:
        batch = benchmark.design_space_memory_batch(tokenizer, size)
        results[str(size)] = {"shape": list(batch["input_ids"].shape), "bytes": benchmark.method_memory(batch)}
    recipe = {"task": "sentiment", "batch": "the first reviews of the training split, unshuffled", "seed": 0,
              "metric": "bytes of weights, gradients, AdamW state and saved activations (measure.training_memory)"}
    return results, recipe


def lora_sweep(tokenizer) -> tuple[dict, dict]:
    data = load_task("sentiment")
    ranks = {str(r): experiments.run_lora(tokenizer, data, ("query", "value"), r) for r in experiments.LORA_RANKS}
    targets = {name: experiments.run_lora(tokenizer, data, targets, r)
               for name, (targets, r) in experiments.LORA_TARGET_SETS.items()}
    recipe = {**experiments.LORA_BUDGET, "alpha": 16, "seed": 0, "metric": "sentiment validation accuracy"}
    return {"ranks": ranks, "targets": targets}, recipe


def prefix_lengths(tokenizer) -> tuple[dict, dict]:
    data = load_task("sentiment")
    results = {str(length): experiments.run_prefix(tokenizer, data, length) for length in experiments.PREFIX_LENGTHS}
    recipe = {**experiments.PREFIX_BUDGET, "lr": experiments.PREFIX_LR, "seed": 0, "metric": "sentiment validation accuracy"}
    return results, recipe


def prefix_methods(tokenizer) -> tuple[dict, dict]:
    short, long = load_task("sentiment"), load_task("sentiment_long")
    results = {method: {str(seed): experiments.run_method(tokenizer, method, seed, short, long)
                        for seed in experiments.SEEDS}
               for method in experiments.METHOD_LR}
    recipe = {**experiments.PREFIX_BUDGET, "lr": experiments.METHOD_LR, "seeds": list(experiments.SEEDS),
              "metric": "validation accuracy: sentiment (short) and sentiment_long (long)"}
    return results, recipe


def prefix_seed0(tokenizer) -> tuple[dict, dict]:
    """Lesson 04: prefix_methods' seed-0 prefix trained again and saved, so the lesson can measure it without
    spending its time budget on training it; its accuracies are stored beside it for the lesson to reproduce."""
    short, long = load_task("sentiment"), load_task("sentiment_long")
    model, history = experiments.train_method(tokenizer, "prefix", 0, short)
    prefix.save_prefix(model, FOLDER / "prefix_seed0")
    results = {"short": history.final_accuracy, "long": evaluate(model, long["validation"], tokenizer),
               "validation_curve": history.eval_accuracy}
    recipe = {**experiments.PREFIX_BUDGET, "method": "prefix", "lr": experiments.METHOD_LR["prefix"], "seed": 0,
              "metric": "validation accuracy: sentiment (short) and sentiment_long (long)"}
    return results, recipe


UPDATE_MATRICES = ("attention.self.query.weight", "attention.self.value.weight")


def full_ft_update_spectrum(tokenizer) -> tuple[dict, dict]:
    """Lesson 05: the singular values of a *converged* full fine-tune's update ΔW = W - W0 (query, value).

    The protocol's stored full fine-tuning on sentiment (its chosen rate, seed 0, 300 steps, test 1.000)
    trained again, this time keeping W0 to subtract.
    """
    data = load_task("sentiment")
    lr = protocol.summarize(json.loads(path("protocol_sentiment").read_text()))["full_ft"]["lr"]
    model = protocol.build_method("full_ft", 2, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith(UPDATE_MATRICES)}
    result = protocol.fit(model, data, lr, 0, tokenizer)
    spectra = {name: [float(f"{v:.6g}") for v in torch.linalg.svdvals((model.get_parameter(name).detach() - w0).double())]
               for name, w0 in before.items()}
    steps = protocol.BUDGET["epochs"] * steps_per_epoch(len(data["train"]), protocol.BUDGET["batch_size"])
    recipe = {"method": "full_ft", "lr": lr, "seed": 0, **protocol.BUDGET, "steps": steps, "head_lr": protocol.HEAD_LR,
              "task": "sentiment", "metric": "singular values of W - W0; test accuracy of the fine-tuned model"}
    return {"singular_values": spectra, "test": result["test"], "validation_curve": result["validation_curve"]}, recipe


def fusion_heatmap(tokenizer) -> tuple[dict, dict]:
    """Practice 02: the weights of a fusion trained with lesson 02's recipe (section 4, seed 0) on real routing reviews.

    The practice notebook reads them instead of a made-up table: training a fusion is too slow for it.
    """
    model = experiments.source_adapter_model(tokenizer)
    routing = load_task("routing")
    accuracy = experiments.run_fusion(model, tokenizer, routing, SOURCE_TASKS, seed=0)
    examples = experiments.test_subset(routing)
    name = fusion.fusion_name(SOURCE_TASKS)
    weights = torch.cat([fusion.fusion_weights(model, name, batch)
                         for batch in make_loader(examples, tokenizer, batch_size=50)])  # (examples, layers, N)
    results = {"adapters": list(SOURCE_TASKS), "classes": label_names(routing), "labels": list(examples["label"]),
               "weights": [[[round(w, 4) for w in layer] for layer in example] for example in weights.tolist()],
               "test_accuracy": accuracy}
    recipe = {"target": "routing", **experiments.TARGET_BUDGET, "fusion_lr": experiments.FUSION_LR, "seed": 0,
              "source_adapters": experiments.SOURCE_RECIPES,
              "metric": f"fusion weights averaged over each review's real tokens, first {len(examples)} test reviews"}
    return results, recipe


# The real sentences ship with the package (peft_teach/sst2, see its README); PEFT_TEACH_SST2 points elsewhere.
SST2_FOLDER = Path(os.environ.get("PEFT_TEACH_SST2", SST2_SAMPLE))
TRAIN_EXAMPLES = 1200  # the synthetic task's training size: the same budget on both
SST2_TASK = f"SST-2 sample (real movie-review sentences), first {TRAIN_EXAMPLES:,} training sentences"


def machine_info() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": str(get_device())}


DESCRIPTIVE = ("selection", "metric", "task")  # recipe entries that describe, but do not change, a run


def settings(recipe: dict) -> dict:
    """What decides a run's numbers: the recipe without its descriptions."""
    return {key: value for key, value in recipe.items() if key not in DESCRIPTIVE}


# Recipe entries that decide only some runs: a method's learning-rate grid and its own settings
# ("method_settings") decide that method's runs (keys "method|..."), and an entry named like a run ("live")
# decides that run alone.
# A probe (a key with a fourth part, protocol.probe_key) depends on the recipe's "probe" entry as well.
PER_RUN = ("lr_grid", "method_settings", "live", "probe")


def shared_settings(recipe: dict) -> dict:
    """The settings every run depends on."""
    return {key: value for key, value in settings(recipe).items() if key not in PER_RUN}


def own_setting(recipe: dict, key: str):
    """The part of ``recipe`` that decides run ``key`` alone (None if there is none)."""
    if key in PER_RUN:
        return recipe.get(key)
    method = key.split("|")[0]
    own = (recipe.get("lr_grid", {}).get(method), recipe.get("method_settings", {}).get(method))
    return (*own, recipe.get("probe")) if is_probe(key) else own


def is_probe(key: str) -> bool:
    """Whether run ``key`` is a method's probe (protocol.probe_key): its name, rate and seed, then what it adds."""
    return key.count("|") == 3


def still_valid(runs: dict, old: dict, new: dict) -> dict:
    """The stored runs that ``new`` would compute exactly as ``old`` did: shared and own settings unchanged."""
    if shared_settings(old) != shared_settings(new):
        return {}
    return {key: run for key, run in runs.items() if own_setting(old, key) == own_setting(new, key)}


SELECTION = ("final validation accuracy of seed 0, ties to the smaller learning rate; a best rate at the edge "
             "of the grid adds the next half-decade rate beyond it (at most twice)")
PROBE_RULE = (f"; a method still rising in its last epoch gets one probe: its seed-0 run, continued for "
              f"{protocol.PROBE_EXTRA_EPOCHS // protocol.BUDGET['epochs']}x the budget's epochs more")
# What a probe does after the budget (the recipe's "probe" entry; changing it recomputes the probes alone).
PROBE = {"extra_epochs": f"{protocol.PROBE_EXTRA_EPOCHS // protocol.BUDGET['epochs']}x the budget's",
         "from": "the weights at the end of the budget",
         "schedule": "a fresh AdamW, warm-up and linear decay over the extra epochs (a warm restart)",
         "seed": f"seed + {protocol.CONTINUATION_SEED_OFFSET} for the extra epochs' batches and dropout"}


class ResumableStore:
    """``peft_teach/precomputed/<name>.json``, written after every finished run.

    Stored runs always follow the current recipe (tests/test_protocol.py checks this too): when
    the recipe changes, the runs it would compute differently are dropped and the others kept,
    so adding a method, or changing one method's grid, does not throw away the other methods.
    """

    def __init__(self, name: str, recipe: dict):
        self.name, self.file = name, path(name)
        stored = json.loads(self.file.read_text()) if self.file.exists() else {}
        if stored:
            kept = still_valid(stored["runs"], stored["recipe"], recipe)
            dropped = sorted(set(stored["runs"]) - set(kept))
            if dropped:
                print(f"{name}: the recipe changed; recomputing {', '.join(dropped)}", flush=True)
            stored.update(recipe=recipe, runs=kept,
                          seconds=sum(run.get("seconds", 0) for run in kept.values()))
        else:
            stored = {"recipe": recipe, "runs": {}, "machine": machine_info(), "seconds": 0}
        self.stored = stored

    def get(self, key: str, compute) -> dict:
        """The stored result of run ``key``; computed (and stored at once) if missing."""
        runs = self.stored["runs"]
        if key not in runs:
            # Wall time grows when the machine is shared or the job is paused; the process' CPU time
            # (all threads together) does not, so both are stored.
            start, cpu_start = time.perf_counter(), time.process_time()
            result = compute()
            result = result if isinstance(result, dict) else {"test": result}
            runs[key] = {**result, "seconds": round(time.perf_counter() - start),
                         "cpu_seconds": round(time.process_time() - cpu_start)}
            self.stored["seconds"] += runs[key]["seconds"]
            write_atomically(self.file, json.dumps(self.stored, indent=2) + "\n")
            print(f"{self.name}: {key} ({runs[key]['seconds']} s)", flush=True)
        return runs[key]


def run_key(method: str, lr: float, seed: int) -> str:
    return f"{method}|lr={lr:g}|seed={seed}"


def grid_then_seeds(store: ResumableStore, methods: dict, run, extensions: int = protocol.GRID_EXTENSIONS) -> dict[str, float]:
    """Each method's grid with seed 0 (grown past an edge winner), then the other seeds at the chosen rate."""
    chosen = {}
    first = protocol.SEEDS[0]
    for method, spec in methods.items():
        tried = {lr: store.get(run_key(method, lr, first), lambda: run(method, lr, first)) for lr in spec.lr_grid}
        for _ in range(extensions):
            beyond = protocol.rate_beyond_edge(list(tried), protocol.choose_lr(list(tried.values())))
            if beyond is None:
                break
            tried[beyond] = store.get(run_key(method, beyond, first), lambda: run(method, beyond, first))
        chosen[method] = protocol.choose_lr(list(tried.values()))
        for seed in protocol.SEEDS[1:]:
            store.get(run_key(method, chosen[method], seed), lambda: run(method, chosen[method], seed))
    return chosen


def probe_the_still_climbing(store: ResumableStore, chosen: dict[str, float], probe) -> None:
    """A method whose curves still rise at the end of the budget: ``probe(method, lr)``, stored once."""
    for method, lr in chosen.items():
        curves = [store.stored["runs"][run_key(method, lr, seed)]["validation_curve"] for seed in protocol.SEEDS]
        if protocol.still_climbing(curves):
            store.get(protocol.probe_key(method, lr), lambda: probe(method, lr))


def run_protocol(name: str, data, tokenizer, description: str) -> None:
    """Every method of peft_teach.protocol: learning-rate grid (seed 0), then the other seeds; resumable."""
    recipe = {"task": description, **protocol.BUDGET, "head_lr": protocol.HEAD_LR, "seeds": list(protocol.SEEDS),
              "lr_grid": {m: list(spec.lr_grid) for m, spec in protocol.METHODS.items()},
              "train_examples": len(data["train"]), "validation_examples": len(data["validation"]),
              "test_examples": len(data["test"]),
              "selection": SELECTION + PROBE_RULE, "probe": PROBE,
              "metric": "accuracy; validation after every epoch, test at the end"}
    store = ResumableStore(name, recipe)
    chosen = grid_then_seeds(store, protocol.METHODS,
                             lambda method, lr, seed: protocol.run(method, data, lr, seed, tokenizer))
    probe_the_still_climbing(store, chosen, lambda method, lr: protocol.probe(method, data, lr, tokenizer))


def sst2_methods_beside_protocol(name: str, methods: dict, tokenizer, **described) -> None:
    """``methods`` under lesson 06's protocol on SST-2, stored apart from protocol_sst2 but comparable with it
    (same data, budget, head rate, seeds and selection); resumable."""
    data = sst2_protocol_data()
    recipe = {"task": SST2_TASK,
              **protocol.BUDGET, "head_lr": protocol.HEAD_LR, "seeds": list(protocol.SEEDS),
              "lr_grid": {m: list(spec.lr_grid) for m, spec in methods.items()}, **described,
              "train_examples": len(data["train"]), "validation_examples": len(data["validation"]),
              "test_examples": len(data["test"]), "selection": SELECTION + PROBE_RULE, "probe": PROBE,
              "metric": "accuracy; validation after every epoch, test at the end"}
    store = ResumableStore(name, recipe)
    chosen = grid_then_seeds(store, methods, lambda method, lr, seed: protocol.run(
        method, data, lr, seed, tokenizer, methods=methods))
    probe_the_still_climbing(store, chosen, lambda method, lr: protocol.probe(method, data, lr, tokenizer, methods))


def qlora_sst2(tokenizer) -> None:
    """Lesson 05: LoRA on a 4-bit (NF4) base; the float32 base's LoRA is in protocol_sst2."""
    sst2_methods_beside_protocol("qlora_sst2", protocol.QUANTIZED, tokenizer,
                                 base="every nn.Linear of the encoder in NF4, blocks of 64 (peft_teach.quantize); "
                                      "embeddings, LayerNorms and the head in float32")


def variants_sst2(tokenizer) -> None:
    """Lesson 06: DoRA, rsLoRA and IA3 beside protocol_sst2's LoRA."""
    sst2_methods_beside_protocol("variants_sst2", protocol.VARIANTS, tokenizer)


def rank_scaling(tokenizer) -> None:
    """Lesson 05: the rank sweep with alpha/r and with alpha/sqrt(r) (rsLoRA), three seeds each; resumable."""
    data = load_task("sentiment")
    recipe = {**experiments.LORA_BUDGET, "alpha": 16, "targets": ["query", "value"],
              "ranks": list(experiments.SCALING_RANKS), "scalings": list(experiments.SCALINGS),
              "seeds": list(protocol.SEEDS), "test_examples": len(data["test"]),
              "metric": "sentiment: validation accuracy after each epoch, test accuracy at the end, loss per step"}
    store = ResumableStore("rank_scaling", recipe)
    for seed in protocol.SEEDS:  # seed by seed: a stopped job already holds every rank and scale of its first seeds
        for scaling in experiments.SCALINGS:
            for r in experiments.SCALING_RANKS:
                store.get(f"{scaling}|r={r}|seed={seed}",
                          lambda: experiments.run_lora_scaling(tokenizer, data, r, scaling, seed))


def transfer_routing(tokenizer) -> None:
    """Lessons 02 and 06: every multi-task strategy on the target, then the transfer measurements; resumable."""
    tasks = transfer.load_tasks()
    recipe = {"target": transfer.TARGET_TASK, "sources": list(SOURCE_TASKS), **transfer.TARGET_BUDGET,
              "steps": transfer.STEPS, "head_lr": protocol.HEAD_LR, "seeds": list(protocol.SEEDS),
              "lr_grid": {m: list(spec.lr_grid) for m, spec in transfer.TARGET_METHODS.items()},
              "source_adapters": experiments.SOURCE_RECIPES, "prompt_length": transfer.PROMPT_LENGTH,
              "left_out": list(transfer.LEFT_OUT),
              "method_settings": {"fusion_matched": {"source_adapters": {
                  task: transfer.matched_source_recipe(tasks[task]) for task in SOURCE_TASKS}},
                  "mt_prompt": {"stage1": f"{transfer.STAGE1}'s runs: the prompt of the same seed, at the rate "
                                          "stage 1 chose on the sources' mean validation accuracy"}},
              "selection": SELECTION, "metric": "accuracy on the full test splits"}
    recipe["lr_grid"][transfer.STAGE1] = list(transfer.STAGE1_GRID)
    store = ResumableStore("transfer_routing", recipe)
    def runner(table):
        return lambda method, lr, seed: table[method].run(tokenizer, tasks, lr, seed)

    # Stage 1 of multi-task prompt tuning first: mt_prompt starts from the prompt it chose.
    stage1_lr = grid_then_seeds(store, transfer.STAGE1_METHODS, runner(transfer.STAGE1_METHODS))[transfer.STAGE1]
    methods = transfer.runnable_methods(stage1_lr)
    chosen = grid_then_seeds(store, methods, runner(methods))
    for seed in protocol.SEEDS:
        for task in transfer.LEFT_OUT:
            names = [t for t in SOURCE_TASKS if t != task]
            store.get(run_key(f"fusion_without={task}", chosen["fusion"], seed),
                      lambda: transfer.run_fusion(tokenizer, tasks, chosen["fusion"], seed, names))
        for task in SOURCE_TASKS:
            store.get(run_key(f"source_alone={task}", chosen["joint"], seed),
                      lambda: transfer.run_source_alone(tokenizer, tasks, task, chosen["joint"], seed))
        store.get(run_key("sequential_full_ft", chosen["full_ft"], seed),
                  lambda: transfer.run_sequential_full_ft(tokenizer, tasks, chosen["full_ft"], seed))


def protocol_sentiment(tokenizer) -> None:
    run_protocol("protocol_sentiment", load_task("sentiment"), tokenizer,
                 "sentiment (generated reviews), 1,200 / 300 / 600 examples")


def sst2_protocol_data():
    """The SST-2 sample as the protocol trains on it: its first TRAIN_EXAMPLES training sentences."""
    if not SST2_FOLDER.is_dir():
        raise SystemExit(f"No SST-2 sample at {SST2_FOLDER}; set PEFT_TEACH_SST2 to the folder holding train.tsv.")
    data = load_tsv_task(SST2_FOLDER)
    data["train"] = data["train"].select(range(TRAIN_EXAMPLES))
    return data


def protocol_sst2(tokenizer) -> None:
    run_protocol("protocol_sst2", sst2_protocol_data(), tokenizer, SST2_TASK)


def head_rate_sst2(tokenizer) -> None:
    """Lesson 06: each method's seed-0 SST-2 run at its chosen rate again, the head at protocol.HEAD_RATE_CHECK."""
    chosen = {method: row["lr"] for method, row in protocol.summarize(json.loads(path("protocol_sst2").read_text())).items()
              if protocol.METHODS[method].train_head_apart}
    data = sst2_protocol_data()
    recipe = {"task": "protocol_sst2's data and budget", **protocol.BUDGET, "head_lr": protocol.HEAD_RATE_CHECK,
              "against_head_lr": protocol.HEAD_LR, "seed": protocol.SEEDS[0], "method_lr": chosen,
              "metric": "validation accuracy after the budget (where rates are chosen), and test"}
    store = ResumableStore("head_rate_sst2", recipe)
    first = protocol.SEEDS[0]
    for method, lr in chosen.items():
        store.get(run_key(method, lr, first), lambda: protocol.run(method, data, lr, first, tokenizer,
                                                                   head_lr=protocol.HEAD_RATE_CHECK))


def length_tradeoff(tokenizer) -> None:
    """Lesson 04: prefix tuning, PT+ and LoRA trained on short and on long inputs, and a long prefix; resumable."""
    tasks = {"short": load_task("sentiment"), "long": load_task("sentiment_long")}
    recipe = {"tasks": {"short": "sentiment", "long": "sentiment_long"}, "budgets": lengths.BUDGETS,
              "head_lr": protocol.HEAD_LR, "seeds": list(protocol.SEEDS),
              "lr_grid": {key: list(spec.lr_grid) for key, spec in lengths.LENGTH_RUNS.items()},
              "selection": SELECTION + " (validation on the inputs it trains on)" + PROBE_RULE, "probe": PROBE,
              "metric": "test accuracy on the inputs it trains on (test) and on the other length (other_test)"}
    store = ResumableStore("length_tradeoff", recipe)
    chosen = grid_then_seeds(store, lengths.LENGTH_RUNS,
                             lambda key, lr, seed: lengths.run(key, tasks, lr, seed, tokenizer))
    probe_the_still_climbing(store, chosen, lambda key, lr: lengths.probe(key, tasks, lr, tokenizer))


def llm_recipe(task: llm_experiments.GenerationTask, data, description: str, metric: str) -> dict:
    """The recipe every LLM comparison stores: budget, seeds, grids, baselines and split sizes."""
    E = llm_experiments
    return {"task": description, **E.BUDGET, "seeds": list(E.SEEDS),
            "lr_grid": {m: list(spec.lr_grid) for m, spec in task.methods.items()}, "few_shot": E.FEW_SHOT,
            "max_new_tokens": task.max_new_tokens, "train_examples": len(data["train"]),
            "validation_examples": len(data["validation"]), "test_examples": len(data["test"]),
            "selection": SELECTION.replace("final validation accuracy", f"validation {task.selection_metric}"),
            "metric": metric}


def llm_grids(store: ResumableStore, task: llm_experiments.GenerationTask, data, tokenizer) -> None:
    """Few-shot prompting, then each method's grid (seed 0) and its other seeds at the chosen rate."""
    E = llm_experiments

    def run(method: str, lr: float, seed: int) -> dict:
        result = E.run(method, data, lr, seed, tokenizer, task=task)
        return {"lr": lr, "seed": seed, "validation": result["validation_scores"][task.selection_metric], **result}

    store.get(f"few_shot_k{E.FEW_SHOT}", lambda: {"test": E.prompting(tokenizer, data, E.FEW_SHOT, task)})
    for method in task.methods:  # one method at a time, so a stopped job has whole methods stored
        grid_then_seeds(store, {method: task.methods[method]}, run)


def llm_tickets(tokenizer) -> None:
    """Lesson 07: zero- and few-shot prompting, the live check, then each method's grid and seeds; resumable."""
    del tokenizer  # the encoder's; this job uses the LLM's
    tokenizer = llm.load_llm_tokenizer()
    data = tickets.load_tickets()
    E = llm_experiments
    recipe = {**llm_recipe(E.TICKETS, data, "support tickets -> JSON (peft_teach.tickets, seed 0)",
                           "greedy decoding; parse rate and exact match per field on the full test split"),
              "live": E.LIVE}
    store = ResumableStore("llm_tickets", recipe)
    store.get("zero_shot", lambda: {"test": E.prompting(tokenizer, data, 0)})
    live = E.LIVE
    store.get("live", lambda: E.run(live["method"], data, live["lr"], live["seed"], tokenizer, steps=live["steps"],
                                    test_examples=live["test_examples"]))
    llm_grids(store, E.TICKETS, data, tokenizer)


def llm_sst2(tokenizer) -> None:
    """Lesson 07's real-data column: SST-2 phrases answered in one word, prompting and each method; resumable."""
    del tokenizer
    tokenizer = llm.load_llm_tokenizer()
    task = llm_experiments.SST2
    data = task.load()
    data["train"] = data["train"].select(range(TRAIN_EXAMPLES))  # lesson 06's SST-2 training phrases
    recipe = llm_recipe(task, data, f"SST-2 phrases -> positive/negative (the packaged sample; lesson 06's "
                                    f"first {TRAIN_EXAMPLES:,} training phrases and its test phrases)",
                        "greedy decoding; an answer holding exactly one of the two label words is parsed; "
                        "accuracy on the full test split")
    store = ResumableStore("llm_sst2", recipe)
    store.get("zero_shot", lambda: {"test": llm_experiments.prompting(tokenizer, data, 0, task)})

    def label_words() -> dict:  # the zero-shot model's preference between the two words, no decoding
        scores = llm.label_word_scores(llm.load_llm(), tokenizer, data["test"]["prompt"], sst2_generation.LABEL_WORDS)
        right = (scores.argmax(-1) == torch.tensor(data["test"]["label"])).tolist()
        return {"accuracy": sum(right) / len(right), "correct": right}

    store.get("zero_shot_label_words", label_words)
    llm_grids(store, task, data, tokenizer)


JOBS = {"fusion_comparison": fusion_comparison, "lora_sweep": lora_sweep, "prefix_lengths": prefix_lengths,
        "prefix_methods": prefix_methods, "prefix_seed0": prefix_seed0, "full_ft_update_spectrum": full_ft_update_spectrum,
        "fusion_heatmap": fusion_heatmap, "design_space_memory": design_space_memory}
RESUMABLE = {"protocol_sentiment": protocol_sentiment, "protocol_sst2": protocol_sst2,
             "transfer_routing": transfer_routing, "length_tradeoff": length_tradeoff, "llm_tickets": llm_tickets,
             "llm_sst2": llm_sst2, "head_rate_sst2": head_rate_sst2, "qlora_sst2": qlora_sst2,
             "rank_scaling": rank_scaling, "variants_sst2": variants_sst2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", nargs="+", choices=sorted(JOBS) + sorted(RESUMABLE))
    args = parser.parse_args()
    os.environ.setdefault("PEFT_TEACH_PROGRESS", "0")
    enable_determinism()
    tokenizer = load_tokenizer()
    for name in args.jobs:
        if name in RESUMABLE:  # they store as they go
            RESUMABLE[name](tokenizer)
            continue
        start = time.perf_counter()
        results, recipe = JOBS[name](tokenizer)
        seconds = time.perf_counter() - start
        machine = {**machine_info(), "seconds": round(seconds)}
        write_atomically(path(name), json.dumps({"results": results, "recipe": recipe, "machine": machine}, indent=2) + "\n")
        print(f"{name}: {seconds:.0f} s -> {path(name)}")


if __name__ == "__main__":
    main()
