"""Prefix tuning (deep prompts), from scratch.

Prefix tuning (Li & Liang, ACL 2021) freezes the whole model and learns, for every
layer, ``l`` extra **key** and **value** vectors that every token can attend to.
P-Tuning v2 (Liu et al., ACL 2022) calls the same idea "deep prompt tuning" and shows
it works for understanding tasks (classification) as well as generation.

In one attention head of one layer, with queries Q, keys K and values V of the T real
tokens and the learned prefix P_k, P_v (l rows each)::

    head = softmax( Q [P_k; K]^T / sqrt(d_head) + mask ) [P_v; V]

Nothing else changes: the real tokens keep their positions 0..T-1, and the prefix is
not a token, so it has no position and no query (it is never updated by attention).
Trainable parameters: ``2 * L * l * d`` (L layers, hidden size d), e.g. 46,080 on
all-MiniLM-L6-v2 with l = 10. For grouped-query attention (Llama, Qwen) there is one
prefix per *key/value head*, so the count is ``2 * L * l * n_kv_heads * d_head``.

Reparameterization (Li & Liang, Sec. 4.3): optimising P directly was unstable for
them, so they train ``P = MLP(P')`` with a small P' and a two-layer MLP, then keep only
P. :meth:`PrefixEncoder.fold` does that last step: it computes P once, stores it as a
plain parameter and deletes the MLP; outputs are unchanged.

How it plugs into ``transformers`` 5.x
--------------------------------------
Every attention module asks ``ALL_ATTENTION_FUNCTIONS`` for the function named in
``config._attn_implementation``. We register our own function under
:data:`ATTENTION_NAME`; it prepends the layer's prefix to the keys and values, widens
the mask by ``l`` always-visible columns and then calls the model's *own* eager
attention, so the attention arithmetic is exactly the model's. The model builds its
padding/causal mask with the mask function registered under the same name; if we did
not register one, ``transformers`` would build **no mask at all** for an unknown
implementation and padding would silently leak into attention.

Generation needs nothing more: with the key/value cache, each decoding step's
attention call gets the cached keys and values of the real tokens, and the prefix is
prepended to them again (it is never written into the cache). As the prefix takes no
position, the input's positions and the model's position limit are those of the base
model (peft, which puts the prefix into the cache instead, moves the real tokens to
positions l, l+1, ...: see tests/test_prefix_parity.py).

Unified view (He et al., ICLR 2022): splitting the softmax over [prefix; tokens] gives
``head = (1 - lambda(x)) Attn(x) + lambda(x) softmax(x W_q P_k^T) P_v``, where
``lambda(x)`` is the attention mass the query puts on the prefix. Prefix tuning is a
parallel adapter whose gate is that mass; :func:`record_prefix_attention` measures it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from peft_teach.methods.architectures import attention_shape, layout_of
from peft_teach.methods.checkpoint import load_one_module, save_checkpoint
from peft_teach.methods.inject import find_modules, train_only
from peft_teach.models import get_backbone, seeded_generator

ATTENTION_NAME = "peft_teach_prefix"


# --------------------------------------------------------------------------- shapes
def prefix_parameter_count(model: nn.Module, length: int) -> int:
    """Formula: 2 * L * l * (kv_heads * head_dim); equals 2 * L * l * d without grouped-query attention."""
    layers, _, kv_heads, head_dim = attention_shape(get_backbone(model).config)
    return 2 * layers * length * kv_heads * head_dim


def _check_length(length: int) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        raise ValueError(f"The prefix length must be a positive integer, got {length!r} (try 10).")


def attention_modules(backbone: nn.Module, method: str = "Prefix methods") -> dict[str, nn.Module]:
    """The self-attention module of every layer, in layer order.

    Unknown architectures fail with the list of supported model types: the prefix
    has to reach *every* layer, so guessing module names would be dangerous.
    """
    modules = find_modules(backbone, layout_of(backbone, method).self_attention)
    expected = backbone.config.num_hidden_layers
    if len(modules) != expected:
        raise ValueError(f"Found {len(modules)} attention modules, expected one per layer ({expected}).")
    # Each module must know its layer number to fetch its own prefix. BERT, GPT-2 and
    # Llama in transformers 5.x set ``layer_idx``; fill it in where a model does not.
    for index, module in enumerate(modules.values()):
        if getattr(module, "layer_idx", None) is None:
            module.layer_idx = index
    return modules


# ------------------------------------------------------------- attention function
def model_eager_attention(module: nn.Module) -> Callable:
    """The model's own ``eager_attention_forward`` (it lives in the modeling file).

    Calling it, rather than our own copy, keeps each architecture's details
    (grouped-query key repetition, scaling, dtype casts) exactly as transformers has them.
    """
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise TypeError(f"{type(module).__name__} has no eager attention function to build on.")
    return function


def extend_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Add ``length`` always-visible columns in front of an additive (B, 1, T, S) mask.

    The prefix is visible to every query: real tokens, padding queries, and (in a
    decoder) even the first token, since the prefix comes "before" everything.
    """
    if mask is None:  # no padding and no causality: nothing to extend
        return None
    visible = torch.zeros(*mask.shape[:-1], length, dtype=mask.dtype, device=mask.device)
    return torch.cat([visible, mask], dim=-1)


