"""Test helpers shared by several test files: tiny random-weight models, batches for generation, adapter utilities."""

import torch
from transformers import AutoModelForCausalLM, BertConfig, BertModel, GPT2Config, LlamaConfig, RobertaConfig

from peft_teach.methods import adapters as A
from peft_teach.models import SequenceClassifier, get_backbone


def tiny_config(kind: str):
    """A 2-layer config of each architecture family the methods support (no download)."""
    common = dict(vocab_size=100, attn_implementation="eager")
    if kind == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **common)
    if kind == "roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             pad_token_id=1, **common)
    if kind == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0, **common)
    return LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, bos_token_id=0, eos_token_id=0, **common)


def tiny_causal_lm(kind: str, seed: int = 0):
    """A tiny random ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` in eval mode, built like the course's LLM.

    Tied input/output embeddings (as SmolLM2 and GPT-2); weights 10x the usual init, so that
    greedy decoding writes varied tokens instead of one token again and again; no end-of-text
    token, so ``generate`` always writes ``max_new_tokens`` tokens.
    """
    torch.manual_seed(seed)
    config = tiny_config(kind)
    config.tie_word_embeddings, config.initializer_range = True, 0.2
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def left_padded() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 7, 4 and 6 tokens, left-padded (pad id 0) as batched generation needs."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (3, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask


def unpadded() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 5 tokens: ``generate`` then drops the all-ones mask (another code path)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (2, 5), generator=generator)
    return ids, torch.ones_like(ids)


def mask_positions(mask: torch.Tensor) -> torch.Tensor:
    """Positions as ``generate`` numbers them: real tokens 0, 1, ...; padding 0."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


@torch.no_grad()
def generated(model, ids, mask, steps: int = 6, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.generate`` (greedy, key/value cache): (new tokens, (B, steps, vocab) logits)."""
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=steps,
                         return_dict_in_generate=True, output_logits=True, **kwargs)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, 1)


def tiny_bert_classifier(seed: int = 0, hidden: int = 32, layers: int = 2) -> SequenceClassifier:
    """A tiny random BERT with a 3-label head, in eval mode (adapter and fusion tests)."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=64)
    return SequenceClassifier(BertModel(config).eval(), num_labels=3).eval()


def hidden(model, batch):
    """Last hidden states of a classifier's backbone, without gradients."""
    with torch.no_grad():
        return get_backbone(model)(**batch).last_hidden_state


def perturb(model, name, scale=0.5, seed=1):
    """Give adapter ``name`` non-zero weights, as if it had been trained (not the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in A.adapter_layers(model).values():
            if name in layer.adapters:
                for p in layer.adapters[name].parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * scale)


def padded_batch():
    """Four random token sequences of length 10; the second has 4 padding positions."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (4, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def names_changed_by_one_step(model) -> set[str]:
    """Take one large SGD step on random inputs; return the names of the parameters that moved."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    logits = model(input_ids=torch.randint(1, 100, (4, 6)))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
