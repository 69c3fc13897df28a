"""IA3 against peft's IA3 on the same base model and the same vectors; counts, merge and defaults."""

from __future__ import annotations

import copy

import pytest
import torch

from peft_teach.methods import ia3
from peft_teach.models import SequenceClassifier
from test_lora_peft_parity import batch, tiny_bert, tiny_gpt2

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def with_biases(encoder):
    """The tiny models start with zero biases; IA3 rescales biases too, so give them values (seeded)."""
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return encoder


def ours_and_peft(factory):
    """Our IA3 and peft's on the paper's placement, the same (non-trivial) vectors and biases in both."""
    ours = SequenceClassifier(with_biases(factory()), 3).eval()
    theirs = SequenceClassifier(with_biases(factory()), 3).eval()
    theirs.head.load_state_dict(ours.head.state_dict())
    added = ia3.add_ia3(ours)
    inputs = [name.removeprefix("backbone.") for name, layer in added.items() if layer.feedforward]
    config = peft.IA3Config(target_modules=[name.removeprefix("backbone.") for name in added],
                            feedforward_modules=inputs, fan_in_fan_out=factory is tiny_gpt2)
    theirs.backbone = peft.get_peft_model(theirs.backbone, config)
    references = {name.removeprefix("base_model.model."): module for name, module in theirs.backbone.named_modules()
                  if hasattr(module, "ia3_l")}
    assert set(references) == {name.removeprefix("backbone.") for name in added}
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, layer in added.items():
            layer.ia3_scale.copy_(1 + 0.3 * torch.randn(layer.ia3_scale.shape, generator=generator))
            theirs_vector = references[name.removeprefix("backbone.")].ia3_l["default"]
            theirs_vector.copy_(layer.ia3_scale.reshape(theirs_vector.shape))
    return ours, theirs


def gradients(model) -> dict[str, torch.Tensor]:
    return {name.replace("base_model.model.", "").replace(".ia3_l.default", ".ia3_scale"): p.grad.flatten()
            for name, p in model.named_parameters() if p.requires_grad and "ia3" in name}


@pytest.mark.parametrize("factory", [tiny_bert, tiny_gpt2])
def test_ia3_matches_peft_on_logits_gradients_and_merge(factory):
    ours, theirs = ours_and_peft(factory)
    base = SequenceClassifier(with_biases(factory()), 3).eval()
    base.head.load_state_dict(ours.head.state_dict())
    ours_logits, peft_logits = ours(**batch()), theirs(**batch())
    with torch.no_grad():
        assert (ours_logits - base(**batch())).abs().max() > 1e-3  # the vectors matter
    assert (ours_logits - peft_logits).abs().max() <= 1e-5
    weights = torch.randn(ours_logits.shape, generator=torch.Generator().manual_seed(3))
    (ours_logits * weights).sum().backward()
    (peft_logits * weights).sum().backward()
    ours_grads, peft_grads = gradients(ours.backbone), gradients(theirs.backbone)
    assert set(ours_grads) == set(peft_grads) and ours_grads
    for name, grad in ours_grads.items():
        assert torch.allclose(grad, peft_grads[name], atol=1e-6, rtol=1e-4), name
    ia3.merge_ia3(ours)
    with torch.no_grad():
        assert (ours(**batch()) - ours_logits).abs().max() <= 1e-5


def test_ia3_starts_as_the_base_model_and_removes_back():
    base = SequenceClassifier(with_biases(tiny_bert()), 3).eval()
    ours = copy.deepcopy(base)
    added = ia3.add_ia3(ours)
    with torch.no_grad():
        assert torch.equal(ours(**batch()), base(**batch()))  # every vector starts at one
        for layer in added.values():
            layer.ia3_scale.fill_(1.7)
    ia3.merge_ia3(ours)
    ia3.remove_ia3(ours)  # unmerges first
    for (name, theirs), mine in zip(base.named_parameters(), ours.parameters()):
        assert torch.allclose(theirs, mine, atol=1e-6), name


def test_the_paper_placement_and_count_on_minilm():
    from peft_teach.models import load_base_model

    model = load_base_model()
    expected = 6 * (384 + 384 + 1536)  # keys and values: d_out = 384 each; the feed-forward input: 1536
    assert ia3.ia3_parameter_count(model) == expected == 13_824
    added = ia3.add_ia3(model)
    assert ia3.ia3_parameters(model) == expected == sum(p.numel() for p in model.parameters() if p.requires_grad)
    feedforward = sorted(name for name, layer in added.items() if layer.feedforward)
    assert feedforward == [f"encoder.layer.{i}.output.dense" for i in range(6)]  # not attention.output.dense
    theirs = peft.get_peft_model(load_base_model(), peft.IA3Config(target_modules=list(added),
                                                                 feedforward_modules=feedforward))
    assert theirs.get_nb_trainable_parameters()[0] == expected


def test_a_layer_cannot_be_scaled_on_both_sides():
    with pytest.raises(ValueError, match="not both"):
        ia3.add_ia3(tiny_bert(), targets=("key",), feedforward=("key",))
