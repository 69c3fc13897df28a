"""Bottleneck adapters, built from scratch (lesson 01).

An adapter is a tiny two-layer network with its own skip connection, inserted
into every transformer layer of a frozen model (Houlsby et al., ICML 2019):

    A(a) = a + s * W_up f(W_down a + b_down) + s * b_up

with W_down: d -> m (m << d), a non-linearity f (ReLU here, as AdapterHub's
``seq_bn``), W_up: m -> d and a scale s (1 by default). Parameters per adapter:
d*m + m (down) + m*d + d (up) = 2md + m + d. With W_up = 0 the adapter is the
identity, so the adapted model starts *exactly* where the pre-trained one is.

Where the adapter goes. Each sub-layer (attention or FFN) produces an output h
that is added to the residual stream r. The adapter's change delta(a) is added
to h, before the residual add; ``a`` is what the adapter reads:

* ``"houlsby"`` (Houlsby et al. 2019): two adapters per layer, after attention and
  after the FFN, each reading the sub-layer output (a = h).
* ``"pfeiffer"`` (Pfeiffer et al., EACL 2021): one adapter per layer, after the FFN,
  reading the stream *after* the residual add: a = LN(h + r) in a post-LN block
  (BERT, RoBERTa), a = h + r in a pre-LN block (GPT-2, Llama), whose residual add
  has no LayerNorm after it.

Both are AdapterHub's ``seq_bn`` / ``double_seq_bn`` exactly (``original_ln_before``,
``residual_before_ln``, ``original_ln_after``; for pre-LN blocks AdapterHub passes no
LayerNorm, ``adapters`` 1.3, ``methods/modeling.py: Adapter.pre_forward``), checked by
tests/adapterhub on MiniLM and GPT-2. In a pre-LN block "h + r" is the block's output,
so there the Pfeiffer adapter simply wraps the whole block.

A model keeps several named adapters side by side; ``set_active`` picks one (and
its classifier head). The verbs are the same for every method in this package:
``add_adapter``, ``save_adapter``, ``load_adapter``, ``remove_adapter``, with the
formula :func:`adapter_parameter_count` and the measured :func:`adapter_parameters`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from peft_teach.methods.architectures import layout_of
from peft_teach.methods.checkpoint import load_head, load_into, read_checkpoint, save_checkpoint, split_head
from peft_teach.methods.inject import find_modules, replace_module, train_only
from peft_teach.models import get_backbone, seeded_generator

PLACEMENTS = ("pfeiffer", "houlsby")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "silu": nn.SiLU, "tanh": nn.Tanh}


@dataclass
class AdapterConfig:
    """Settings of one adapter. ``reduction_factor`` 16 on d = 384 gives m = 24."""

    placement: str = "pfeiffer"
    reduction_factor: int = 16
    non_linearity: str = "relu"
    scaling: float = 1.0

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"Unknown placement {self.placement!r}; choose one of {list(PLACEMENTS)}.")
        if self.non_linearity not in ACTIVATIONS:
            raise ValueError(f"Unknown non_linearity {self.non_linearity!r}; choose one of {sorted(ACTIVATIONS)}.")
        if isinstance(self.reduction_factor, bool) or not self.reduction_factor > 0:
            raise ValueError(f"reduction_factor must be > 0 (e.g. 16: m = d / 16), got {self.reduction_factor!r}.")

    def bottleneck(self, hidden_size: int) -> int:
        if self.reduction_factor > hidden_size:
            raise ValueError(f"reduction_factor {self.reduction_factor!r} is larger than the hidden size {hidden_size}: "
                             f"the bottleneck would have no unit. Use at most {hidden_size} (e.g. 16: m = "
                             f"{max(1, hidden_size // 16)}).")
        return int(hidden_size // self.reduction_factor)


class BottleneckAdapter(nn.Module):
    """a -> a + s * up(f(down(a))): down-projection, non-linearity, up-projection, skip."""

    def __init__(self, hidden_size: int, bottleneck: int, non_linearity: str = "relu",
                 scaling: float = 1.0, seed: int | None = None):
        super().__init__()
        self.hidden_size, self.bottleneck = hidden_size, bottleneck
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck, hidden_size)
        self.scaling = scaling
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int | None = None) -> None:
        """Small random down-projection, zero up-projection: identity at init.

        A zero W_up makes the adapter's change exactly 0 at first, yet W_up still
        gets gradients (through f(W_down a) != 0), so training can move it.
        """
        generator = None if seed is None else seeded_generator(seed)
        with torch.no_grad():
            self.down.weight.normal_(0.0, 0.02, generator=generator)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def delta(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the adapter adds (fusion mixes these)."""
        return self.scaling * self.up(self.act(self.down(hidden)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.delta(hidden)


def bottleneck_parameter_count(hidden_size: int, bottleneck: int) -> int:
    """One adapter: 2md + m + d (two weight matrices plus the two bias vectors)."""
    return 2 * hidden_size * bottleneck + bottleneck + hidden_size


# ---------------------------------------------------------------- where adapters sit

class AdapterPoint(nn.Module):
    """One place in the network that holds named adapters (and fusions of them).

    ``active`` says which adapter runs (``None``: the plain base model);
    ``active_fusion`` runs a fusion layer over several adapters instead (lesson 02).
    """

    def __init__(self):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.fusions = nn.ModuleDict()  # filled by peft_teach.methods.fusion
        self.active_fusion: str | None = None

    def is_active(self) -> bool:
        return self.active is not None or self.active_fusion is not None

    def change(self, a: torch.Tensor) -> torch.Tensor:
        """What the active adapter (or fusion) adds, given what the adapters read."""
        if self.active_fusion is not None:
            fusion = self.fusions[self.active_fusion]
            deltas = torch.stack([self.adapters[n].delta(a) for n in fusion.adapter_names], dim=-2)
            return fusion(a, deltas)  # attention-weighted mix of the adapters' changes
        return self.adapters[self.active].delta(a)

    def is_empty(self) -> bool:
        return len(self.adapters) == 0 and len(self.fusions) == 0


class PostLNAdapterPoint(AdapterPoint):
    """Replaces a BERT ``*Output`` module: dense -> dropout -> [+ adapter change] -> LN(. + r).

    It keeps the original ``dense``, ``dropout`` and ``LayerNorm`` under their
    original names, so the base model's parameter names do not change.
    """

    def __init__(self, original: nn.Module, reads_after_residual: bool):
        super().__init__()
        for part in ("dense", "dropout", "LayerNorm"):
            if not hasattr(original, part):
                raise TypeError(f"{type(original).__name__} has no {part!r}: a post-LN adapter point needs a "
                                "BERT-style sub-layer output (dense, dropout, LayerNorm).")
        self.dense, self.dropout, self.LayerNorm = original.dense, original.dropout, original.LayerNorm
        self.reads_after_residual = reads_after_residual  # True for Pfeiffer: a = LN(h + r)
        # The replaced module itself, for remove_adapter. Kept in a list, outside the module
        # tree, so that its parameters (the same dense/LayerNorm) are not registered twice.
        self._replaced = [original]

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.dense(hidden_states))
        if self.is_active():  # inactive: exactly the original module, at its cost
            a = self.LayerNorm(h + input_tensor) if self.reads_after_residual else h
            h = h + self.change(a)
        return self.LayerNorm(h + input_tensor)  # the layer's own Add & Norm

    def original(self) -> nn.Module:
        """The ``*Output`` module this point replaced (it shares dense, dropout and LayerNorm)."""
        return self._replaced[0].train(self.training)


class WrappedAdapterPoint(AdapterPoint):
    """Wraps a pre-LN module (attention, MLP or a whole block): its output x -> x + change(x)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.wrapped = module

    def forward(self, *args, **kwargs):
        output = self.wrapped(*args, **kwargs)
        if not self.is_active():
            return output
        if isinstance(output, tuple):  # attention returns (output, weights)
            return (output[0] + self.change(output[0]), *output[1:])
        return output + self.change(output)

    def original(self) -> nn.Module:
        return self.wrapped.train(self.training)


def _targets(backbone: nn.Module, placement: str) -> tuple[list[str], bool]:
    """The module name patterns of ``placement``, and whether the adapters there read the stream
    after the residual add (Pfeiffer) or the sub-layer output (Houlsby)."""
    layout = layout_of(backbone, "Bottleneck adapters")
    if placement == "houlsby":
        return [layout.attention_output, layout.ffn_output], False
    if layout.norm == "post":
        return [layout.ffn_output], True
    return [layout.block], True  # pre-LN: the block's output is h + r


def adapter_layers(model: nn.Module) -> dict[str, AdapterPoint]:
    """Every adapter point of ``model``, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterPoint)}


