import pytest
import torch

from peft_teach import models


def test_default_model_is_minilm(default_encoder):
    config = default_encoder.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        "bert", 384, 6, 12)
    assert sum(p.numel() for p in default_encoder.parameters()) == 22_713_216


def test_default_weights_checksum_is_verified(monkeypatch):
    models.verify_default_weights.cache_clear()
    monkeypatch.setattr(models, "DEFAULT_WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(models.ChecksumError, match="force-reinstall"):
        models.verify_default_weights()
    models.verify_default_weights.cache_clear()


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(models.mean_pool(hidden, mask), torch.tensor([[2.0, 2.0]]))


def test_classifier_head_is_seeded_and_padding_invariant(tokenizer):
    a, b = models.build_classifier(3, seed=1), models.build_classifier(3, seed=1)
    c = models.build_classifier(3, seed=2)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)
    a.eval()
    short = tokenizer(["a short review"], return_tensors="pt")
    padded = tokenizer(["a short review"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(a(**short), a(**padded), atol=1e-5)


def test_hub_id_offline_fails_fast_with_a_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.HubUnavailableError, match="local folder"):
        models.resolve_model_source("some-user/some-model-that-is-not-cached")


def test_local_folder_is_accepted(tmp_path):
    assert models.resolve_model_source(str(tmp_path)) == str(tmp_path)


def test_fingerprint_tells_models_apart(default_encoder, tiny_bert):
    assert models.base_model_fingerprint(default_encoder) != models.base_model_fingerprint(tiny_bert)
    assert models.base_model_fingerprint(default_encoder)["hidden_size"] == 384
