"""Every method on a causal language model (tiny random LlamaForCausalLM and GPT2LMHeadModel).

The course's LLM (SmolLM2) is a ``LlamaForCausalLM``: its transformer sits under
``model.`` (GPT-2's under ``transformer.``), it has an ``lm_head`` tied to the input
embeddings, and it writes with ``model.generate`` and the key/value cache. For every
method the verbs must work there as on a bare backbone: ``add_*`` trains only the
method (never the tied ``lm_head``), generation with the cache writes exactly what a
greedy loop that re-runs the whole sequence writes (left padding included),
``save_*``/``load_*`` round-trip and ``remove_*`` gives the base model back, bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from transformers import AutoModel

from tiny_models import generated, left_padded, mask_positions, tiny_causal_lm, tiny_config, unpadded
from peft_teach.methods import adapters, fusion, lora, prefix, prefix_plus, prompts
from peft_teach.methods.architectures import base_model_path, layout_of
from peft_teach.methods.inject import find_modules, trainable_names
from peft_teach.models import IncompatibleBaseModelError, SequenceClassifier

KINDS = ("llama", "gpt2")
LENGTH = 3  # prompt / prefix length
TOL = 1e-5
LORA_TARGETS = {"llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                "gpt2": ("c_attn", "c_proj", "c_fc")}
LORA_PER_LAYER = {"llama": 7, "gpt2": 4}  # GPT-2 has a c_proj in attention and one in the MLP
FUSED = ["a", "b"]
FUSION = fusion.fusion_name(FUSED)


def randomise(parameters, seed: int = 1, scale: float = 0.3) -> None:
    """Give new parameters non-zero values, as if trained (LoRA's B, W_up and M start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in parameters:
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


METHODS: dict[str, Callable] = {
    "lora": lambda m, kind: lora.add_lora(m, LORA_TARGETS[kind], r=2),
    "soft prompt": lambda m, kind: prompts.add_soft_prompt(m, LENGTH, init="vocab", seed=2),
    "prefix": lambda m, kind: prefix.add_prefix(m, LENGTH),
    "prefix (reparameterized)": lambda m, kind: prefix.add_prefix(m, LENGTH, reparameterize=True, mlp_hidden=16),
    "prefix_plus": lambda m, kind: prefix_plus.add_prefix_plus(m),
    "adapter (pfeiffer)": lambda m, kind: adapters.add_adapter(m, "task", adapters.AdapterConfig("pfeiffer")),
    "adapter (houlsby)": lambda m, kind: adapters.add_adapter(m, "task", adapters.AdapterConfig("houlsby")),
    "fusion": lambda m, kind: fusion.add_fusion(m, FUSED),
}
FORMULA = {
    "lora": lambda m, kind: lora.lora_parameter_count(m, LORA_TARGETS[kind], r=2),
    "soft prompt": lambda m, kind: prompts.soft_prompt_parameter_count(m, LENGTH),
    "prefix": lambda m, kind: prefix.prefix_parameter_count(m, LENGTH),
    "prefix (reparameterized)": None,  # the MLP's size is not the prefix formula (it is folded away)
    "prefix_plus": lambda m, kind: prefix_plus.prefix_plus_parameter_count(m),
    "adapter (pfeiffer)": lambda m, kind: adapters.adapter_parameter_count(m, adapters.AdapterConfig("pfeiffer")),
    "adapter (houlsby)": lambda m, kind: adapters.adapter_parameter_count(m, adapters.AdapterConfig("houlsby")),
    "fusion": lambda m, kind: fusion.fusion_parameter_count(m, FUSED),
}
SAVE = {"lora": lora.save_lora, "soft prompt": prompts.save_soft_prompt, "prefix": prefix.save_prefix,
        "prefix (reparameterized)": prefix.save_prefix, "prefix_plus": prefix_plus.save_prefix_plus,
        "adapter (pfeiffer)": lambda m, folder: adapters.save_adapter(m, "task", folder),
        "adapter (houlsby)": lambda m, folder: adapters.save_adapter(m, "task", folder),
        "fusion": lambda m, folder: fusion.save_fusion(m, FUSION, folder)}
LOAD = {"lora": lora.load_lora, "soft prompt": prompts.load_soft_prompt, "prefix": prefix.load_prefix,
        "prefix (reparameterized)": prefix.load_prefix, "prefix_plus": prefix_plus.load_prefix_plus,
        "adapter (pfeiffer)": adapters.load_adapter, "adapter (houlsby)": adapters.load_adapter,
        "fusion": fusion.load_fusion}
REMOVE = {"lora": lora.remove_lora, "soft prompt": prompts.remove_soft_prompt, "prefix": prefix.remove_prefix,
          "prefix (reparameterized)": prefix.remove_prefix, "prefix_plus": prefix_plus.remove_prefix_plus,
          "adapter (pfeiffer)": lambda m: adapters.remove_adapter(m, "task"),
          "adapter (houlsby)": lambda m: adapters.remove_adapter(m, "task"),
          "fusion": lambda m: (fusion.remove_fusion(m, FUSION), adapters.set_active(m, FUSED[-1]))}


# --------------------------------------------------------------------------- helpers


@torch.no_grad()
def greedy_without_cache(model, ids, mask, steps: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: re-run the whole sequence each step, no cache. (new tokens, (B, steps, vocab) logits)."""
    steps_logits = []
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=mask_positions(mask), use_cache=False).logits
        steps_logits.append(logits[:, -1])
        token = logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, token], 1), torch.cat([mask, torch.ones_like(token)], 1)
    return ids[:, -steps:], torch.stack(steps_logits, 1)


def assert_generate_matches_greedy_loop(model, ids, mask) -> torch.Tensor:
    tokens, logits = generated(model, ids, mask)
    expected_tokens, expected_logits = greedy_without_cache(model, ids, mask)
    assert torch.equal(tokens, expected_tokens)
    assert (logits - expected_logits).abs().max().item() <= TOL
    return tokens


@torch.no_grad()
def real_logits(model, ids, mask) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask).logits[mask.bool()]


def add_trained_adapters(model) -> None:
    """Fusion's stage 1: adapters 'a' and 'b' with non-zero weights (stand-ins for trained ones)."""
    for seed, name in enumerate(FUSED):
        added = adapters.add_adapter(model, name, seed=seed)
        randomise([p for module in added.values() for p in module.parameters()], seed=10 + seed)


def base_and_copy(method: str, kind: str):
    """(the model the method is added to, an untouched copy of it); fusion's base holds the two adapters."""
    model = tiny_causal_lm(kind)
    if method == "fusion":
        add_trained_adapters(model)
    return model, copy.deepcopy(model)


def output_embeddings_frozen(model) -> bool:
    return not model.lm_head.weight.requires_grad and not model.get_input_embeddings().weight.requires_grad


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("kind, path, attention", [("llama", "model.", "model.layers.1.self_attn"),
                                                   ("gpt2", "transformer.", "transformer.h.1.attn")])
def test_layouts_reach_the_transformer_inside_a_causal_lm(kind, path, attention):
    model = tiny_causal_lm(kind)
    bare = AutoModel.from_config(tiny_config(kind))
    assert base_model_path(model) == path and base_model_path(bare) == ""
    layout = layout_of(model, "test")
    assert list(find_modules(model, layout.self_attention))[-1] == attention
    for field in ("self_attention", "attention_output", "ffn_output", "block"):
        pattern = getattr(layout, field)
        found = list(find_modules(model, pattern))
        assert len(found) == 2 and all(name.startswith(path) for name in found)
        # the same modules as in the bare transformer, one level down
        in_bare = find_modules(bare, getattr(layout_of(bare, "test"), field))
        assert [name.removeprefix(path) for name in found] == list(in_bare)


@pytest.mark.parametrize("kind", KINDS)
def test_lora_on_every_projection_leaves_the_tied_head_frozen(kind):
    model = tiny_causal_lm(kind)
    added = lora.add_lora(model, LORA_TARGETS[kind], r=2)
    assert len(added) == LORA_PER_LAYER[kind] * 2  # every projection of both layers
    assert {name.rsplit(".", 1)[-1] for name in added} == set(LORA_TARGETS[kind])
    assert set(trainable_names(model)) == {f"{name}.{m}" for name in added for m in ("lora_A", "lora_B")}
    assert output_embeddings_frozen(model) and model.lm_head.weight is model.get_input_embeddings().weight


# --------------------------------------------------------------------------- every verb


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_verb_on_a_causal_lm(method, kind, tmp_path):
    model, before = base_and_copy(method, kind)
    ids, mask = left_padded()
    base_tokens, _ = generated(before, ids, mask)
    base_state = {k: v.clone() for k, v in before.state_dict().items()}
    formula = FORMULA[method](model, kind) if FORMULA[method] else None
    old = {id(p) for p in model.parameters()}

    # add_*: exactly the new parameters train; the tied lm_head / embeddings stay frozen
    added = METHODS[method](model, kind)
    assert added and all(model.get_submodule(name) is module for name, module in added.items())
    new = {f"{name}.{key}": p for name, module in added.items() for key, p in module.named_parameters()
           if id(p) not in old}
    assert set(trainable_names(model)) == set(new) and output_embeddings_frozen(model)
    if formula is not None:
        assert formula == sum(p.numel() for p in new.values())
    randomise(new.values())

    # the language-model loss reaches every new parameter; a step moves nothing else
    frozen = [(p, p.detach().clone()) for p in model.parameters() if id(p) in old]
    model.train()
    model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in new.values())
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    model.eval().zero_grad(set_to_none=True)
    assert all(torch.equal(p, value) for p, value in frozen)

    # logits for the real tokens only, and the method changes them
    assert model(input_ids=ids, attention_mask=mask).logits.shape == (*ids.shape, 100)
    assert (real_logits(model, ids, mask) - real_logits(before, ids, mask)).abs().max() > 1e-3

    # generate with the cache == a greedy loop re-running the whole sequence, with and without padding
    tokens = assert_generate_matches_greedy_loop(model, ids, mask)
    assert_generate_matches_greedy_loop(model, *unpadded())
    assert not torch.equal(tokens, base_tokens)  # the method acts inside generate too

    # save_* / load_*: a fresh copy of the base model writes the same
    SAVE[method](model, tmp_path)
    fresh = copy.deepcopy(before)
    LOAD[method](fresh, tmp_path)
    assert (real_logits(fresh, ids, mask) - real_logits(model, ids, mask)).abs().max().item() <= TOL
    assert torch.equal(generated(fresh, ids, mask)[0], tokens)

    # remove_*: the base model again, bit for bit, and it generates as the base model
    REMOVE[method](model)
    state = model.state_dict()
    assert set(state) == set(base_state) and all(torch.equal(state[k], base_state[k]) for k in base_state)
    assert torch.equal(real_logits(model, ids, mask), real_logits(before, ids, mask))
    assert torch.equal(generated(model, ids, mask)[0], base_tokens)


# --------------------------------------------------------------------------- soft prompt details


@pytest.mark.parametrize("kind", KINDS)
def test_soft_prompt_logits_are_the_real_tokens_of_prompt_plus_input(kind):
    """Ours == the base model run on [P; X] with the mask widened, its first l positions dropped;
    ``logits_to_keep`` works as on the base model; with ``labels`` the prompt's positions get
    label -100 (as in peft): the real tokens are the targets, the first one predicted by the
    prompt's last position."""
    model = tiny_causal_lm(kind)
    before = copy.deepcopy(model)
    prompt = prompts.add_soft_prompt(model, LENGTH, init="vocab", seed=2)["soft_prompt"]
    ids, mask = left_padded()
    with torch.no_grad():
        embeds, wide = prompts.prepend_prompt(prompt.weight, before.get_input_embeddings()(ids), mask)
        full = before(inputs_embeds=embeds, attention_mask=wide).logits
        reference = full[:, LENGTH:]
        ours = model(input_ids=ids, attention_mask=mask).logits
        last = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert ours.shape == reference.shape and (ours - reference).abs().max().item() <= TOL
    assert last.shape == (3, 1, 100) and (last - ours[:, -1:]).abs().max().item() <= TOL
    targets = torch.cat([torch.full((3, LENGTH), -100), labels], dim=1)[:, 1:]
    expected = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), targets.flatten())
    assert abs(loss.item() - expected.item()) <= TOL


