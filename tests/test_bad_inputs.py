"""Every bad input gets a clear error: the right exception type, and words that say the fix.

One table, one parametrized test. Each case builds what it needs (tiny random models,
no download), calls the package the wrong way, and checks the message names the fix.
"""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from torch import nn
from transformers import AutoModel, BertConfig, BertModel, DistilBertConfig, GPT2Config, GPT2LMHeadModel

from peft_teach import data, experiments, llm_speed, measure, models, precomputed, protocol, sst2_generation, train
from peft_teach.methods import adapters, fusion, ia3, lora, prefix, prefix_plus, prompts
from peft_teach.methods.checkpoint import CheckpointError
from peft_teach.methods.inject import UnknownModuleError, find_modules
from peft_teach.models import IncompatibleBaseModelError, SequenceClassifier


def bert(hidden: int = 32, labels: int = 2) -> SequenceClassifier:
    """A tiny random BERT classifier; another ``hidden`` makes "another base model"."""
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    return SequenceClassifier(BertModel(config).eval(), labels).eval()


def distilbert() -> SequenceClassifier:
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64)
    return SequenceClassifier(AutoModel.from_config(config).eval(), 2)


def short_gpt2_lm_with_prompt(length: int = 3) -> GPT2LMHeadModel:
    """A tiny causal LM with only 16 positions, and a soft prompt of ``length`` virtual tokens."""
    config = GPT2Config(vocab_size=100, n_embd=32, n_layer=1, n_head=4, n_positions=16, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    prompts.add_soft_prompt(model, length)
    return model


def tokens(length: int) -> torch.Tensor:
    return torch.randint(1, 100, (1, length), generator=torch.Generator().manual_seed(length))


def with_adapters(*names: str, placement: str = "pfeiffer") -> SequenceClassifier:
    model = bert()
    for name in names:
        adapters.add_adapter(model, name, adapters.AdapterConfig(placement=placement))
    return model


def saved(save, model, tmp_path, *args):
    folder = tmp_path / "checkpoint"
    save(model, *args, folder)
    return folder


def folder_with(tmp_path, **files: str):
    """A folder already holding the user's own ``files`` (name=text; dots written as __)."""
    for name, text in files.items():
        (tmp_path / name.replace("__", ".")).write_text(text)
    return tmp_path


def edited_checkpoint(tmp_path, drop: str):
    """A saved LoRA checkpoint whose config.json lost a field ("r" inside config, or a top-level one)."""
    folder = saved(lora.save_lora, lora_model(), tmp_path)
    meta = json.loads((folder / "config.json").read_text())
    (meta["config"] if drop in meta["config"] else meta).pop(drop)
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


def empty_train_task():
    task = two_label_task()
    task["train"] = task["train"].select([])
    return task


def prefix_model():
    model = bert()
    prefix.add_prefix(model, length=2)
    return model


def tiny_task():
    rows = {"text": ["good", "bad", "fine", "awful"], "label": [0, 1, 2, 4]}  # five classes, as `routing`
    split = Dataset.from_dict(rows)
    return data.DatasetDict({"train": split, "validation": split})


def two_label_task():
    split = Dataset.from_dict({"text": ["good", "bad"], "label": [0, 1]})
    return data.DatasetDict({"train": split, "validation": split})


def train_call(model=None, task=None, **kwargs):
    model = model or lora_model()
    return lambda tmp_path: train.train(model, None, task or two_label_task(), **kwargs)


def lora_model():
    model = bert()
    lora.add_lora(model, ("query", "value"), r=2)
    return model


def ia3_model():
    model = bert()
    ia3.add_ia3(model)
    return model


def frozen():
    model = bert()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def corrupt(file: str, content: bytes):
    def case(tmp_path):
        folder = saved(adapters.save_adapter, with_adapters("a"), tmp_path, "a")
        (folder / file).write_bytes(content)
        adapters.load_adapter(bert(), folder)
    return case


def fusion_model():
    model = with_adapters("a", "b")
    fusion.add_fusion(model, ["a", "b"])
    return model


def load_fusion_without_adapters(tmp_path):
    folder = saved(fusion.save_fusion, fusion_model(), tmp_path, fusion.fusion_name(["a", "b"]))
    fusion.load_fusion(with_adapters("a"), folder)


def merged_lora():
    model = lora_model()
    lora.merge_lora(model)
    return model


def head_of_another_size(tmp_path):
    model = bert(labels=2)
    prefix.add_prefix(model, 2)
    folder = saved(prefix.save_prefix, model, tmp_path)
    prefix.load_prefix(bert(labels=3), folder)


def train_or_load_on_another_base(tmp_path):
    task = data.load_task("topic")
    folder = tmp_path / "topic"
    model = bert()
    adapters.add_adapter(model, "topic", num_labels=4)
    experiments.save_trained_adapter(model, "topic", folder, experiments.adapter_recipe(task, epochs=1))
    experiments.train_or_load_adapter(bert(hidden=48), None, task, "topic", folder, epochs=1)


CASES = {
    # ---------------------------------------------------------------- training
    "train: epochs=0": (train_call(epochs=0), ValueError, "positive integer"),
    "train: batch_size=0": (train_call(batch_size=0), ValueError, "positive integer"),
    "train: lr=0": (train_call(lr=0.0), ValueError, "must be a positive number"),
    "train: 2-label model on a 5-label task": (train_call(task=tiny_task()), ValueError,
                                               "build_classifier(num_labels=len(label_names(data)))"),
    "train: unknown eval split": (train_call(eval_split="dev"), ValueError, "eval_split=None"),
    "train: nothing trainable": (lambda tmp_path: train.train(frozen(), None, two_label_task()), ValueError,
                                 "Add a method"),
    "train: a Dataset instead of a DatasetDict": (
        lambda tmp_path: train.train(lora_model(), None, two_label_task()["train"]), ValueError, "'train' split"),
    "evaluate: a DatasetDict instead of a split": (
        lambda tmp_path: train.evaluate(lora_model(), two_label_task(), None), TypeError, "data['test']"),
    # ---------------------------------------------------------------- data
    "load_task: label_noise=2.0": (lambda tmp_path: data.load_task("sentiment", label_noise=2.0), ValueError,
                                   "number in [0, 1]"),
    "load_task: label_noise=-0.1": (lambda tmp_path: data.load_task("sentiment", label_noise=-0.1), ValueError,
                                    "number in [0, 1]"),
    "load_task: unknown task": (lambda tmp_path: data.load_task("sentimnet"), KeyError, "Course tasks"),
    "load_task: seed as text": (lambda tmp_path: data.load_task("sentiment", seed="0"), TypeError,
                                "must be an integer"),
    "load_glue: unknown task": (lambda tmp_path: data.load_glue("squad"), KeyError, "Supported"),
    "precomputed: unknown result": (lambda tmp_path: precomputed.load("nope"), FileNotFoundError,
                                    "scripts/precompute.py"),
    # ---------------------------------------------------------------- models
    "model: a local path that does not exist": (
        lambda tmp_path: models.resolve_model_source(str(tmp_path / "no" / "such_model")), FileNotFoundError,
        "Check the path"),
    "model: a Hub id while offline": (lambda tmp_path: models.resolve_model_source("nobody/no-such-model"),
                                      models.HubUnavailableError, "packaged default"),
    "build_classifier: one label": (lambda tmp_path: models.build_classifier(num_labels=1), ValueError,
                                    "len(label_names(data))"),
    "get_backbone: not a model": (lambda tmp_path: models.get_backbone(nn.Linear(2, 2)), TypeError,
                                  "build_classifier"),
    "experiments: unknown method": (lambda tmp_path: experiments.make_method("PT+ (per-head M)", 0), ValueError,
                                    "'prefix_plus'"),
    "methods: a module that is not a transformers model": (
        lambda tmp_path: lora.add_lora(nn.Linear(2, 2), ("weight",)), TypeError, "AutoModelForCausalLM"),
    "methods: a model name instead of a model": (lambda tmp_path: adapters.add_adapter("gpt2", "a"), TypeError,
                                                 "build_classifier"),
    "methods: fusion on a module that is not a transformers model": (
        lambda tmp_path: fusion.add_fusion(nn.Linear(2, 2), ["a", "b"]), TypeError, "build_classifier"),
    "find_modules: no pattern": (lambda tmp_path: find_modules(bert(), []), ValueError, "e.g. ['query', 'value']"),
    # ---------------------------------------------------------------- adapters
    "adapter: unsupported architecture": (lambda tmp_path: adapters.add_adapter(distilbert(), "a"), ValueError,
                                          "Supported model types"),
    "adapter: unknown placement": (lambda tmp_path: adapters.AdapterConfig(placement="middle"), ValueError,
                                   "choose one of"),
    "adapter: reduction_factor=0": (lambda tmp_path: adapters.AdapterConfig(reduction_factor=0), ValueError,
                                    "e.g. 16"),
    "adapter: unknown non-linearity": (lambda tmp_path: adapters.AdapterConfig(non_linearity="sigmoid"),
                                       ValueError, "choose one of"),
    "adapter: name taken": (lambda tmp_path: adapters.add_adapter(with_adapters("a"), "a"), ValueError,
                            "remove_adapter it first"),
    "adapter: dotted name": (lambda tmp_path: adapters.add_adapter(bert(), "a.b"), ValueError, "without dots"),
    "adapter: two placements on one model": (
        lambda tmp_path: adapters.add_adapter(with_adapters("a"), "b", adapters.AdapterConfig("houlsby")),
        ValueError, "one placement per model"),
    "adapter: activate an unknown name": (lambda tmp_path: adapters.set_active(with_adapters("a"), "b"), KeyError,
                                          "Available adapters"),
    "adapter: remove an unknown name": (lambda tmp_path: adapters.remove_adapter(with_adapters("a"), "b"),
                                        KeyError, "Available adapters"),
    "adapter: remove one a fusion uses": (lambda tmp_path: adapters.remove_adapter(fusion_model(), "a"),
                                          ValueError, "remove_fusion"),
    "adapter: save an unknown name": (lambda tmp_path: adapters.save_adapter(bert(), "a", tmp_path), KeyError,
                                      "add_adapter or load_adapter"),
    "adapter: load into another base model": (
        lambda tmp_path: adapters.load_adapter(bert(hidden=48), saved(adapters.save_adapter, with_adapters("a"),
                                                                      tmp_path, "a")),
        IncompatibleBaseModelError, "Load it into the base model it was trained on"),
    "adapter: load from a folder that is not a checkpoint": (
        lambda tmp_path: adapters.load_adapter(bert(), tmp_path), CheckpointError, "save_adapter"),
    "adapter: damaged weights file": (corrupt("weights.safetensors", b"not safetensors"), CheckpointError,
                                      "Save it again"),
    "adapter: damaged config file": (corrupt("config.json", b"{"), CheckpointError, "Save it again"),
    "adapter: train_or_load on another base model": (train_or_load_on_another_base, IncompatibleBaseModelError,
                                                     "Load it into the base model it was trained on"),
    "lora: load an adapter checkpoint": (
        lambda tmp_path: lora.load_lora(bert(), saved(adapters.save_adapter, with_adapters("a"), tmp_path, "a")),
        CheckpointError, "load_adapter"),
    # ---------------------------------------------------------------- fusion
    "fusion: a string instead of a list": (lambda tmp_path: fusion.add_fusion(with_adapters("a"), "a"), ValueError,
                                           "list of adapter names"),
    "fusion: an unknown adapter": (lambda tmp_path: fusion.add_fusion(with_adapters("a"), ["a", "b"]), KeyError,
                                   "Available adapters"),
    "fusion: an adapter twice": (lambda tmp_path: fusion.add_fusion(with_adapters("a"), ["a", "a"]), ValueError,
                                 "once"),
    "fusion: added twice": (lambda tmp_path: fusion.add_fusion(fusion_model(), ["a", "b"]), ValueError,
                            "remove_fusion"),
    "fusion: different hidden sizes": (
        lambda tmp_path: fusion.check_fusable({"small": adapters.BottleneckAdapter(32, 2),
                                               "large": adapters.BottleneckAdapter(48, 3)}),
        ValueError, "same base model"),
    "fusion: remove an unknown name": (lambda tmp_path: fusion.remove_fusion(fusion_model(), "nope"), KeyError,
                                       "Available fusions"),
    "fusion: load without its adapters": (load_fusion_without_adapters, CheckpointError, "load_adapter"),
    # ---------------------------------------------------------------- soft prompt
    "prompt: length 0": (lambda tmp_path: prompts.add_soft_prompt(bert(), length=0), ValueError,
                         "positive integer"),
    "prompt: unknown init": (lambda tmp_path: prompts.add_soft_prompt(bert(), init="zeros"), ValueError,
                             "choose one of"),
    "prompt: text init without a tokenizer": (lambda tmp_path: prompts.add_soft_prompt(bert(), init="text"),
                                              ValueError, "tokenizer=..."),
    "prompt: added twice": (lambda tmp_path: [prompts.add_soft_prompt(m := bert()), prompts.add_soft_prompt(m)],
                            ValueError, "remove_soft_prompt"),
    "prompt: remove when there is none": (lambda tmp_path: prompts.remove_soft_prompt(bert()), ValueError,
                                          "add_soft_prompt"),
    "prompt: input + prompt longer than the model's positions": (
        lambda tmp_path: short_gpt2_lm_with_prompt()(input_ids=tokens(14)), ValueError, "truncation=True"),
    "prompt: generation runs past the model's positions": (
        lambda tmp_path: short_gpt2_lm_with_prompt().generate(input_ids=tokens(10), max_new_tokens=8,
                                                              min_new_tokens=8, do_sample=False, pad_token_id=0),
        ValueError, "max_new_tokens=..."),
    "prompt: classifier input + prompt longer than BERT's positions": (
        lambda tmp_path: [prompts.add_soft_prompt(m := bert(), 3), m(input_ids=tokens(63))], ValueError,
        "add_soft_prompt(model, length=...)"),
    # ---------------------------------------------------------------- prefix and Prefix-Tuning+
    "prefix: negative length": (lambda tmp_path: prefix.add_prefix(bert(), length=-1), ValueError,
                                "positive integer"),
    "prefix: unsupported architecture": (lambda tmp_path: prefix.add_prefix(distilbert()), ValueError,
                                         "Supported model types"),
    "prefix: added twice": (lambda tmp_path: [prefix.add_prefix(m := bert()), prefix.add_prefix(m)], ValueError,
                            "remove_prefix"),
    "prefix: remove when there is none": (lambda tmp_path: prefix.remove_prefix(bert()), ValueError,
                                          "add_prefix"),
    "prefix: head with another number of labels": (head_of_another_size, CheckpointError, "num_labels"),
    "prefix_plus: unknown feature map": (lambda tmp_path: prefix_plus.add_prefix_plus(bert(), phi="relu"),
                                         ValueError, "choose one of"),
    "prefix_plus: unsupported architecture": (lambda tmp_path: prefix_plus.add_prefix_plus(distilbert()),
                                              ValueError, "Supported model types"),
    "prefix_plus: remove when there is none": (lambda tmp_path: prefix_plus.remove_prefix_plus(bert()),
                                               ValueError, "add_prefix_plus"),
    # ---------------------------------------------------------------- LoRA
    "lora: rank 0": (lambda tmp_path: lora.add_lora(bert(), r=0), ValueError, "r=8"),
    "lora: alpha 0": (lambda tmp_path: lora.add_lora(bert(), alpha=0), ValueError, "alpha=16"),
    "lora: dropout 1.5": (lambda tmp_path: lora.add_lora(bert(), dropout=1.5), ValueError, "[0, 1)"),
    "lora: unknown target module": (lambda tmp_path: lora.add_lora(bert(), targets=("qeury",)),
                                    UnknownModuleError, "Available module names"),
    "lora: added twice": (lambda tmp_path: lora.add_lora(lora_model()), ValueError, "remove_lora(model) first"),
    "lora: remove when there is none": (lambda tmp_path: lora.remove_lora(bert()), ValueError, "add_lora"),
    "lora: save while merged": (lambda tmp_path: lora.save_lora(merged_lora(), tmp_path), ValueError,
                                "unmerge_lora(model)"),
    "lora: load into another base model": (
        lambda tmp_path: lora.load_lora(bert(hidden=48), saved(lora.save_lora, lora_model(), tmp_path)),
        IncompatibleBaseModelError, "Load it into the base model it was trained on"),
    "train: empty train split": (train_call(task=empty_train_task()), ValueError, "len(data['train']) should be > 0"),
    "train: learning rate given as text": (train_call(lr="1e-3"), ValueError, "not the text '1e-3'"),
    "checkpoint: config.json lost a setting": (
        lambda tmp_path: lora.load_lora(bert(), edited_checkpoint(tmp_path, "r")), CheckpointError, "has no setting 'r'"),
    "checkpoint: config.json lost base_model": (
        lambda tmp_path: lora.load_lora(bert(), edited_checkpoint(tmp_path, "base_model")), CheckpointError,
        "Save the checkpoint again"),
    "models: a seed given as text": (lambda tmp_path: models.build_classifier(num_labels=2, seed="0"), ValueError,
                                     "seed=0"),
    "lora: a seed given as a float": (lambda tmp_path: lora.add_lora(bert(), seed=0.5), ValueError, "seed=0"),
    "ia3: an architecture without default targets": (lambda tmp_path: ia3.add_ia3(distilbert()), ValueError,
                                                     "feedforward=("),
    "ia3: added twice": (lambda tmp_path: ia3.add_ia3(ia3_model()), ValueError, "remove_ia3(model) first"),
    "ia3: remove when there is none": (lambda tmp_path: ia3.remove_ia3(bert()), ValueError, "add_ia3"),
    "ia3: one layer on both sides": (lambda tmp_path: ia3.add_ia3(bert(), targets=("key",), feedforward=("key",)),
                                     ValueError, "not both"),
    "lora+: B's rate below A's": (lambda tmp_path: lora.loraplus_parameter_groups(lora_model(), 1e-4, 0.5),
                                  ValueError, "must be >= 1"),
    "lora+: a model without LoRA": (lambda tmp_path: lora.loraplus_parameter_groups(bert(), 1e-4, 16), ValueError,
                                    "add_lora"),
    "train: set_seed with text": (lambda tmp_path: train.set_seed("0"), ValueError, "set_seed(0)"),
    "models: an empty model name": (lambda tmp_path: models.load_base_model(""), ValueError, "Pass None for the packaged"),
    "adapter: reduction factor above the hidden size": (
        lambda tmp_path: adapters.add_adapter(bert(), "a", adapters.AdapterConfig(reduction_factor=64)), ValueError,
        "Use at most 32"),
    # ---------------------------------------------------------------- real data and measurements
    "tsv: columns swapped": (
        lambda tmp_path: data.load_tsv_task(folder_with(tmp_path, train__tsv="sentence\tlabel\nfine\t1\n")),
        ValueError, "Add that header line"),
    "tsv: a label written as text the task does not know": (
        lambda tmp_path: data.load_tsv_task(folder_with(tmp_path, train__tsv="label\tsentence\ngood\tfine\n")),
        ValueError, "pass labels=(...)"),
    "sst2 as generation: unknown source": (lambda tmp_path: sst2_generation.load_sst2_generation("imdb"), ValueError,
                                           "'glue' downloads"),
    "sst2 as generation: a single string to score": (
        lambda tmp_path: sst2_generation.score_answers("positive", [{"label": 1}]), TypeError, "one per phrase"),
    "timing: a control that is not timed": (
        lambda tmp_path: measure.compare_times({"a": lambda: 1.0}, control="base"), ValueError, "is not one of the timed"),
    "timing: reading noise without a control": (
        lambda tmp_path: measure.beyond_control({"base": 1.0, "lora": 1.1}, "base"), ValueError,
        "time the reference twice"),
    "timing: a train step with nothing to train": (
        lambda tmp_path: measure.train_step_time(frozen(), {"input_ids": tokens(4)}), ValueError, "add a method"),
    "protocol: a variant asked of the main table": (
        lambda tmp_path: protocol.build_method("dora", 2, seed=0), ValueError, "pass methods=protocol.VARIANTS"),
    "protocol: stored variants summarized with the main table": (
        lambda tmp_path: protocol.summarize({"runs": {"ia3|lr=0.01|seed=0": {}}}), ValueError,
        "pass methods=protocol.VARIANTS"),
    "protocol: an interval from one seed": (
        lambda tmp_path: protocol.difference_interval([0.8], [0.7, 0.7], 100), ValueError, "at least 2 seeds"),
    "llm speed: an unknown timed model": (
        lambda tmp_path: llm_speed.method_models(nn.Linear(2, 2), ("lora", "dora")), ValueError, "choose from"),
    # ---------------------------------------------------------------- saving never destroys files
    "save: into a folder holding the user's config.json": (
        lambda tmp_path: lora.save_lora(lora_model(), folder_with(tmp_path, config__json="{}")), CheckpointError,
        "overwrite=True"),
    "save: into a folder holding another method's checkpoint": (
        lambda tmp_path: lora.save_lora(lora_model(), saved(prefix.save_prefix, prefix_model(), tmp_path)),
        CheckpointError, "Save into another folder"),
    "save: to a path that is a file": (
        lambda tmp_path: prefix.save_prefix(prefix_model(), folder_with(tmp_path, x__txt="x") / "x.txt"),
        CheckpointError, "Pass a folder path"),
    "export_to_peft: into a folder holding the user's files": (
        lambda tmp_path: lora.export_to_peft(lora_model(), folder_with(tmp_path, notes__md="mine")), CheckpointError,
        "Export into a new or empty folder"),
    "lora: import a folder that is not a peft adapter": (
        lambda tmp_path: lora.import_from_peft(bert(), tmp_path), CheckpointError, "export_to_peft"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_with_the_fix(case, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub case must fail at once, not wait for a timeout
    call, error, fix = CASES[case]
    with pytest.raises(error) as caught:
        call(tmp_path)
    assert fix in str(caught.value), f"{case}: the message does not say the fix ({fix!r}): {caught.value}"


def test_there_are_at_least_90_cases():
    assert len(CASES) >= 90
