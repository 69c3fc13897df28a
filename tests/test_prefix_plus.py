"""Prefix-Tuning+: zero-init identity, the memory read, placement, counts, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModel, BertConfig, GPT2Config, LlamaConfig

from tiny_models import tiny_config
from peft_teach.models import SequenceClassifier
from peft_teach.methods.prefix_plus import (
    PrefixMemory,
    add_prefix_plus,
    memory_read,
    prefix_plus_parameter_count,
    prefix_plus_parameters,
)


def tiny_pair(kind: str):
    torch.manual_seed(0)
    encoder = AutoModel.from_config(tiny_config(kind)).eval()
    reference = copy.deepcopy(encoder)
    return SequenceClassifier(encoder, 2).eval(), reference


INPUTS = (torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(0)),
          torch.tensor([[1] * 6, [1] * 4 + [0] * 2]))


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_zero_init_reproduces_base_model_exactly(kind):
    model, reference = tiny_pair(kind)
    add_prefix_plus(model)
    ids, mask = INPUTS
    with torch.no_grad():
        ours = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        base = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(ours, base)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_memory_changes_outputs_and_padding_does_not(kind):
    model, reference = tiny_pair(kind)
    memory = add_prefix_plus(model)["prefix_memory"]
    with torch.no_grad():
        memory.memory.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    ids, _ = INPUTS
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3] * 2)
    with torch.no_grad():
        ours = model.backbone(input_ids=ids).last_hidden_state
        ours_padded = model.backbone(input_ids=padded, attention_mask=mask).last_hidden_state
        base = reference(input_ids=ids).last_hidden_state
    assert (ours - base).abs().max() > 1e-3
    assert torch.allclose(ours, ours_padded[:, :6], atol=1e-5)


def test_memory_read_is_elu_query_times_m_per_head():
    query = torch.randn(2, 3, 5, 4)
    memory = torch.randn(3, 4, 4)
    read = memory_read(query, memory, "elu")
    by_hand = torch.nn.functional.elu(query[1, 2, 4]) @ memory[2]  # batch 1, head 2, token 4
    assert torch.allclose(read[1, 2, 4], by_hand, atol=1e-6)
    assert torch.allclose(memory_read(query, memory, "gelu")[0, 0, 0],
                          torch.nn.functional.gelu(query[0, 0, 0]) @ memory[0], atol=1e-6)


def test_read_enters_before_the_output_projection():
    """A memory that only feeds head 0 changes only the inputs of W_O for head 0's slice."""
    model, _ = tiny_pair("bert")
    memory = add_prefix_plus(model)["prefix_memory"]
    captured = {}
    out_proj = model.backbone.encoder.layer[0].attention.output.dense
    out_proj.register_forward_pre_hook(lambda module, args: captured.__setitem__("x", args[0].detach().clone()))
    ids, mask = INPUTS
    with torch.no_grad():
        model.backbone(input_ids=ids, attention_mask=mask)
        before = captured["x"]
        memory.memory[0, 0] = torch.eye(8)
        model.backbone(input_ids=ids, attention_mask=mask)
    delta = captured["x"] - before  # (B, T, 32) = 4 heads x 8 dims
    assert delta[..., :8].abs().max() > 1e-3 and delta[..., 8:].abs().max() == 0


def test_counts_and_trainable_set():
    model, _ = tiny_pair("llama")  # 4 query heads of size 8, 2 layers
    added = add_prefix_plus(model)
    assert list(added) == ["prefix_memory"] and isinstance(added["prefix_memory"], PrefixMemory)
    memory = added["prefix_memory"]
    assert model.prefix_memory is memory
    assert memory.memory.numel() == 2 * 4 * 8 * 8 == prefix_plus_parameter_count(model) == prefix_plus_parameters(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prefix_memory.memory", "head.weight",
                                                                            "head.bias"}


def test_default_model_budget_matches_lora_r8():
    from peft_teach.models import build_classifier

    model = build_classifier(2)
    assert add_prefix_plus(model)["prefix_memory"].memory.numel() == 73_728  # 6 layers x 12 heads x 32 x 32
    assert prefix_plus_parameter_count(model) == prefix_plus_parameters(model) == 73_728


def test_one_step_moves_zero_memory_and_nothing_frozen():
    model, _ = tiny_pair("bert")
    add_prefix_plus(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    ids, mask = INPUTS
    loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"prefix_memory.memory", "head.weight", "head.bias"}


def test_bad_inputs_raise():
    model, _ = tiny_pair("bert")
    with pytest.raises(ValueError, match="Unknown feature map"):
        add_prefix_plus(model, phi="relu")
    from transformers import T5Config

    t5 = AutoModel.from_config(T5Config(vocab_size=100, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="Supported model types"):
        add_prefix_plus(SequenceClassifier(t5.get_encoder(), 2))