@pytest.mark.parametrize("kind", KINDS)
def test_generate_runs_the_method_the_active_adapter_or_fusion_names(kind):
    """Several named adapters and a fusion on one LLM, switched per request with set_active."""
    model = tiny_causal_lm(kind)
    base_tokens, _ = generated(copy.deepcopy(model), *left_padded())
    add_trained_adapters(model)
    fusion.add_fusion(model, FUSED)
    written = {}
    for name in (*FUSED, FUSION, None):
        if name == FUSION:
            fusion.set_active_fusion(model, name)
        else:
            adapters.set_active(model, name)
        written[name] = assert_generate_matches_greedy_loop(model, *left_padded())
    assert torch.equal(written[None], base_tokens)  # all switched off: the base model
    outputs = [tuple(tokens.flatten().tolist()) for tokens in written.values()]
    assert len(set(outputs)) == len(outputs)  # each request ran its own adapter (or fusion)


# --------------------------------------------------------------------------- checkpoints and limits


def bert_classifier() -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(AutoModel.from_config(tiny_config("bert")).eval(), 2).eval()


ENCODER_CHECKPOINTS = {
    "lora": (lambda m: lora.add_lora(m, ("query", "value"), r=2), lora.save_lora, lora.load_lora),
    "soft prompt": (lambda m: prompts.add_soft_prompt(m, LENGTH), prompts.save_soft_prompt, prompts.load_soft_prompt),
    "prefix": (lambda m: prefix.add_prefix(m, LENGTH), prefix.save_prefix, prefix.load_prefix),
    "prefix_plus": (prefix_plus.add_prefix_plus, prefix_plus.save_prefix_plus, prefix_plus.load_prefix_plus),
    "adapter": (lambda m: adapters.add_adapter(m, "task"), lambda m, f: adapters.save_adapter(m, "task", f),
                adapters.load_adapter),
}


