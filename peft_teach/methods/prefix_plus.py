"""Prefix-Tuning+ (a memory read outside the softmax), from scratch.

Verbs as for every method: add_prefix_plus, save_prefix_plus / load_prefix_plus,
remove_prefix_plus, prefix_plus_parameter_count (formula), prefix_plus_parameters.

Wang et al. (2025), "Prefix-Tuning+: Modernizing Prefix-Tuning by Decoupling the
Prefix from Attention", arXiv 2506.13674 (the ICLR 2026 version is called
PrefixMemory-Tuning). Their diagnosis: in prefix tuning the prefix shares the softmax
denominator with the input, so (He et al.'s unified view)::

    head_i = (1 - lambda_i) Attn(q_i, K, V) + lambda_i softmax(q_i P_k^T) P_v

and the gate lambda_i (the attention mass on the prefix) depends on the input length
T and the prefix length l: long inputs dilute the prefix, long prefixes swamp the
input. Their fix replaces the prefix term by a kernel-style read that sits **outside**
the softmax and does not depend on any length::

    head_i = Attn(q_i, K, V) + phi(q_i)^T M          phi = elu (gelu also reported)

where M is a learned matrix (think of M = sum_j phi(k_j) v_j^T for a "memory" of
learned key/value pairs, with the normaliser dropped).

Choices the paper leaves open, and ours (tested in tests/test_prefix_plus.py)
---------------------------------------------------------------------------------
* **M per head**: each attention head h of each layer has its own
  M_h (d_head x d_head), read with that head's own query (after RoPE for Llama).
  This mirrors multi-head attention: the read adds to exactly the vector the head
  already produces. For grouped-query models there is one M per *query* head.
* **Before the output projection**: the read is added to the head's output, then the
  frozen W_O mixes heads as usual - so the memory speaks the same "language" as the
  attention output it augments.
* **Zero init**: M = 0, so the model starts *exactly* at the frozen base model (a
  test checks bit-for-bit equality). The gradient of M is phi(q)^T dL/dout, which is
  not zero, so M still learns from step one.
* **phi = elu** by default (values can be negative: elu(x) = x for x > 0,
  exp(x) - 1 otherwise); ``"gelu"`` and ``"elu+1"`` (the positive map of linear
  attention) are selectable.
* No scaling by 1/sqrt(d_head) and no normalisation: the paper drops the normaliser,
  and learning the scale is M's job.

Parameters: L * heads * d_head^2 = L * d * d_head -> 6 * 384 * 32 = 73,728 on
all-MiniLM-L6-v2: the same budget as LoRA r = 8 on query and value (73,728) and as a
prefix of length l = 16 (2 * 6 * 16 * 384 = 73,728). Same budget, three methods.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from peft_teach.methods.architectures import attention_shape
from peft_teach.methods.checkpoint import load_one_module, save_checkpoint
from peft_teach.methods.prefix import (
    attach_to_attention,
    attention_modules,
    model_eager_attention,
    restore_attention,
)
from peft_teach.models import get_backbone

ATTENTION_NAME = "peft_teach_prefix_plus"
FEATURE_MAPS = ("elu", "elu+1", "gelu")


def feature_map(name: str):
    """phi: the function applied to each query before it reads the memory."""
    if name == "elu":
        return nn.functional.elu
    if name == "elu+1":
        return lambda x: nn.functional.elu(x) + 1.0
    if name == "gelu":
        return nn.functional.gelu
    raise ValueError(f"Unknown feature map {name!r}; choose one of {FEATURE_MAPS}.")


def memory_read(query: torch.Tensor, memory: torch.Tensor, phi: str = "elu") -> torch.Tensor:
    """phi(q)^T M for every head and token.

    query: (B, heads, T, d_head); memory: (heads, d_head, d_head) -> (B, heads, T, d_head).
    """
    return torch.einsum("bhtd,hde->bhte", feature_map(phi)(query), memory.to(query.dtype))


class PrefixMemory(nn.Module):
    """The memory matrices of all layers: ``memory`` of shape (L, heads, d_head, d_head)."""

    def __init__(self, config, phi: str = "elu"):
        super().__init__()
        feature_map(phi)  # fail early on an unknown name
        layers, heads, _, head_dim = attention_shape(config)
        self.phi = phi
        # Zero init: the read adds nothing, the model starts exactly at the base model.
        self.memory = nn.Parameter(torch.zeros(layers, heads, head_dim, head_dim))

    def layer_memory(self, layer: int) -> tuple[torch.Tensor, str]:
        """This layer's memory (heads, d_head, d_head) and the feature map's name."""
        return self.memory[layer], self.phi


def prefix_plus_parameter_count(model: nn.Module) -> int:
    """Formula: L * heads * d_head^2 (= L * d * d_head)."""
    layers, heads, _, head_dim = attention_shape(get_backbone(model).config)
    return layers * heads * head_dim * head_dim


def prefix_plus_attention(module, query, key, value, attention_mask, **kwargs):
    """The model's own attention, plus the memory read added to each head's output."""
    output, weights = model_eager_attention(module)(module, query, key, value, attention_mask, **kwargs)
    source = getattr(module, "memory_source", None)
    if source is None:
        return output, weights
    memory, phi = source(module.layer_idx)
    read = memory_read(query, memory, phi)  # (B, heads, T, d_head)
    return output + read.transpose(1, 2), weights  # eager output is (B, T, heads, d_head)


def register_prefix_plus_attention() -> None:
    """Register the attention function and its (stock eager) mask function."""
    AttentionInterface.register(ATTENTION_NAME, prefix_plus_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)


def add_prefix_plus(model: nn.Module, phi: str = "elu", seed: int = 0) -> dict[str, PrefixMemory]:
    """Add Prefix-Tuning+ to ``model`` (a classifier or a bare backbone), in place.

    ``model.prefix_memory`` holds M; each attention module gets ``memory_source``; the
    backbone switches to our attention function; only M (and the head) train.
    ``seed`` is accepted like every ``add_*``'s, but M starts at exactly zero, so it
    draws nothing. Returns ``{"prefix_memory": the PrefixMemory}``.
    """
    backbone = get_backbone(model)
    attention_modules(backbone, "Prefix-Tuning+")  # unknown architectures fail here, clearly
    if hasattr(model, "prefix_memory"):
        raise ValueError("This model already has a prefix memory; remove_prefix_plus(model) first.")
    register_prefix_plus_attention()
    memory = PrefixMemory(backbone.config, phi)
    # memory_source is a bound method (not a module): M is stored once; copy.deepcopy keeps it consistent.
    attach_to_attention(model, "prefix_memory", memory, "memory_source", memory.layer_memory, ATTENTION_NAME)
    return {"prefix_memory": memory}


def remove_prefix_plus(model: nn.Module) -> None:
    """Take the memory away and restore the model's attention: the base model again."""
    restore_attention(model, "memory_source", _memory_of(model).previous_attention)
    del model.prefix_memory


def _memory_of(model: nn.Module) -> PrefixMemory:
    if not isinstance(getattr(model, "prefix_memory", None), PrefixMemory):
        raise ValueError("This model has no Prefix-Tuning+ memory; add_prefix_plus(model) or "
                         "load_prefix_plus(model, folder) first.")
    return model.prefix_memory


def prefix_plus_parameters(model: nn.Module) -> int:
    """Measured: the memory matrices' parameters."""
    return _memory_of(model).memory.numel()


def save_prefix_plus(model: nn.Module, folder: str | Path, overwrite: bool = False) -> Path:
    """Write M and the head to ``folder``."""
    memory = _memory_of(model)
    return save_checkpoint(folder, "prefix_plus", {"phi": memory.phi}, {"prefix_memory.memory": memory.memory},
                           model, getattr(model, "head", None), overwrite)


def load_prefix_plus(model: nn.Module, folder: str | Path) -> dict[str, PrefixMemory]:
    """Add the memory saved in ``folder`` (and load its head into ``model.head``)."""
    return load_one_module(model, folder, "prefix_plus", lambda config: add_prefix_plus(model, phi=config["phi"]))
