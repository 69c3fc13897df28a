"""The same verbs for every method, on every architecture, on the device the course would use.

For each method x (BERT, RoBERTa, GPT-2, Llama) tiny random model, on ``get_device()``:
``add_*`` returns the new modules (and they are in the model), leaves exactly them and
the head trainable, and the formula count equals the measured one; forward + backward
run; ``save_*`` then ``load_*`` into a fresh copy of the base model gives the same
outputs; ``remove_*`` gives the base model back, bit for bit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from transformers import AutoModel

from peft_teach.methods import adapters, fusion, ia3, lora, prefix, prefix_plus, prompts
from peft_teach.methods.inject import trainable_names
from peft_teach.models import SequenceClassifier
from peft_teach.train import get_device

from tiny_models import padded_batch, tiny_config

LORA_TARGETS = {"bert": ("query", "value"), "roberta": ("query", "value"), "gpt2": ("c_attn",), "llama": ("q_proj", "v_proj")}
FUSED = ["a", "b"]


@dataclass
class Verbs:
    add: Callable        # (model, kind) -> added modules
    save: Callable       # (model, folder)
    load: Callable       # (model, folder) -> added modules
    remove: Callable     # (model)
    formula: Callable    # (model, kind) -> int, computed before anything is added
    measured: Callable   # (model) -> int


def add_two_adapters(model, kind):
    """Fusion's stage 1: two adapters with non-zero weights (stand-ins for trained ones)."""
    for seed, name in enumerate(FUSED):
        for adapter in adapters.add_adapter(model, name, seed=seed).values():
            _randomise(adapter, seed + 10)


def _fusion_remove(model):
    fusion.remove_fusion(model, fusion.fusion_name(FUSED))
    adapters.set_active(model, FUSED[-1])  # as before the fusion: the last adapter added was active


def adapter_verbs(placement: str) -> Verbs:
    config = adapters.AdapterConfig(placement)
    return Verbs(add=lambda m, kind: adapters.add_adapter(m, "task", config),
                 save=lambda m, folder: adapters.save_adapter(m, "task", folder),
                 load=lambda m, folder: adapters.load_adapter(m, folder),
                 remove=lambda m: adapters.remove_adapter(m, "task"),
                 formula=lambda m, kind: adapters.adapter_parameter_count(m, config),
                 measured=lambda m: adapters.adapter_parameters(m, "task"))


def lora_verbs(rslora: bool = False, dora: bool = False) -> Verbs:
    return Verbs(add=lambda m, kind: lora.add_lora(m, LORA_TARGETS[kind], r=2, rslora=rslora, dora=dora),
                 save=lora.save_lora, load=lora.load_lora, remove=lora.remove_lora,
                 formula=lambda m, kind: lora.lora_parameter_count(m, LORA_TARGETS[kind], r=2, dora=dora),
                 measured=lora.lora_parameters)


METHODS = {
    "adapter (pfeiffer)": adapter_verbs("pfeiffer"),
    "adapter (houlsby)": adapter_verbs("houlsby"),
    "fusion": Verbs(
        add=lambda m, kind: fusion.add_fusion(m, FUSED),
        save=lambda m, folder: fusion.save_fusion(m, fusion.fusion_name(FUSED), folder),
        load=fusion.load_fusion,  # the base copy already holds the adapters, as load_fusion requires
        remove=_fusion_remove,
        formula=lambda m, kind: fusion.fusion_parameter_count(m, FUSED),
        measured=lambda m: fusion.fusion_parameters(m, fusion.fusion_name(FUSED))),
    "soft prompt": Verbs(
        add=lambda m, kind: prompts.add_soft_prompt(m, length=3),
        save=prompts.save_soft_prompt, load=prompts.load_soft_prompt, remove=prompts.remove_soft_prompt,
        formula=lambda m, kind: prompts.soft_prompt_parameter_count(m, 3),
        measured=prompts.soft_prompt_parameters),
    "prefix": Verbs(
        add=lambda m, kind: prefix.add_prefix(m, length=3),
        save=prefix.save_prefix, load=prefix.load_prefix, remove=prefix.remove_prefix,
        formula=lambda m, kind: prefix.prefix_parameter_count(m, 3),
        measured=prefix.prefix_parameters),
    "prefix_plus": Verbs(
        add=lambda m, kind: prefix_plus.add_prefix_plus(m),
        save=prefix_plus.save_prefix_plus, load=prefix_plus.load_prefix_plus, remove=prefix_plus.remove_prefix_plus,
        formula=lambda m, kind: prefix_plus.prefix_plus_parameter_count(m),
        measured=prefix_plus.prefix_plus_parameters),
    "lora": lora_verbs(),
    "lora (rslora + dora)": lora_verbs(rslora=True, dora=True),
    "ia3": Verbs(
        add=lambda m, kind: ia3.add_ia3(m),
        save=ia3.save_ia3, load=ia3.load_ia3, remove=ia3.remove_ia3,
        formula=lambda m, kind: ia3.ia3_parameter_count(m),
        measured=ia3.ia3_parameters),
}
KINDS = ("bert", "roberta", "gpt2", "llama")