def _adapter_point(model: nn.Module, name: str, module: nn.Module, reads_after_residual: bool) -> AdapterPoint:
    """The adapter point at ``name``, created (and put in place) on first use."""
    if isinstance(module, AdapterPoint):
        return module
    if layout_of(get_backbone(model), "Bottleneck adapters").norm == "post":
        point: AdapterPoint = PostLNAdapterPoint(module, reads_after_residual)
    else:
        point = WrappedAdapterPoint(module)
    replace_module(model, name, point.train(module.training))
    return point


def add_adapter(model: nn.Module, name: str, config: AdapterConfig | None = None,
                num_labels: int | None = None, seed: int = 0) -> dict[str, BottleneckAdapter]:
    """Insert adapter ``name`` at every target point, activate it, train only it (+ its head).

    If ``model`` is a classifier, the adapter gets its own head with ``num_labels``
    outputs (default: the current head's), swapped in by :func:`set_active`.
    Returns the new adapters by module name.
    """
    backbone = get_backbone(model)  # first: anything but a transformers model fails with the fix
    config = config or AdapterConfig()
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"An adapter name must be a non-empty string without dots, got {name!r} (e.g. 'sentiment').")
    if name in adapter_names(model):
        raise ValueError(f"An adapter called {name!r} already exists; remove_adapter it first or pick another name.")
    other = {c.placement for c in _configs(model).values()} - {config.placement}
    if other:
        raise ValueError(f"This model holds {sorted(other)} adapters; use one placement per model "
                         f"(remove_adapter those first, or add this one with placement={sorted(other)[0]!r}).")
    prefix = "backbone." if backbone is not model else ""
    d = backbone.config.hidden_size
    m = config.bottleneck(d)
    device = next(backbone.parameters()).device
    patterns, reads_after_residual = _targets(backbone, config.placement)
    added: dict[str, BottleneckAdapter] = {}
    for index, (module_name, module) in enumerate(find_modules(backbone, patterns).items()):  # model order
        point = _adapter_point(model, prefix + module_name, module, reads_after_residual)
        # each position gets its own seed, so layers do not start identical
        adapter = BottleneckAdapter(d, m, config.non_linearity, config.scaling, seed=seed * 1000 + index)
        point.adapters[name] = adapter.to(device).train(model.training)
        added[f"{prefix}{module_name}.adapters.{name}"] = adapter
    _configs(model)[name] = config
    if hasattr(model, "head"):
        add_head(model, name, num_labels or model.head.out_features, seed)
    train_adapter(model, name)
    return added


