"""Soft prompt tuning, from scratch.

Prompt tuning (Lester et al., EMNLP 2021, "The Power of Scale for Parameter-Efficient
Prompt Tuning") freezes the whole model and learns only ``l`` input embeddings P_e
(l x d) that are placed in front of the embedded input X_e (T x d)::

    encoder input = [P_e; X_e]        attention mask = [1 ... 1; mask(X)]

The prompt is a sequence of "virtual tokens": it gets positions 0..l-1 like any token
(so the real tokens move to positions l..l+T-1, exactly as with a text prompt), and
it only influences the real tokens through attention in the first layer onwards.
Trainable parameters: ``l * d`` (3,840 for l = 10 on all-MiniLM-L6-v2, d = 384), plus
the classifier head. Lester et al. found the gap to full fine-tuning closes as the
model grows (T5-XXL, 11B); on small models it stays large - our lesson measures it.

Initialisation (Lester et al., Sec. 3.2): ``"random"`` (small Gaussian), ``"vocab"``
(embeddings of randomly sampled vocabulary tokens) or ``"text"`` (the embeddings of a
given text, e.g. a task description, repeated or cut to length ``l``).

Pooling decision: the classifier averages the **real tokens only**. The prompt's
output positions are dropped before pooling, so the head sees the same positions as
in the baselines and prefix tuning; the prompt acts purely through attention.

How it plugs in: the backbone stays untouched. :func:`add_soft_prompt` registers two
hooks on it: before it runs, put the prompt in front of the embedded input and widen
the mask (:meth:`SoftPrompt.prepend`); after it runs, drop the prompt's positions
from ``last_hidden_state`` - or, for a causal language model, from ``logits``
(:meth:`SoftPrompt.drop`). :func:`remove_soft_prompt` takes both hooks away. The other
verbs: ``save_soft_prompt`` / ``load_soft_prompt``, :func:`soft_prompt_parameter_count`
(formula) and :func:`soft_prompt_parameters`.

Generation (``model.generate`` with the key/value cache): the prompt is prepended only
on the first forward of a sequence, when the cache is still empty; the cache then holds
the prompt's keys and values, so each later step feeds one new token and the hook only
widens the attention mask by l ones and moves the given ``position_ids`` by l (the real
tokens sit at positions l, l+1, ..., after the prompt's 0..l-1). ``generate`` counts
positions from its own mask, which skips left padding; a full forward without
``position_ids`` numbers every column, padding included, as peft does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from peft_teach.methods.architectures import position_limit
from peft_teach.methods.checkpoint import load_one_module, save_checkpoint
from peft_teach.methods.inject import train_only
from peft_teach.models import get_backbone, seeded_generator

PROMPT_INITS = ("random", "vocab", "text")


def prepend_prompt(prompt: torch.Tensor, embeds: torch.Tensor, attention_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """[P_e; X_e] and the mask widened by l ones (every token may see the prompt)."""
    batch = embeds.shape[0]
    prompt = prompt.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
    ones = torch.ones(batch, prompt.shape[1], dtype=attention_mask.dtype, device=attention_mask.device)
    return torch.cat([prompt, embeds], dim=1), torch.cat([ones, attention_mask], dim=1)


class SoftPrompt(nn.Module):
    """``l`` learned vectors of the model's embedding size, and the two backbone hooks."""

    def __init__(self, embeddings: torch.Tensor, init: str = "random"):
        super().__init__()
        self.weight = nn.Parameter(embeddings.detach().clone())
        self.init = init
        self.hooks: list = []  # handles of the backbone hooks, for remove_soft_prompt
        self.real_length: int | None = None  # set by prepend for drop: real tokens of a call that got the prompt

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    def prepend(self, backbone: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook: put the prompt in front of the input, or (decoding) account for it being cached."""
        kwargs = dict(kwargs)
        if args:  # model(input_ids) called positionally
            kwargs["input_ids"] = args[0]
        cache = kwargs.get("past_key_values")
        cached = cache.get_seq_length() if cache is not None else 0
        if cached == 0:
            self._prepend_to_input(backbone, kwargs)
        else:
            self._follow_cached_prompt(kwargs)
        check_positions(backbone.config, kwargs, cached, self.length)
        return (), kwargs

    def _prepend_to_input(self, backbone: nn.Module, kwargs: dict) -> None:
        """First forward of a sequence: [P_e; X_e], and every per-token input widened by l in front."""
        input_ids = kwargs.pop("input_ids", None)
        embeds = kwargs.pop("inputs_embeds", None)
        if embeds is None:
            embeds = backbone.get_input_embeddings()(input_ids)
        self.real_length = embeds.shape[1]
        batch, length, device = embeds.shape[0], self.length, embeds.device
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
        kwargs["inputs_embeds"], kwargs["attention_mask"] = prepend_prompt(self.weight, embeds, mask)
        types = kwargs.get("token_type_ids")
        if types is not None:  # BERT tokenizers return these: the prompt is segment 0
            kwargs["token_type_ids"] = torch.cat([torch.zeros_like(types[:, :1]).expand(-1, length), types], 1)
        positions = kwargs.get("position_ids")
        if positions is not None:  # the prompt takes 0..l-1, the real tokens move up by l
            prompt_positions = torch.arange(length, dtype=positions.dtype, device=device).expand(batch, -1)
            kwargs["position_ids"] = torch.cat([prompt_positions, positions + length], dim=1)
        labels = kwargs.get("labels")
        if labels is not None:  # a causal LM's loss: nothing to predict at the prompt's positions
            ignore = torch.full((batch, length), -100, dtype=labels.dtype, device=labels.device)
            kwargs["labels"] = torch.cat([ignore, labels], dim=1)

    def _follow_cached_prompt(self, kwargs: dict) -> None:
        """A decoding step: the cache already holds the prompt, so the new tokens only need
        a mask that covers it (l more columns in front) and positions that count it."""
        self.real_length = None
        mask = kwargs.get("attention_mask")
        if mask is not None:
            ones = torch.ones(mask.shape[0], self.length, dtype=mask.dtype, device=mask.device)
            kwargs["attention_mask"] = torch.cat([ones, mask], dim=1)
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = kwargs["position_ids"] + self.length

    def drop(self, backbone: nn.Module, args: tuple, kwargs: dict, output):
        """Forward hook: keep the real tokens' states (the classifier pools those) or logits (a language model's)."""
        if self.real_length is None:  # a decoding step: no prompt positions in this output
            return output
        for field in ("last_hidden_state", "logits"):
            value = getattr(output, field, None)
            if value is not None:  # (logits_to_keep may already have cut the prompt away: then -T: keeps all)
                setattr(output, field, value[:, -self.real_length:])
        self.real_length = None
        return output


def check_positions(config, kwargs: dict, cached: int, length: int) -> None:
    """The prompt uses l positions: fail clearly, with the fix, when input + prompt do not fit the model.

    Without this check a BERT or GPT-2 would fail deep inside its position embedding with an
    index error; a Llama would run on positions it was never trained on.
    """
    limit = position_limit(config)
    if limit is None:
        return
    positions = kwargs.get("position_ids")
    if positions is not None:
        needed = int(positions.max()) + 1
    else:
        embeds = kwargs.get("inputs_embeds")
        needed = cached + (embeds if embeds is not None else kwargs["input_ids"]).shape[1]
    if needed > limit:
        raise ValueError(
            f"Input and soft prompt need {needed} positions (the prompt takes the first {length}), but this model "
            f"has {limit} (config.max_position_embeddings). "
            "Shorten the input (tokenizer(..., truncation=True, max_length=...)), generate fewer tokens "
            "(max_new_tokens=...), or use a shorter prompt (add_soft_prompt(model, length=...)).")


def initial_prompt(backbone: nn.Module, length: int, init: str = "random", text: str | None = None,
                   tokenizer=None, seed: int = 0, std: float = 0.02) -> torch.Tensor:
    """The starting value of the prompt (l, d) for one of :data:`PROMPT_INITS`."""
    if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        raise ValueError(f"The prompt length must be a positive integer, got {length!r} (try 10).")
    table = backbone.get_input_embeddings().weight.detach()
    generator = seeded_generator(seed)
    if init == "random":
        return std * torch.randn(length, table.shape[1], generator=generator)
    if init == "vocab":  # real word embeddings: the prompt starts "in distribution"
        ids = torch.randint(0, table.shape[0], (length,), generator=generator)
        return table[ids].clone()
    if init == "text":
        if text is None or tokenizer is None:
            raise ValueError("init='text' needs text='...' and tokenizer=... (the model's tokenizer).")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"The text {text!r} has no tokens; give a task description such as "
                             "'Is this review positive or negative?'.")
        ids = (ids * (length // len(ids) + 1))[:length]  # repeat or cut to length l
        return table[torch.tensor(ids)].clone()
    raise ValueError(f"Unknown prompt init {init!r}; choose one of {PROMPT_INITS}.")


def add_soft_prompt(model: nn.Module, length: int = 10, init: str = "random", text: str | None = None,
                    tokenizer=None, seed: int = 0) -> dict[str, SoftPrompt]:
    """Add prompt tuning to ``model`` (a classifier or a bare backbone), in place.

    ``model.soft_prompt`` holds the prompt; the backbone gets the two hooks; only the
    prompt (and the head) train. Returns ``{"soft_prompt": the prompt}``.
    """
    if hasattr(model, "soft_prompt"):
        raise ValueError("This model already has a soft prompt; remove_soft_prompt(model) first.")
    backbone = get_backbone(model)
    prompt = SoftPrompt(initial_prompt(backbone, length, init, text, tokenizer, seed), init)
    model.soft_prompt = prompt.to(next(backbone.parameters()).device)
    prompt.hooks = [backbone.register_forward_pre_hook(prompt.prepend, with_kwargs=True),
                    backbone.register_forward_hook(prompt.drop, with_kwargs=True)]
    train_only(model, [prompt])
    return {"soft_prompt": prompt}


def remove_soft_prompt(model: nn.Module) -> None:
    """Take the prompt and its hooks away: the model is the base model again."""
    prompt = _prompt_of(model)
    for hook in prompt.hooks:
        hook.remove()
    del model.soft_prompt


def _prompt_of(model: nn.Module) -> SoftPrompt:
    if not isinstance(getattr(model, "soft_prompt", None), SoftPrompt):
        raise ValueError("This model has no soft prompt; add_soft_prompt(model, ...) or load_soft_prompt(model, folder).")
    return model.soft_prompt


def soft_prompt_parameters(model: nn.Module) -> int:
    """Measured: the prompt's parameters (the head excluded)."""
    return _prompt_of(model).weight.numel()


def soft_prompt_parameter_count(model: nn.Module, length: int) -> int:
    """Formula: l * d."""
    return length * get_backbone(model).config.hidden_size


def save_soft_prompt(model: nn.Module, folder: str | Path, overwrite: bool = False) -> Path:
    """Write the prompt and the head to ``folder``."""
    prompt = _prompt_of(model)
    config = {"length": prompt.length, "init": prompt.init}
    return save_checkpoint(folder, "soft_prompt", config, {"soft_prompt.weight": prompt.weight}, model,
                           getattr(model, "head", None), overwrite)


def load_soft_prompt(model: nn.Module, folder: str | Path) -> dict[str, SoftPrompt]:
    """Add the prompt saved in ``folder`` (and load its head into ``model.head``)."""
    return load_one_module(model, folder, "soft_prompt", lambda config: add_soft_prompt(model, config["length"]))
