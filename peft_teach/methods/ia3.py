"""IA3: learned rescaling vectors, built from scratch.

Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", NeurIPS 2022 (arXiv 2205.05638), section 3.3.

IA3 ("Infused Adapter by Inhibiting and Amplifying Inner Activations") learns one vector per
adapted layer and multiplies an activation by it, feature by feature:

* on the keys and the values of every attention layer: ``k' = l_k * (W_k x + b_k)``;
* on the feed-forward block's inner activation, the input of its second matrix:
  ``W_2 (l_ff * a)``.

Every vector starts at ones, so the model starts as the base model. An attention projection
with ``d_out`` outputs gets ``d_out`` numbers; a feed-forward matrix with ``d_in`` inputs gets
``d_in``. Because the scale sits next to a linear map, it can be merged into the weight:
the rows of ``W_k`` (and its bias) for keys and values, the columns of ``W_2`` for the
feed-forward block.

The verbs are those of every method: :func:`add_ia3`, :func:`save_ia3` / :func:`load_ia3`,
:func:`remove_ia3`, :func:`ia3_parameter_count` (formula) and :func:`ia3_parameters` (measured),
then :func:`merge_ia3`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from peft_teach.methods.checkpoint import load_head, read_checkpoint, save_checkpoint, split_head
from peft_teach.methods.inject import find_modules, replace_module, train_only
from peft_teach.methods.lora import ADAPTABLE, in_out_features
from peft_teach.models import get_backbone

# Where the vectors go, by architecture: (layers whose output is rescaled, layers whose input is rescaled).
# GPT-2 computes queries, keys and values in one matrix (c_attn), so all three are rescaled there.
# BERT's attention block also ends in an "output.dense": the pattern names the feed-forward one only.
DEFAULT_TARGETS = {
    "bert": (("key", "value"), (r".*layer\.\d+\.output\.dense",)),
    "roberta": (("key", "value"), (r".*layer\.\d+\.output\.dense",)),
    "gpt2": (("c_attn",), ("mlp.c_proj",)),
    "llama": (("k_proj", "v_proj"), ("down_proj",)),
}


class IA3Linear(nn.Module):
    """A frozen linear layer whose output (or, for a feed-forward matrix, input) is rescaled feature by feature."""

    def __init__(self, base_layer: nn.Module, feedforward: bool = False):
        super().__init__()
        d_in, d_out = in_out_features(base_layer)
        self.base_layer, self.feedforward = base_layer, feedforward
        weight = base_layer.weight
        self.ia3_scale = nn.Parameter(torch.ones(d_in if feedforward else d_out, dtype=weight.dtype,
                                                 device=weight.device))  # ones: the base layer at the start
        self.merged = False
        for parameter in self.base_layer.parameters():
            parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:  # the scale already sits inside the weight
            return self.base_layer(x)
        if self.feedforward:
            return self.base_layer(x * self.ia3_scale)
        return self.base_layer(x) * self.ia3_scale  # the bias is rescaled too

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the scale into the weight: rows (and bias) for an output scale, columns for an input scale."""
        if not self.merged:
            self._rescale(self.ia3_scale)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Divide the scale back out (exact up to rounding; a zero scale cannot be undone)."""
        if self.merged:
            self._rescale(1 / self.ia3_scale)
            self.merged = False

    def _rescale(self, scale: torch.Tensor) -> None:
        # nn.Linear stores (d_out, d_in); GPT-2's Conv1D stores (d_in, d_out).
        rows_are_outputs = not isinstance(self.base_layer, Conv1D)
        per_output = scale.unsqueeze(1) if rows_are_outputs else scale.unsqueeze(0)
        per_input = scale.unsqueeze(0) if rows_are_outputs else scale.unsqueeze(1)
        self.base_layer.weight.mul_(per_input if self.feedforward else per_output)
        if not self.feedforward and self.base_layer.bias is not None:
            self.base_layer.bias.mul_(scale)

    def extra_repr(self) -> str:
        return f"feedforward={self.feedforward}, size={self.ia3_scale.numel()}, merged={self.merged}"


def ia3_layers(model: nn.Module) -> dict[str, IA3Linear]:
    """Every IA3 layer of ``model``, by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, IA3Linear)}


