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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from peft_teach.methods.adapters import (
    AdapterSubLayer,
    _add_head,
    _check_name,
    _configs,
    adapter_layers,
)
from peft_teach.methods.inject import freeze


class FusionLayer(nn.Module):
    """Attention over N adapter outputs in one layer (query: h; keys/values: z_n)."""

    def __init__(self, hidden_size: int, adapter_names: Sequence[str], seed: int = 0):
        super().__init__()
        self.adapter_names = list(adapter_names)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size, bias=False)
        self.last_weights: torch.Tensor | None = None  # (batch, tokens, N), kept for plots
        generator = torch.Generator().manual_seed(seed)
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


def fusion_parameter_count(hidden_size: int) -> int:
    """Q and K (d x d + bias each) and V (d x d, no bias): 3d^2 + 2d per layer."""
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
    return "Fuse[" + ",".join(adapter_names) + "]"


def add_fusion(model: nn.Module, adapter_names: Sequence[str], num_labels: int | None = None,
               seed: int = 0) -> str:
    """Add a fusion layer over ``adapter_names`` in every adapted sub-layer; activate it.

    Returns the fusion's name (``Fuse[a,b,c]``). With a classifier ``head`` the
    fusion gets its own head of ``num_labels`` outputs.
    """
    adapter_names = list(adapter_names)
    if len(adapter_names) < 1:
        raise ValueError("Give at least one adapter name to fuse.")
    for name in adapter_names:
        _check_name(model, name)
    placements = {_configs(model)[n].placement for n in adapter_names}
    if len(placements) > 1:
        raise ValueError(f"Cannot fuse adapters with different placements {sorted(placements)}.")
    name = fusion_name(adapter_names)
    layers = _fusable_layers(model, adapter_names)
    for index, layer in enumerate(layers.values()):
        d = check_fusable({n: layer.adapters[n] for n in adapter_names})
        layer.fusions[name] = FusionLayer(d, adapter_names, seed=seed * 1000 + index).to(layer.dense.weight.device)
    if hasattr(model, "head"):
        _add_head(model, name, num_labels or model.head.out_features, seed)
    set_active_fusion(model, name)
    return name


def _fusable_layers(model: nn.Module, adapter_names: Sequence[str]) -> dict[str, AdapterSubLayer]:
    return {k: layer for k, layer in adapter_layers(model).items()
            if all(n in layer.adapters for n in adapter_names)}


def fusion_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    for layer in adapter_layers(model).values():
        names += [n for n in layer.fusions if n not in names]
    return names


def set_active_fusion(model: nn.Module, name: str) -> None:
    """Run fusion ``name`` (its adapters inside it) and use its head."""
    if name not in fusion_names(model):
        raise KeyError(f"No fusion called {name!r}. Available fusions: {fusion_names(model) or 'none yet'}.")
    for layer in adapter_layers(model).values():
        layer.active = None
        layer.active_fusion = name if name in layer.fusions else None
    if hasattr(model, "adapter_heads") and name in model.adapter_heads:
        model.head = model.adapter_heads[name]


def fusion_layers(model: nn.Module, name: str) -> list[FusionLayer]:
    return [layer.fusions[name] for layer in adapter_layers(model).values() if name in layer.fusions]


def train_fusion(model: nn.Module, name: str) -> list[str]:
    """Stage 2: freeze the model and every adapter; train only fusion ``name`` + its head."""
    set_active_fusion(model, name)
    freeze(model)
    for fusion in fusion_layers(model, name):
        fusion.requires_grad_(True)
    if hasattr(model, "head"):
        model.head.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def remove_fusion(model: nn.Module, name: str) -> None:
    for layer in adapter_layers(model).values():
        if name in layer.fusions:
            del layer.fusions[name]
        if layer.active_fusion == name:
            layer.active_fusion = None
    if hasattr(model, "adapter_heads") and name in model.adapter_heads:
        del model.adapter_heads[name]


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
