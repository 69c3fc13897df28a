"""Graded questions of the bottleneck adapters practice notebook
(solutions/01_bottleneck_adapters.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
Q5 runs the real all-MiniLM-L6-v2 with three adapters; its reference step is taken by
the grader on an identical copy of the model when the check runs.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from types import SimpleNamespace

import torch

from peft_teach.checks import Question, grade_function, grade_number, multiple_choice, register
from peft_teach.methods import adapters
from peft_teach.methods.adapters import BottleneckAdapter
from peft_teach.models import build_classifier
from peft_teach.questions.real_inputs import grade_in_the_model, review_batch

# ----------------------------------------------------------------- Q1: adapter forward


def _forward_inputs() -> tuple:
    generator = torch.Generator().manual_seed(11)
    d, m = 8, 3
    hidden = torch.randn(2, 4, d, generator=generator)
    return (hidden, torch.randn(m, d, generator=generator), torch.randn(m, generator=generator),
            torch.randn(d, m, generator=generator), torch.randn(d, generator=generator))


def _forward_reference(hidden, w_down, b_down, w_up, b_up) -> torch.Tensor:
    return hidden + torch.relu(hidden @ w_down.T + b_down) @ w_up.T + b_up


q1 = Question(
    title="Q1 the adapter's forward pass",
    grader=grade_function(_forward_inputs, _forward_reference, known_wrong={
        "the adapter without its residual connection (+ hidden)":
            lambda h, wd, bd, wu, bu: torch.relu(h @ wd.T + bd) @ wu.T + bu,
        "the adapter without its nonlinearity":
            lambda h, wd, bd, wu, bu: h + (h @ wd.T + bd) @ wu.T + bu,
    }),
    nudge="Read the formula term by term. A weight stored as (out, in), like nn.Linear's, has to be "
         "transposed to act on the last dimension of a (batch, tokens, d) tensor.",
    recipe='bottleneck = relu(hidden @ w_down.T + b_down); return hidden + bottleneck @ w_up.T + b_up.',
)

# ----------------------------------------------------------------- Q2: Houlsby parameter count

q2 = Question(
    title="Q2 Houlsby adapters on MiniLM",
    grader=grade_number(2 * 6 * (2 * 384 * 32 + 32 + 384), what="parameter count"),  # reduction factor 12: m = 32
    nudge="One adapter has 2md + m + d parameters; count how many adapters each layer gets "
         "with this placement, and how many layers there are.",
    recipe="Houlsby puts two adapters in each of the 6 layers; each has 2 m d + m + d parameters with m = 384 / 12 "
           "= 32 and d = 384.",
)

# ----------------------------------------------------------------- Q3: storage per task

q3 = Question(
    title="Q3 bytes to store one task",
    grader=grade_number(4 * (6 * (2 * 384 * 48 + 48 + 384) + 5 * 384 + 5), what="number of bytes"),  # m = 48, 5 classes
    nudge="A task is everything save_adapter writes for it: its adapters in every layer and its own "
         "head. Count values first, then bytes.",
    recipe="Values: one adapter per layer with m = 384 / 8 = 48 (2 m d + m + d each) plus the head (384 x 5 + 5); "
           "bytes: 4 per float32 value.",
)

# ----------------------------------------------------------------- Q4: near-identity init


def _grade_init(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    adapter = BottleneckAdapter(16, 4, seed=3)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0.0, 0.5)
    result = function(adapter)
    assert result is None or result is adapter, "Change the adapter in place."
    hidden = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(adapter(hidden), hidden, atol=1e-6), "The adapter does not return its input unchanged."
    assert adapter.down.weight.abs().sum() > 0, (
        "Every down-projection weight is zero: then the up-projection gets no gradient and nothing can learn.")


q4 = Question(
    title="Q4 start as the identity",
    grader=_grade_init,
    nudge="The added term must vanish for every input h. Ask which parameters can be zero without "
         "cutting off the gradient of the others: what is each projection's gradient multiplied by?",
    recipe="Under torch.no_grad(), zero the up-projection's weight and bias; leave the down-projection random"
           " so the gradient reaching W_up is not zero.",
)

# ----------------------------------------------------------------- Q5: what moves after one step (real model)

TASKS = (("sentiment", 2), ("aspect", 4), ("topic", 4))  # three task adapters, each with its own head
LEARNING_RATE = 0.1


def library_model() -> torch.nn.Module:
    """The real MiniLM classifier with three fresh Pfeiffer adapters; ``aspect`` active and trainable."""
    model = build_classifier(2, seed=0)
    for name, classes in TASKS:
        adapters.add_adapter(model, name, num_labels=classes)
    adapters.train_adapter(model, "aspect")
    return model


def _reference_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> set[str]:
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
    optimizer.step()
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


def _grade_moved(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    model = library_model()
    twin = copy.deepcopy(model)  # the grader's own step runs on an identical copy
    batch = review_batch("aspect", count=8, with_labels=True)
    result = function(model, dict(batch))
    assert isinstance(result, (list, tuple, set)) and all(isinstance(name, str) for name in result), (
        "Return the names of the tensors that changed, as a list of strings.")
    names = {name for name, _ in model.named_parameters()}
    unknown = set(result) - names
    assert not unknown, (
        f"{len(unknown)} of your names are not parameter names of the model (use model.named_parameters()).")
    expected = _reference_step(twin, batch)
    extra, missing = set(result) - expected, expected - set(result)
    assert not extra, f"{len(extra)} of the tensors you list did not change in the grader's step."
    assert not missing, f"{len(missing)} tensors that changed in the grader's step are missing from your list."


q5 = Question(
    title="Q5 what moves after one step, on the real model",
    grader=_grade_moved,
    nudge="Trainable is not the same as moved: a tensor moves only if its update is non-zero. Use plain "
         "SGD as asked (AdamW's weight decay would shift every trainable tensor), and compare values "
         "before and after the step rather than requires_grad flags.",
    recipe="Copy every trainable tensor, run one forward and backward, take one torch.optim.SGD step, then "
           "list the names whose tensor changed (torch.equal is False).",
)

# ----------------------------------------------------------------- Q6: explain the measurement

q6 = multiple_choice(
    title='Q6 explain the Q5 measurement',
    right="Their gradient is exactly zero at the first step: it flows back through W_up, which starts at "
          "zero.",
    wrong=(
        "train_adapter switched gradients on for the up-projections and the head only, not for the rest.",
        "The ReLU inside the adapter blocks every gradient that would reach the down-projection's "
        "weights.",
        "The learning rate is too small for a single step's change to show up in float32 numbers at all.",
    ),
    nudge="Look at requires_grad and at .grad of a tensor that did not move: which options do they rule "
          "out? Then follow the chain rule from the adapter's output back to that tensor.",
    recipe="Check which tensors did not move against the chain rule: the gradient of W_down goes through "
           "W_up, which is zero at the first step.",
)

# ----------------------------------------------------------------- Q7: your adapter inside the real model

# Not the lesson's settings: Houlsby placement (two adapters per layer), m = d / 8 = 48, and a scale s.
Q7_CONFIG = adapters.AdapterConfig("houlsby", reduction_factor=8, scaling=0.5)


def houlsby_model() -> torch.nn.Module:
    """MiniLM with Houlsby adapters (rf 8, s = 0.5), their up-projections random so every adapter changes its layer."""
    model = build_classifier(2, seed=0)
    adapters.add_adapter(model, "task", Q7_CONFIG, seed=0)
    generator = torch.Generator().manual_seed(17)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".adapters.task.up." in name:
                parameter.normal_(0.0, 0.05, generator=generator)  # a fresh adapter's W_up is 0: nothing to test
    return model.eval()


@contextmanager
def adapters_replaced_by(model: torch.nn.Module, function):
    """Every adapter of ``model`` runs ``function(maps, a)`` instead of the package's forward.

    ``maps`` holds only the adapter's two linear maps and its scale, so the function cannot
    call the package's adapter. The fusion-ready code path reads the adapter's change, so the
    change is the learner's output minus what the adapter read.
    """
    layers = [point.adapters["task"] for point in adapters.adapter_layers(model).values()]
    for layer in layers:
        maps = SimpleNamespace(down=layer.down, up=layer.up, scaling=layer.scaling)
        layer.delta = lambda a, maps=maps: function(maps, a) - a
    try:
        yield
    finally:
        for layer in layers:
            del layer.delta  # the package's own again


def _no_residual(maps, a):
    return maps.scaling * maps.up(torch.relu(maps.down(a)))


def _no_scale(maps, a):
    return a + maps.up(torch.relu(maps.down(a)))


def _no_nonlinearity(maps, a):
    return a + maps.scaling * maps.up(maps.down(a))


Q7_MISTAKES = {
    "an adapter without its residual connection (+ a)": _no_residual,
    "an adapter without its scale s": _no_scale,
    "an adapter without its nonlinearity": _no_nonlinearity,
}


def _grade_adapter_in_the_model(function) -> None:
    grade_in_the_model(function, houlsby_model, adapters_replaced_by, task="sentiment",
                       block=((BottleneckAdapter, "forward"), (BottleneckAdapter, "delta")),
                       known_wrong=Q7_MISTAKES, train_steps=3)


q7 = Question(
    title="Q7 your adapter inside the real model, trained 3 steps",
    grader=_grade_adapter_in_the_model,
    nudge="Your Q1 formula again, but with the layer's own maps (maps.down and maps.up already add their "
          "biases) and the scale s in front of the adapter's change, not in front of the skip connection.",
    recipe="return a + maps.scaling * maps.up(relu(maps.down(a))).",
)


register("01_bottleneck_adapters.ipynb", globals())  # q.solution() finds the solved code by these names
