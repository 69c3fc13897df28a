"""Graded questions of the LoRA practice notebook (solutions/05_lora.ipynb).

Each ``Question`` grades one task; failure messages help without giving the answer.
Q6, Q7 and Q11 run the real all-MiniLM-L6-v2 with the method in place; their reference logits come from
the package's model when the check runs.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from peft_teach.checks import (Question, assert_not_the_package, blocked, grade_function, grade_number, multiple_choice,
                               register)
from peft_teach import quantize
from peft_teach.methods import ia3, lora
from peft_teach.models import build_classifier
from peft_teach.methods.inject import replace_module
from peft_teach.questions.real_inputs import grade_in_the_model, review_batch

# ----------------------------------------------------------------------------- Q1: forward


def _forward_inputs() -> tuple:
    generator = torch.Generator().manual_seed(51)
    d_in, d_out, r = 12, 10, 3
    x = torch.randn(4, 7, d_in, generator=generator)  # (batch, tokens, d_in)
    weight = torch.randn(d_out, d_in, generator=generator)
    bias = torch.randn(d_out, generator=generator)
    lora_a = torch.randn(r, d_in, generator=generator)
    lora_b = torch.randn(d_out, r, generator=generator)  # non-zero, so the LoRA path counts
    return x, weight, bias, lora_a, lora_b, 6.0, r


def _forward_reference(x, weight, bias, lora_a, lora_b, alpha, r) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight, bias) + (alpha / r) * (x @ lora_a.T) @ lora_b.T


q1 = Question(
    title="Q1 LoRA forward pass",
    grader=grade_function(_forward_inputs, _forward_reference, atol=1e-4, known_wrong={
        "scaling by alpha instead of alpha / r": lambda x, w, b, a, bb, alpha, r: (
            torch.nn.functional.linear(x, w, b) + alpha * (x @ a.T) @ bb.T),
        "the low-rank update without the frozen path W0 x + b": lambda x, w, b, a, bb, alpha, r: (
            (alpha / r) * (x @ a.T) @ bb.T),
        "forgetting the scaling alpha / r": lambda x, w, b, a, bb, alpha, r: (
            torch.nn.functional.linear(x, w, b) + (x @ a.T) @ bb.T),
    }),
    nudge="Check each term of the formula on its own: the frozen path is an ordinary linear layer, "
         "the low-rank path must pass through r numbers per token, and the scaling enters once. "
         "Weights are stored (out, in).",
    recipe="frozen = x @ weight.T + bias; update = (x @ lora_a.T) @ lora_b.T; return frozen + (alpha / r) * "
           "update.",
)

# ----------------------------------------------------------------------------- Q2: count

# r = 16 on query, value (384 x 384) and intermediate.dense (384 -> 1536) in 6 layers
Q2_EXPECTED = 6 * (2 * 16 * (384 + 384) + 16 * (384 + 1536))

q2 = Question(
    title="Q2 LoRA parameter count",
    grader=grade_number(Q2_EXPECTED, what="parameter count"),
    nudge="The sizes of A and B depend on the input and output width of the matrix they adapt, "
         "and not every adapted matrix here is square. Count one layer first.",
    recipe="Per adapted matrix r (d_in + d_out): two 384 x 384 matrices and one 384 -> 1536, times 6 layers, "
           "with r = 16.",
)

# ----------------------------------------------------------------------------- Q3: merge


def _merge_inputs() -> tuple:
    generator = torch.Generator().manual_seed(53)
    d_in, d_out, r = 9, 6, 2
    return (torch.randn(d_out, d_in, generator=generator), torch.randn(r, d_in, generator=generator),
            torch.randn(d_out, r, generator=generator), 8.0, r)


def _merge_reference(weight, lora_a, lora_b, alpha, r) -> torch.Tensor:
    return weight + (alpha / r) * lora_b @ lora_a


def _grade_merge(function) -> None:
    inputs = _merge_inputs()
    original = inputs[0].clone()
    grade_function(_merge_inputs, _merge_reference, atol=1e-5)(function)
    function(*inputs)
    assert torch.equal(inputs[0], original), (
        "Your function changed the weight it was given; return a new tensor instead.")


q3 = Question(
    title="Q3 merge LoRA into the weight",
    grader=_grade_merge,
    nudge="W0 has shape (d_out, d_in). Which product of A (r x d_in) and B (d_out x r) has that "
         "shape? Do not forget the scaling.",
    recipe='Return weight + (alpha / r) * (lora_b @ lora_a), a new tensor.',
)

# ----------------------------------------------------------------------------- Q4: energy


def _energy_inputs() -> tuple:
    generator = torch.Generator().manual_seed(54)
    low_rank = torch.randn(30, 3, generator=generator) @ torch.randn(3, 20, generator=generator)
    return low_rank + 0.1 * torch.randn(30, 20, generator=generator), 2


def _energy_reference(matrix, r) -> torch.Tensor:
    singular = torch.linalg.svdvals(matrix)
    return (singular[:r] ** 2).sum() / (singular**2).sum()


q4 = Question(
    title="Q4 energy in the top-r directions",
    grader=grade_function(_energy_inputs, _energy_reference, atol=1e-5),
    nudge="Energy is counted with squared singular values, both for the top r directions and "
         "for the whole matrix. In which order do your singular values come out?",
    recipe="torch.linalg.svdvals gives the singular values largest first; return the sum of the first r "
           "squared over the sum of all squared.",
)

# ----------------------------------------------------------------------------- Q5: read the rank sweep

# Lesson 05's precomputed sweep (peft_teach/precomputed/lora_sweep.json, W_q and W_v, one seed):
# r = 1, 2, 4, 8, 32 -> 0.800, 0.890, 0.907, 0.960, 0.943. The practice notebook prints it from the file.
q5 = multiple_choice(
    title='Q5 what the rank sweep supports',
    right="Accuracy rises up to about r = 8; r = 32, with 4x the parameters, does no better than one seed's"
          " noise.",
    wrong=(
        "r = 1 is enough here, as Hu et al. found on GPT-3: the extra ranks buy nothing on this task at "
        "all.",
        "More rank is always better: the next run should use r = 32 or more to get the highest accuracy.",
    ),
    nudge="Read the table from r = 1 upwards: where does accuracy stop improving? And how large a "
          "difference can a single seed resolve (the lesson says)?",
    recipe="Compare the rank sweep's accuracies with the single-seed resolution the lesson states before "
           "naming a best rank.",
)

# ----------------------------------------------------------------------------- Q6: merge the real model

RANK, ALPHA = 8, 16


def lora_model() -> nn.Module:
    """The real MiniLM classifier with LoRA (r = 8) on query and value; B made non-zero, as training would."""
    model = build_classifier(2, seed=0)
    lora.add_lora(model, ("query", "value"), r=RANK, alpha=ALPHA, seed=0)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.normal_(0.0, 0.05, generator=generator)
    return model.eval()


# The package's merge would answer the task: the learner merges with their own Q3 function.
PACKAGE_MERGE = ((lora, "merge_lora"), (lora.LoRALinear, "merge"), (lora.LoRALinear, "delta_weight"))


def _grade_merge_model(function) -> None:
    assert callable(function), "Pass the function itself (no parentheses)."
    model = lora_model()
    adapted = list(lora.lora_layers(model))
    batch = review_batch("sentiment", count=8)
    with torch.no_grad():
        expected = model(**batch)  # the package's unmerged LoRA model
    base_count = sum(p.numel() for p in model.parameters()) - lora.lora_parameters(model)
    with blocked(*PACKAGE_MERGE):
        result = function(model)
    assert result is None or result is model, "Change the model in place (return nothing or the model)."
    left = lora.lora_layers(model)
    assert not left, f"{len(left)} LoRA layers are still in the model."
    plain = [name for name in adapted if type(model.get_submodule(name)) is nn.Linear]
    assert len(plain) == len(adapted), (
        f"{len(adapted) - len(plain)} of the {len(adapted)} adapted positions do not hold a plain nn.Linear.")
    count = sum(p.numel() for p in model.parameters())
    assert count == base_count, f"The merged model has {count:,} parameters, the base model {base_count:,}."
    with torch.no_grad():
        merged = model(**batch)
    assert torch.allclose(merged, expected, atol=1e-4, rtol=0), (
        "The model's logits on these 8 real reviews changed: the new layers do not compute what the "
        "LoRA layers computed.")


q6 = Question(
    title="Q6 merge LoRA into the real model",
    grader=_grade_merge_model,
    nudge="A merged layer is an ordinary linear layer whose weight already holds the update (your Q3 "
         "function) and whose bias is the frozen one. peft_teach.methods.inject has helpers to find a "
         "module by name and put another in its place.",
    recipe="For each LoRA layer, build an nn.Linear of the same shape, copy in your merged weight and the "
           "frozen bias, and put it in the layer's place with replace_module.",
)

# ----------------------------------------------------------------------------- Q7: your LoRA layer (real model)

# Not the lesson's settings: the feed-forward layers (384 -> 1536 -> 384), r = 4, alpha = 12 (scale 3).
Q7_TARGETS = ("intermediate.dense", r".*\.layer\.\d+\.output\.dense")
Q7_R, Q7_ALPHA = 4, 12


def feed_forward_lora_model() -> torch.nn.Module:
    """MiniLM with LoRA on both feed-forward layers of every block, B random so the update counts."""
    model = build_classifier(2, seed=0)
    lora.add_lora(model, Q7_TARGETS, r=Q7_R, alpha=Q7_ALPHA, seed=0)
    generator = torch.Generator().manual_seed(57)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.normal_(0.0, 0.02, generator=generator)
    return model.eval()


@contextmanager
def _layers_replaced(model: torch.nn.Module, packaged: dict[str, nn.Module], build, load, starts_as: str):
    """Every layer in ``packaged`` becomes ``build(name, layer)``, given the package's trained numbers by
    ``load(yours, layer)``; the package's layers are put back afterwards.

    The frozen layer is handed over trainable, as a fresh ``nn.Linear`` is: freezing it is the
    learner's job. A fresh layer must compute exactly what the frozen one does (``starts_as`` says why).
    """
    try:
        for name, layer in packaged.items():
            layer.base_layer.requires_grad_(True)
            yours = build(name, layer)
            probe = torch.randn(3, layer.base_layer.in_features, generator=torch.Generator().manual_seed(5))
            with torch.no_grad():
                assert torch.allclose(yours(probe), layer.base_layer(probe), atol=1e-6), (
                    f"A fresh layer of yours in {name} does not compute what the frozen layer does: {starts_as}")
                load(yours, layer)
            replace_module(model, name, yours)
        yield
    finally:
        for name, layer in packaged.items():
            replace_module(model, name, layer)
            layer.base_layer.requires_grad_(False)


def lora_layers_replaced_by(model: torch.nn.Module, layer_class):
    """Every LoRA layer of ``model`` becomes ``layer_class(base_layer, r, alpha)`` with the package's A and B."""
    def build(name, layer):
        yours = layer_class(layer.base_layer, Q7_R, Q7_ALPHA)
        for part, shape in (("lora_A", layer.lora_A.shape), ("lora_B", layer.lora_B.shape)):
            tensor = getattr(yours, part, None)
            assert isinstance(tensor, nn.Parameter), (
                f"Your layer needs a parameter named {part} (an nn.Parameter), as the lesson's has.")
            assert tensor.shape == shape, (
                f"In {name}, your {part} has shape {tuple(tensor.shape)}, expected {tuple(shape)} "
                "(A is r x d_in, B is d_out x r).")
        return yours

    def load(yours, layer):
        yours.lora_A.copy_(layer.lora_A)
        yours.lora_B.copy_(layer.lora_B)

    return _layers_replaced(model, lora.lora_layers(model), build, load, "at the start, B A must be zero.")


