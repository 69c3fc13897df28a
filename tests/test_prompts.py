"""Soft prompt tuning: counts, masks, trainable set, inits, errors, parity with peft."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import AutoModel, BertConfig, GPT2Config

from tiny_models import names_changed_by_one_step
from peft_teach.models import SequenceClassifier
from peft_teach.methods.prompts import (
    SoftPrompt,
    add_soft_prompt,
    initial_prompt,
    prepend_prompt,
    soft_prompt_parameter_count,
    soft_prompt_parameters,
)


def tiny_classifier(kind: str = "bert", seed: int = 0) -> SequenceClassifier:
    torch.manual_seed(seed)
    if kind == "bert":
        config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, attn_implementation="eager")
    else:
        config = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0,
                            attn_implementation="eager")
    return SequenceClassifier(AutoModel.from_config(config).eval(), 2).eval()


class CharTokenizer:
    """Just enough tokenizer for init='text': one id per character."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 100 for c in text]}


def test_parameter_count_and_trainable_set():
    model = tiny_classifier()
    added = add_soft_prompt(model, length=5)
    assert list(added) == ["soft_prompt"] and isinstance(added["soft_prompt"], SoftPrompt)
    assert model.soft_prompt is added["soft_prompt"]
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"soft_prompt.weight": 5 * 32, "head.weight": 64, "head.bias": 2}
    assert soft_prompt_parameters(model) == soft_prompt_parameter_count(model, 5) == 5 * 32


def test_default_model_count_is_l_times_d():
    from peft_teach.models import build_classifier

    model = build_classifier(2)
    prompt = add_soft_prompt(model, length=10)["soft_prompt"]
    assert prompt.weight.numel() == 3840 == soft_prompt_parameter_count(model, 10) == soft_prompt_parameters(model)


def test_prepend_prompt_shapes_and_mask():
    prompt = torch.randn(3, 8)
    embeds, mask = torch.randn(2, 4, 8), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    full, full_mask = prepend_prompt(prompt, embeds, mask)
    assert full.shape == (2, 7, 8) and torch.equal(full[1, :3], prompt) and torch.equal(full[:, 3:], embeds)
    assert torch.equal(full_mask, torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]]))


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_padding_changes_nothing_for_real_tokens(kind):
    model = tiny_classifier(kind)
    add_soft_prompt(model, length=4, init="vocab")
    ids = torch.randint(1, 100, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    with torch.no_grad():
        short = model.backbone(input_ids=ids).last_hidden_state
        long = model.backbone(input_ids=padded, attention_mask=mask).last_hidden_state
        assert torch.allclose(short, long[:, :5], atol=1e-5)
        assert torch.allclose(model(input_ids=ids), model(input_ids=padded, attention_mask=mask), atol=1e-5)


def test_output_covers_real_tokens_only_and_prompt_matters():
    model = tiny_classifier()
    reference = copy.deepcopy(model.backbone)
    add_soft_prompt(model, length=4, init="vocab")
    ids = torch.randint(1, 100, (2, 6))
    with torch.no_grad():
        hidden = model.backbone(input_ids=ids).last_hidden_state
        base = reference(input_ids=ids).last_hidden_state
    assert hidden.shape == base.shape  # prompt positions dropped before pooling
    assert (hidden - base).abs().max() > 1e-3


def test_one_step_changes_only_prompt_and_head():
    model = tiny_classifier()
    add_soft_prompt(model, length=4)
    changed = names_changed_by_one_step(model)
    assert changed == {"soft_prompt.weight", "head.weight", "head.bias"}


def test_inits():
    encoder = tiny_classifier().backbone
    table = encoder.get_input_embeddings().weight
    vocab = initial_prompt(encoder, 4, "vocab", seed=3)
    assert all(any(torch.equal(row, word) for word in table) for row in vocab)
    text = initial_prompt(encoder, 5, "text", text="ab", tokenizer=CharTokenizer())
    assert torch.equal(text, table[torch.tensor([97, 98, 97, 98, 97]) % 100])
    assert initial_prompt(encoder, 4, "random").abs().max() < 0.2


@pytest.mark.parametrize("length", [0, -2, 2.5])
def test_bad_length_raises(length):
    with pytest.raises(ValueError, match="positive integer"):
        add_soft_prompt(tiny_classifier(), length=length)


def test_bad_init_raises():
    with pytest.raises(ValueError, match="Unknown prompt init"):
        add_soft_prompt(tiny_classifier(), length=3, init="zeros")
    with pytest.raises(ValueError, match="needs text"):
        add_soft_prompt(tiny_classifier(), length=3, init="text")


def test_matches_peft_prompt_tuning():
    """peft's PromptTuning prepends its virtual-token embeddings in the same way.

    peft returns hidden states for all l + T positions; we return the T real tokens,
    which are peft's last T positions. With the same prompt, these must agree.
    """
    from peft import PromptTuningConfig, get_peft_model

    model = tiny_classifier()
    reference = copy.deepcopy(model.backbone)
    prompt = add_soft_prompt(model, length=4, init="vocab", seed=2)["soft_prompt"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(reference, PromptTuningConfig(task_type="FEATURE_EXTRACTION",
                                                                  num_virtual_tokens=4)).eval()
    ids = torch.randint(1, 100, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(prompt.weight)
        theirs = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 4:]
        ours = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (ours - theirs)[mask.bool()].abs().max().item() <= 1e-5
    with torch.no_grad():  # a different prompt gives different outputs: the test can fail
        # (a random change: a constant shift would be removed by BERT's embedding LayerNorm)
        peft_model.prompt_encoder["default"].embedding.weight.add_(torch.randn(4, 32))
        moved = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state[:, 4:]
    assert (ours - moved)[mask.bool()].abs().max().item() > 1e-3


def test_token_type_ids_are_extended_for_the_prompt():
    """BERT tokenizers return token_type_ids of length T; the prompt needs l more (segment 0)."""
    model = tiny_classifier()
    add_soft_prompt(model, length=3, init="vocab")
    ids = torch.randint(1, 100, (2, 5))
    with torch.no_grad():
        with_types = model(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        without = model(input_ids=ids)
    assert torch.equal(with_types, without)