def _randomise(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.randn(p.shape, generator=generator) * 0.3).to(p.device))


def base_classifier(kind: str) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(AutoModel.from_config(tiny_config(kind)).eval(), 3).eval().to(get_device())


def outputs(model) -> torch.Tensor:
    batch = {k: v.to(get_device()) for k, v in padded_batch().items()}
    with torch.no_grad():
        return model(**batch).cpu()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_verb(method, kind, tmp_path):
    verbs = METHODS[method]
    model = base_classifier(kind)
    if method == "fusion":
        add_two_adapters(model, kind)
    base = copy.deepcopy(model)  # the model before this method: what load_* starts from, what remove_* restores
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    expected_count = verbs.formula(model, kind)
    old = {id(p) for p in model.parameters()}

    added = verbs.add(model, kind)
    # add_*: returns the new modules, as they sit in the model; exactly their new parameters
    # (LoRA's wrappers also hold the frozen base layer) and the head train
    assert added and all(model.get_submodule(name) is module for name, module in added.items())
    new = {f"{name}.{key}": p for name, module in added.items() for key, p in module.named_parameters()
           if id(p) not in old}
    assert set(trainable_names(model)) == set(new) | {"head.weight", "head.bias"}
    assert verbs.measured(model) == expected_count == sum(p.numel() for p in new.values())

    # forward + backward on the device: gradients reach every new parameter
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in new.values():
            p.copy_((torch.randn(p.shape, generator=generator) * 0.3).to(p.device))
    batch = {k: v.to(get_device()) for k, v in padded_batch().items()}
    model(**batch).sum().backward()
    assert all(p.grad is not None for p in new.values())
    model.zero_grad(set_to_none=True)

    # save_* / load_*: a fresh copy of the base model gives the same outputs
    trained = outputs(model)
    verbs.save(model, tmp_path)
    fresh = copy.deepcopy(base)
    verbs.load(fresh, tmp_path)
    torch.testing.assert_close(outputs(fresh), trained, atol=1e-5, rtol=0)

    # remove_*: the base model again, bit for bit
    verbs.remove(model)
    if method != "fusion":  # adapters and fusion swap heads; the other methods train the model's own head
        model.head.load_state_dict(base.head.state_dict())
    state = model.state_dict()
    assert set(state) == set(base_state)
    assert all(torch.equal(state[k], base_state[k]) for k in base_state)
    assert torch.equal(outputs(model), outputs(base))


def test_the_verbs_table_lists_every_method():
    """The package docs' table names the functions that exist."""
    import peft_teach.methods as package

    modules = {"adapters": adapters, "fusion": fusion, "prompts": prompts, "prefix": prefix,
               "prefix_plus": prefix_plus, "lora": lora, "ia3": ia3}
    for stem, module in {"adapter": "adapters", "fusion": "fusion", "soft_prompt": "prompts", "prefix": "prefix",
                         "prefix_plus": "prefix_plus", "lora": "lora", "ia3": "ia3"}.items():
        for verb in (f"add_{stem}", f"save_{stem}", f"load_{stem}", f"remove_{stem}",
                     f"{stem}_parameter_count", f"{stem}_parameters"):
            assert callable(getattr(modules[module], verb)), f"{module}.{verb} is missing"
            assert f"`{verb}`" in package.__doc__, f"{verb} is not in the verbs table"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_new_parameters_live_on_the_models_device(method, kind):
    """add_* creates its tensors where the model is. Checked on PyTorch's "meta" device, a device no
    computer has: a tensor created on the CPU by mistake (a missing device=...) would show up here
    without a GPU, where the same mistake would crash a GPU run."""
    torch.manual_seed(0)
    model = SequenceClassifier(AutoModel.from_config(tiny_config(kind)), 3).to("meta")
    if method == "fusion":
        add_two_adapters(model, kind)
    old = {id(p) for p in model.parameters()}
    METHODS[method].add(model, kind)
    new = {name: p.device.type for name, p in model.named_parameters() if id(p) not in old}
    assert new and set(new.values()) == {"meta"}, {name: d for name, d in new.items() if d != "meta"}
