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

Besides the layer this file holds the model-level helpers: :func:`add_lora`,
:func:`merge_lora` / :func:`unmerge_lora`, :func:`save_lora` / :func:`load_lora`
(only the small LoRA tensors + the head), and :func:`export_to_peft` /
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
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from peft_teach.methods.inject import find_modules, freeze, replace_module
from peft_teach.models import base_model_fingerprint

# Layers LoRA can wrap. GPT-2's Conv1D is a linear layer whose weight is stored
# transposed (d_in x d_out) and computes x @ W + b.
ADAPTABLE = (nn.Linear, Conv1D)
CHECKPOINT_KEY = "peft_teach_lora"  # name of the metadata entry in our checkpoints
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
    """Wrap the target linear layers of ``model`` with LoRA; freeze everything else.

    ``targets`` are module names as :func:`find_modules` reads them (``"query"``,
    ``"c_attn"``, ``"q_proj"`` or a full-name regular expression). Trainable after
    this: the LoRA matrices and, if the model has one, the classifier ``head``.
    Returns the new layers by name.
    """
    check_rank_and_alpha(r, alpha)
    if lora_layers(model):
        raise ValueError("This model already has LoRA layers. Build a fresh model, "
                         "or remove them first (see merge_lora to fold them in).")
    found = find_modules(model, targets, module_type=ADAPTABLE)
    generator = torch.Generator().manual_seed(seed)  # one stream, model order: reproducible
    freeze(model)
    added: dict[str, LoRALinear] = {}
    for name, layer in found.items():
        added[name] = LoRALinear(layer, r=r, alpha=alpha, dropout=dropout, generator=generator)
        replace_module(model, name, added[name])
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):  # the task head is always trained with the adapter
        for parameter in head.parameters():
            parameter.requires_grad_(True)
    return added


def lora_parameter_count(d_in: int, d_out: int, r: int) -> int:
    """Parameters LoRA adds to one d_out x d_in matrix: A (r x d_in) + B (d_out x r)."""
    return r * (d_in + d_out)


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


def base_encoder(model: nn.Module) -> nn.Module:
    """The transformer itself: ``model.encoder`` of a classifier, or ``model`` if bare."""
    if isinstance(model, PreTrainedModel):
        return model  # careful: a BertModel also has an ``.encoder`` (its layer stack)
    return model.encoder


def lora_config(model: nn.Module) -> dict[str, object]:
    """Rank, alpha and the adapted module names: enough to rebuild the layers."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("This model has no LoRA layers: call add_lora(model, ...) first.")
    first = next(iter(layers.values()))
    dropout = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    return {"r": first.r, "alpha": first.alpha, "dropout": dropout, "targets": list(layers)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the tensors a LoRA checkpoint needs: every A and B, plus the head."""
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ValueError("Unmerge first (unmerge_lora(model)): a merged model's weights "
                         "already contain the update, so saving A and B alone would mislead.")
    keep = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
            if name.endswith((".lora_A", ".lora_B")) or name.startswith("head.")}
    if not any(name.endswith(".lora_A") for name in keep):
        raise ValueError("This model has no LoRA layers: call add_lora(model, ...) first.")
    return keep


def save_lora(model: nn.Module, path: str | Path) -> Path:
    """Write the LoRA tensors, the head, the LoRA config and the base model's fingerprint.

    One ``.safetensors`` file (no pickle); config and fingerprint go in its metadata.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"config": lora_config(model), "base_model": base_model_fingerprint(base_encoder(model))}
    save_file(lora_state_dict(model), str(path), metadata={CHECKPOINT_KEY: json.dumps(info)})
    return path


def read_lora_info(path: str | Path) -> dict[str, object]:
    """The config and base-model fingerprint stored in a :func:`save_lora` file."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if CHECKPOINT_KEY not in metadata:
        raise ValueError(f"{path} is not a LoRA checkpoint written by save_lora.")
    return json.loads(metadata[CHECKPOINT_KEY])


def check_same_base(expected: dict[str, object], model: nn.Module, source: str) -> None:
    """Refuse to load weights trained on another base model (they would be garbage)."""
    actual = base_model_fingerprint(base_encoder(model))
    if actual != expected:
        differing = {key: (expected.get(key), actual.get(key)) for key in expected.keys() | actual.keys()
                     if expected.get(key) != actual.get(key)}
        raise ValueError(
            f"{source} was trained on base model {_describe(expected)}, but this model is "
            f"{_describe(actual)} (differs in {differing}). Load it into the base model it was "
            "trained on, e.g. build_classifier(num_labels, name=<that model>)."
        )


