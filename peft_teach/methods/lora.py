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

Two variants that ``peft.LoraConfig`` offers as switches, here as arguments of the same layer:

* rsLoRA (Kalajdzievski, "A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA",
  arXiv 2312.03732) scales by ``alpha / sqrt(r)`` instead of ``alpha / r``: ``rslora=True``.
* DoRA (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024, arXiv 2402.09353)
  splits each output row of the adapted weight into a length and a direction, and learns the
  length ``m`` (one number per output feature) beside the LoRA update of the direction::

      W = m * (W0 + s B A) / ||W0 + s B A||      (norm of each output row; s = alpha / r)

  ``m`` starts at ``||W0||``, so the layer starts as the base layer: ``dora=True``. As in the
  paper (its section 4.3) and in peft, the norm is treated as a constant in the backward pass.

LoRA+ (Hayou et al., "LoRA+: Efficient Low Rank Adaptation of Large Models", ICML 2024,
arXiv 2402.12354) changes only the optimizer: B gets a larger learning rate than A
(:func:`loraplus_parameter_groups`).

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
from peft_teach.quantize import QuantizedLinear

# Layers LoRA can wrap. GPT-2's Conv1D is a linear layer whose weight is stored
# transposed (d_in x d_out) and computes x @ W + b.
ADAPTABLE = (nn.Linear, Conv1D, QuantizedLinear)
HEAD_KEY = "peft_teach_head"  # metadata entry of the head file: the base-model fingerprint
HEAD_FILE = "classifier_head.safetensors"  # the head, saved beside a peft export


# --------------------------------------------------------------------------- the layer


