import pytest
import torch
from datasets import DatasetDict

from peft_teach import data, train
from peft_teach.methods.inject import freeze, unfreeze_matching
from peft_teach.models import build_classifier


def _small(task="topic", n=64):
    suite = data.load_task(task)
    return DatasetDict(train=suite["train"].select(range(n)), validation=suite["validation"].select(range(32)))


def test_loader_pads_per_batch_and_keeps_order(tokenizer):
    split = data.load_task("topic")["train"].select(range(10))
    batches = list(train.make_loader(split, tokenizer, batch_size=4))
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    assert batches[0]["labels"].tolist() == split["label"][:4]
    shuffled = [b["labels"].tolist() for b in train.make_loader(split, tokenizer, 4, shuffle=True, seed=1)]
    again = [b["labels"].tolist() for b in train.make_loader(split, tokenizer, 4, shuffle=True, seed=1)]
    assert shuffled == again


def test_head_only_training_changes_only_the_head_and_is_reproducible(tokenizer):
    results = []
    for _ in range(2):
        model = build_classifier(4, seed=0)
        freeze(model)
        unfreeze_matching(model, "head.")
        encoder_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        head_before = model.head.weight.clone()
        history = train.train(model, tokenizer, _small(), epochs=1, lr=1e-2, batch_size=16, seed=0)
        assert all(torch.equal(encoder_before[k], v) for k, v in model.backbone.state_dict().items())
        assert not torch.equal(head_before, model.head.weight)
        assert len(history.train_loss) == 4 and len(history.eval_accuracy) == 1
        assert history.trainable_parameters == 384 * 4 + 4
        results.append((history.train_loss, history.final_accuracy, model.head.weight.clone()))
    assert results[0][0] == results[1][0] and results[0][1] == results[1][1]
    assert torch.equal(results[0][2], results[1][2])


def test_training_learns_an_easy_task(tokenizer):
    model = build_classifier(4, seed=0)
    freeze(model)
    unfreeze_matching(model, "head.")
    suite = _small("topic", n=256)
    before = train.evaluate(model, suite["validation"], tokenizer)
    history = train.train(model, tokenizer, suite, epochs=3, lr=1e-2, batch_size=32, seed=0)
    assert history.final_accuracy > before + 0.2
    assert history.train_loss[-1] < history.train_loss[0]


def test_nothing_trainable_is_an_error(tokenizer):


    model = build_classifier(2)
    freeze(model)
    with pytest.raises(ValueError, match="freeze"):
        train.train(model, tokenizer, _small("sentiment"), epochs=1)


def test_get_device_and_seed():
    assert train.get_device().type in {"cpu", "cuda", "mps"}
    train.set_seed(5)
    a = torch.rand(3)
    train.set_seed(5)
    assert torch.equal(a, torch.rand(3))


def test_head_lr_gives_the_head_its_own_learning_rate(tokenizer):
    from peft_teach.methods.prompts import add_soft_prompt

    model = build_classifier(2, seed=0)
    add_soft_prompt(model, length=2, seed=0)
    groups = train.parameter_groups(model, lr=0.3, head_lr=1e-3)
    by_lr = {group["lr"]: {id(p) for p in group["params"]} for group in groups}
    assert by_lr[1e-3] == {id(model.head.weight), id(model.head.bias)}
    assert by_lr[0.3] == {id(model.soft_prompt.weight)}
    # without head_lr: one group with every trainable parameter
    (single,) = train.parameter_groups(model, lr=0.3)
    assert single["lr"] == 0.3 and len(single["params"]) == 3
    # a head learning rate of 0 keeps the head fixed while the prompt moves
    head_before, prompt_before = model.head.weight.clone(), model.soft_prompt.weight.clone()
    train.train(model, tokenizer, _small("sentiment", n=16), epochs=1, lr=0.3, head_lr=0.0, batch_size=16,
                eval_split=None)
    assert torch.equal(model.head.weight, head_before)
    assert not torch.equal(model.soft_prompt.weight, prompt_before)


def _without_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def test_head_on_cached_features_trains_exactly_like_the_full_loop(tokenizer):
    # With dropout off, running the frozen encoder every step or once up front must give the same head.
    heads = []
    for trainer in (train.train, train.train_head_on_features):
        model = _without_dropout(build_classifier(4, seed=0))
        freeze(model)
        unfreeze_matching(model, "head.")
        history = trainer(model, tokenizer, _small(), epochs=2, lr=1e-2, batch_size=16, seed=0)
        assert len(history.train_loss) == 8 and history.trainable_parameters == 384 * 4 + 4
        heads.append((model.head.weight.detach().clone(), history.train_loss, history.final_accuracy))
    assert torch.allclose(heads[0][0], heads[1][0], atol=1e-5)
    assert heads[0][1] == pytest.approx(heads[1][1], abs=1e-5)
    assert heads[0][2] == heads[1][2]


def test_head_on_features_refuses_a_model_with_a_trainable_encoder(tokenizer):


    model = build_classifier(4, seed=0)  # nothing frozen: full fine-tuning
    with pytest.raises(ValueError, match="Freeze them first"):
        train.train_head_on_features(model, tokenizer, _small(), epochs=1)


def test_steps_per_epoch_counts_the_last_smaller_batch(tokenizer):
    assert train.steps_per_epoch(256, 16) == 16 and train.steps_per_epoch(1200, 16) == 75
    assert train.steps_per_epoch(1201, 16) == 76
    rows = data.load_task("sentiment")["train"].select(range(33))
    assert len(train.make_loader(rows, tokenizer, batch_size=16)) == train.steps_per_epoch(33, 16)  # the loader agrees
