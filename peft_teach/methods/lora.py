"""LoRA: low-rank adaptation, built from scratch.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022
(arXiv 2106.09685).

A frozen linear layer computes ``h = W0 x``. LoRA adds a trainable low-rank update::

    h = W0 x + (alpha / r) * B A x          A: r x d_in,  B: d_out x r,  r << d

* ``A`` starts random (Kaiming-uniform, as in loralib and peft), ``B`` starts at zero,
  so at initialisation ``B A = 0`` and the model is exactly the base model.
* Only ``A`` and ``B`` are trained: ``r * (d_in + d_out)`` parameters per adapted
  matrix, i.e. ``2 * d * r`` for a square ``d x d`` projection.
* ``alpha / r`` scales the update so that changing ``r`` does not change how big the
  update starts out; you can keep the learning rate when you try another rank.
* After training, ``W = W0 + (alpha / r) B A`` can be *merged* into the frozen weight:
  the model then runs exactly as fast as the base model (no extra matmuls).

Besides the layer this file holds the verbs every method has: :func:`add_lora`,
:func:`save_lora` / :func:`load_lora` (only the small LoRA tensors + the head),
:func:`remove_lora`, :func:`lora_parameter_count` (formula) and :func:`lora_parameters`
(measured); then :func:`merge_lora` / :func:`unmerge_lora`, and :func:`export_to_peft` /
:func:`import_from_peft` (the on-disk format of the ``peft`` library).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_teach.files import foreign_files, replace_atomically, write_text_atomically
from peft_teach.methods.checkpoint import CheckpointError, load_head, read_checkpoint, save_checkpoint, split_head
from peft_teach.methods.inject import find_modules, replace_module, train_only
from peft_teach.models import base_model_fingerprint, check_same_base, get_backbone, seeded_generator

# Layers LoRA can wrap. GPT-2's Conv1D is a linear layer whose weight is stored
# transposed (d_in x d_out) and computes x @ W + b.
ADAPTABLE = (nn.Linear, Conv1D)
HEAD_KEY = "peft_teach_head"  # metadata entry of the head file: the base-model fingerprint
HEAD_FILE = "classifier_head.safetensors"  # the head, saved beside a peft export


# --------------------------------------------------------------------------- the layer


def in_out_features(layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        d_in, d_out = layer.weight.shape  # stored transposed
        return d_in, d_out
    raise TypeError(f"LoRA wraps nn.Linear or GPT-2 Conv1D layers, not {type(layer).__name__}.")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: ``W0 x + (alpha/r) B A x``.

    ``base_layer`` is the original ``nn.Linear`` (or GPT-2 ``Conv1D``), kept frozen.
    ``lora_A`` (r x d_in) and ``lora_B`` (d_out x r) are the only new parameters.
    Pass a ``generator`` to make A's random start reproducible.
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__()
        check_rank_and_alpha(r, alpha)
        d_in, d_out = in_out_features(base_layer)
        self.base_layer = base_layer
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        weight = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(r, d_in, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r, dtype=weight.dtype, device=weight.device))
        # A like a fresh nn.Linear (what loralib and peft do); B = 0 so B A = 0 at the start.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        # Dropout acts on the LoRA path's input only; the frozen path sees the clean x.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        for parameter in self.base_layer.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:  # the update already sits inside base_layer.weight
            return result
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T  # x -> r numbers -> d_out
        return result + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``(alpha/r) B A``, laid out like ``base_layer.weight`` (transposed for Conv1D)."""
        delta = (self.lora_B @ self.lora_A) * self.scaling  # d_out x d_in
        return delta.T if isinstance(self.base_layer, Conv1D) else delta

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the frozen weight (no-op if already merged)."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the weight (no-op if not merged)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        d_in, d_out = in_out_features(self.base_layer)
        return f"d_in={d_in}, d_out={d_out}, r={self.r}, alpha={self.alpha}, merged={self.merged}"


def check_rank_and_alpha(r: int, alpha: float) -> None:
    """Fail early, with the fix, on a rank or alpha that cannot work."""
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer (e.g. r=8), got r={r!r}.")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be positive (e.g. alpha=16, often 2*r), got alpha={alpha!r}.")


