"""Graded questions of the AdapterFusion practice notebook
(solutions/02_adapter_fusion.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
Q5 reads a fusion trained on real routing reviews (precomputed); Q6 runs the real
all-MiniLM-L6-v2 with the learner's fusion in every layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import torch

from peft_teach import precomputed
from peft_teach.checks import Question, grade_choice, grade_function, grade_number, multiple_choice, register
from peft_teach.data import SOURCE_TASKS
from peft_teach.methods import adapters, fusion
from peft_teach.models import build_classifier
from peft_teach.questions.real_inputs import grade_in_the_model

# ----------------------------------------------------------------- Q1: attention scores


def _score_inputs() -> tuple:
    generator = torch.Generator().manual_seed(21)
    query = torch.randn(2, 5, 6, generator=generator)      # (B, T, d), already Q h + b
    keys = torch.randn(2, 5, 3, 6, generator=generator)    # (B, T, N, d), already K z_n + b
    return query, keys


def _score_reference(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    return torch.softmax((query.unsqueeze(2) * keys).sum(-1), dim=-1)


q1 = Question(
    title="Q1 attention over adapters",
    grader=grade_function(_score_inputs, _score_reference, known_wrong={
        "a softmax over the tokens instead of the adapters": lambda q, k: torch.softmax(
            (q.unsqueeze(2) * k).sum(-1), dim=1),
        "scaling the dot products by 1/sqrt(d) (AdapterFusion does not)": lambda q, k: torch.softmax(
            (q.unsqueeze(2) * k).sum(-1) / q.shape[-1] ** 0.5, dim=-1),
    }),
    nudge="One dot product per token and adapter (over the last dimension), then a softmax "
         "over the adapter dimension, not over tokens.",
    recipe="logits = einsum over the feature dimension of query (b, t, d) and keys (b, t, n, d) giving (b, t,"
           " n); softmax over the last dimension.",
)

# ----------------------------------------------------------------- Q2: weighted sum


def _mix_inputs() -> tuple:
    generator = torch.Generator().manual_seed(22)
    weights = torch.softmax(torch.randn(2, 5, 3, generator=generator), dim=-1)
    values = torch.randn(2, 5, 3, 6, generator=generator)
    return weights, values


def _mix_reference(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return (weights.unsqueeze(-1) * values).sum(dim=2)


q2 = Question(
    title="Q2 mix the adapters' values",
    grader=grade_function(_mix_inputs, _mix_reference),
    nudge="Each token's output is a weighted average of its N value vectors: broadcast the "
         "weights over the feature dimension and sum over adapters.",
    recipe="einsum('btn,btnd->btd', weights, values): multiply each value by its weight and sum over adapters.",
)

# ----------------------------------------------------------------- Q3: fusion parameters on BERT-base

q3 = Question(
    title="Q3 fusion parameters per layer, d = 768",
    grader=grade_number(3 * 768 * 768 + 2 * 768, what="parameter count"),
    nudge="Query and key are d x d with a bias each; the value matrix is d x d without bias.",
    recipe='Query and key: d x d weights plus a bias of d each; value: d x d without bias. Add the three.',
)

# ----------------------------------------------------------------- Q4: scaling with N

q4 = multiple_choice(
    title='Q4 more adapters, more fusion parameters?',
    right="It stays the same: Q, K and V are d x d maps that do not depend on how many adapters are fused.",
    wrong=(
        "It doubles: every fused adapter brings its own key and value maps, so twice the adapters, twice.",
        "It grows by one d x d matrix per extra adapter: each new adapter needs a value map of its own.",
    ),
    nudge="Look at the shapes of Q, K and V: does any of them depend on the number of adapters?",
    recipe="Write out the shapes of Q, K and V: each is d x d (plus biases), whatever the number of "
           "adapters.",
)

# ----------------------------------------------------------------- Q5: read a real heatmap


def stored_fusion_weights() -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """A fusion trained with lesson 02's recipe (seed 0), run on real routing test reviews (precomputed: fusion_heatmap).

    Returns the weights (reviews, layers, adapters), each review's label, the adapter names
    and the class names.
    """
    stored = precomputed.load("fusion_heatmap")["results"]
    return (torch.tensor(stored["weights"]), torch.tensor(stored["labels"]), stored["adapters"], stored["classes"])


def _top_layer_favourite_for_no_action() -> str:
    weights, labels, adapter_names, classes = stored_fusion_weights()
    return adapter_names[int(weights[labels == classes.index("no_action"), -1].mean(dim=0).argmax())]


def _grade_heatmap_reading(answer) -> None:
    adapter_names = stored_fusion_weights()[2]
    grade_choice(_top_layer_favourite_for_no_action(), tuple(adapter_names))(answer)


q5 = Question(
    title="Q5 read a trained fusion's weights",
    grader=_grade_heatmap_reading,
    nudge="Keep only the reviews the question is about, then average their weights in that one layer; "
         "the largest mean names the adapter.",
    recipe="Select the rows whose label is the class asked about, take the weights of the last layer, average"
           " over those rows, and name the adapter with the largest mean.",
)

# ----------------------------------------------------------------- Q6: fusion by hand (real model)


def _fusion_model() -> torch.nn.Module:
    """MiniLM with four adapters and a fusion over them, perturbed so that every part of the fusion matters.

    Freshly added adapters change nothing (their up-projection starts at zero) and a fresh
    fusion is nearly uniform with V = I; random weights make a forgotten key, value or
    softmax show up in the logits.
    """
    model = build_classifier(5, seed=0)  # the five routing teams
    for i, name in enumerate(SOURCE_TASKS):
        adapters.add_adapter(model, name, adapters.AdapterConfig("pfeiffer"), seed=i)
    fusion.add_fusion(model, list(SOURCE_TASKS), seed=0)
    generator = torch.Generator().manual_seed(26)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".adapters." in name and ".up." in name:
                parameter.normal_(0.0, 0.05, generator=generator)
            elif ".fusions." in name and (".query." in name or ".key." in name):
                parameter.normal_(0.0, 0.1, generator=generator)  # the largest of 4 weights averages 0.43: peaked, not one-hot
            elif ".fusions." in name and ".value." in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


@contextmanager
def fusion_replaced_by(model: torch.nn.Module, function):
    """Every layer's fusion runs ``function(maps, hidden, deltas)``; ``maps`` holds only its three linear maps,
    so the function cannot call the package's fusion."""
    layers = fusion.fusion_layers(model, fusion.fusion_name(list(SOURCE_TASKS)))
    for layer in layers:
        maps = SimpleNamespace(query=layer.query, key=layer.key, value=layer.value)
        layer.forward = lambda hidden, deltas, maps=maps: function(maps, hidden, deltas)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the package's forward


