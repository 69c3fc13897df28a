"""AdapterFusion, built from scratch (lesson 02).

Pfeiffer et al., "AdapterFusion: Non-Destructive Task Composition for Transfer
Learning", EACL 2021. Two stages:

1. *knowledge extraction*: train one adapter per source task, independently
   (peft_teach.methods.adapters);
2. *knowledge composition*: freeze the model **and** the adapters; in every
   layer, learn an attention over the adapters' outputs, plus a new head.

Per layer l and token t, with h the sub-layer (FFN) output the adapters read and
z_n = delta_n(h) the change adapter n proposes (n = 1..N):

    s_n = softmax_n( (Q h + b_Q) . (K z_n + b_K) )          attention over adapters
    o   = sum_n s_n V z_n                                   V starts as the identity
    y   = LN(h_ffn + o + r)                                 the layer's Add & Norm

Q and K are d x d with bias, V is d x d without bias: 3d^2 + 2d parameters per
layer (443,136 for d = 384), whatever N is. V starts at the identity plus 1e-6
everywhere else, so at the start fusion is "a weighted average of the adapters"
(the paper's Sec. 3); ``value_regularization`` pulls V back toward the identity
(0.01 * ||I - V||^2 summed over layers, AdapterHub's factor).

This matches AdapterHub's ``Fuse`` with the ``dynamic`` config (temperature off,
so T = 1; residual added after the weighted sum, ``residual_before=False``; query
taken after the adapter input LayerNorm, ``query_before_ln=False``; V applied to
each z_n before the weighted sum, which is the same as after because V is linear).
One difference: AdapterHub applies dropout (p = attention_probs_dropout_prob)
to the attention *scores* during training; we do not (it changes nothing in
eval mode, where the parity test compares).

:func:`average_adapters` turns a fusion into the averaging baseline (weights fixed at 1/N).

Verbs, as for every method: ``add_fusion``, ``save_fusion`` / ``load_fusion`` (which
refuses to load when the fused adapters are not on the model), ``remove_fusion``,
:func:`fusion_parameter_count` (formula) and :func:`fusion_parameters` (measured).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from peft_teach.methods.adapters import (
    adapter_config,
    adapter_layers,
    adapter_names,
    add_head,
    check_adapter_name,
    remove_head,
)
from peft_teach.methods.checkpoint import CheckpointError, load_head, load_into, read_checkpoint, save_checkpoint, split_head
from peft_teach.methods.inject import replace_module, train_only
from peft_teach.models import get_backbone, seeded_generator


class FusionLayer(nn.Module):
    """Attention over N adapter outputs in one layer (query: h; keys/values: z_n)."""

    def __init__(self, hidden_size: int, adapter_names: Sequence[str], seed: int = 0):
        super().__init__()
        self.adapter_names = list(adapter_names)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size, bias=False)
        self.last_weights: torch.Tensor | None = None  # (batch, tokens, N), kept for plots
        generator = seeded_generator(seed)
        with torch.no_grad():
            for linear in (self.query, self.key):  # BERT's init: N(0, 0.02), zero bias
                linear.weight.normal_(0.0, 0.02, generator=generator)
                linear.bias.zero_()
            # identity plus a tiny constant: starts as a plain weighted average of the z_n
            self.value.weight.copy_(torch.full((hidden_size, hidden_size), 1e-6).fill_diagonal_(1.0))

    def scores(self, hidden: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        """Softmax weights s: hidden (B, T, d), deltas (B, T, N, d) -> (B, T, N)."""
        q = self.query(hidden)                           # (B, T, d)
        k = self.key(deltas)                             # (B, T, N, d)
        logits = torch.einsum("btd,btnd->btn", q, k)     # one dot product per adapter
        return logits.softmax(dim=-1)

    def forward(self, hidden: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        weights = self.scores(hidden, deltas)
        self.last_weights = weights.detach()
        values = self.value(deltas)                      # (B, T, N, d)
        return torch.einsum("btn,btnd->btd", weights, values)


def fusion_layer_parameter_count(hidden_size: int) -> int:
    """One layer: Q and K (d x d + bias each) and V (d x d, no bias): 3d^2 + 2d."""
    return 3 * hidden_size * hidden_size + 2 * hidden_size


def check_fusable(adapters: dict[str, nn.Module]) -> int:
    """All adapters must share one hidden size (the size fusion attends in)."""
    sizes = {name: adapter.hidden_size for name, adapter in adapters.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(
            f"Cannot fuse adapters with different hidden sizes: {sizes}. Fusion attends over the "
            "adapters' outputs in one d-dimensional space: fuse only adapters trained on the same base model.")
    return next(iter(sizes.values()))


def fusion_name(adapter_names: Sequence[str]) -> str:
    """The name a fusion of these adapters gets (AdapterHub's style): ``Fuse[a,b,c]``."""
    return "Fuse[" + ",".join(adapter_names) + "]"


def add_fusion(model: nn.Module, adapter_names: Sequence[str], num_labels: int | None = None,
               seed: int = 0) -> dict[str, FusionLayer]:
    """Add a fusion layer over ``adapter_names`` at every adapter point; activate it; train only it.

    The fusion is called ``fusion_name(adapter_names)``. With a classifier ``head``
    it gets its own head of ``num_labels`` outputs. Returns the new layers by name.
    """
    get_backbone(model)  # first: anything but a transformers model fails with the fix
    if isinstance(adapter_names, str) or not adapter_names:  # "sentiment" would fuse 's', 'e', 'n', ...
        raise ValueError(f"Give a list of adapter names to fuse, e.g. ['sentiment', 'aspect'], got {adapter_names!r}.")
    adapter_names = list(adapter_names)
    for name in adapter_names:
        check_adapter_name(model, name)
    if len(set(adapter_names)) != len(adapter_names):
        raise ValueError(f"Each adapter may appear once in a fusion, got {adapter_names}.")
    placements = {adapter_config(model, n).placement for n in adapter_names}
    if len(placements) > 1:
        raise ValueError(f"Cannot fuse adapters with different placements {sorted(placements)}; "
                         "train the adapters you want to fuse with one placement.")
    name = fusion_name(adapter_names)
    if name in fusion_names(model):
        raise ValueError(f"Fusion {name} already exists; remove_fusion(model, {name!r}) first.")
    added: dict[str, FusionLayer] = {}
    for index, (point_name, point) in enumerate(_fusable_points(model, adapter_names).items()):
        d = check_fusable({n: point.adapters[n] for n in adapter_names})
        device = point.adapters[adapter_names[0]].up.weight.device
        point.fusions[name] = FusionLayer(d, adapter_names, seed=seed * 1000 + index).to(device)
        added[f"{point_name}.fusions.{name}"] = point.fusions[name]
    if hasattr(model, "head"):
        add_head(model, name, num_labels or model.head.out_features, seed)
    train_fusion(model, name)
    return added


def _fusable_points(model: nn.Module, adapter_names: Sequence[str]) -> dict[str, nn.Module]:
    return {k: point for k, point in adapter_layers(model).items()
            if all(n in point.adapters for n in adapter_names)}


def fusion_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    for point in adapter_layers(model).values():
        names += [n for n in point.fusions if n not in names]
    return names


def check_fusion_name(model: nn.Module, name: str) -> None:
    if name not in fusion_names(model):
        raise KeyError(f"No fusion called {name!r}. Available fusions: {fusion_names(model) or 'none yet'} "
                       "(names look like fusion_name(['sentiment', 'aspect']) = 'Fuse[sentiment,aspect]').")


def set_active_fusion(model: nn.Module, name: str) -> None:
    """Run fusion ``name`` (its adapters inside it) and use its head."""
    check_fusion_name(model, name)
    for point in adapter_layers(model).values():
        point.active = None
        point.active_fusion = name if name in point.fusions else None
    if hasattr(model, "adapter_heads") and name in model.adapter_heads:
        model.head = model.adapter_heads[name]


def fusion_layers(model: nn.Module, name: str) -> list[FusionLayer]:
    return [point.fusions[name] for point in adapter_layers(model).values() if name in point.fusions]


def train_fusion(model: nn.Module, name: str) -> list[str]:
    """Stage 2: activate fusion ``name``; only it and its head train (model and adapters frozen)."""
    set_active_fusion(model, name)
    return train_only(model, fusion_layers(model, name))


def remove_fusion(model: nn.Module, name: str) -> None:
    """Delete fusion ``name`` (and its head); its adapters stay."""
    check_fusion_name(model, name)
    for point_name, point in adapter_layers(model).items():
        if name in point.fusions:
            del point.fusions[name]
        if point.active_fusion == name:
            point.active_fusion = None
        if point.is_empty():
            replace_module(model, point_name, point.original())
    remove_head(model, name)


def fusion_parameters(model: nn.Module, name: str) -> int:
    """Measured: parameters of fusion ``name`` in all layers (its head excluded)."""
    check_fusion_name(model, name)
    return sum(p.numel() for layer in fusion_layers(model, name) for p in layer.parameters())


def fusion_parameter_count(model: nn.Module, adapter_names: Sequence[str]) -> int:
    """Formula: (number of adapter points) x (3d^2 + 2d); does not depend on how many adapters."""
    points = _fusable_points(model, adapter_names)
    return sum(fusion_layer_parameter_count(next(iter(p.adapters.values())).hidden_size) for p in points.values())


def save_fusion(model: nn.Module, name: str, folder: str | Path, overwrite: bool = False) -> Path:
    """Write fusion ``name``'s layers and head (not its adapters: save_adapter those)."""
    check_fusion_name(model, name)
    layers = fusion_layers(model, name)
    tensors = {f"{point_name}.fusions.{name}.{key}": value
               for point_name, point in adapter_layers(model).items() if name in point.fusions
               for key, value in point.fusions[name].state_dict().items()}
    head = model.adapter_heads[name] if hasattr(model, "adapter_heads") and name in model.adapter_heads else None
    return save_checkpoint(folder, "fusion", {"adapters": layers[0].adapter_names}, tensors, model, head, overwrite)


def load_fusion(model: nn.Module, folder: str | Path) -> dict[str, FusionLayer]:
    """Add the fusion saved in ``folder``; its adapters must already be on the model."""
    config, tensors = read_checkpoint(folder, "fusion", model)
    missing = [n for n in config["adapters"] if n not in adapter_names(model)]
    if missing:
        raise CheckpointError(f"The fusion in {folder} combines adapters {config['adapters']}, but {missing} "
                              "are not on this model. load_adapter(model, <folder>) each of them first.")
    own, head = split_head(tensors)
    added = add_fusion(model, config["adapters"], num_labels=head["weight"].shape[0] if head else None)
    name = fusion_name(config["adapters"])
    for module_name, layer in added.items():
        prefix = module_name.removeprefix("backbone.") + "."
        load_into(layer, {k[len(prefix):]: v for k, v in own.items() if k.startswith(prefix)}, f"fusion {name}")
    load_head(model, head)  # the new adapter's head is the active one
    return added


def average_adapters(model: nn.Module, name: str) -> list[str]:
    """Turn fusion ``name`` into the averaging baseline: every adapter weighted 1/N; only the head trains.

    A zero query makes every score 0, so the softmax gives each of the N adapters
    weight 1/N, whatever the input; V becomes exactly the identity. What learned
    fusion adds over this baseline is then the attention itself (Pfeiffer et al.
    2021 compare fusion with such static mixing in their Sec. 3).
    """
    with torch.no_grad():
        for layer in fusion_layers(model, name):
            layer.query.weight.zero_()
            layer.query.bias.zero_()
            layer.value.weight.copy_(torch.eye(layer.value.weight.shape[0]))
    return train_only(model, [])


def value_regularization(name: str, weight: float = 0.01) -> Callable[[nn.Module], torch.Tensor]:
    """An ``extra_loss`` for peft_teach.train.train: weight * sum_l ||I - V_l||^2."""

    def extra_loss(model: nn.Module) -> torch.Tensor:
        total = 0.0
        for fusion in fusion_layers(model, name):
            eye = torch.eye(fusion.value.weight.shape[0], device=fusion.value.weight.device)
            total = total + (eye - fusion.value.weight).pow(2).sum()
        return weight * total

    return extra_loss


@torch.no_grad()
def fusion_weights(model: nn.Module, name: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Fusion attention for one batch, averaged over real tokens: (examples, layers, N).

    Runs the model once; each fusion layer remembers its last softmax weights.
    """
    set_active_fusion(model, name)
    model.eval()
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    model(**inputs)
    mask = inputs["attention_mask"].unsqueeze(-1).float()   # (B, T, 1): ignore padding
    per_layer = [(f.last_weights * mask).sum(1) / mask.sum(1) for f in fusion_layers(model, name)]
    return torch.stack(per_layer, dim=1).cpu()
