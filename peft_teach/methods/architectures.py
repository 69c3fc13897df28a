"""Where things live inside each transformer family: the one table every method reads.

Methods name modules by regular expressions over full module names (see
:func:`peft_teach.methods.inject.find_modules`). The table's patterns are relative to
the bare transformer (``AutoModel``: ``layers.0.self_attn``); a model with a task head
around it keeps the transformer under ``base_model_prefix`` (``LlamaForCausalLM``:
``model.layers.0.self_attn``, ``GPT2LMHeadModel``: ``transformer.h.0.attn``), so
:func:`layout_of` prepends that path. Two block layouts exist among the supported families:

* **post-LN** (BERT, RoBERTa): ``y = LayerNorm(h + r)`` closes each sub-layer, inside
  a ``*Output`` module (``dense``, ``dropout``, ``LayerNorm``);
* **pre-LN** (GPT-2, Llama, Mistral, Qwen): ``y = r + h`` with ``h = sublayer(LN(r))``;
  the residual add happens in the block itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from torch import nn


@dataclass(frozen=True)
class Layout:
    """Regular expressions for one family's modules (full names inside the backbone)."""

    norm: str              # "post" or "pre"
    self_attention: str    # the module whose attention function prefix methods replace
    attention_output: str  # post-LN: the *Output after attention; pre-LN: the attention module
    ffn_output: str        # post-LN: the *Output after the FFN;    pre-LN: the MLP module
    block: str             # one transformer layer

    def inside(self, path: str) -> Layout:
        """The same layout for a transformer that sits at ``path`` (``"model."``; ``""``: the backbone itself)."""
        if not path:
            return self
        prefix = re.escape(path)
        return replace(self, **{field: prefix + getattr(self, field)
                                for field in ("self_attention", "attention_output", "ffn_output", "block")})


_BERT = Layout("post", r"encoder\.layer\.\d+\.attention\.self", r"encoder\.layer\.\d+\.attention\.output",
               r"encoder\.layer\.\d+\.output", r"encoder\.layer\.\d+")
_GPT2 = Layout("pre", r"h\.\d+\.attn", r"h\.\d+\.attn", r"h\.\d+\.mlp", r"h\.\d+")
_LLAMA = Layout("pre", r"layers\.\d+\.self_attn", r"layers\.\d+\.self_attn", r"layers\.\d+\.mlp", r"layers\.\d+")

LAYOUTS: dict[str, Layout] = {
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT,
    "gpt2": _GPT2,
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
}


def layout_of(backbone: nn.Module, method: str) -> Layout:
    """The layout of ``backbone``'s family, or an error listing the supported families."""
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        raise ValueError(
            f"{method} does not know where the layers live in model type {model_type!r}. "
            f"Supported model types: {sorted(LAYOUTS)}. Use one of these, or add a Layout for yours "
            "to peft_teach.methods.architectures.LAYOUTS."
        )
    return LAYOUTS[model_type].inside(base_model_path(backbone))


def base_model_path(backbone: nn.Module) -> str:
    """Where the bare transformer sits inside ``backbone``: ``""`` for an ``AutoModel``,
    ``"model."`` in a ``LlamaForCausalLM``, ``"transformer."`` in a ``GPT2LMHeadModel``.

    transformers names that attribute ``base_model_prefix``; a model with a head
    (language-model or classification) keeps its transformer there.
    """
    base = getattr(backbone, "base_model", backbone)
    if base is backbone:
        return ""
    return next(name for name, module in backbone.named_modules() if module is base) + "."


def attention_shape(config) -> tuple[int, int, int, int]:
    """(layers, query heads, key/value heads, head size) of a transformers config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, heads, kv_heads, head_dim


def position_limit(config) -> int | None:
    """How many positions the model can number (``None``: the config declares no limit).

    RoBERTa's position table reserves its first ``pad_token_id + 1`` rows (it counts from there).
    """
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and config.model_type in ("roberta", "xlm-roberta"):
        limit -= config.pad_token_id + 1
    return limit