@pytest.mark.parametrize("method", list(ENCODER_CHECKPOINTS))
def test_a_checkpoint_of_an_encoder_classifier_is_refused_by_the_llm(method, tmp_path):
    add, save, load = ENCODER_CHECKPOINTS[method]
    encoder = bert_classifier()
    add(encoder)
    save(encoder, tmp_path)
    llm = tiny_causal_lm("llama")
    state = {k: v.clone() for k, v in llm.state_dict().items()}
    with pytest.raises(IncompatibleBaseModelError, match="model_type"):
        load(llm, tmp_path)
    assert set(llm.state_dict()) == set(state)  # refused before anything was added


def test_the_prefix_takes_no_position_so_it_fits_any_input_the_model_fits():
    """Only the soft prompt uses positions; a prefix on an input of the model's full length is fine."""
    model = tiny_causal_lm("gpt2")
    limit = model.config.max_position_embeddings
    prefix.add_prefix(model, LENGTH)
    with torch.no_grad():
        logits = model(input_ids=torch.randint(5, 100, (1, limit))).logits
    assert logits.shape == (1, limit, 100)
    prefix.remove_prefix(model)
    prompts.add_soft_prompt(model, LENGTH)
    with torch.no_grad():
        assert model(input_ids=torch.randint(5, 100, (1, limit - LENGTH))).logits.shape == (1, limit - LENGTH, 100)
