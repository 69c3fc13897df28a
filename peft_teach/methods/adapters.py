"""Bottleneck adapters, built from scratch (lesson 01).

An adapter is a tiny two-layer network with its own skip connection, inserted
into every transformer layer of a frozen model (Houlsby et al., ICML 2019):

    A(h) = h + s * W_up f(W_down h + b_down) + s * b_up

with W_down: d -> m (m << d), a non-linearity f (ReLU here, as AdapterHub's
``seq_bn``), W_up: m -> d and a scale s (1 by default). Parameters per adapter:
d*m + m (down) + m*d + d (up) = 2md + m + d. With W_up = 0 the adapter is the
identity, so the adapted model starts *exactly* where the pre-trained one is.

Where the adapter goes. Both placements wrap a BERT sub-layer output, which
normally computes y = LN(h + r) with h = dropout(dense(x)) the sub-layer's
output and r the residual stream. The adapter's change is added *before* that
residual + LayerNorm:

* ``"houlsby"`` (Houlsby et al. 2019): two adapters per layer, after the
  attention output projection and after the FFN:   y = LN(h + delta(h) + r).
* ``"pfeiffer"`` (Pfeiffer et al., EACL 2021, the AdapterFusion paper): one
  adapter per layer, after the FFN. The adapter *reads* the normalised output
  t = LN(h + r) but its change is still added before the Add & Norm:
  y = LN(h + delta(t) + r). This is exactly AdapterHub's ``seq_bn``
  (original_ln_before=True, residual_before_ln=True, original_ln_after=True),
  checked to 1e-5 by tests/adapterhub.

The model keeps several named adapters side by side; ``set_active`` picks one
(and its classifier head), ``train_adapter`` freezes everything else.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from peft_teach.methods.inject import find_modules, freeze, replace_module
from peft_teach.models import base_model_fingerprint

PLACEMENTS = {
    # placement -> which sub-layer outputs get an adapter (BERT/RoBERTa names)
    "pfeiffer": ("output",),                     # encoder.layer.N.output (after FFN)
    "houlsby": ("attention.output", "output"),   # + encoder.layer.N.attention.output
}
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
            raise ValueError(f"Unknown placement {self.placement!r}; choose one of {sorted(PLACEMENTS)}.")
        if self.non_linearity not in ACTIVATIONS:
            raise ValueError(f"Unknown non_linearity {self.non_linearity!r}; choose one of {sorted(ACTIVATIONS)}.")
        if self.reduction_factor <= 0:
            raise ValueError(f"reduction_factor must be > 0, got {self.reduction_factor}.")

    def bottleneck(self, hidden_size: int) -> int:
        return max(1, int(hidden_size // self.reduction_factor))


class BottleneckAdapter(nn.Module):
    """h -> h + s * up(f(down(h))): down-projection, non-linearity, up-projection, skip."""

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
        gets gradients (through f(W_down h) != 0), so training can move it.
        """
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.down.weight.normal_(0.0, 0.02, generator=generator)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def delta(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the adapter adds to ``hidden`` (fusion mixes these)."""
        return self.scaling * self.up(self.act(self.down(hidden)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.delta(hidden)


def adapter_parameter_count(hidden_size: int, bottleneck: int) -> int:
    """2md + m + d: two weight matrices plus the two bias vectors."""
    return 2 * hidden_size * bottleneck + bottleneck + hidden_size


class AdapterSubLayer(nn.Module):
    """Replaces a BERT ``*Output`` module: dense -> dropout -> [adapters] -> Add & Norm.

    It keeps the original ``dense``, ``dropout`` and ``LayerNorm`` under their
    original names, so the base model's parameter names do not change.
    ``adapters`` holds every named adapter; ``active`` says which one runs
    (``None``: the plain base model). A fusion layer (lesson 02) can be plugged
    in through ``fusions``/``active_fusion``.
    """

    def __init__(self, original: nn.Module, original_ln_before: bool):
        super().__init__()
        for part in ("dense", "dropout", "LayerNorm"):
            if not hasattr(original, part):
                raise TypeError(f"{type(original).__name__} has no {part!r}: adapters here need a BERT-style "
                                "sub-layer output (dense, dropout, LayerNorm), e.g. BERT or RoBERTa.")
        self.dense, self.dropout, self.LayerNorm = original.dense, original.dropout, original.LayerNorm
        self.original_ln_before = original_ln_before   # True for Pfeiffer (AdapterHub seq_bn)
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.fusions = nn.ModuleDict()                  # filled by peft_teach.methods.fusion
        self.active_fusion: str | None = None

    def adapter_input(self, h: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """What the adapters read: LN(h + r) for Pfeiffer, h itself for Houlsby."""
        return self.LayerNorm(h + input_tensor) if self.original_ln_before else h

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.dense(hidden_states))
        if self.active_fusion is not None:
            fusion = self.fusions[self.active_fusion]
            a = self.adapter_input(h, input_tensor)
            deltas = torch.stack([self.adapters[n].delta(a) for n in fusion.adapter_names], dim=-2)
            h = h + fusion(a, deltas)                 # attention-weighted mix of the adapters' changes
        elif self.active is not None:
            h = h + self.adapters[self.active].delta(self.adapter_input(h, input_tensor))
        return self.LayerNorm(h + input_tensor)       # the layer's own residual + LayerNorm


# ---------------------------------------------------------------- model surgery

def _encoder(model: nn.Module) -> nn.Module:
    return model.encoder if hasattr(model, "head") and hasattr(model, "encoder") else model


def adapter_layers(model: nn.Module) -> dict[str, AdapterSubLayer]:
    """Every injected :class:`AdapterSubLayer`, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterSubLayer)}