def in_out_features(layer: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of an ``nn.Linear`` or a GPT-2 ``Conv1D``."""
    if isinstance(layer, (nn.Linear, QuantizedLinear)):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):
        d_in, d_out = layer.weight.shape  # stored transposed
        return d_in, d_out
    raise TypeError(f"LoRA wraps nn.Linear, GPT-2 Conv1D or quantized linear layers, not {type(layer).__name__}.")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: ``W0 x + (alpha/r) B A x``.

    ``base_layer`` is the original ``nn.Linear`` (or GPT-2 ``Conv1D``), kept frozen.
    ``lora_A`` (r x d_in) and ``lora_B`` (d_out x r) are the only new parameters (DoRA adds
    ``lora_magnitude``, d_out of them). Pass a ``generator`` to make A's random start reproducible.
    Dropout acts on the LoRA path's input only. (peft's DoRA, training with dropout, also feeds the
    dropped input through the rescaled frozen path; without dropout, or in eval mode, the two agree.)
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
                 generator: torch.Generator | None = None, rslora: bool = False, dora: bool = False):
        super().__init__()
        check_rank_and_alpha(r, alpha)
        d_in, d_out = in_out_features(base_layer)
        self.base_layer = base_layer
        self.r, self.alpha = r, alpha
        self.rslora, self.dora = rslora, dora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        weight = base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(r, d_in, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r, dtype=weight.dtype, device=weight.device))
        # A like a fresh nn.Linear (what loralib and peft do); B = 0 so B A = 0 at the start.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        # Dropout acts on the LoRA path's input only; the frozen path sees the clean x.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self._merged_delta: torch.Tensor | None = None  # DoRA only: what merge() added
        for parameter in self.base_layer.parameters():
            parameter.requires_grad_(False)
        # DoRA's length m, one per output feature: the rows' norms now, so the layer starts as the base layer.
        self.lora_magnitude = nn.Parameter(self.frozen_weight().norm(dim=1).detach().clone()) if dora else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:  # the update already sits inside base_layer.weight
            return result
        update = self.dropout(x) @ self.lora_A.T @ self.lora_B.T  # x -> r numbers -> d_out
        if not self.dora:
            return result + update * self.scaling
        # DoRA: every output row of (W0 + s B A) rescaled to length m; the bias is not rescaled.
        bias = self.base_layer.bias if self.base_layer.bias is not None else 0
        row_scale = self.lora_magnitude / self.adapted_row_norms().detach()  # a constant for backward
        return (result - bias + update * self.scaling) * row_scale + bias

    def frozen_weight(self) -> torch.Tensor:
        """The frozen W0 as d_out x d_in (GPT-2's Conv1D stores it transposed)."""
        weight = self.base_layer.weight
        return weight.T if isinstance(self.base_layer, Conv1D) else weight

    def adapted_row_norms(self) -> torch.Tensor:
        """DoRA's ||W0 + s B A||, one norm per output feature."""
        return (self.frozen_weight() + self.scaling * self.lora_B @ self.lora_A).norm(dim=1)

    def delta_weight(self) -> torch.Tensor:
        """What merging adds to the frozen weight, laid out like ``base_layer.weight`` (transposed for Conv1D).

        LoRA: ``s B A``. DoRA: ``m * (W0 + s B A) / ||W0 + s B A|| - W0``, row by row.
        """
        delta = (self.lora_B @ self.lora_A) * self.scaling  # d_out x d_in
        if self.dora:
            row_scale = (self.lora_magnitude / self.adapted_row_norms()).unsqueeze(1)
            delta = row_scale * (self.frozen_weight() + delta) - self.frozen_weight()
        return delta.T if isinstance(self.base_layer, Conv1D) else delta

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the frozen weight (no-op if already merged)."""
        if isinstance(self.base_layer, QuantizedLinear):
            raise TypeError("This LoRA sits on a quantized layer, whose 4- or 8-bit codes cannot hold W0 + (alpha/r) B A. "
                            "Call peft_teach.quantize.dequantize_linear_layers(model) first, then merge.")
        if not self.merged:
            delta = self.delta_weight()
            # DoRA's change depends on W0, which merging overwrites: keep it to take out again.
            self._merged_delta = delta if self.dora else None
            self.base_layer.weight += delta
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of the weight (no-op if not merged)."""
        if self.merged:
            weight = self.base_layer.weight
            delta = self.delta_weight() if self._merged_delta is None else self._merged_delta.to(weight.device)
            weight -= delta
            self._merged_delta, self.merged = None, False

    def trainable(self) -> list[nn.Parameter]:
        """A and B, and DoRA's magnitude."""
        return [self.lora_A, self.lora_B] + ([self.lora_magnitude] if self.dora else [])

    def extra_repr(self) -> str:
        d_in, d_out = in_out_features(self.base_layer)
        variant = ", rslora=True" * self.rslora + ", dora=True" * self.dora
        return f"d_in={d_in}, d_out={d_out}, r={self.r}, alpha={self.alpha}{variant}, merged={self.merged}"


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
             alpha: float = 16, dropout: float = 0.0, seed: int = 0, rslora: bool = False,
             dora: bool = False) -> dict[str, LoRALinear]:
    """Wrap the target linear layers of the backbone with LoRA; only A, B (and the head) train.

    ``targets`` are module names as :func:`find_modules` reads them (``"query"``,
    ``"c_attn"``, ``"q_proj"`` or a full-name regular expression), inside the backbone.
    ``rslora=True`` scales by alpha / sqrt(r); ``dora=True`` adds DoRA's trainable magnitude.
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
        added[prefix + name] = LoRALinear(layer, r=r, alpha=alpha, dropout=dropout, generator=generator,
                                          rslora=rslora, dora=dora)
        replace_module(backbone, name, added[prefix + name])
    train_only(model, [tensor for layer in added.values() for tensor in layer.trainable()])
    return added


def remove_lora(model: nn.Module) -> None:
    """Unmerge and unwrap every LoRA layer: the backbone is the base model again, bit for bit."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("This model has no LoRA layers; add_lora(model, ...) or load_lora(model, folder) first.")
    for name, layer in layers.items():
        layer.unmerge()
        replace_module(model, name, layer.base_layer)


def lora_matrix_parameter_count(d_in: int, d_out: int, r: int, dora: bool = False) -> int:
    """Parameters LoRA adds to one d_out x d_in matrix: A (r x d_in) + B (d_out x r), + DoRA's d_out lengths."""
    return r * (d_in + d_out) + (d_out if dora else 0)


def lora_parameter_count(model: nn.Module, targets: str | Iterable[str] = ("query", "value"), r: int = 8,
                         dora: bool = False) -> int:
    """Formula: r (d_in + d_out) (+ d_out with DoRA) summed over the matrices ``targets`` names."""
    found = find_modules(get_backbone(model), targets, module_type=ADAPTABLE)
    return sum(lora_matrix_parameter_count(*in_out_features(layer), r, dora) for layer in found.values())


def lora_parameters(model: nn.Module) -> int:
    """Measured: every A and B (and DoRA magnitude) on the model."""
    return sum(tensor.numel() for layer in lora_layers(model).values() for tensor in layer.trainable())


def takes_loraplus_rate(name: str, parameter: nn.Parameter) -> bool:
    """LoRA+'s rule: every B, and every 1-d tensor (biases, DoRA's magnitude), as peft's ``create_loraplus_optimizer``."""
    return name.endswith("lora_B") or parameter.ndim == 1


def _check_loraplus_ratio(ratio: float) -> None:
    if not ratio >= 1:
        raise ValueError(f"LoRA+ gives B the larger rate: ratio = lr_B / lr_A must be >= 1, got {ratio!r}.")


def loraplus_lr_scale(ratio: float):
    """LoRA+ as a factor of the learning rate per parameter, for ``train(..., lr_scale=loraplus_lr_scale(16))``."""
    _check_loraplus_ratio(ratio)
    return lambda name, parameter: ratio if takes_loraplus_rate(name, parameter) else 1.0


def loraplus_parameter_groups(model: nn.Module, lr: float, ratio: float) -> list[dict]:
    """LoRA+'s optimizer groups: every B (and every 1-d tensor) at ``ratio x lr``, all else that trains at ``lr``.

    Hand them to any optimizer: ``torch.optim.AdamW(loraplus_parameter_groups(model, 1e-4, 16))``.
    The groups are the same as peft's ``create_loraplus_optimizer`` gives.
    """
    if not lora_layers(model):
        raise ValueError("This model has no LoRA layers: call add_lora(model, ...) first.")
    _check_loraplus_ratio(ratio)
    slow, fast = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (fast if takes_loraplus_rate(name, parameter) else slow).append(parameter)
    return [{"params": slow, "lr": lr}, {"params": fast, "lr": lr * ratio}]


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
    return {"r": first.r, "alpha": first.alpha, "dropout": dropout, "targets": list(layers),
            "rslora": first.rslora, "dora": first.dora}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every A and B (and DoRA magnitude), by name inside the backbone (``encoder.layer.0...query.lora_A``)."""
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ValueError("Unmerge first (unmerge_lora(model)): a merged model's weights "
                         "already contain the update, so saving A and B alone would mislead.")
    layers = lora_layers(get_backbone(model))
    if not layers:
        raise ValueError("This model has no LoRA layers: call add_lora(model, ...) first.")
    return {f"{name}.{tensor_name(layer, tensor)}": tensor.detach().clone()
            for name, layer in layers.items() for tensor in layer.trainable()}


def tensor_name(layer: LoRALinear, tensor: torch.Tensor) -> str:
    """``lora_A``, ``lora_B`` or ``lora_magnitude``: the attribute of ``layer`` that holds ``tensor``."""
    return next(name for name, parameter in layer.named_parameters(recurse=False) if parameter is tensor)


def save_lora(model: nn.Module, folder: str | Path, overwrite: bool = False) -> Path:
    """Write every A and B and the head to ``folder`` (see peft_teach.methods.checkpoint)."""
    return save_checkpoint(folder, "lora", lora_config(model), lora_state_dict(model), model,
                           getattr(model, "head", None), overwrite)


def load_lora(model: nn.Module, folder: str | Path) -> dict[str, LoRALinear]:
    """Add the LoRA saved in ``folder`` to ``model`` (which must not have LoRA yet)."""
    config, tensors = read_checkpoint(folder, "lora", model)
    own, head = split_head(tensors)
    added = add_lora(model, targets=config["targets"], r=config["r"], alpha=config["alpha"],
                     dropout=config["dropout"], rslora=config.get("rslora", False), dora=config.get("dora", False))
    _copy_matrices(added, own)
    load_head(model, head)
    return added


def _copy_matrices(added: dict[str, LoRALinear], tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved A and B (and DoRA magnitude; named inside the backbone) into the new layers."""
    with torch.no_grad():
        for name, layer in added.items():
            name = name.removeprefix("backbone.")
            for own in layer.trainable():
                matrix = tensor_name(layer, own)
                saved = tensors[f"{name}.{matrix}"]
                if saved.shape != own.shape:
                    raise CheckpointError(f"{name}.{matrix}: saved shape {tuple(saved.shape)}, model shape "
                                          f"{tuple(own.shape)}. Load it into the base model it was trained on.")
                own.copy_(saved)


# --------------------------------------------------------------------------- peft format
#
# peft stores a LoRA adapter as a folder with two files:
#   adapter_config.json          peft_type "LORA", r, lora_alpha, target_modules, ...
#   adapter_model.safetensors    keys "base_model.model.<module name>.lora_A.weight" / ".lora_B.weight"
#                                (DoRA: also ".lora_magnitude_vector", without ".weight")
# where <module name> is the name inside the model handed to PeftModel. We export the
# *backbone* (the Hugging Face model), so PeftModel.from_pretrained(backbone, folder) works
# with any AutoModel. Our classifier head is not part of that model, so it is saved beside
# the adapter in classifier_head.safetensors (peft ignores unknown files) and
# import_from_peft loads it back when it is there.

PEFT_PREFIX = "base_model.model."
PEFT_MAGNITUDE = "lora_magnitude_vector"  # peft's name for DoRA's magnitude (ours: lora_magnitude)


def peft_key(name: str) -> str:
    """Our tensor name inside the backbone -> peft's key: ``...query.lora_A`` -> ``...query.lora_A.weight``."""
    if name.endswith(".lora_magnitude"):
        return PEFT_PREFIX + name.removesuffix("lora_magnitude") + PEFT_MAGNITUDE
    return f"{PEFT_PREFIX}{name}.weight"


def our_name(key: str) -> str:
    """peft's key -> our tensor name inside the backbone (the inverse of :func:`peft_key`)."""
    name = key.removeprefix(PEFT_PREFIX)
    if name.endswith("." + PEFT_MAGNITUDE):
        return name.removesuffix(PEFT_MAGNITUDE) + "lora_magnitude"
    return name.removesuffix(".weight")


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
    tensors = {peft_key(name): tensor.contiguous() for name, tensor in lora_state_dict(model).items()}
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
        "use_rslora": config["rslora"],
        "use_dora": config["dora"],
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
    unsupported = [key for key in ("rank_pattern", "alpha_pattern") if config.get(key)]
    if unsupported or config.get("bias", "none") != "none":
        raise ValueError(f"This adapter uses options our LoRA does not implement: {unsupported or 'bias'}.")
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    ours = {our_name(key): tensor for key, tensor in tensors.items()}  # "...query.lora_A"
    targets = sorted({name.rsplit(".", 1)[0] for name in ours})
    # Full module names: exactly the layers the adapter has tensors for are adapted.
    added = add_lora(model, targets=targets, r=int(config["r"]), alpha=config["lora_alpha"],
                     dropout=float(config.get("lora_dropout", 0.0)), rslora=bool(config.get("use_rslora")),
                     dora=bool(config.get("use_dora")))
    _copy_matrices(added, ours)
    if isinstance(getattr(model, "head", None), nn.Module) and (directory / HEAD_FILE).exists():
        with safe_open(str(directory / HEAD_FILE), framework="pt") as handle:
            info = json.loads((handle.metadata() or {})[HEAD_KEY])
        check_same_base(info["base_model"], model, str(directory))
        load_head(model, split_head(load_file(str(directory / HEAD_FILE)))[1])
    return model