def _scaled_scores(maps, hidden, deltas):
    weights = torch.softmax((maps.query(hidden).unsqueeze(2) * maps.key(deltas)).sum(-1) / hidden.shape[-1] ** 0.5, -1)
    return (weights.unsqueeze(-1) * maps.value(deltas)).sum(2)


def _softmax_over_tokens(maps, hidden, deltas):
    weights = torch.softmax((maps.query(hidden).unsqueeze(2) * maps.key(deltas)).sum(-1), dim=1)
    return (weights.unsqueeze(-1) * maps.value(deltas)).sum(2)


def _no_value_map(maps, hidden, deltas):
    weights = torch.softmax((maps.query(hidden).unsqueeze(2) * maps.key(deltas)).sum(-1), dim=-1)
    return (weights.unsqueeze(-1) * deltas).sum(2)


Q6_MISTAKES = {
    "scaling the dot products by 1/sqrt(d) (AdapterFusion does not)": _scaled_scores,
    "a softmax over the tokens instead of the adapters": _softmax_over_tokens,
    "mixing the adapters' changes without the value map V": _no_value_map,
}


def _grade_fusion_in_the_model(function) -> None:
    grade_in_the_model(function, _fusion_model, fusion_replaced_by, task="routing",
                       known_wrong=Q6_MISTAKES, train_steps=3)


q6 = Question(
    title="Q6 your fusion inside the real model, trained 3 steps",
    grader=_grade_fusion_in_the_model,
    nudge="The layer's three maps give you the query, the keys and the values; Q1 and Q2 already do the rest. "
         "Which of the two inputs does each map read?",
    recipe="query = layer.query(hidden); keys = layer.key(deltas); values = layer.value(deltas); weights = "
           "your Q1 function; return your Q2 mix of the values.",
)


register("02_adapter_fusion.ipynb", globals())  # q.solution() finds the solved code by these names