def _describe(fingerprint: dict[str, object]) -> str:
    name = fingerprint.get("name_or_path") or "<unnamed>"
    return (f"{name!r} ({fingerprint.get('model_type')}, hidden {fingerprint.get('hidden_size')}, "
            f"{fingerprint.get('num_hidden_layers')} layers)")


def load_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a :func:`save_lora` checkpoint into ``model``, adding LoRA layers if needed."""
    info = read_lora_info(path)
    check_same_base(info["base_model"], model, str(path))
    config = info["config"]
    if not lora_layers(model):
        add_lora(model, targets=config["targets"], r=config["r"], alpha=config["alpha"],
                 dropout=config["dropout"])
    elif lora_config(model)["targets"] != config["targets"] or lora_config(model)["r"] != config["r"]:
        raise ValueError(f"The model's LoRA layers (r={lora_config(model)['r']}) do not match the "
                         f"checkpoint (r={config['r']}, targets {config['targets'][:2]}...). "
                         "Load into a model without LoRA and load_lora adds the right layers.")
    unmerge_lora(model)  # loading into merged weights would leave the old update inside
    _load_tensors(model, load_file(str(path)))
    return model


def _load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ValueError(f"The checkpoint has tensors this model lacks: {unknown[:3]} ...")
    with torch.no_grad():
        for name, tensor in tensors.items():
            if own[name].shape != tensor.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)}, "
                                 f"model shape {tuple(own[name].shape)}.")
            own[name].copy_(tensor)


# --------------------------------------------------------------------------- peft format
#
# peft stores a LoRA adapter as a folder with two files:
#   adapter_config.json          peft_type "LORA", r, lora_alpha, target_modules, ...
#   adapter_model.safetensors    keys "base_model.model.<module name>.lora_A.weight" / ".lora_B.weight"
# where <module name> is the name inside the model handed to PeftModel. We export the
# *encoder* (the Hugging Face model), so PeftModel.from_pretrained(encoder, folder) works
# with any AutoModel. Our classifier head is not part of that model, so it is saved beside
# the adapter in classifier_head.safetensors (peft ignores unknown files) and
# import_from_peft loads it back when it is there.

PEFT_PREFIX = "base_model.model."


def _encoder_prefix(model: nn.Module) -> str:
    """How the encoder's module names start inside ``model`` ('' or 'encoder.')."""
    return "" if base_encoder(model) is model else "encoder."


def export_to_peft(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model``'s LoRA in peft's format (+ our head beside it) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = lora_config(model)
    prefix = _encoder_prefix(model)
    tensors = {}
    for name, tensor in lora_state_dict(model).items():
        if name.startswith("head."):
            continue
        module_name, matrix = name.rsplit(".", 1)  # "...query", "lora_A"
        tensors[f"{PEFT_PREFIX}{module_name.removeprefix(prefix)}.{matrix}.weight"] = tensor.contiguous()
    save_file(tensors, str(directory / "adapter_model.safetensors"), metadata={"format": "pt"})
    encoder = base_encoder(model)
    targets = [name.removeprefix(prefix) for name in config["targets"]]
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": getattr(encoder.config, "_name_or_path", None) or None,
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
    (directory / "adapter_config.json").write_text(json.dumps(peft_config, indent=2) + "\n")
    head = {n: t for n, t in lora_state_dict(model).items() if n.startswith("head.")}
    if head:
        info = {"base_model": base_model_fingerprint(encoder)}
        save_file(head, str(directory / HEAD_FILE), metadata={CHECKPOINT_KEY: json.dumps(info)})
    return directory


def import_from_peft(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load a peft LoRA adapter folder into ``model`` (which must not have LoRA yet).

    Works for folders written by peft's ``save_pretrained`` and by :func:`export_to_peft`.
    """
    directory = Path(directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{directory} holds a {config.get('peft_type')} adapter, not LoRA.")
    unsupported = [key for key in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern") if config.get(key)]
    if unsupported or config.get("bias", "none") != "none":
        raise ValueError(f"This adapter uses options our LoRA does not implement: {unsupported or 'bias'}.")
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    prefix = _encoder_prefix(model)
    ours: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PEFT_PREFIX).removesuffix(".weight")  # "...query.lora_A"
        ours[prefix + name] = tensor
    targets = sorted({name.rsplit(".", 1)[0] for name in ours})
    if getattr(model, "head", None) is not None and (directory / HEAD_FILE).exists():
        check_same_base(read_lora_info(directory / HEAD_FILE)["base_model"], model, str(directory))
        ours.update(load_file(str(directory / HEAD_FILE)))
    # Full module names: exactly the layers the adapter has tensors for are adapted.
    add_lora(model, targets=targets, r=int(config["r"]),
             alpha=config["lora_alpha"], dropout=float(config.get("lora_dropout", 0.0)))
    _load_tensors(model, ours)
    return model

