"""A 4-bit base model from scratch: blockwise NF4 and int8 quantization, and QLoRA's recipe.

QLoRA (Dettmers et al., 2023, Sec. 3) keeps the frozen base model in 4 bits and trains LoRA on top:

* each weight matrix is cut into blocks of 64 values; a block keeps its largest absolute value
  (``absmax``, float32) and every value becomes the *index* (4 bits) of the nearest of 16 code values
  in [-1, 1], once divided by the block's absmax;
* NF4's 16 code values are quantiles of the standard normal distribution (:func:`nf4_code`), so for
  normally distributed weights each index is about equally likely, and one value is exactly 0;
* in every forward pass a layer's weight is dequantized (code value x absmax) and used as an ordinary
  float matrix; it stays frozen, and the gradients reach LoRA's A and B only.

The plain alternative, int8 with one absmax per block (127 levels on each side), is here for comparison.
QLoRA also quantizes the absmax values themselves ("double quantization"); we keep them in float32.
``tests/test_quantize.py`` checks NF4 against bitsandbytes on the same weights, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from peft_teach.methods.inject import find_modules, replace_module

BLOCK = 64  # values per block, QLoRA's choice for the weights
KINDS = ("nf4", "int8")
# The 16 NF4 values as QLoRA lists them (Dettmers et al., 2023, appendix) and bitsandbytes stores them.
# nf4_code() derives them from the normal distribution; the two agree to 2e-7 (the paper rounds the outermost
# probability to 0.9677083). Quantization uses the published values, so its codes are bitsandbytes' codes.
NF4_VALUES = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)


def nf4_code() -> torch.Tensor:
    """The 16 NF4 values, sorted, in [-1, 1].

    8 quantiles of N(0, 1) for the positive side and 7 for the negative side, plus an exact 0 (an
    even split would have no zero). The outermost quantile is taken at probability 0.9677..., the
    mean of 1 - 1/(2*15) and 1 - 1/(2*16): the 100 % quantile would be infinite. Then every value is
    divided by the largest, so the code spans [-1, 1] like a block divided by its absmax.
    """
    outer = 0.5 * ((1 - 1 / (2 * 15)) + (1 - 1 / (2 * 16)))
    positive = torch.special.ndtri(torch.linspace(outer, 0.5, 9, dtype=torch.float64))[:-1]
    negative = -torch.special.ndtri(torch.linspace(outer, 0.5, 8, dtype=torch.float64))[:-1]
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (values / values.abs().max()).float()


@dataclass
class QuantizedTensor:
    """A float tensor stored as 4- or 8-bit codes and one float32 absmax per block of :data:`BLOCK` values."""

    kind: str  # "nf4": two 4-bit indices per byte; "int8": one signed byte per value
    data: torch.Tensor  # uint8 (nf4) or int8
    absmax: torch.Tensor  # float32, one per block
    shape: torch.Size

    def nbytes(self) -> int:
        """The bytes this tensor takes, counted: the codes and the absmax values."""
        return self.data.numel() * self.data.element_size() + self.absmax.numel() * self.absmax.element_size()


def _blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight as rows of BLOCK values, and each row's absmax."""
    if weight.numel() % BLOCK:
        raise ValueError(f"A tensor of {weight.numel()} values does not split into blocks of {BLOCK}: "
                         "quantize matrices whose size is a multiple of 64 (every linear layer of the course's models).")
    blocks = weight.detach().float().reshape(-1, BLOCK)
    return blocks, blocks.abs().amax(dim=1)


def quantize(weight: torch.Tensor, kind: str = "nf4") -> QuantizedTensor:
    """Blockwise quantization of ``weight`` to NF4 (4 bits) or int8."""
    if kind not in KINDS:
        raise ValueError(f"Unknown quantization {kind!r}: use one of {KINDS}.")
    blocks, absmax = _blocks(weight)
    scaled = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]  # every value now in [-1, 1]
    if kind == "int8":
        data = torch.round(scaled * 127).to(torch.int8).reshape(-1)
    else:
        code = torch.tensor(NF4_VALUES, device=weight.device)
        midpoints = (code[1:] + code[:-1]) / 2
        index = torch.bucketize(scaled, midpoints).to(torch.uint8).reshape(-1)  # the nearest code value
        data = (index[0::2] << 4) | index[1::2]  # two indices per byte, the first in the high half
    return QuantizedTensor(kind, data, absmax, weight.shape)