class _Wrong(nn.Module):
    """Known wrong LoRA layers for the grader: each overrides one line of a right one."""

    def __init__(self, base_layer, r, alpha):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.zeros(r, base_layer.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, r))
        self.scaling = alpha / r

    def update(self, x):
        return x @ self.lora_A.T @ self.lora_B.T

    def forward(self, x):
        return self.base_layer(x) + self.scaling * self.update(x)


class _AlphaNotAlphaOverR(_Wrong):
    def __init__(self, base_layer, r, alpha):
        super().__init__(base_layer, r, alpha)
        self.scaling = alpha


class _NoScaling(_Wrong):
    def __init__(self, base_layer, r, alpha):
        super().__init__(base_layer, r, alpha)
        self.scaling = 1.0


class _AlphaOverSqrtR(_Wrong):
    def __init__(self, base_layer, r, alpha):
        super().__init__(base_layer, r, alpha)
        self.scaling = alpha / r**0.5


Q7_MISTAKES = {
    "scaling by alpha instead of alpha / r": _AlphaNotAlphaOverR,
    "forgetting the scaling alpha / r": _NoScaling,
    "scaling by alpha / sqrt(r) (rsLoRA's scale, not LoRA's)": _AlphaOverSqrtR,
}


def _grade_layer_class(layer_class, module, class_name: str, build_model, install, known_wrong: dict,
                       example: str) -> None:
    """The learner's layer class in every place the package's ``module.class_name`` holds, trained 3 steps."""
    assert isinstance(layer_class, type), f"Pass your class itself (no parentheses), e.g. {example}."
    assert_not_the_package(layer_class, (module, class_name))
    package_class = getattr(module, class_name)
    grade_in_the_model(layer_class, build_model, install, task="sentiment",
                       block=((package_class, "__init__"), (package_class, "forward")),
                       known_wrong=known_wrong, train_steps=3)