def _configs(model: nn.Module) -> dict[str, AdapterConfig]:
    if not hasattr(model, "_adapter_configs"):
        model._adapter_configs = {}
    return model._adapter_configs


def add_head(model: nn.Module, name: str, num_labels: int, seed: int) -> nn.Linear:
    """A new classifier head for adapter (or fusion) ``name``, kept in ``model.adapter_heads``.

    The head the model had before its first adapter is put back when the last adapter
    is removed. It is kept in a list, outside the module tree, so that it does not count
    as a parameter of the adapted model.
    """
    if not hasattr(model, "adapter_heads"):
        model.base_head = [model.head]
        model.adapter_heads = nn.ModuleDict()
    d = model.head.in_features
    head = nn.Linear(d, num_labels)
    generator = seeded_generator(seed)
    with torch.no_grad():  # same initialisation as peft_teach.models.build_classifier
        head.weight.uniform_(-(d**-0.5), d**-0.5, generator=generator)
        head.bias.zero_()
    model.adapter_heads[name] = head.to(model.head.weight.device)
    return head


def remove_head(model: nn.Module, name: str) -> None:
    """Drop ``name``'s head; with no heads left, the original head comes back."""
    heads = getattr(model, "adapter_heads", None)
    if heads is None or name not in heads:
        return
    if model.head is heads[name]:
        model.head = model.base_head[0]
    del heads[name]
    if len(heads) == 0:
        model.head = model.base_head[0]
        del model.adapter_heads, model.base_head


def adapter_names(model: nn.Module) -> list[str]:
    return list(_configs(model))


def adapter_config(model: nn.Module, name: str) -> AdapterConfig:
    check_adapter_name(model, name)
    return _configs(model)[name]