# --------------------------------------------------------------------------- the model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRA layer of ``model``, by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def add_lora(model: nn.Module, targets: str | Iterable[str] = ("query", "value"), r: int = 8,
             alpha: float = 16, dropout: float = 0.0, seed: int = 0) -> dict[str, LoRALinear]:
    """Wrap the target linear layers of the backbone with LoRA; only A, B (and the head) train.

    ``targets`` are module names as :func:`find_modules` reads them (``"query"``,
    ``"c_attn"``, ``"q_proj"`` or a full-name regular expression), inside the backbone.
    Returns the new layers by their name in ``model``.
    """
    backbone = get_backbone(model)  # first: anything but a transformers model fails with the fix
    check_rank_and_alpha(r, alpha)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout is a probability in [0, 1), got {dropout!r} (e.g. 0.0 or 0.1).")
    if lora_layers(model):
        raise ValueError("This model already has LoRA layers; remove_lora(model) first, or build a fresh model.")
    prefix = "backbone." if backbone is not model else ""
    found = find_modules(backbone, targets, module_type=ADAPTABLE)
    generator = seeded_generator(seed)  # one stream, model order: reproducible
    added: dict[str, LoRALinear] = {}
    for name, layer in found.items():
        added[prefix + name] = LoRALinear(layer, r=r, alpha=alpha, dropout=dropout, generator=generator)
        replace_module(backbone, name, added[prefix + name])
    train_only(model, [matrix for layer in added.values() for matrix in (layer.lora_A, layer.lora_B)])
    return added