def default_targets(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(rescaled outputs, rescaled inputs) for ``model``'s architecture, as the paper places them."""
    kind = get_backbone(model).config.model_type
    family = kind if kind in DEFAULT_TARGETS else ("llama" if kind in ("mistral", "qwen2", "qwen3") else None)
    if family is None:
        raise ValueError(f"No default IA3 targets for model type {kind!r}: pass targets=(...) and feedforward=(...) "
                         f"yourself, e.g. targets=('k_proj', 'v_proj'), feedforward=('down_proj',).")
    return DEFAULT_TARGETS[family]


def _find_targets(model: nn.Module, targets, feedforward) -> tuple[dict[str, nn.Module], set[str]]:
    """The layers to wrap, by name inside the backbone, and which of them are feed-forward."""
    if targets is None and feedforward is None:
        targets, feedforward = default_targets(model)
    backbone = get_backbone(model)
    scaled_inputs = find_modules(backbone, feedforward or (), module_type=ADAPTABLE) if feedforward else {}
    scaled_outputs = find_modules(backbone, targets or (), module_type=ADAPTABLE) if targets else {}
    both = set(scaled_inputs) & set(scaled_outputs)
    if both:
        raise ValueError(f"{sorted(both)[0]} is named both in targets and in feedforward: a layer's scale sits on its "
                         "output or on its input, not both.")
    return {**scaled_outputs, **scaled_inputs}, set(scaled_inputs)


def add_ia3(model: nn.Module, targets: str | Iterable[str] | None = None,
            feedforward: str | Iterable[str] | None = None) -> dict[str, IA3Linear]:
    """Wrap the target layers with IA3 vectors; only the vectors (and the head) train.

    ``targets``: layers whose output is rescaled (keys, values); ``feedforward``: layers whose
    input is rescaled (the second feed-forward matrix). Leave both out for the paper's placement
    on this architecture (:data:`DEFAULT_TARGETS`). Returns the new layers by their name in ``model``.
    """
    backbone = get_backbone(model)
    if ia3_layers(model):
        raise ValueError("This model already has IA3 layers; remove_ia3(model) first, or build a fresh model.")
    found, inputs = _find_targets(model, targets, feedforward)
    prefix = "backbone." if backbone is not model else ""
    added: dict[str, IA3Linear] = {}
    for name, layer in found.items():
        added[prefix + name] = IA3Linear(layer, feedforward=name in inputs)
        replace_module(backbone, name, added[prefix + name])
    train_only(model, [layer.ia3_scale for layer in added.values()])
    return added


def remove_ia3(model: nn.Module) -> None:
    """Unmerge and unwrap every IA3 layer: the backbone is the base model again."""
    layers = ia3_layers(model)
    if not layers:
        raise ValueError("This model has no IA3 layers; add_ia3(model) or load_ia3(model, folder) first.")
    for name, layer in layers.items():
        layer.unmerge()
        replace_module(model, name, layer.base_layer)


def ia3_parameter_count(model: nn.Module, targets: str | Iterable[str] | None = None,
                        feedforward: str | Iterable[str] | None = None) -> int:
    """Formula: d_out per rescaled output, d_in per rescaled input, summed over the layers named."""
    found, inputs = _find_targets(model, targets, feedforward)
    return sum(in_out_features(layer)[0 if name in inputs else 1] for name, layer in found.items())


def ia3_parameters(model: nn.Module) -> int:
    """Measured: every IA3 vector on the model."""
    return sum(layer.ia3_scale.numel() for layer in ia3_layers(model).values())


def merge_ia3(model: nn.Module) -> nn.Module:
    """Fold every IA3 vector into its frozen weight, in place (idempotent)."""
    for layer in ia3_layers(model).values():
        layer.merge()
    return model


def ia3_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every vector, by name inside the backbone (``encoder.layer.0...key.ia3_scale``)."""
    layers = ia3_layers(get_backbone(model))
    if not layers:
        raise ValueError("This model has no IA3 layers: call add_ia3(model) first.")
    if any(layer.merged for layer in layers.values()):
        raise ValueError("Unmerge first: a merged model's weights already contain the scales.")
    return {f"{name}.ia3_scale": layer.ia3_scale.detach().clone() for name, layer in layers.items()}


def save_ia3(model: nn.Module, folder: str | Path, overwrite: bool = False) -> Path:
    """Write every vector and the head to ``folder`` (see peft_teach.methods.checkpoint)."""
    layers = ia3_layers(get_backbone(model))
    config = {"targets": [name for name, layer in layers.items() if not layer.feedforward],
              "feedforward": [name for name, layer in layers.items() if layer.feedforward]}
    return save_checkpoint(folder, "ia3", config, ia3_state_dict(model), model, getattr(model, "head", None),
                           overwrite)


def load_ia3(model: nn.Module, folder: str | Path) -> dict[str, IA3Linear]:
    """Add the IA3 saved in ``folder`` to ``model`` (which must not have IA3 yet)."""
    config, tensors = read_checkpoint(folder, "ia3", model)
    own, head = split_head(tensors)
    # Full names: exactly the saved layers are wrapped; an empty list must not fall back to the defaults.
    added = add_ia3(model, targets=config["targets"] or (), feedforward=config["feedforward"] or ())
    with torch.no_grad():
        for name, layer in added.items():
            layer.ia3_scale.copy_(own[f"{name.removeprefix('backbone.')}.ia3_scale"])
    load_head(model, head)
    return added