def _grade_lora_layer(layer_class) -> None:
    _grade_layer_class(layer_class, lora, "LoRALinear", feed_forward_lora_model, lora_layers_replaced_by, Q7_MISTAKES,
                       "q7.check(MyLoRALinear)")


q7 = Question(
    title="Q7 your LoRA layer in the feed-forward layers, trained 3 steps",
    grader=_grade_lora_layer,
    nudge="Three duties: keep the frozen layer and freeze it, make A (r x d_in, small random) and B (d_out x r, "
          "zero) parameters, and add (alpha / r) B A x to the frozen layer's output.",
    recipe="__init__: store base_layer, call requires_grad_(False) on its parameters, lora_A = "
           "nn.Parameter(randn(r, d_in) * 0.01), lora_B = nn.Parameter(zeros(d_out, r)), scaling = alpha / r; "
           "forward: base_layer(x) + scaling * (x @ lora_A.T @ lora_B.T).",
)

# ----------------------------------------------------------------------------- Q8: DoRA's count

# DoRA with r = 4 on intermediate.dense (384 -> 1536) in the 6 layers: LoRA's A and B, plus one length per output
Q8_EXPECTED = 6 * (4 * (384 + 1536) + 1536)
Q8_MISTAKES = {
    6 * 4 * (384 + 1536): "That is LoRA's count: DoRA also learns one length per output feature.",
    6 * (4 * (384 + 1536) + 384): "DoRA's lengths belong to the output features (the rows of W, 1536 here), not to "
                                  "the inputs.",
}