def dequantize(quantized: QuantizedTensor) -> torch.Tensor:
    """The float32 tensor the codes stand for."""
    if quantized.kind == "int8":
        scaled = quantized.data.float().reshape(-1, BLOCK) / 127
    else:  # each byte holds two indices: look both code values up at once
        scaled = _nf4_byte_table(quantized.absmax.device)[quantized.data.long()].reshape(-1, BLOCK)
    return (scaled * quantized.absmax[:, None]).reshape(quantized.shape)


class _LinearOnCodes(torch.autograd.Function):
    """x W^T + b with W rebuilt from its codes, in the forward pass and again in the backward pass.

    Through ``nn.functional.linear`` autograd would keep the float32 W of every layer until the backward
    pass, a float copy of the whole base during training. The base is frozen, so the backward pass needs
    only the gradient for x, grad_output W, and rebuilding W there keeps nothing but the codes.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "QuantizedLinear") -> torch.Tensor:
        ctx.layer = layer
        return nn.functional.linear(x, layer.dequantized_weight().to(x.dtype), layer.bias)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output @ ctx.layer.dequantized_weight().to(grad_output.dtype), None


def _nf4_byte_table(device: torch.device) -> torch.Tensor:
    """256 x 2: for every byte value, the code values of its high and its low 4 bits."""
    code = torch.tensor(NF4_VALUES, device=device)
    byte = torch.arange(256, device=device)
    return torch.stack([code[byte >> 4], code[byte & 0xF]], dim=1)


class QuantizedLinear(nn.Module):
    """A frozen ``nn.Linear`` kept in 4 or 8 bits and dequantized in every forward pass.

    The codes and absmax values are buffers, not parameters: nothing here can train. LoRA wraps
    this layer as it wraps an ``nn.Linear`` (``in_features`` / ``out_features`` are the same).
    """

    def __init__(self, linear: nn.Linear, kind: str = "nf4"):
        super().__init__()
        self.in_features, self.out_features, self.kind = linear.in_features, linear.out_features, kind
        quantized = quantize(linear.weight, kind)
        self.register_buffer("codes", quantized.data)
        self.register_buffer("absmax", quantized.absmax)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def quantized(self) -> QuantizedTensor:
        return QuantizedTensor(self.kind, self.codes, self.absmax, torch.Size((self.out_features, self.in_features)))

    def dequantized_weight(self) -> torch.Tensor:
        return dequantize(self.quantized())

    @property
    def weight(self) -> torch.Tensor:
        """The weight as a float32 matrix, rebuilt from the codes on every read (changing it changes nothing)."""
        return self.dequantized_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LinearOnCodes.apply(x, self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"


def quantize_linear_layers(model: nn.Module, kind: str = "nf4", targets: str = r".*") -> dict[str, QuantizedLinear]:
    """Replace the backbone's ``nn.Linear`` layers whose name matches ``targets`` with :class:`QuantizedLinear`.

    The classification head (outside the backbone) and the embeddings stay in float32, as in QLoRA,
    where only the transformer's linear layers are stored in 4 bits. Quantize first, then add LoRA.
    """
    root = getattr(model, "backbone", model)
    replaced = {}
    for name, layer in find_modules(root, targets, nn.Linear).items():
        if not name.endswith("lm_head"):  # a causal LM's output layer shares its weights with the embeddings
            replaced[name] = QuantizedLinear(layer, kind)
            replace_module(root, name, replaced[name])
    return replaced


def dequantize_linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """Replace every :class:`QuantizedLinear` with an ``nn.Linear`` holding its dequantized weight.

    What one does before merging LoRA for serving: the merged weight W0 + BA is a float matrix.
    """
    root = getattr(model, "backbone", model)
    restored = {}
    for name, layer in find_modules(root, r".*", QuantizedLinear).items():
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                           device=layer.absmax.device).requires_grad_(False)
        with torch.no_grad():
            linear.weight.copy_(layer.dequantized_weight())
            if layer.bias is not None:
                linear.bias.copy_(layer.bias)
        restored[name] = linear
        replace_module(root, name, linear)
    return restored


def stored_bytes(model: nn.Module) -> int:
    """The bytes the model's weights take as stored: float parameters plus quantized layers' codes and absmax."""
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    quantized = sum(layer.quantized().nbytes() for layer in model.modules() if isinstance(layer, QuantizedLinear))
    biases = sum(layer.bias.numel() * layer.bias.element_size() for layer in model.modules()
                 if isinstance(layer, QuantizedLinear) and layer.bias is not None)
    return parameters + quantized + biases


def relative_error(weight: torch.Tensor, kind: str) -> float:
    """||W - dequantize(quantize(W))|| / ||W||: how much of the matrix the rounding changes."""
    restored = dequantize(quantize(weight, kind))
    return ((weight.detach().float() - restored).norm() / weight.detach().float().norm()).item()
