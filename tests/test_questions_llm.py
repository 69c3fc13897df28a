"""Practice 07's graders on the real SmolLM2: the solution passes, known wrong answers and the package fail."""

from __future__ import annotations

import types
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from peft_teach import llm
from peft_teach.checks import CORRECT, INCORRECT, NOT_ATTEMPTED
from peft_teach.methods import lora
from peft_teach.questions import lesson_07 as Q

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def solved():
    """The solution functions, executed from the solved practice notebook (one source of truth)."""
    namespace: dict = {}
    notebook = nbformat.read(ROOT / "solutions" / "07_peft_on_a_language_model.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and ".check(" not in cell.source:
            exec(cell.source, namespace)
    return namespace


def test_untouched_tasks_are_not_attempted():
    def stub(*args):
        raise NotImplementedError

    for question in Q.QUESTIONS.values():
        assert question.check(None) == NOT_ATTEMPTED
    assert Q.q5.check(stub) == NOT_ATTEMPTED


def test_q1_example(solved):
    build = solved["build_example"]
    assert Q.q1.check(build) == CORRECT
    assert Q.q1.check(llm.encode_example) == INCORRECT  # handing in the package's function
    assert Q.q1.check(lambda tok, prompt, answer: llm.encode_example(tok, prompt, answer)) == INCORRECT  # calling it

    def no_mask(tokenizer, prompt, answer):
        ids, _ = build(tokenizer, prompt, answer)
        return ids, list(ids)

    def no_end(tokenizer, prompt, answer):
        ids, labels = build(tokenizer, prompt, answer)
        return ids[:-1], labels[:-1]

    def special_tokens(tokenizer, prompt, answer):
        ids, labels = build(tokenizer, prompt, answer)
        return [tokenizer.bos_token_id] + ids, [-100] + labels

    for wrong in (no_mask, no_end, special_tokens):
        assert Q.q1.check(wrong) == INCORRECT, wrong.__name__


def test_q2_padding(solved):
    pad = solved["left_pad"]
    assert Q.q2.check(pad) == CORRECT

    def right_pad(pairs, pad_id):
        longest = max(len(ids) for ids, _ in pairs)
        rows = [(list(ids) + [pad_id] * (longest - len(ids)), [1] * len(ids) + [0] * (longest - len(ids)),
                 list(labels) + [-100] * (longest - len(ids))) for ids, labels in pairs]
        return {key: torch.tensor([row[i] for row in rows]) for i, key in enumerate(("input_ids", "attention_mask", "labels"))}

    def labels_on_padding(pairs, pad_id):
        batch = pad(pairs, pad_id)
        batch["labels"] = torch.where(batch["attention_mask"] == 0, torch.tensor(pad_id), batch["labels"])
        return batch

    def no_mask(pairs, pad_id):
        batch = pad(pairs, pad_id)
        batch["attention_mask"] = torch.ones_like(batch["attention_mask"])
        return batch

    assert Q.q2.check(lambda pairs, pad_id: llm.collate_lm(None, [])) == INCORRECT  # the package refuses
    for wrong in (right_pad, labels_on_padding, no_mask):
        assert Q.q2.check(wrong) == INCORRECT, wrong.__name__


def test_q3_q4_counts(capsys):
    assert Q.q3.check(Q.Q3_EXPECTED) == CORRECT
    assert Q.q3.check(Q.Q3_SQUARE) == INCORRECT
    assert "not square" in capsys.readouterr().out
    assert Q.q3.check(30 * 2 * 4 * (576 + 1536)) == INCORRECT  # forgot down_proj
    assert Q.q3.check(Q.Q3_EXPECTED // 30) == INCORRECT  # one layer only
    assert Q.q3.check(str(Q.Q3_EXPECTED)) == INCORRECT  # text, not a number
    assert Q.q4.check(Q.Q4_EXPECTED) == CORRECT
    assert Q.q4.check(Q.Q4_WITHOUT_GQA) == INCORRECT
    assert "key/value head" in capsys.readouterr().out
    assert Q.q4.check(Q.Q4_EXPECTED // 2) == INCORRECT  # keys only
    assert Q.q4.check(2 * 30 * 16 * 9 * 64) == INCORRECT  # per query head


def _lora_variant(solved, forward):
    """The solution's add_my_lora, with every new layer computing ``forward(layer, x)`` instead."""

    def add(model, targets, r, alpha):
        added = solved["add_my_lora"](model, targets, r, alpha)
        for layer in added.values():
            layer.r, layer.forward = r, types.MethodType(forward, layer)
        return added

    return add


def test_q5_lora_in_the_llm(solved, capsys):
    assert Q.q5.check(solved["add_my_lora"]) == CORRECT
    capsys.readouterr()
    assert Q.q5.check(lambda model, targets, r, alpha: lora.add_lora(model, targets, r=r, alpha=alpha)) == INCORRECT
    assert "Write it yourself" in capsys.readouterr().out
    alpha_not_over_r = _lora_variant(solved, lambda m, x: m.base(x) + m.scaling * m.r * (x @ m.lora_A.T @ m.lora_B.T))
    assert Q.q5.check(alpha_not_over_r) == INCORRECT
    assert "r times too large" in capsys.readouterr().out
    detached = _lora_variant(solved, lambda m, x: m.base(x) + m.scaling * (x @ m.lora_A.detach().T @ m.lora_B.T))
    assert Q.q5.check(detached) == INCORRECT
    no_residual = _lora_variant(solved, lambda m, x: m.scaling * (x @ m.lora_A.T @ m.lora_B.T))
    assert Q.q5.check(no_residual) == INCORRECT

    def not_frozen(model, targets, r, alpha):
        added = solved["add_my_lora"](model, targets, r, alpha)
        model.lm_head.requires_grad_(True)
        return added

    assert Q.q5.check(not_frozen) == INCORRECT
    assert Q.q5.check(lambda model, targets, r, alpha: solved["add_my_lora"](model, ("gate_proj",), r, alpha)) == INCORRECT


def test_q6_answer_loss(solved, capsys):
    assert Q.q6.check(solved["answer_token_loss"]) == CORRECT
    unshifted = lambda logits, labels: nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),  # noqa: E731
                                                                   ignore_index=-100)
    assert Q.q6.check(unshifted) == INCORRECT
    assert "t + 1" in capsys.readouterr().out

    def counts_prompt(logits, labels):
        targets = labels[:, 1:].clamp(min=0)
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten())

    assert Q.q6.check(counts_prompt) == INCORRECT

    def summed_not_averaged(logits, labels):
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                           ignore_index=-100, reduction="sum")

    assert Q.q6.check(summed_not_averaged) == INCORRECT
    assert Q.q6.check(lambda logits, labels: llm.answer_loss(None, {"labels": labels})) == INCORRECT