def _targets(model: nn.Module, placement: str) -> dict[str, nn.Module]:
    encoder = _encoder(model)
    # e.g. "encoder.layer.3.output" but not "encoder.layer.3.attention.output"
    patterns = [r".*layer\.\d+\." + re.escape(suffix) for suffix in PLACEMENTS[placement]]
    found = find_modules(encoder, patterns)
    prefix = "encoder." if encoder is not model else ""
    return {prefix + name: module for name, module in found.items()}


def add_adapter(model: nn.Module, name: str, config: AdapterConfig | None = None,
                num_labels: int | None = None, seed: int = 0) -> None:
    """Insert a new adapter called ``name`` in every target sub-layer and activate it.

    If ``model`` has a classifier ``head`` (a SequenceClassifier), the adapter
    gets its own head with ``num_labels`` outputs (default: the current head's),
    kept in ``model.adapter_heads`` and swapped in by :func:`set_active`.
    """
    config = config or AdapterConfig()
    if name in adapter_names(model):
        raise ValueError(f"An adapter called {name!r} already exists; remove_adapter it first or pick another name.")
    d = _encoder(model).config.hidden_size
    m = config.bottleneck(d)
    for index, (module_name, module) in enumerate(_targets(model, config.placement).items()):
        if not isinstance(module, AdapterSubLayer):
            module = AdapterSubLayer(module, original_ln_before=config.placement == "pfeiffer")
            module.train(model.training)
            replace_module(model, module_name, module)
        elif module.original_ln_before != (config.placement == "pfeiffer"):
            raise ValueError(f"{module_name} already holds adapters with another placement; "
                             "use one placement per model.")
        # each layer's adapter gets its own seed, so layers do not start identical
        adapter = BottleneckAdapter(d, m, config.non_linearity, config.scaling, seed=seed * 1000 + index)
        module.adapters[name] = adapter.to(module.dense.weight.device).train(model.training)
    _configs(model)[name] = config
    if hasattr(model, "head"):
        _add_head(model, name, num_labels or model.head.out_features, seed)
    set_active(model, name)


def _configs(model: nn.Module) -> dict[str, AdapterConfig]:
    if not hasattr(model, "_adapter_configs"):
        model._adapter_configs = {}
    return model._adapter_configs


def _add_head(model: nn.Module, name: str, num_labels: int, seed: int) -> None:
    if not hasattr(model, "adapter_heads"):
        model.adapter_heads = nn.ModuleDict()
    d = model.head.in_features
    head = nn.Linear(d, num_labels)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # same initialisation as peft_teach.models.build_classifier
        head.weight.uniform_(-(d**-0.5), d**-0.5, generator=generator)
        head.bias.zero_()
    model.adapter_heads[name] = head.to(model.head.weight.device)


def adapter_names(model: nn.Module) -> list[str]:
    return list(_configs(model))


def _check_name(model: nn.Module, name: str) -> None:
    if name not in adapter_names(model):
        raise KeyError(f"No adapter called {name!r}. Available adapters: {adapter_names(model) or 'none yet'}.")


def set_active(model: nn.Module, name: str | None) -> None:
    """Run adapter ``name`` (and use its head); ``None`` switches adapters off."""
    if name is not None:
        _check_name(model, name)
    for layer in adapter_layers(model).values():
        layer.active_fusion = None
        layer.active = name if (name is None or name in layer.adapters) else None
    if name is not None and hasattr(model, "adapter_heads") and name in model.adapter_heads:
        model.head = model.adapter_heads[name]


def active_adapter(model: nn.Module) -> str | None:
    actives = {layer.active for layer in adapter_layers(model).values() if layer.active is not None}
    return next(iter(actives), None)


def train_adapter(model: nn.Module, name: str) -> list[str]:
    """Activate ``name``, freeze everything, unfreeze that adapter and its head.

    Returns the names of the trainable parameters (check them!).
    """
    set_active(model, name)
    freeze(model)
    for layer in adapter_layers(model).values():
        if name in layer.adapters:
            layer.adapters[name].requires_grad_(True)
    if hasattr(model, "head"):
        model.head.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def remove_adapter(model: nn.Module, name: str) -> None:
    _check_name(model, name)
    for layer in adapter_layers(model).values():
        if name in layer.adapters:
            del layer.adapters[name]
        if layer.active == name:
            layer.active = None
    del _configs(model)[name]
    if hasattr(model, "adapter_heads") and name in model.adapter_heads:
        del model.adapter_heads[name]


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Only adapter ``name``'s tensors (plus its head under ``head.*``)."""
    _check_name(model, name)
    state = {}
    for layer_name, layer in adapter_layers(model).items():
        if name in layer.adapters:
            for key, value in layer.adapters[name].state_dict().items():
                state[f"{layer_name}.{key}"] = value.detach().cpu().clone()
    if hasattr(model, "adapter_heads") and name in model.adapter_heads:
        for key, value in model.adapter_heads[name].state_dict().items():
            state[f"head.{key}"] = value.detach().cpu().clone()
    return state


