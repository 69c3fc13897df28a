"""What the methods cost on the LLM, in time and in key/value cache, always as ratios measured in one run.

Three measurements, each on models built from one base LLM (untrained method weights: a
method's arithmetic, not the values it learned, sets its speed):

* :func:`train_step_ratios`: a training step of our LoRA, soft prompt and prefix against
  peft's on the same weights (ours / peft; the goal is at most 1.05).
* :func:`generation_ratios`: the time to write a fixed number of tokens with ``generate``,
  every method against the base model, at several batch sizes (method / base).
* :func:`cache_bytes`: the bytes of the key/value cache after reading the prompt, counted
  tensor by tensor: what a prefix or a soft prompt adds to every sequence being served.

Every timing is interleaved and shuffled per round, beside a control (the reference timed a
second time), by :func:`peft_teach.measure.compare_times`. ``scripts/benchmark_llm.py``
runs the full measurement and stores it; lesson 07 reads it and times a short run live.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Callable

import torch
from torch import nn

from peft_teach import llm
from peft_teach.measure import compare_times, compare_train_step, device_of, median_seconds, ratios
from peft_teach.methods import adapters, lora, prefix, prefix_plus, prompts

LORA = {"targets": ("q_proj", "v_proj"), "r": 8, "alpha": 16}  # lesson 07's configurations
PREFIX_LENGTH = 10
PROMPT_LENGTH = 20


# --------------------------------------------------------------------------- the models


def _nonzero_lora(model: nn.Module) -> None:
    """LoRA as lesson 07 configures it, with B drawn small: at init B = 0, a served LoRA has a real update."""
    generator = torch.Generator().manual_seed(0)  # the same B in every copy, merged or not
    with torch.no_grad():
        for layer in lora.add_lora(model, LORA["targets"], r=LORA["r"], alpha=LORA["alpha"], seed=0).values():
            layer.lora_B.copy_(0.01 * torch.randn(layer.lora_B.shape, generator=generator))


def _merged_lora(model: nn.Module) -> None:
    _nonzero_lora(model)
    lora.merge_lora(model)


BUILDERS: dict[str, Callable[[nn.Module], object]] = {  # how each timed model gets its method (seed 0)
    "lora": _nonzero_lora,
    "lora_merged": _merged_lora,  # LoRA folded into the weights: what you would serve
    "adapter": lambda model: adapters.add_adapter(
        model, "task", adapters.AdapterConfig(placement="pfeiffer", reduction_factor=16), seed=0),
    "prefix": lambda model: prefix.add_prefix(model, length=PREFIX_LENGTH, seed=0),
    "prefix_plus": lambda model: prefix_plus.add_prefix_plus(model, seed=0),
    "soft_prompt": lambda model: prompts.add_soft_prompt(model, length=PROMPT_LENGTH, seed=0),
}


def method_models(base: nn.Module, names: tuple[str, ...] = tuple(BUILDERS)) -> dict[str, nn.Module]:
    """The base model and, for each of ``names``, a copy of it with that method, all in eval mode."""
    unknown = sorted(set(names) - set(BUILDERS))
    if unknown:
        raise ValueError(f"No timed model called {unknown}; choose from {sorted(BUILDERS)}.")
    models = {"base": base.eval()}
    for name in names:
        models[name] = copy.deepcopy(base)
        BUILDERS[name](models[name])
        models[name].eval()
    return models


def _quiet_peft(build: Callable[[], nn.Module]) -> nn.Module:
    with warnings.catch_warnings():  # peft's notes about transformers 5 attributes and ignored position ids
        warnings.simplefilter("ignore")
        return build()


def peft_twins(base: nn.Module) -> dict[str, dict[str, nn.Module]]:
    """For LoRA, the soft prompt and the prefix: ours and peft's on copies of ``base``, with the same weights.

    LoRA travels through the course's own export (``export_to_peft``, then peft's
    ``PeftModel.from_pretrained``): the path a learner would use to serve with peft.
    The prompt and the prefix are copied into peft's tables directly.
    """
    from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, get_peft_model

    models = method_models(base, ("lora", "soft_prompt", "prefix"))
    twins = {}
    with tempfile.TemporaryDirectory() as folder:
        lora.export_to_peft(models["lora"], folder)
        twins["lora"] = _quiet_peft(lambda: PeftModel.from_pretrained(copy.deepcopy(base), folder, is_trainable=True))

    theirs = _quiet_peft(lambda: get_peft_model(copy.deepcopy(base), PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=PROMPT_LENGTH)))
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(models["soft_prompt"].soft_prompt.weight)
    twins["soft_prompt"] = theirs

    theirs = _quiet_peft(lambda: get_peft_model(copy.deepcopy(base), PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=PREFIX_LENGTH)))
    # peft keeps all prefixes as one table: row j = [layer 0 key j, layer 0 value j, layer 1 key j, ...]
    table = models["prefix"].prefix.full_prefix().detach().permute(2, 0, 1, 3).reshape(PREFIX_LENGTH, -1)
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(table)
    twins["prefix"] = theirs
    return {method: {"ours": models[method], "peft": twins[method].eval()} for method in twins}


# --------------------------------------------------------------------------- the measurements


def train_step_ratios(twins: dict[str, dict[str, nn.Module]], batch: dict[str, torch.Tensor], rounds: int = 5,
                      repeats: int = 2) -> dict[str, dict[str, float]]:
    """Per method: seconds of one training step (answer loss, AdamW), ours and peft's, and ours / peft.

    Each pair is timed interleaved and shuffled with a control (ours timed twice), so
    ``control_ratio`` says how far from 1.00 two identical steps land in the same run.
    """
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "position ids are not supported", once per step
        for method, pair in twins.items():
            times = compare_train_step(pair, batch, rounds=rounds, repeats=repeats, loss_fn=llm.answer_loss,
                                       control="ours")
            relative = ratios(times, "peft")
            results[method] = {"ours_s": times["ours"], "peft_s": times["peft"], "ratio": relative["ours"],
                               "control_ratio": times["control"] / times["ours"]}
    return results


def generation_seconds(model: nn.Module, batch: dict[str, torch.Tensor], new_tokens: int, repeats: int) -> float:
    """Median seconds for ``generate`` to write exactly ``new_tokens`` tokens (greedy) for every row of ``batch``."""
    device = device_of(model)
    batch = {key: value.to(device) for key, value in batch.items()}

    @torch.no_grad()
    def write() -> None:
        model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=model.generation_config.pad_token_id)

    return median_seconds(write, device, repeats, warmup=1)


def generation_ratios(models: dict[str, nn.Module], batches: dict[str, dict[str, torch.Tensor]], new_tokens: int = 16,
                      rounds: int = 5, repeats: int = 1) -> dict[str, dict[str, float]]:
    """Per batch: each model's time to write ``new_tokens`` tokens, divided by the base model's.

    ``batches`` maps a label ("batch 1") to tokenized prompts (left-padded). The row
    ``"control"`` is the base model timed a second time; ``"base tokens/s"`` is the base
    model's absolute speed on this machine (the one number here that is not a ratio).
    """
    results = {}
    for label, batch in batches.items():
        tasks = {name: (lambda model=model: generation_seconds(model, batch, new_tokens, repeats))
                 for name, model in models.items()}
        times = compare_times(tasks, rounds=rounds, control="base")
        results[label] = {**ratios(times, "base"),
                          "base tokens/s": batch["input_ids"].shape[0] * new_tokens / times["base"]}
    return results


@torch.no_grad()
def cache_bytes(model: nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the key/value cache after one forward over ``batch`` (the prompt), counted tensor by tensor."""
    model.eval()
    device = device_of(model)
    cache = model(**{key: value.to(device) for key, value in batch.items()}, use_cache=True).past_key_values
    return sum(tensor.numel() * tensor.element_size() for layer in cache.layers for tensor in (layer.keys, layer.values))


def prefix_cache_formula(config, length: int, bytes_per_value: int = 4) -> int:
    """Bytes a prefix of ``length`` adds to one sequence's cache: keys and values, every layer, every key/value head."""
    return 2 * config.num_hidden_layers * length * config.num_key_value_heads * config.head_dim * bytes_per_value


def prompt_batches(tokenizer, prompts_text: list[str], sizes: tuple[int, ...] = (1, 8)) -> dict[str, dict]:
    """The first ``size`` prompts through the chat template, left-padded, for each size."""
    batches = {}
    for size in sizes:
        texts = [llm.chat_text(tokenizer, prompt) for prompt in prompts_text[:size]]
        batches[f"batch {size}"] = dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))
    return batches