q8 = Question(
    title="Q8 DoRA's parameter count",
    grader=grade_number(Q8_EXPECTED, what="parameter count", known_wrong=Q8_MISTAKES),
    nudge="DoRA is LoRA plus one trainable length per row of the adapted weight. How many rows does a 384 -> 1536 "
          "matrix have?",
    recipe="Per matrix: r (d_in + d_out) for A and B, plus d_out lengths; one intermediate.dense per layer, 6 layers, "
           "r = 4.",
)


# ----------------------------------------------------------------------------- Q9: the bytes of a 4-bit base

# every nn.Linear of MiniLM's encoder (6 layers of q, k, v, attention output 384 x 384 and 384 <-> 1536 twice) and the
# pooler (384 x 384), in NF4: 4 bits a value and one float32 absmax per block of 64 values
Q9_VALUES = 6 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 384
Q9_EXPECTED = Q9_VALUES // 2 + 4 * Q9_VALUES // 64
Q9_MISTAKES = {
    Q9_VALUES // 2: "That counts the 4-bit codes only: every block of 64 values also keeps its absmax, 4 bytes.",
    4 * Q9_VALUES: "That is the float32 size, 4 bytes a value; NF4 stores 4 bits a value plus the absmax values.",
}


q9 = Question(
    title="Q9 the bytes of a 4-bit base",
    grader=grade_number(Q9_EXPECTED, what="number of bytes", known_wrong=Q9_MISTAKES),
    nudge="First count the values in all 37 linear matrices (their shapes are in lesson 05's section 10 or in "
          "print(model)). Then: 4 bits per value, and 4 bytes per block of 64 values.",
    recipe="values = 6 x (4 x 384 x 384 + 2 x 384 x 1536) + 384 x 384; bytes = values / 2 + 4 x values / 64.",
)

