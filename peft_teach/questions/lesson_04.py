"""Graded questions of the Prefix-Tuning+ practice notebook
(solutions/04_prefix_tuning_plus.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
Q6 runs the real all-MiniLM-L6-v2 with a prefix; its reference is what the package's
``record_prefix_attention`` measures when the check runs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from peft_teach.checks import Question, blocked, grade_choice, grade_function, grade_number, register
from peft_teach.methods import prefix, prefix_plus
from peft_teach.methods.prefix import add_prefix, record_prefix_attention
from peft_teach.models import build_classifier
from peft_teach.questions.real_inputs import attention_function_replaced, grade_in_the_model, review_ids

# ----------------------------------------------------------------- Q1: dilution by length

# Prefix length 10, 118 real tokens, every attention logit equal: the prefix's share.
Q1_EXPECTED = 10 / (10 + 118)

q1 = Question(
    title="Q1 the prefix share when all logits are equal",
    grader=grade_number(Q1_EXPECTED, tol=1e-4, what="share"),
    nudge="What does a softmax return when all of its inputs are equal? Then count the keys a "
         "query can see, and how many of them belong to the prefix.",
    recipe='Equal logits give a uniform softmax over all l + T keys; the prefix holds l of them.',
)

# ----------------------------------------------------------------- Q2: the gate lambda


def _gate_inputs() -> tuple:
    generator = torch.Generator().manual_seed(42)
    query = torch.randn(5, 8, generator=generator)  # (T, d_head)
    prefix_keys = torch.randn(3, 8, generator=generator)  # (l, d_head)
    keys = torch.randn(5, 8, generator=generator)  # (T, d_head)
    return query, prefix_keys, keys


def _gate_reference(query, prefix_keys, keys) -> torch.Tensor:
    scale = query.shape[-1] ** -0.5
    prefix = torch.exp(query @ prefix_keys.T * scale).sum(-1)
    tokens = torch.exp(query @ keys.T * scale).sum(-1)
    return prefix / (prefix + tokens)


q2 = Question(
    title="Q2 the unified view's gate lambda(x)",
    grader=grade_function(_gate_inputs, _gate_reference),
    nudge="Compare your code with the formula piece by piece: are the dot products scaled as in "
         "attention, and does the denominator hold the prefix keys as well as the real keys? "
         "Lesson 03's Q4 computed the same kind of share.",
    recipe="Scale the dot products by d_head ** -0.5, exponentiate the prefix scores and the real scores, and"
           " divide the prefix mass by the total over both.",
)

# ----------------------------------------------------------------- Q3: memory read


def _read_inputs() -> tuple:
    generator = torch.Generator().manual_seed(43)
    query = torch.randn(2, 3, 4, 6, generator=generator)  # (B, heads, T, d_head)
    memory = torch.randn(3, 6, 6, generator=generator)  # (heads, d_head, d_head)
    return query, memory


def _read_reference(query, memory) -> torch.Tensor:
    return torch.einsum("bhtd,hde->bhte", torch.nn.functional.elu(query), memory)


q3 = Question(
    title="Q3 the Prefix-Tuning+ memory read",
    grader=grade_function(_read_inputs, _read_reference, block=((prefix_plus, "memory_read"),), known_wrong={
        "phi applied to the read instead of to the query": lambda q, m: torch.nn.functional.elu(
            torch.einsum("bhtd,hde->bhte", q, m)),
        "the memory read as M^T": lambda q, m: torch.einsum("bhtd,hed->bhte", torch.nn.functional.elu(q), m),
        "no feature map phi at all": lambda q, m: torch.einsum("bhtd,hde->bhte", q, m),
    }),
    nudge="Where does phi act: on the queries or on the memory? Head h must read only its own "
         "M_h: check that your product pairs the head dimensions instead of mixing them (a wrong "
         "broadcast can still give the right shape).",
    recipe="features = elu(query) (phi acts on the queries); multiply each head's features by that head's own"
           " memory with einsum over d_head, keeping the head dimension.",
)

# ----------------------------------------------------------------- Q4: parameter count

# Per-head memory on all-MiniLM-L6-v2: 6 layers, 12 heads of size 32.
Q4_EXPECTED = 6 * 12 * 32 * 32

q4 = Question(
    title="Q4 Prefix-Tuning+ parameter count",
    grader=grade_number(Q4_EXPECTED, what="parameter count"),
    nudge="How many memory matrices are there, and how big is one? Its side is the length of the "
         "vector it reads and writes.",
    recipe='One d_head x d_head memory per head and layer: layers x heads x d_head ** 2.',
)

# ----------------------------------------------------------------- Q5: zero init

Q5_OPTIONS = ("the base model", "prefix tuning with a zero prefix", "neither")

q5 = Question(
    title="Q5 what a zero memory reproduces",
    grader=grade_choice("the base model", Q5_OPTIONS),
    nudge="For each method, write what it adds to a head's output when its parameters are zero, "
         "and ask whether anything inside the softmax changes.",
    recipe="With zero parameters a prefix still adds keys to the softmax, while a zero memory adds nothing: "
           "which model is left?",
)

# ----------------------------------------------------------------- Q6: the gate on real text (real model)

PREFIX_LENGTH = 16  # the lesson's budget
# A short review and a long one cut to 128 tokens: the same gate, two input lengths.
GATE_INPUTS = (("sentiment", None), ("sentiment_long", 128))


def prefixed_model() -> torch.nn.Module:
    """The real MiniLM classifier with a fresh (untrained, seeded) prefix of length 16, in eval mode."""
    model = build_classifier(2, seed=0)
    add_prefix(model, length=PREFIX_LENGTH, seed=0)
    return model.eval()


def _grade_layer_gate(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    model = prefixed_model()
    for task, max_length in GATE_INPUTS:
        input_ids = review_ids(task, max_length=max_length)
        with torch.no_grad(), record_prefix_attention() as recorded:
            model(input_ids=input_ids)
        for layer in sorted(recorded):  # every layer: each reads its own prefix and its own input
            expected = recorded[layer][0]  # the only example: (heads, T)
            with torch.no_grad(), blocked((prefix, "record_prefix_attention")):  # the recorder would answer it
                result = function(model, input_ids, layer)
            assert isinstance(result, torch.Tensor), f"Return a tensor, not {type(result).__name__}."
            assert result.shape == expected.shape, (
                f"For a review of {input_ids.shape[1]} tokens the output shape is {tuple(result.shape)}, "
                f"not the expected {tuple(expected.shape)}: one gate per head and token.")
            assert torch.allclose(result, expected, atol=1e-5, rtol=0), (
                f"For a review of {input_ids.shape[1]} tokens your gates in layer {layer} differ from the "
                "attention mass the model itself puts on that layer's prefix.")


q6 = Question(
    title="Q6 the gate lambda(x) on real text, in every layer",
    grader=_grade_layer_gate,
    nudge="Your gate from Q2 needs each head's own queries, real keys and prefix keys. Which tensor "
         "does this layer's attention read, what do its query and key layers make of it, how are 384 "
         "features split into heads, and whose prefix keys does it see?",
    recipe="Run the backbone with output_hidden_states=True: hidden_states[layer] is what that layer's "
           "attention reads. Compute its queries and keys, split 384 features into 12 heads of 32, take "
           "that layer's prefix keys, and apply your Q2 gate per head.",
)

# ----------------------------------------------------------------- Q7: Prefix-Tuning+ by hand (real model)

Q7_PHI = "elu+1"  # not the lesson's elu: a feature map that is never negative, as in linear attention


def memory_model() -> torch.nn.Module:
    """MiniLM with a Prefix-Tuning+ memory (phi = elu + 1), filled with seeded random values.

    A fresh memory is exactly zero and would hide every mistake in the read.
    """
    model = build_classifier(2, seed=0)
    prefix_plus.add_prefix_plus(model, phi=Q7_PHI)
    with torch.no_grad():
        model.prefix_memory.memory.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(47))
    return model.eval()


@contextmanager
def memory_read_replaced_by(model: torch.nn.Module, function):
    """Every layer runs the model's own attention, then ``function(query, attention_output, memory, layer)``.

    The function gets the whole memory table (all layers) and the layer's number.
    """
    memory = model.prefix_memory.memory  # the trainable (L, heads, d_head, d_head) parameter itself

    def attention(module, query, key, value, attention_mask, **kwargs):
        output, weights = prefix.model_eager_attention(module)(module, query, key, value, attention_mask, **kwargs)
        return function(query, output, memory, module.layer_idx), weights

    with attention_function_replaced(prefix_plus.ATTENTION_NAME, attention):
        yield


def _read(query, output, memory, phi):
    return output + torch.einsum("bhtd,hde->bhte", phi(query), memory).transpose(1, 2)


def _elu_not_elu_plus_one(query, output, memory, layer):
    return _read(query, output, memory[layer], torch.nn.functional.elu)


def _layer_zero_everywhere(query, output, memory, layer):
    return _read(query, output, memory[0], lambda x: torch.nn.functional.elu(x) + 1)


def _memory_transposed(query, output, memory, layer):
    return _read(query, output, memory[layer].transpose(-1, -2), lambda x: torch.nn.functional.elu(x) + 1)


def _phi_on_the_read(query, output, memory, layer):
    read = torch.einsum("bhtd,hde->bhte", query, memory[layer])
    return output + (torch.nn.functional.elu(read) + 1).transpose(1, 2)


Q7_MISTAKES = {
    "phi = elu (the lesson's map) instead of elu + 1": _elu_not_elu_plus_one,
    "layer 0's memory used in every layer": _layer_zero_everywhere,
    "the memory read as M^T (phi(q) must multiply M from the left: phi(q)^T M)": _memory_transposed,
    "phi applied to the read instead of to the query": _phi_on_the_read,
}


def _grade_memory_in_the_model(function) -> None:
    grade_in_the_model(function, memory_model, memory_read_replaced_by, task="sentiment",
                       block=((prefix_plus, "memory_read"), (prefix_plus, "prefix_plus_attention"),
                              (prefix_plus.PrefixMemory, "layer_memory")),
                       known_wrong=Q7_MISTAKES, train_steps=3)


q7 = Question(
    title="Q7 Prefix-Tuning+ inside the real model, trained 3 steps",
    grader=_grade_memory_in_the_model,
    nudge="Your Q3 read, with this layer's memory and phi(x) = elu(x) + 1, added to the attention output. "
          "Mind the layouts: the query is (B, heads, T, d_head), the output (B, T, heads, d_head).",
    recipe="read = einsum('bhtd,hde->bhte', elu(query) + 1, memory[layer]); return attention_output + "
           "read.transpose(1, 2).",
)


register("04_prefix_tuning_plus.ipynb", globals())  # q.solution() finds the solved code by these names
