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
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from peft_teach.methods.inject import freeze

PROMPT_INITS = ("random", "vocab", "text")


class SoftPrompt(nn.Module):
    """``l`` learned vectors of the model's embedding size."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(embeddings.detach().clone())

    @property
    def length(self) -> int:
        return self.weight.shape[0]

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)  # (B, l, d)


def prepend_prompt(prompt: torch.Tensor, embeds: torch.Tensor, attention_mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """[P_e; X_e] and the mask widened by l ones (every token may see the prompt)."""
    batch = embeds.shape[0]
    prompt = prompt.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
    ones = torch.ones(batch, prompt.shape[1], dtype=attention_mask.dtype, device=attention_mask.device)
    return torch.cat([prompt, embeds], dim=1), torch.cat([ones, attention_mask], dim=1)


class PromptedEncoder(nn.Module):
    """Wraps a transformers model: prepends the soft prompt, returns real-token states only."""

    def __init__(self, encoder: nn.Module, prompt: SoftPrompt):
        super().__init__()
        self.model = encoder
        self.soft_prompt = prompt

    @property
    def config(self):  # so code that reads ``model.encoder.config`` keeps working
        return self.model.config

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs) -> BaseModelOutput:
        if inputs_embeds is None:
            inputs_embeds = self.model.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        embeds, mask = prepend_prompt(self.soft_prompt.weight, inputs_embeds, attention_mask)
        if kwargs.get("token_type_ids") is not None:  # BERT tokenizers return these: the prompt is segment 0
            types = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([torch.zeros_like(types[:, :1]).expand(-1, self.soft_prompt.length),
                                                  types], dim=1)
        hidden = self.model(inputs_embeds=embeds, attention_mask=mask, **kwargs).last_hidden_state
        # Drop the l prompt positions: the classifier pools over real tokens only.
        return BaseModelOutput(last_hidden_state=hidden[:, self.soft_prompt.length:])


def initial_prompt(encoder: nn.Module, length: int, init: str = "random", text: str | None = None,
                   tokenizer=None, seed: int = 0, std: float = 0.02) -> torch.Tensor:
    """The starting value of the prompt (l, d) for one of :data:`PROMPT_INITS`."""
    if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        raise ValueError(f"The prompt length must be a positive integer, got {length!r} (try 10).")
    table = encoder.get_input_embeddings().weight.detach()
    generator = torch.Generator().manual_seed(seed)
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
            raise ValueError(f"The text {text!r} has no tokens.")
        ids = (ids * (length // len(ids) + 1))[:length]  # repeat or cut to length l
        return table[torch.tensor(ids)].clone()
    raise ValueError(f"Unknown prompt init {init!r}; choose one of {PROMPT_INITS}.")


def add_soft_prompt(model: nn.Module, length: int = 10, init: str = "random", text: str | None = None,
                    tokenizer=None, seed: int = 0, train_head: bool = True) -> SoftPrompt:
    """Add prompt tuning to a :class:`~peft_teach.models.SequenceClassifier` (in place).

    ``model.encoder`` becomes a :class:`PromptedEncoder`; everything is frozen except
    the prompt (``encoder.soft_prompt.weight``) and the head.
    """
    start = initial_prompt(model.encoder, length, init, text, tokenizer, seed)
    prompt = SoftPrompt(start)
    freeze(model)
    model.encoder = PromptedEncoder(model.encoder, prompt)
    if train_head and hasattr(model, "head"):
        for parameter in model.head.parameters():
            parameter.requires_grad_(True)
    return prompt
