"""Graded questions for solutions/00_setup_and_baselines.ipynb.

Each ``Question`` grades one task; failure messages help without giving the answer.
Q4 and Q6 run the real all-MiniLM-L6-v2 classifier; their references are computed by
the package when the check runs.
"""

from __future__ import annotations

import copy

import torch

from .. import models
from ..checks import Question, blocked, grade_function, grade_number, multiple_choice, register
from ..models import SequenceClassifier, build_classifier, mean_pool
from .real_inputs import (assert_same_gradients, assert_same_logits, assert_trains_alike,
                          gradients_of, probe_loss, review_batch, trained_losses)

# ----------------------------------------------------------------- Q1: mean pooling


def _pool_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    return hidden, mask


# Classic wrong answers, each told by name.
POOLING_MISTAKES = {
    "averaging over every position, padding included": lambda hidden, mask: hidden.mean(dim=1),
    "zeroing the padding but dividing by the padded length": lambda hidden, mask: (
        hidden * mask.unsqueeze(-1)).sum(dim=1) / mask.shape[1],
}

q1 = Question("Q1 mean pooling", grade_function(_pool_inputs, mean_pool, block=((models, "mean_pool"),),
                                                known_wrong=POOLING_MISTAKES),
              "Padding positions must add nothing to the sum, and each example is an average over its "
              "own real tokens, not over the padded length. Check how a (batch, tokens) mask can "
              "broadcast against (batch, tokens, d) states.",
              recipe="Turn the mask into floats of shape (batch, tokens, 1); multiply the states by it; sum "
                     "over the token dimension; divide by the mask's sum over tokens (at least 1).")

# ----------------------------------------------------------------- Q2, Q3: counting

q2 = Question("Q2 head parameters for routing", grade_number(384 * 5 + 5, what="parameter count"),
              "A linear layer from d inputs to C outputs has a weight matrix and a bias vector.",
              recipe='Weights: inputs x outputs = 384 x 5; biases: one per output; add them.')
q3 = Question("Q3 AdamW state in bytes", grade_number(2 * 22_713_216 * 4, what="number of bytes"),
              "Count the tensors AdamW keeps per trained parameter (the weight itself and its gradient "
              "are not part of its state), and the bytes of one float32 number.",
              recipe="AdamW keeps two float32 tensors per parameter (the first and second moment): 2 x "
                     "parameters x 4 bytes.")

# ----------------------------------------------------------------- Q4: freeze the real classifier


def _grade_freeze(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    model = build_classifier(5, seed=0)  # the real MiniLM classifier for `routing`; everything trains at first
    result = function(model)
    assert result is None or result is model, "Change the model in place (return nothing or the model)."
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    head = {f"head.{name}" for name, _ in model.head.named_parameters()}
    assert trainable, "Nothing is trainable any more: the head must still learn."
    assert head <= trainable, "Part of the head is frozen: the head must still learn."
    encoder = sum(p.numel() for name, p in model.named_parameters() if name in trainable - head)
    assert not encoder, f"{encoder:,} encoder parameters would still receive gradients."


q4 = Question("Q4 freeze all but the head", _grade_freeze,
              "Every parameter carries its own requires_grad flag, and a fresh model has it on everywhere. "
              "Which parameters should keep it on, and how do you reach exactly those?",
              recipe="Loop over model.parameters() setting requires_grad_(False), then loop over "
                     "model.head.parameters() setting it back to True.")

# ----------------------------------------------------------------- Q5: explain a result

q5 = multiple_choice(
    title='Q5 why head-only fails',
    right="Frozen, averaged features mostly record which words occur; the label hinges on negation and "
          "contrast.",
    wrong=(
        "The head trained too briefly: more epochs on the same frozen features would close most of the "
        "gap.",
        "The labels are noisy: no classifier, however it is trained, can score much above 60 % on them.",
        "The head's learning rate was too high, so it kept jumping past the weights that would fit best.",
    ),
    nudge="Each option predicts something you can check in lesson 00: what would more epochs change in the "
          "head-only learning curve, and what does full fine-tuning's accuracy on the same labels say about"
          " them?",
    recipe="Rule out each option with a measurement of lesson 00: the head-only curve has flattened, and "
           "full fine-tuning reaches about 99 % on the same labels.",
)

# ----------------------------------------------------------------- Q6: the classifier by hand


# Calling the model, or the package's pooling, would answer the task without taking the model apart.
WHOLE_CLASSIFIER = ((SequenceClassifier, "forward"), (SequenceClassifier, "features"), (models, "mean_pool"))


CLASSIFY_TRAIN_STEPS = 3


def _grade_classify(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    model = build_classifier(2, seed=0)  # eval mode: the dropout before the head is off
    start = copy.deepcopy(model)  # both training runs below begin here
    batch = review_batch("sentiment", count=8, with_labels=True)
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    parameters = dict(model.named_parameters())  # a fresh classifier trains everything
    expected = model(**inputs)
    probe_loss(expected).backward()
    theirs = gradients_of(parameters)
    with blocked(*WHOLE_CLASSIFIER):
        result = function(model, inputs)
    assert_same_logits(result, expected.detach(), 1e-5, whose="the classifier's own")
    probe_loss(result).backward()  # the same function must also train: gradients for the encoder and the head
    assert_same_gradients(gradients_of(parameters), theirs, atol=1e-5)
    # Full fine-tuning for a few steps, once through the classifier's forward and once through yours.
    package_run = trained_losses(copy.deepcopy(start), batch, CLASSIFY_TRAIN_STEPS, lr=1e-4)

    def your_loss(model, batch):
        return torch.nn.functional.cross_entropy(function(model, inputs), batch["labels"])

    with blocked(*WHOLE_CLASSIFIER):
        your_run = trained_losses(start, batch, CLASSIFY_TRAIN_STEPS, lr=1e-4, loss_of=your_loss)
    assert_trains_alike(your_run, package_run, what="your classifier")


q6 = Question("Q6 the classifier by hand, on real reviews, trained 3 steps", _grade_classify,
              "Follow a batch through SequenceClassifier: what does the backbone need besides the token ids, "
              "what does it return, which positions may the average include, and what comes last? "
              "Compare your intermediate shapes with the lesson's section 4.",
              recipe="hidden = model.backbone(input_ids=..., attention_mask=...).last_hidden_state; pool it "
                     "with my_mean_pool and the mask; return model.head(pooled).")


register("00_setup_and_baselines.ipynb", globals())  # q.solution() finds the solved code by these names
