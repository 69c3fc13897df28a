"""Training recipes that lessons share with ``scripts/precompute.py``.

Some comparisons (a rank sweep, three methods x three seeds) cost more training
than a lesson may spend on a 2-core CPU (4 minutes). For those, the script runs
the full comparison once and stores the numbers in ``peft_teach/precomputed/``;
the lesson shows them, says they are precomputed, and re-trains at least one
configuration live with the *same function* to check the stored number.

``run_*`` functions train one configuration and return plain numbers (the
fusion ones reuse a model that already holds the source adapters); ``train_*``
functions return the trained model too, for lessons that look inside it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict
from torch import nn

from peft_teach.data import SOURCE_TASKS, label_names, load_task
from peft_teach.files import write_text_atomically
from peft_teach.methods import adapters, fusion, lora, prefix, prefix_plus
from peft_teach.methods.checkpoint import CheckpointError, check_folder
from peft_teach.models import build_classifier, mean_pool
from peft_teach.train import evaluate, make_loader, set_seed, steps_per_epoch, train

# --------------------------------------------------------------------------- train or load an adapter


def data_fingerprint(data: DatasetDict) -> str:
    """sha256 of the training texts and labels: a cached adapter is reused only for the same data."""
    digest = hashlib.sha256()
    for text, label in zip(data["train"]["text"], data["train"]["label"]):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def adapter_recipe(data: DatasetDict, config: adapters.AdapterConfig | None = None, **train_kwargs) -> dict:
    """Everything that decides a trained adapter: config, training settings, data fingerprint."""
    return json.loads(json.dumps({
        "config": asdict(config or adapters.AdapterConfig()),
        "train": {k: v for k, v in sorted(train_kwargs.items()) if k != "device"},
        "data": data_fingerprint(data),
        "num_labels": data["train"].features["label"].num_classes,
    }))


RECIPE_FILE = "recipe.json"


def save_trained_adapter(model: nn.Module, name: str, folder: str | Path, recipe: dict) -> None:
    """save_adapter plus ``recipe.json``, so train_or_load_adapter can reuse it later.

    Like every save it refuses a folder holding files it did not write (the recipe is its own).
    """
    check_folder(Path(folder), "adapter", overwrite=False, also_ours=(RECIPE_FILE,))
    adapters.save_adapter(model, name, folder, overwrite=True)  # the folder was checked just above
    write_text_atomically(Path(folder) / RECIPE_FILE, json.dumps(recipe, indent=2))


def train_or_load_adapter(model: nn.Module, tokenizer, data: DatasetDict, name: str, folder: str | Path,
                          config: adapters.AdapterConfig | None = None, **train_kwargs) -> str:
    """Load adapter ``name`` from ``folder`` if it was trained with these settings, else train and save it.

    Lets a CPU learner (or the next lesson) skip retraining. Training is seeded,
    so loading gives the same adapter as training again would: the recipe is
    ``add_adapter(model, name, config, num_labels, seed)`` then
    ``train(model, tokenizer, data, **train_kwargs)``. Returns ``"loaded"`` or
    ``"trained"``. A checkpoint made for another base model raises
    IncompatibleBaseModelError (it is never silently trained over); a damaged one
    is trained again.
    """
    folder = Path(folder)
    config = config or adapters.AdapterConfig()
    recipe = adapter_recipe(data, config, **train_kwargs)
    recipe_file = folder / RECIPE_FILE
    if recipe_file.exists() and json.loads(recipe_file.read_text()) == recipe:
        try:
            adapters.load_adapter(model, folder, name)
            return "loaded"
        except CheckpointError:  # damaged files: train again below
            if name in adapters.adapter_names(model):
                adapters.remove_adapter(model, name)
    adapters.add_adapter(model, name, config, num_labels=recipe["num_labels"], seed=train_kwargs.get("seed", 0))
    train(model, tokenizer, data, **train_kwargs)
    save_trained_adapter(model, name, folder, recipe)
    return "trained"


# --------------------------------------------------------------------------- lesson 02: fusion

SOURCE_RECIPES = {  # lesson 01 trains sentiment, aspect and topic with exactly these, so they are reused
    task: dict(epochs=3 if task == "sentiment" else 1, lr=3e-3, batch_size=32, seed=0) for task in SOURCE_TASKS
}
TARGET_BUDGET = dict(epochs=4, batch_size=32)  # 32 steps on the 256 routing examples, for every method
FUSION_LR, ADAPTER_LR = 4e-3, 3e-3
FULL_FT = dict(lr=2e-4, batch_size=16)  # the short full fine-tuning recipe of the sequential runs (lesson 02)
TEST_EXAMPLES = 300


def artifacts_folder() -> Path:
    """``artifacts/adapters`` next to pyproject.toml (shared by lessons 01 and 02), else a temporary folder."""
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "pyproject.toml").exists():
            return folder / "artifacts" / "adapters"
    return Path(tempfile.gettempdir()) / "peft_teach_artifacts" / "adapters"


def test_subset(data: DatasetDict, n: int | None = None) -> Dataset:
    """The first ``n`` (default TEST_EXAMPLES) test examples: enough to compare methods, half the evaluation time."""
    n = TEST_EXAMPLES if n is None else n
    return data["test"].select(range(min(n, len(data["test"]))))


def source_adapter_model(tokenizer) -> nn.Module:
    """A frozen MiniLM with the four source adapters, trained once and then loaded from artifacts/."""
    model = build_classifier(num_labels=2, seed=0).eval()
    for task in SOURCE_TASKS:
        train_or_load_adapter(model, tokenizer, load_task(task), task, artifacts_folder() / task,
                              **SOURCE_RECIPES[task])
    return model


def run_fusion(model: nn.Module, tokenizer, target: DatasetDict, names, seed: int) -> float:
    """Stage 2: a fresh fusion over ``names`` (+ head), trained on ``target``; test accuracy."""
    name = fusion.fusion_name(names)
    if name in fusion.fusion_names(model):
        fusion.remove_fusion(model, name)  # every seed starts from a fresh fusion layer
    fusion.add_fusion(model, names, num_labels=len(label_names(target)), seed=seed)  # only the fusion + head train
    train(model, tokenizer, target, lr=FUSION_LR, seed=seed, eval_split=None,
          extra_loss=fusion.value_regularization(name), **TARGET_BUDGET)
    return evaluate(model, test_subset(target), tokenizer)


def run_single_adapter(model: nn.Module, tokenizer, target: DatasetDict, seed: int) -> float:
    """One new adapter trained on ``target`` only (no source knowledge); removed afterwards."""
    name = f"target_only_seed{seed}"
    adapters.add_adapter(model, name, num_labels=len(label_names(target)), seed=seed)  # only it + head train
    train(model, tokenizer, target, lr=ADAPTER_LR, seed=seed, eval_split=None, **TARGET_BUDGET)
    accuracy = evaluate(model, test_subset(target), tokenizer)
    adapters.remove_adapter(model, name)
    return accuracy


def run_joint_multitask(model: nn.Module, tokenizer, tasks: dict[str, DatasetDict], target: str,
                        seed: int) -> float:
    """Joint multi-task training (the paper's MT-A): one adapter shared by all ``tasks``, one head each.

    Every step takes one batch of every task and sums the losses; as many steps as
    the other methods get on the target. Returns the target's test accuracy.
    """
    name = f"joint_seed{seed}"
    adapters.add_adapter(model, name, num_labels=len(label_names(tasks[target])), seed=seed)  # + target head
    set_seed(seed)
    device = next(model.parameters()).device  # the extra heads and every batch go where the model is
    d = model.head.in_features
    heads = {task: (model.head if task == target else nn.Linear(d, len(label_names(data))).to(device))
             for task, data in tasks.items()}
    batch_size = TARGET_BUDGET["batch_size"]
    steps = TARGET_BUDGET["epochs"] * steps_per_epoch(len(tasks[target]["train"]), batch_size)
    loaders = {task: iter(make_loader(data["train"], tokenizer, batch_size, shuffle=True, seed=seed))
               for task, data in tasks.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable += [p for task, head in heads.items() if task != target for p in head.parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=ADAPTER_LR)
    model.train()
    for step in range(steps):
        loss = 0.0
        for task in tasks:
            try:
                batch = next(loaders[task])
            except StopIteration:  # a small task runs out first: start its next epoch
                loaders[task] = iter(make_loader(tasks[task]["train"], tokenizer, batch_size, shuffle=True,
                                                 seed=seed + step))
                batch = next(loaders[task])
            batch = {key: value.to(device) for key, value in batch.items()}
            hidden = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            pooled = mean_pool(hidden.last_hidden_state, batch["attention_mask"])
            loss = loss + nn.functional.cross_entropy(heads[task](model.dropout(pooled)), batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    accuracy = evaluate(model, test_subset(tasks[target]), tokenizer)
    adapters.remove_adapter(model, name)
    return accuracy


@torch.no_grad()
def frozen_features(tokenizer, dataset: Dataset) -> torch.Tensor:
    """Mean-pooled features of the frozen base model: what a head-only model's head sees."""
    base = build_classifier(num_labels=2, seed=0).eval()
    chunks = []
    for batch in make_loader(dataset, tokenizer, batch_size=64):
        hidden = base.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        chunks.append(mean_pool(hidden.last_hidden_state, batch["attention_mask"]))
    return torch.cat(chunks)


def run_head_only(tokenizer, target: DatasetDict, seed: int, epochs: int = 30, lr: float = 1e-2) -> float:
    """A linear head on frozen features (computed once: the encoder would give the same ones every epoch)."""
    train_x, test_x = frozen_features(tokenizer, target["train"]), frozen_features(tokenizer, test_subset(target))
    train_y, test_y = torch.tensor(target["train"]["label"]), torch.tensor(test_subset(target)["label"])
    set_seed(seed)
    head = nn.Linear(train_x.shape[1], len(label_names(target)))
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for index in torch.randperm(len(train_x), generator=generator).split(TARGET_BUDGET["batch_size"]):
            logits = head(nn.functional.dropout(train_x[index], 0.1))
            nn.functional.cross_entropy(logits, train_y[index]).backward()
            optimizer.step()
            optimizer.zero_grad()
    return (head(test_x).argmax(-1) == test_y).float().mean().item()


def run_sequential_full_ft(tokenizer, source: DatasetDict, target: DatasetDict, seed: int = 0) -> dict:
    """Full fine-tuning on ``source``, then on ``target`` (new head); the source's accuracy before and after.

    Both stages use :data:`FULL_FT` (source 2 epochs, target 6 epochs). After stage 2
    the source head, untouched since stage 1, is put back: any drop comes from the
    shared encoder weights that stage 2 moved.
    """
    model = build_classifier(num_labels=len(label_names(source)), seed=seed)
    train(model, tokenizer, source, epochs=2, seed=seed, eval_split=None, **FULL_FT)
    before = evaluate(model, test_subset(source), tokenizer)
    source_head = model.head
    torch.manual_seed(seed)
    model.head = nn.Linear(source_head.in_features, len(label_names(target)))
    train(model, tokenizer, target, epochs=6, seed=seed, eval_split=None, **FULL_FT)
    target_accuracy = evaluate(model, test_subset(target), tokenizer)
    model.head = source_head
    return {"source_before": before, "source_after": evaluate(model, test_subset(source), tokenizer),
            "target": target_accuracy}


# --------------------------------------------------------------------------- lesson 05: LoRA

LORA_BUDGET = dict(epochs=2, lr=5e-3, batch_size=32)  # lesson 05, section 4
LORA_RANKS = (1, 2, 4, 8, 32)  # on query and value
LORA_TARGET_SETS = {  # identifier: (targets, rank); (almost) the same number of LoRA parameters
    "qv_r8": (("query", "value"), 8),
    "qkvo_r4": (("query", "key", "value", "attention.output.dense"), 4),
    "all_linear_r2": (("query", "key", "value", "output.dense", "intermediate.dense"), 2),
}
LORA_TARGET_LABELS = {"qv_r8": "q, v  r=8", "qkvo_r4": "q, k, v, o  r=4", "all_linear_r2": "all linear  r=2"}


# The rank sweep again with both scales (lesson 05, section 9): LoRA's alpha / r and rsLoRA's alpha / sqrt(r),
# one learning rate for every rank, as when a rate tuned at one rank is kept for another.
SCALING_RANKS = (2, 8, 32, 128)  # on query and value
SCALINGS = {"alpha/r": False, "alpha/sqrt(r)": True}  # name -> add_lora's rslora


def run_lora_scaling(tokenizer, data: DatasetDict, r: int, scaling: str, seed: int) -> dict:
    """LoRA on query and value at rank ``r`` scaled by ``scaling`` (a key of SCALINGS), trained with LORA_BUDGET."""
    if scaling not in SCALINGS:
        raise ValueError(f"Unknown scaling {scaling!r}; choose one of {list(SCALINGS)}.")
    model = build_classifier(2, seed=seed)
    lora.add_lora(model, targets=("query", "value"), r=r, alpha=16, seed=seed, rslora=SCALINGS[scaling])
    history = train(model, tokenizer, data, seed=seed, **LORA_BUDGET)
    return {"validation": history.eval_accuracy, "test": evaluate(model, data["test"], tokenizer),
            "train_loss": history.train_loss}


def run_lora(tokenizer, data: DatasetDict, targets, r: int, alpha: float = 16, seed: int = 0) -> dict:
    """LoRA on ``targets`` with rank ``r``, trained with LORA_BUDGET: parameters and validation accuracy."""
    model = build_classifier(2, seed=seed)
    lora.add_lora(model, targets=targets, r=r, alpha=alpha, seed=seed)
    history = train(model, tokenizer, data, seed=seed, **LORA_BUDGET)
    return {"lora_parameters": lora.lora_parameters(model), "accuracy": history.final_accuracy}


# ------------------------------------------------------------ lessons 03 and 04: prefixes

PREFIX_BUDGET = dict(epochs=3, batch_size=16, head_lr=3e-3)  # 225 steps on the 1,200 reviews
PREFIX_LR = 0.03
PREFIX_LENGTHS = (1, 5, 10, 20)
# The three 73,728-parameter methods of lesson 04, by identifier; labels are for display only.
METHOD_LABELS = {"prefix": "prefix (l=16)", "prefix_plus": "PT+ (per-head M)", "lora": "LoRA (r=8, q+v)"}
# Learning rates of the methods' own parameters (the head always uses head_lr).
METHOD_LR = {"prefix": 0.03, "prefix_plus": 3e-3, "lora": 5e-3}
SEEDS = (0, 1, 2)


def train_prefix(tokenizer, data: DatasetDict, length: int, seed: int = 0):
    """Prefix tuning of length ``length`` (no MLP), PREFIX_BUDGET at PREFIX_LR; return (model, history)."""
    model = build_classifier(2, seed=seed)
    prefix.add_prefix(model, length=length, init_std=0.5, seed=seed)
    history = train(model, tokenizer, data, lr=PREFIX_LR, seed=seed, **PREFIX_BUDGET)
    return model, history


def run_prefix(tokenizer, data: DatasetDict, length: int, seed: int = 0) -> dict:
    """Prefix parameters and validation accuracy of :func:`train_prefix`."""
    model, history = train_prefix(tokenizer, data, length, seed)
    return {"prefix_parameters": prefix.prefix_parameters(model), "accuracy": history.final_accuracy}


def make_method(method: str, seed: int) -> nn.Module:
    """A fresh classifier with one of the three 73,728-parameter methods (by identifier)."""
    model = build_classifier(2, seed=seed)
    if method == "prefix":
        prefix.add_prefix(model, length=16, seed=seed)
    elif method == "prefix_plus":
        prefix_plus.add_prefix_plus(model, seed=seed)
    elif method == "lora":
        lora.add_lora(model, targets=("query", "value"), r=8, seed=seed)
    else:
        raise ValueError(f"Unknown method {method!r}; choose one of {list(METHOD_LR)}.")
    return model


def train_method(tokenizer, method: str, seed: int, short: DatasetDict | None = None):
    """Train ``method`` on the short reviews with PREFIX_BUDGET; return (model, history)."""
    short = short or load_task("sentiment")
    model = make_method(method, seed)
    history = train(model, tokenizer, short, lr=METHOD_LR[method], seed=seed, **PREFIX_BUDGET)
    return model, history


def run_method(tokenizer, method: str, seed: int, short: DatasetDict | None = None,
               long: DatasetDict | None = None) -> dict:
    """Train ``method`` on short reviews; validation accuracy on short and on long reviews."""
    long = long or load_task("sentiment_long")
    model, history = train_method(tokenizer, method, seed, short)
    return {"trainable": history.trainable_parameters, "short": history.final_accuracy,
            "long": evaluate(model, long["validation"], tokenizer)}