# Set by record_prefix_attention(): layer index -> (B, heads, T) prefix attention mass.
_RECORDING: dict[int, torch.Tensor] | None = None


def prefix_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention with the layer's prefix prepended to keys and values."""
    source = getattr(module, "prefix_source", None)
    if source is None:  # a model without a prefix: plain eager attention
        return model_eager_attention(module)(module, query, key, value, attention_mask, **kwargs)
    prefix_key, prefix_value = source(module.layer_idx)  # each (kv_heads, l, head_dim)
    batch = key.shape[0]
    prefix_key = prefix_key.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    prefix_value = prefix_value.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    key = torch.cat([prefix_key, key], dim=2)  # (B, kv_heads, l + T, head_dim)
    value = torch.cat([prefix_value, value], dim=2)
    mask = extend_mask(attention_mask, prefix_key.shape[2])
    output, weights = model_eager_attention(module)(module, query, key, value, mask, **kwargs)
    if _RECORDING is not None:
        _RECORDING[module.layer_idx] = weights[..., : prefix_key.shape[2]].sum(-1).detach()
    return output, weights


def register_prefix_attention() -> None:
    """Make :data:`ATTENTION_NAME` known to transformers (safe to call repeatedly).

    The mask function is the stock eager one: it builds the usual (B, 1, T, T)
    padding/causal mask, which :func:`prefix_attention` then widens.
    """
    AttentionInterface.register(ATTENTION_NAME, prefix_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def use_attention(backbone: nn.Module, name: str) -> None:
    """Switch a transformers model (and its sub-models) to attention function ``name``."""
    backbone.set_attn_implementation(name)


# ------------------------------------------------------------------ the parameters
class PrefixEncoder(nn.Module):
    """The learned prefixes of all layers.

    Stored as ``prefix`` with shape (L, 2, l, kv_heads * head_dim): for each layer a
    block of l keys and a block of l values. With ``reparameterize=True`` it holds
    instead a small table P' (l, d) and an MLP d -> hidden -> 2 L d (tanh), as in
    Li & Liang; :meth:`fold` turns that into the plain table.
    """

    def __init__(self, config, length: int, reparameterize: bool = False, mlp_hidden: int = 256,
                 init_std: float = 0.5, seed: int = 0):
        super().__init__()
        _check_length(length)
        self.layers, _, self.kv_heads, self.head_dim = attention_shape(config)
        self.length, self.mlp_hidden = length, mlp_hidden
        width = self.kv_heads * self.head_dim
        generator = seeded_generator(seed)
        if reparameterize:
            self.seed_table = nn.Parameter(torch.randn(length, config.hidden_size, generator=generator))
            self.mlp = nn.Sequential(nn.Linear(config.hidden_size, mlp_hidden), nn.Tanh(),
                                     nn.Linear(mlp_hidden, self.layers * 2 * width))
            _seeded_reset(self.mlp, generator)
            self.prefix = None
        else:
            # Small random keys/values: a prefix that starts near "no effect" (its keys
            # get moderate attention, its values add little) and learns from there.
            self.prefix = nn.Parameter(init_std * torch.randn(self.layers, 2, length, width, generator=generator))

    @property
    def reparameterized(self) -> bool:
        return self.prefix is None

    def full_prefix(self) -> torch.Tensor:
        """All prefixes as one (L, 2, l, width) tensor (through the MLP if not folded)."""
        if self.prefix is not None:
            return self.prefix
        flat = self.mlp(self.seed_table)  # (l, L * 2 * width)
        return flat.view(self.length, self.layers, 2, -1).permute(1, 2, 0, 3)

    def layer_key_value(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's prefix keys and values, each (kv_heads, l, head_dim)."""
        block = self.full_prefix()[layer]  # (2, l, width)
        block = block.view(2, self.length, self.kv_heads, self.head_dim).transpose(1, 2)
        return block[0], block[1]

    @torch.no_grad()
    def fold(self) -> None:
        """Replace P' and the MLP by the prefix they produce (done once, after training)."""
        if self.prefix is not None:
            return
        folded = self.full_prefix().detach().clone()
        del self.mlp, self.seed_table
        self.prefix = nn.Parameter(folded)


def _seeded_reset(mlp: nn.Sequential, generator: torch.Generator) -> None:
    """PyTorch's default Linear init, but drawn from our generator (reproducible)."""
    with torch.no_grad():
        for layer in mlp:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / layer.in_features**0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)


# ------------------------------------------------------------------ the verbs
def add_prefix(model: nn.Module, length: int = 10, reparameterize: bool = False, mlp_hidden: int = 256,
               init_std: float = 0.5, seed: int = 0) -> dict[str, PrefixEncoder]:
    """Add prefix tuning to ``model`` (a classifier or a bare backbone), in place.

    1. ``model.prefix = PrefixEncoder(...)`` (the only new parameters);
    2. every self-attention module gets ``prefix_source``, a function returning its
       layer's prefix (a plain attribute: the parameters live once, in ``model.prefix``);
    3. the backbone switches to our attention function;
    4. only the prefix (and the classifier head) train.
    Returns ``{"prefix": the PrefixEncoder}``.
    """
    _check_length(length)
    backbone = get_backbone(model)
    attention_modules(backbone)  # fails early for unknown architectures
    if hasattr(model, "prefix"):
        raise ValueError("This model already has a prefix; remove_prefix(model) first.")
    register_prefix_attention()
    prefix = PrefixEncoder(backbone.config, length, reparameterize, mlp_hidden, init_std, seed)
    attach_to_attention(model, "prefix", prefix, "prefix_source", prefix.layer_key_value, ATTENTION_NAME)
    return {"prefix": prefix}


def attach_to_attention(model: nn.Module, attribute: str, new: nn.Module, source: str, read: Callable,
                        attention: str) -> None:
    """Shared by add_prefix and add_prefix_plus: ``model.<attribute> = new``; every attention module
    gets ``<source> = read`` (a bound method, so the parameters live once, on the model); the backbone
    switches to attention function ``attention``; only ``new`` (and the head) train."""
    backbone = get_backbone(model)
    new.previous_attention = backbone.config._attn_implementation  # restore_attention puts it back
    setattr(model, attribute, new.to(next(backbone.parameters()).device))
    for module in attention_modules(backbone).values():
        setattr(module, source, read)
    use_attention(backbone, attention)
    train_only(model, [new])


def remove_prefix(model: nn.Module) -> None:
    """Take the prefix away and restore the model's attention: the base model again."""
    restore_attention(model, "prefix_source", _prefix_of(model).previous_attention)
    del model.prefix


def restore_attention(model: nn.Module, source: str, previous: str) -> None:
    """Undo what add_prefix / add_prefix_plus did to the attention modules (shared by both)."""
    backbone = get_backbone(model)
    for module in attention_modules(backbone).values():
        delattr(module, source)
    use_attention(backbone, previous)


def _prefix_of(model: nn.Module) -> PrefixEncoder:
    if not isinstance(getattr(model, "prefix", None), PrefixEncoder):
        raise ValueError("This model has no prefix; add_prefix(model, ...) or load_prefix(model, folder) first.")
    return model.prefix


def prefix_parameters(model: nn.Module) -> int:
    """Measured: the prefix's parameters (P, or P' and the MLP before folding)."""
    return sum(p.numel() for p in _prefix_of(model).parameters())


def save_prefix(model: nn.Module, folder: str | Path, overwrite: bool = False) -> Path:
    """Write the prefix (folded or not) and the head to ``folder``."""
    prefix = _prefix_of(model)
    config = {"length": prefix.length, "reparameterize": prefix.reparameterized, "mlp_hidden": prefix.mlp_hidden}
    tensors = {f"prefix.{key}": value for key, value in prefix.state_dict().items()}
    return save_checkpoint(folder, "prefix", config, tensors, model, getattr(model, "head", None), overwrite)


def load_prefix(model: nn.Module, folder: str | Path) -> dict[str, PrefixEncoder]:
    """Add the prefix saved in ``folder`` (and load its head into ``model.head``)."""
    return load_one_module(model, folder, "prefix", lambda config: add_prefix(model, **config))


@contextmanager
def record_prefix_attention() -> Iterator[dict[int, torch.Tensor]]:
    """Inside this block, every prefix-attention call stores the mass on the prefix.

    Yields a dict ``layer -> (B, heads, T)``: for each query token, the share of its
    attention (a probability, 0..1) that went to the l prefix positions.
    """
    global _RECORDING
    _RECORDING = {}
    try:
        yield _RECORDING
    finally:
        _RECORDING = None


def prefix_share_per_layer(shares: dict[int, torch.Tensor], attention_mask: torch.Tensor) -> list[float]:
    """Average prefix share per layer over heads and *real* query tokens only."""
    weights = attention_mask.float()  # (B, T): padding queries do not count
    result = []
    for layer in sorted(shares):
        per_token = shares[layer].float().mean(dim=1)  # average over heads -> (B, T)
        result.append(((per_token * weights).sum() / weights.sum()).item())
    return result
