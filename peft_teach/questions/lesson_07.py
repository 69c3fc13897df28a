"""Graded questions of the language-model practice notebook (solutions/07_peft_on_a_language_model.ipynb).

Q1, Q2, Q5 and Q6 run the packaged SmolLM2 tokenizer or model on real tickets; their references are
computed by the package when the check runs. While the learner's code runs, the package functions the
task is about raise a "write it yourself" error, so calling them cannot pass.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
from torch import nn

from peft_teach import llm, tickets
from peft_teach.checks import Question, assert_not_the_package, assert_same_tensor, blocked, grade_number, register
from peft_teach.methods import lora
from peft_teach.questions.real_inputs import assert_trains_alike, trained_losses

IGNORE = llm.IGNORE_INDEX


@lru_cache(maxsize=1)
def _tokenizer():
    return llm.load_llm_tokenizer()


@lru_cache(maxsize=1)
def _base_llm() -> nn.Module:
    """The packaged SmolLM2, loaded once per session; graders work on deep copies."""
    return llm.load_llm()


def _tickets(count: int = 3):
    """The first validation tickets: of different lengths, so padding matters."""
    return tickets.load_tickets()["validation"].select(range(count))


# ----------------------------------------------------------------------------- Q1: one training example


def _grade_example(function) -> None:
    assert_not_the_package(function, (llm, "encode_example"))
    tokenizer = _tokenizer()
    for row in _tickets():
        expected_ids, expected_labels = llm.encode_example(tokenizer, row["prompt"], row["answer"])
        with blocked((llm, "encode_example"), (llm, "collate_lm")):
            result = function(tokenizer, row["prompt"], row["answer"])
        assert isinstance(result, tuple) and len(result) == 2, "Return a pair: (input_ids, labels)."
        ids, labels = (list(map(int, part)) for part in result)
        assert len(ids) == len(labels), f"input_ids has {len(ids)} entries but labels {len(labels)}: one label per token."
        if ids == expected_ids[:-1] or ids[-1:] != [tokenizer.eos_token_id]:
            raise AssertionError("The sequence must end with the token that closes an answer (the tokenizer's eos): "
                                 "without it the model never learns to stop.")
        assert ids == expected_ids, ("The token ids differ from the chat-templated prompt followed by the answer. "
                                     "Did you tokenize the chat text without adding special tokens?")
        if labels == ids:
            raise AssertionError("Every token carries a label, prompt included: the model would be trained to "
                                 "reproduce the ticket and the template, not only to answer.")
        assert labels == expected_labels, "The labels differ: -100 on every prompt token, the token id on every answer token."


q1 = Question(
    title="Q1 one training example",
    grader=_grade_example,
    nudge="Build the chat text with the generation prompt, tokenize it without special tokens, then tokenize the "
         "answer followed by the end-of-answer token. The labels repeat the ids where the model must write.",
    recipe="prompt ids from llm.chat_text(tokenizer, prompt) tokenized without special tokens; answer ids = "
           "tokenizer(answer) + the end token; input_ids = prompt + answer; labels = -100 for every prompt "
           "token, then the answer ids.",
)

# ----------------------------------------------------------------------------- Q2: left padding


def _grade_padding(function) -> None:
    assert_not_the_package(function, (llm, "collate_lm"))
    tokenizer = _tokenizer()
    rows = _tickets()
    pairs = [llm.encode_example(tokenizer, row["prompt"], row["answer"]) for row in rows]
    expected = llm.collate_lm(tokenizer, list(rows))
    with blocked((llm, "collate_lm")):
        result = function(pairs, tokenizer.pad_token_id)
    assert isinstance(result, dict), "Return a dict with input_ids, attention_mask and labels."
    missing = {"input_ids", "attention_mask", "labels"} - set(result)
    assert not missing, f"The dict lacks {sorted(missing)}."
    shortest = min(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    mask = result["attention_mask"]
    if isinstance(mask, torch.Tensor) and mask.shape == expected["attention_mask"].shape:
        if mask[shortest, -1] == 0:
            raise AssertionError("The shortest row ends in padding: pad on the left, so every row ends where "
                                 "generation (and the answer) continues.")
    for key in ("input_ids", "attention_mask", "labels"):
        assert_same_tensor(result[key], expected[key], atol=0, shape_note=" One row per example, as long as the longest.",
                           values_note=f"{key} differs from the expected batch"
                           + (" (are padded positions -100?)" if key == "labels" else "") + ".")


q2 = Question(
    title="Q2 a left-padded batch",
    grader=_grade_padding,
    nudge="Pad every row to the longest one by putting pad tokens in front. The mask is 0 on padding and 1 on "
         "real tokens; padded positions carry no label.",
    recipe="For each row add (longest - len) pad ids in front; mask 0 there and 1 on the row; labels -100 "
           "there and the row's labels after.",
)

# ----------------------------------------------------------------------------- Q3, Q4: counts on SmolLM2

# LoRA r = 4 on gate_proj and up_proj (576 -> 1536) and down_proj (1536 -> 576) in 30 layers
Q3_EXPECTED = 30 * 3 * 4 * (576 + 1536)
Q3_SQUARE = 30 * 3 * 4 * (576 + 576)  # treating every matrix as 576 x 576


Q3_MISTAKES = {Q3_SQUARE: "That counts every matrix as 576 x 576; the feed-forward matrices are not square."}


q3 = Question(
    title="Q3 LoRA on the feed-forward layers",
    grader=grade_number(Q3_EXPECTED, what="parameter count", known_wrong=Q3_MISTAKES),
    nudge="r (d_in + d_out) per matrix; read d_in and d_out of gate_proj, up_proj and down_proj from the model "
         "(print model.model.layers[0].mlp).",
    recipe="gate_proj and up_proj are 576 -> 1536, down_proj 1536 -> 576: r (d_in + d_out) each, three "
           "matrices, 30 layers.",
)

# prefix of length 16 on SmolLM2: keys and values per layer, per key/value head
Q4_EXPECTED = 2 * 30 * 16 * 3 * 64
Q4_WITHOUT_GQA = 2 * 30 * 16 * 576


Q4_MISTAKES = {
    Q4_WITHOUT_GQA: "That is a prefix for every query head (2 L l d). With grouped-query attention the keys and "
                    "values exist once per key/value head.",
    Q4_EXPECTED // 2: "A prefix holds keys *and* values.",
}


q4 = Question(
    title="Q4 a prefix on a grouped-query model",
    grader=grade_number(Q4_EXPECTED, what="parameter count", known_wrong=Q4_MISTAKES),
    nudge="Each layer gets l keys and l values. How many key/value heads does SmolLM2 have, and how wide is each?",
    recipe='2 (keys and values) x layers x l x key/value heads x head width.',
)

# ----------------------------------------------------------------------------- Q5: LoRA on the MLP, in the LLM

Q5_TARGETS, Q5_RANK, Q5_ALPHA = ("gate_proj", "up_proj"), 4, 8
Q5_TRAIN_STEPS = 2


def _ticket_batch(count: int = 2) -> dict[str, torch.Tensor]:
    return llm.collate_lm(_tokenizer(), list(_tickets(count)))


def _grade_lora_in_llm(function) -> None:
    assert_not_the_package(function, (lora, "add_lora"))
    model = copy.deepcopy(_base_llm())
    with blocked((lora, "add_lora"), (lora, "LoRALinear")):
        mine = function(model, Q5_TARGETS, Q5_RANK, Q5_ALPHA)  # first: an untouched stub stops here, cheaply
    assert isinstance(mine, dict), "Return the new layers in a dict: {module name: layer}."
    reference = copy.deepcopy(_base_llm())
    theirs = lora.add_lora(reference, Q5_TARGETS, r=Q5_RANK, alpha=Q5_ALPHA, seed=0)
    assert set(mine) == set(theirs), (f"You adapted {len(mine)} layers; {len(theirs)} gate_proj and up_proj layers "
                                      "should be adapted (every layer of the model).")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(name.split(".")[-1] in ("lora_A", "lora_B") for name in trainable), (
        "Parameters other than lora_A / lora_B are still trainable: freeze the base model.")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, layer in mine.items():
            assert layer.lora_A.shape == theirs[name].lora_A.shape and layer.lora_B.shape == theirs[name].lora_B.shape, (
                f"{name}: lora_A should be (r, d_in) and lora_B (d_out, r).")
            layer.lora_A.copy_(theirs[name].lora_A)
            theirs[name].lora_B.copy_(0.02 * torch.randn(theirs[name].lora_B.shape, generator=generator))
            layer.lora_B.copy_(theirs[name].lora_B)
    batch = _ticket_batch()
    losses = {}
    for label, candidate in (("yours", model), ("package", reference)):
        losses[label] = llm.answer_loss(candidate, batch)
        losses[label].backward()
    difference = abs(losses["yours"].item() - losses["package"].item())
    if difference > 1e-4:
        _diagnose_scale(mine, theirs, model, batch, losses["package"].item())
        raise AssertionError(f"The loss on two real tickets differs from the package's LoRA by {difference:.2g}.")
    for matrix in ("lora_A", "lora_B"):
        for name, layer in mine.items():
            grad = getattr(layer, matrix).grad
            assert grad is not None, (f"No gradient reached {name}.{matrix}: is the LoRA path cut from the graph "
                                      "(.detach(), .data, torch.no_grad)?")
            assert torch.allclose(grad, getattr(theirs[name], matrix).grad, atol=1e-5, rtol=1e-3), (
                f"The outputs agree but the gradient of {name}.{matrix} does not.")
    # A few AdamW steps on the same two tickets, from the same start: your LoRA must learn like the package's.
    package_run = trained_losses(reference, batch, Q5_TRAIN_STEPS, lr=1e-3, loss_of=llm.answer_loss)
    with blocked((lora, "add_lora"), (lora, "LoRALinear")):
        your_run = trained_losses(model, batch, Q5_TRAIN_STEPS, lr=1e-3, loss_of=llm.answer_loss)
    assert_trains_alike(your_run, package_run, what="your LoRA")


def _diagnose_scale(mine, theirs, model, batch, expected: float) -> None:
    """Recognise the classic mistake: alpha instead of alpha / r (an update r times too large)."""
    with torch.no_grad():
        for name, layer in mine.items():
            layer.lora_B.mul_(1 / Q5_RANK)
        rescaled = llm.answer_loss(model, batch).item()
        for name, layer in mine.items():
            layer.lora_B.mul_(Q5_RANK)
    if abs(rescaled - expected) < 1e-4:
        raise AssertionError("Your update is r times too large: the scale is alpha / r, not alpha.")


q5 = Question(
    title="Q5 LoRA on the feed-forward layers of the real LLM, trained 2 steps",
    grader=_grade_lora_in_llm,
    nudge="Lesson 07 section 5 wraps q_proj and v_proj; here the targets, r and alpha differ. Keep each base "
         "layer frozen, start B at zero, scale the update by alpha / r, and put each new layer where the old "
         "one was (peft_teach.methods.inject.find_modules and replace_module).",
    recipe="Write an nn.Module holding the frozen base linear, A (random, small) and B (zeros), forward = "
           "base(x) + (alpha / r) * B(A(x)); replace every target projection in all 30 layers; freeze "
           "everything else.",
)

# ----------------------------------------------------------------------------- Q6: the answer loss


def _grade_answer_loss(function) -> None:
    assert_not_the_package(function, (llm, "answer_loss"))
    batch = _ticket_batch(3)
    with torch.no_grad():
        logits = _base_llm()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    expected = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)
    with blocked((llm, "answer_loss")):
        result = function(logits.clone(), labels.clone())
    assert isinstance(result, torch.Tensor) and result.dim() == 0, "Return the loss as a scalar tensor."
    unshifted = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
    if torch.isclose(result, unshifted, atol=1e-4):
        raise AssertionError("The logits at position t are compared with the label at t; they predict the token at t + 1.")
    assert torch.isclose(result, expected, atol=1e-4, rtol=0), (
        "The loss differs from the mean cross-entropy over the answer tokens of these three real tickets.")


q6 = Question(
    title="Q6 the loss on the answer tokens",
    grader=_grade_answer_loss,
    nudge="Shift before comparing: logits[:, :-1] predict labels[:, 1:]. Positions labelled -100 must not "
         "count, neither in the sum nor in the number you divide by.",
    recipe="Shift: logits[:, :-1] and labels[:, 1:]; flatten both; cross_entropy with ignore_index=-100 (it "
           "averages over the counted positions only).",
)

QUESTIONS = {"q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q6": q6}


register("07_peft_on_a_language_model.ipynb", globals())  # q.solution() finds the solved code by these names