# ----------------------------------------------------------------------------- Q10: NF4, written by the learner

Q10_MATRICES = ("encoder.layer.0.attention.self.query", "encoder.layer.3.intermediate.dense",
                "encoder.layer.5.output.dense")
# Values where the nearest code value is a tie up to float rounding may land either side (measured on all of
# MiniLM's linear layers: 1 value in 10,764,288 differs between two correct implementations).
Q10_TIES_ALLOWED = 2


def _nf4_global_absmax(weight: torch.Tensor) -> torch.Tensor:
    code = torch.tensor(quantize.NF4_VALUES)
    absmax = weight.abs().max()
    return code[(weight[..., None] / absmax - code).abs().argmin(-1)] * absmax


def _nf4_uniform_levels(weight: torch.Tensor) -> torch.Tensor:
    blocks = weight.reshape(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    return (torch.round(blocks / absmax * 7) / 7 * absmax).reshape(weight.shape)


def _nf4_per_row(weight: torch.Tensor) -> torch.Tensor:
    code = torch.tensor(quantize.NF4_VALUES)
    absmax = weight.abs().amax(1, keepdim=True)
    return code[(weight[..., None] / absmax[..., None] - code).abs().argmin(-1)] * absmax


Q10_MISTAKES = {
    "one absmax for the whole matrix instead of one per block of 64 values": _nf4_global_absmax,
    "15 evenly spaced levels instead of the NF4 code values": _nf4_uniform_levels,
    "one absmax per row instead of one per block of 64 values": _nf4_per_row,
}


def _grade_nf4(function) -> None:
    assert_not_the_package(function, (quantize, "quantize"), (quantize, "dequantize"))
    model = build_classifier(2, seed=0)
    for name in Q10_MATRICES:
        weight = model.backbone.get_submodule(name).weight.detach()
        expected = quantize.dequantize(quantize.quantize(weight, "nf4"))
        with blocked((quantize, "quantize"), (quantize, "dequantize"), (quantize, "QuantizedLinear")):
            result = function(weight.clone())
        assert isinstance(result, torch.Tensor), "Return the rebuilt weight as a tensor."
        assert result.shape == weight.shape, f"Return a tensor of the weight's shape {tuple(weight.shape)}."
        differing = int((result != expected).sum())
        if differing > Q10_TIES_ALLOWED:
            for mistake, wrong in Q10_MISTAKES.items():
                if torch.equal(wrong(weight), result):
                    raise AssertionError(f"That is {mistake}.")
            raise AssertionError(f"{differing:,} of the {weight.numel():,} values of {name} differ from NF4's "
                                 "rounding: each value should become the nearest code value x its block's absmax.")


q10 = Question(
    title="Q10 NF4 on real weights, written by you",
    grader=_grade_nf4,
    nudge="Cut the weight into rows of 64 values, divide each row by its largest absolute value, pick the nearest of "
          "the 16 values in quantize.NF4_VALUES for every entry, then multiply back and restore the shape.",
    recipe="blocks = weight.reshape(-1, 64); absmax = blocks.abs().amax(1, keepdim=True); code = "
           "torch.tensor(NF4_VALUES); index = (blocks[..., None] / absmax[..., None] - code).abs().argmin(-1); "
           "return (code[index] * absmax).reshape(weight.shape).",
)


# ----------------------------------------------------------------------------- Q11: your IA3 layer (real model)


def moved_ia3_model() -> torch.nn.Module:
    """MiniLM with IA3 in the paper's places (keys, values, W_2's input), every vector moved away from one."""
    model = build_classifier(2, seed=0)
    generator = torch.Generator().manual_seed(58)
    with torch.no_grad():
        for layer in ia3.add_ia3(model).values():
            layer.ia3_scale.copy_(1 + 0.2 * torch.randn(layer.ia3_scale.shape, generator=generator))
    return model.eval()


def ia3_layers_replaced_by(model: torch.nn.Module, layer_class):
    """Every IA3 layer of ``model`` becomes ``layer_class(base_layer, feedforward=...)`` with the package's vector."""
    def build(name, layer):
        yours = layer_class(layer.base_layer, feedforward=layer.feedforward)
        scale = getattr(yours, "ia3_scale", None)
        assert isinstance(scale, nn.Parameter), (
            "Your layer needs a parameter named ia3_scale (an nn.Parameter), as the lesson's has.")
        side = "input (W_2)" if layer.feedforward else "output (keys, values)"
        assert scale.shape == layer.ia3_scale.shape, (
            f"In {name}, your ia3_scale has shape {tuple(scale.shape)}, expected {tuple(layer.ia3_scale.shape)}: "
            f"one number per {side} feature.")
        return yours

    def load(yours, layer):
        yours.ia3_scale.copy_(layer.ia3_scale)

    return _layers_replaced(model, ia3.ia3_layers(model), build, load, "every scale must start at one.")


class _WrongIA3(nn.Module):
    """Known wrong IA3 layers for the grader: each overrides the forward of a right one."""

    def __init__(self, base_layer, feedforward=False):
        super().__init__()
        self.base_layer, self.feedforward = base_layer.requires_grad_(False), feedforward
        self.ia3_scale = nn.Parameter(torch.ones(base_layer.in_features if feedforward else base_layer.out_features))

    def forward(self, x):
        if self.feedforward:
            return self.base_layer(x * self.ia3_scale)
        return self.base_layer(x) * self.ia3_scale


class _KeysScaledOnTheirInput(_WrongIA3):
    def forward(self, x):
        return self.base_layer(x * self.ia3_scale)  # right for W_2 only: keys and values are rescaled after W


class _BiasLeftUnscaled(_WrongIA3):
    def forward(self, x):
        if self.feedforward:
            return self.base_layer(x * self.ia3_scale)
        return nn.functional.linear(x, self.base_layer.weight) * self.ia3_scale + self.base_layer.bias


Q11_MISTAKES = {
    "rescaling the keys' and values' input instead of their output": _KeysScaledOnTheirInput,
    "rescaling W x but adding the bias unscaled (IA3 rescales the whole output, bias included)": _BiasLeftUnscaled,
}


def _grade_ia3_layer(layer_class) -> None:
    _grade_layer_class(layer_class, ia3, "IA3Linear", moved_ia3_model, ia3_layers_replaced_by, Q11_MISTAKES,
                       "q11.check(MyIA3Linear)")


q11 = Question(
    title="Q11 your IA3 layer in the real model, trained 3 steps",
    grader=_grade_ia3_layer,
    nudge="Keep the frozen layer and freeze it; make ia3_scale an nn.Parameter of ones (one per output feature, or per "
          "input feature when feedforward=True); multiply it into the output, or into the input for W_2.",
    recipe="__init__: store base_layer and feedforward, base_layer.requires_grad_(False), ia3_scale = "
           "nn.Parameter(torch.ones(base_layer.in_features if feedforward else base_layer.out_features)); "
           "forward: base_layer(x * ia3_scale) if feedforward else base_layer(x) * ia3_scale.",
)


QUESTIONS = {"q1": q1, "q2": q2, "q3": q3, "q4": q4, "q5": q5, "q6": q6, "q7": q7, "q8": q8, "q9": q9, "q10": q10, "q11": q11}


register("05_lora.ipynb", globals())  # q.solution() finds the solved code by these names