def remove_lora(model: nn.Module) -> None:
    """Unmerge and unwrap every LoRA layer: the backbone is the base model again, bit for bit."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("This model has no LoRA layers; add_lora(model, ...) or load_lora(model, folder) first.")
    for name, layer in layers.items():
        layer.unmerge()
        replace_module(model, name, layer.base_layer)


def lora_matrix_parameter_count(d_in: int, d_out: int, r: int) -> int:
    """Parameters LoRA adds to one d_out x d_in matrix: A (r x d_in) + B (d_out x r)."""
    return r * (d_in + d_out)


def lora_parameter_count(model: nn.Module, targets: str | Iterable[str] = ("query", "value"), r: int = 8) -> int:
    """Formula: r (d_in + d_out) summed over the matrices ``targets`` names."""
    found = find_modules(get_backbone(model), targets, module_type=ADAPTABLE)
    return sum(lora_matrix_parameter_count(*in_out_features(layer), r) for layer in found.values())


def lora_parameters(model: nn.Module) -> int:
    """Measured: every A and B on the model."""
    return sum(layer.lora_A.numel() + layer.lora_B.numel() for layer in lora_layers(model).values())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its frozen weight, in place (idempotent)."""
    for layer in lora_layers(model).values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`, in place (idempotent)."""
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


# --------------------------------------------------------------------------- save / load


def lora_config(model: nn.Module) -> dict[str, object]:
    """Rank, alpha, dropout and the adapted module names (inside the backbone): enough to rebuild the layers."""
    layers = lora_layers(get_backbone(model))
    if not layers:
        raise ValueError("This model has no LoRA layers: call add_lora(model, ...) first.")
    first = next(iter(layers.values()))
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    return {"r": first.r, "alpha": first.alpha, "dropout": dropout, "targets": list(layers)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every A and B, by name inside the backbone (``encoder.layer.0...query.lora_A``)."""
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ValueError("Unmerge first (unmerge_lora(model)): a merged model's weights "
                         "already contain the update, so saving A and B alone would mislead.")
    layers = lora_layers(get_backbone(model))
    if not layers:
        raise ValueError("This model has no LoRA layers: call add_lora(model, ...) first.")
    return {f"{name}.{matrix}": getattr(layer, matrix).detach().clone()
            for name, layer in layers.items() for matrix in ("lora_A", "lora_B")}


def save_lora(model: nn.Module, folder: str | Path, overwrite: bool = False) -> Path:
    """Write every A and B and the head to ``folder`` (see peft_teach.methods.checkpoint)."""
    return save_checkpoint(folder, "lora", lora_config(model), lora_state_dict(model), model,
                           getattr(model, "head", None), overwrite)


def load_lora(model: nn.Module, folder: str | Path) -> dict[str, LoRALinear]:
    """Add the LoRA saved in ``folder`` to ``model`` (which must not have LoRA yet)."""
    config, tensors = read_checkpoint(folder, "lora", model)
    own, head = split_head(tensors)
    added = add_lora(model, targets=config["targets"], r=config["r"], alpha=config["alpha"],
                     dropout=config["dropout"])
    _copy_matrices(added, own)
    load_head(model, head)
    return added


def _copy_matrices(added: dict[str, LoRALinear], tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved A and B (named inside the backbone) into the new layers."""
    with torch.no_grad():
        for name, layer in added.items():
            name = name.removeprefix("backbone.")
            for matrix in ("lora_A", "lora_B"):
                saved, own = tensors[f"{name}.{matrix}"], getattr(layer, matrix)
                if saved.shape != own.shape:
                    raise CheckpointError(f"{name}.{matrix}: saved shape {tuple(saved.shape)}, model shape "
                                          f"{tuple(own.shape)}. Load it into the base model it was trained on.")
                own.copy_(saved)


# --------------------------------------------------------------------------- peft format
#
# peft stores a LoRA adapter as a folder with two files:
#   adapter_config.json          peft_type "LORA", r, lora_alpha, target_modules, ...
#   adapter_model.safetensors    keys "base_model.model.<module name>.lora_A.weight" / ".lora_B.weight"
# where <module name> is the name inside the model handed to PeftModel. We export the
# *backbone* (the Hugging Face model), so PeftModel.from_pretrained(backbone, folder) works
# with any AutoModel. Our classifier head is not part of that model, so it is saved beside
# the adapter in classifier_head.safetensors (peft ignores unknown files) and
# import_from_peft loads it back when it is there.

PEFT_PREFIX = "base_model.model."


PEFT_FILES = ("adapter_model.safetensors", "adapter_config.json", HEAD_FILE)


def export_to_peft(model: nn.Module, directory: str | Path, overwrite: bool = False) -> Path:
    """Write ``model``'s LoRA in peft's format (+ our head beside it) into ``directory``.

    Like every save, it refuses a folder holding files it would not write (or a peft
    adapter of another type) unless ``overwrite=True``; each file is replaced atomically.
    """
    directory = Path(directory)
    foreign, saved = foreign_files(directory, PEFT_FILES, "adapter_config.json", "peft_type", "LORA")
    if not overwrite and (foreign or saved not in (None, "LORA")):
        raise CheckpointError(f"{directory} already holds files export_to_peft did not write: "
                              f"{foreign or ['a ' + str(saved) + ' adapter']}. Export into a new or empty folder, "
                              f"or pass overwrite=True to write {list(PEFT_FILES)} there anyway.")
    directory.mkdir(parents=True, exist_ok=True)
    config = lora_config(model)
    tensors = {f"{PEFT_PREFIX}{name}.weight": tensor.contiguous()  # "...query.lora_A" -> "...query.lora_A.weight"
               for name, tensor in lora_state_dict(model).items()}
    replace_atomically(directory / "adapter_model.safetensors",
                       lambda temporary: save_file(tensors, str(temporary), metadata={"format": "pt"}))
    backbone = get_backbone(model)
    targets = config["targets"]
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": getattr(backbone.config, "_name_or_path", None) or None,
        "r": config["r"],
        "lora_alpha": config["alpha"],
        "lora_dropout": config["dropout"],
        "target_modules": targets,  # full names: peft matches them exactly, no surprises
        "fan_in_fan_out": any(isinstance(m.base_layer, Conv1D) for m in lora_layers(model).values()),
        "bias": "none",
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    write_text_atomically(directory / "adapter_config.json", json.dumps(peft_config, indent=2) + "\n")
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):
        info = {"base_model": base_model_fingerprint(model)}
        head_tensors = {f"head.{k}": v.contiguous() for k, v in head.state_dict().items()}
        replace_atomically(directory / HEAD_FILE, lambda temporary: save_file(
            head_tensors, str(temporary), metadata={HEAD_KEY: json.dumps(info)}))
    return directory


def import_from_peft(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a peft LoRA adapter folder into ``model`` (which must not have LoRA yet).

    Works for folders written by peft's ``save_pretrained`` and by :func:`export_to_peft`.
    """
    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise CheckpointError(f"{directory} has no adapter_config.json: it is not a peft adapter folder. Pass the "
                              "folder written by peft's save_pretrained or by export_to_peft.")
    config = json.loads((directory / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{directory} holds a {config.get('peft_type')} adapter, not LoRA.")
    unsupported = [key for key in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern") if config.get(key)]
    if unsupported or config.get("bias", "none") != "none":
        raise ValueError(f"This adapter uses options our LoRA does not implement: {unsupported or 'bias'}.")
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    ours = {key.removeprefix(PEFT_PREFIX).removesuffix(".weight"): tensor  # "...query.lora_A"
            for key, tensor in tensors.items()}
    targets = sorted({name.rsplit(".", 1)[0] for name in ours})
    # Full module names: exactly the layers the adapter has tensors for are adapted.
    added = add_lora(model, targets=targets, r=int(config["r"]), alpha=config["lora_alpha"],
                     dropout=float(config.get("lora_dropout", 0.0)))
    _copy_matrices(added, ours)
    if isinstance(getattr(model, "head", None), nn.Module) and (directory / HEAD_FILE).exists():
        with safe_open(str(directory / HEAD_FILE), framework="pt") as handle:
            info = json.loads((handle.metadata() or {})[HEAD_KEY])
        check_same_base(info["base_model"], model, str(directory))
        load_head(model, split_head(load_file(str(directory / HEAD_FILE)))[1])
    return model