def check_adapter_name(model: nn.Module, name: str) -> None:
    if name not in adapter_names(model):
        raise KeyError(f"No adapter called {name!r}. Available adapters: {adapter_names(model) or 'none yet'} "
                       "(add_adapter or load_adapter it first).")


def set_active(model: nn.Module, name: str | None) -> None:
    """Run adapter ``name`` (and use its head); ``None`` switches adapters off."""
    if name is not None:
        check_adapter_name(model, name)
    for point in adapter_layers(model).values():
        point.active_fusion = None
        point.active = name if (name is None or name in point.adapters) else None
    if name is not None and hasattr(model, "adapter_heads") and name in model.adapter_heads:
        model.head = model.adapter_heads[name]


def active_adapter(model: nn.Module) -> str | None:
    actives = {point.active for point in adapter_layers(model).values() if point.active is not None}
    return next(iter(actives), None)


def train_adapter(model: nn.Module, name: str) -> list[str]:
    """Activate ``name`` and make only it (and its head) trainable; returns the trainable names."""
    set_active(model, name)
    return train_only(model, [p.adapters[name] for p in adapter_layers(model).values() if name in p.adapters])


def remove_adapter(model: nn.Module, name: str) -> None:
    """Delete adapter ``name`` (and its head); points left empty get their original module back."""
    check_adapter_name(model, name)
    users = [f for p in adapter_layers(model).values() for f in p.fusions.values() if name in f.adapter_names]
    if users:
        raise ValueError(f"Adapter {name!r} is part of a fusion; remove_fusion(model, ...) that fusion first.")
    for point_name, point in adapter_layers(model).items():
        if name in point.adapters:
            del point.adapters[name]
        if point.active == name:
            point.active = None
        if point.is_empty():
            replace_module(model, point_name, point.original())
    del _configs(model)[name]
    remove_head(model, name)


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Only adapter ``name``'s tensors, by their names in the model (its head excluded)."""
    check_adapter_name(model, name)
    state = {}
    for point_name, point in adapter_layers(model).items():
        if name in point.adapters:
            for key, value in point.adapters[name].state_dict().items():
                state[f"{point_name}.adapters.{name}.{key}"] = value.detach().cpu().clone()
    return state


def adapter_parameters(model: nn.Module, name: str) -> int:
    """Measured: parameters of adapter ``name`` in all layers (its head excluded)."""
    return sum(v.numel() for v in adapter_state_dict(model, name).values())


def adapter_parameter_count(model: nn.Module, config: AdapterConfig | None = None) -> int:
    """Formula: (adapters per layer) x L x (2md + m + d)."""
    config = config or AdapterConfig()
    backbone = get_backbone(model)
    d, layers = backbone.config.hidden_size, backbone.config.num_hidden_layers
    per_layer = 2 if config.placement == "houlsby" else 1
    return per_layer * layers * bottleneck_parameter_count(d, config.bottleneck(d))


# ---------------------------------------------------------------- save / load

def save_adapter(model: nn.Module, name: str, folder: str | Path, overwrite: bool = False) -> Path:
    """Write adapter ``name`` and its head to ``folder`` (see peft_teach.methods.checkpoint)."""
    tensors = adapter_state_dict(model, name)  # fails clearly on an unknown name
    heads = getattr(model, "adapter_heads", None)
    head = heads[name] if heads is not None and name in heads else None
    config = {"name": name, **asdict(_configs(model)[name])}
    return save_checkpoint(folder, "adapter", config, tensors, model, head, overwrite)


def load_adapter(model: nn.Module, folder: str | Path, name: str | None = None) -> dict[str, BottleneckAdapter]:
    """Add the adapter saved in ``folder`` (as ``name``, default its saved name), activated, trainable."""
    config, tensors = read_checkpoint(folder, "adapter", model)
    saved_name = config.pop("name")
    name = name or saved_name
    own, head = split_head(tensors)
    num_labels = head["weight"].shape[0] if head else None
    added = add_adapter(model, name, AdapterConfig(**config), num_labels=num_labels)
    for module_name, adapter in added.items():
        point_name = module_name.removeprefix("backbone.").rsplit(".adapters.", 1)[0]
        prefix = f"{point_name}.adapters.{saved_name}."
        load_into(adapter, {k[len(prefix):]: v for k, v in own.items() if k.startswith(prefix)}, f"adapter {name!r}")
    load_head(model, head)  # the new adapter's head is the active one
    return added