def adapter_parameters(model: nn.Module, name: str) -> int:
    """Parameters of adapter ``name`` in all layers (its head excluded)."""
    return sum(v.numel() for k, v in adapter_state_dict(model, name).items() if not k.startswith("head."))


# ---------------------------------------------------------------- save / load

def save_adapter(model: nn.Module, name: str, folder: str | Path) -> Path:
    """Write ``adapter.safetensors`` (adapter + head) and ``adapter_config.json``.

    The JSON holds the config and the base model's fingerprint, so a later
    :func:`load_adapter` can refuse a base model the adapter was not trained on.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model, name), str(folder / "adapter.safetensors"))
    meta = {"name": name, "config": asdict(_configs(model)[name]),
            "base_model": base_model_fingerprint(_encoder(model))}
    (folder / "adapter_config.json").write_text(json.dumps(meta, indent=2))
    return folder


class IncompatibleBaseModelError(ValueError):
    """An adapter checkpoint was made for another base model."""


def load_adapter(model: nn.Module, folder: str | Path, name: str | None = None) -> str:
    """Add the adapter saved in ``folder`` to ``model`` (as ``name``) and activate it."""
    folder = Path(folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    expected, actual = meta["base_model"], base_model_fingerprint(_encoder(model))
    if expected != actual:
        differences = {k: (expected.get(k), actual.get(k)) for k in expected if expected.get(k) != actual.get(k)}
        raise IncompatibleBaseModelError(
            f"Adapter in {folder} was trained on another base model; differences (saved, this model): "
            f"{differences}. Load it into the base model it was trained with.")
    name = name or meta["name"]
    state = load_file(str(folder / "adapter.safetensors"))
    num_labels = state["head.weight"].shape[0] if "head.weight" in state else None
    add_adapter(model, name, AdapterConfig(**meta["config"]), num_labels=num_labels)
    for layer_name, layer in adapter_layers(model).items():
        if name in layer.adapters:
            prefix = f"{layer_name}."
            layer.adapters[name].load_state_dict(
                {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    if num_labels is not None:
        model.adapter_heads[name].load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
    return name


# ---------------------------------------------------------------- train or load

def _data_fingerprint(data) -> str:
    """sha256 of the training texts and labels: a cached adapter is reused only for the same data."""
    import hashlib

    digest = hashlib.sha256()
    for text, label in zip(data["train"]["text"], data["train"]["label"]):
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def adapter_recipe(data, config: AdapterConfig | None = None, **train_kwargs) -> dict:
    """Everything that decides a trained adapter: config, training settings, data fingerprint."""
    return json.loads(json.dumps({
        "config": asdict(config or AdapterConfig()),
        "train": {k: v for k, v in sorted(train_kwargs.items()) if k != "device"},
        "data": _data_fingerprint(data),
        "num_labels": data["train"].features["label"].num_classes,
    }))


def save_trained_adapter(model: nn.Module, name: str, folder: str | Path, recipe: dict) -> None:
    """save_adapter plus ``recipe.json``, so train_or_load_adapter can reuse it later."""
    save_adapter(model, name, folder)
    (Path(folder) / "recipe.json").write_text(json.dumps(recipe, indent=2))


def train_or_load_adapter(model: nn.Module, tokenizer, data, name: str, folder: str | Path,
                          config: AdapterConfig | None = None, **train_kwargs) -> str:
    """Load adapter ``name`` from ``folder`` if it was trained with these settings, else train and save it.

    Lets a CPU learner (or the next lesson) skip retraining. Training is seeded,
    so loading gives the same adapter as training again would: the recipe is
    ``add_adapter(model, name, config, num_labels, seed)``, ``train_adapter``,
    then ``train(model, tokenizer, data, **train_kwargs)``. Returns ``"loaded"``
    or ``"trained"``.
    """
    from peft_teach.train import train

    folder = Path(folder)
    config = config or AdapterConfig()
    recipe = adapter_recipe(data, config, **train_kwargs)
    recipe_file = folder / "recipe.json"
    if recipe_file.exists() and json.loads(recipe_file.read_text()) == recipe:
        try:
            load_adapter(model, folder, name)
            return "loaded"
        except (OSError, ValueError, KeyError):
            if name in adapter_names(model):
                remove_adapter(model, name)
    add_adapter(model, name, config, num_labels=recipe["num_labels"], seed=train_kwargs.get("seed", 0))
    train_adapter(model, name)
    train(model, tokenizer, data, **train_kwargs)
    save_trained_adapter(model, name, folder, recipe)
    return "trained"
