"""Module surgery shared by every PEFT method in the course.

Every method follows the same three steps:

1. find the sub-modules it should change (by name pattern),
2. replace or wrap them with a new module,
3. freeze everything except the parameters the method added (and the task head).

Keeping these steps here means each method file only says *what* it adds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn


class UnknownModuleError(ValueError):
    """Raised when a name pattern matches no module of the model."""


def module_names(model: nn.Module) -> list[str]:
    """All sub-module names of ``model`` (the root's empty name excluded)."""
    return [name for name, _ in model.named_modules() if name]


def leaf_name_suffixes(model: nn.Module) -> list[str]:
    """Distinct last name parts (``query``, ``value``, ``dense``, ...).

    These are what learners usually type as ``target_modules``, so they are
    what an error message should list.
    """
    return sorted({name.rsplit(".", 1)[-1] for name in module_names(model)})


def find_modules(
    model: nn.Module,
    patterns: str | Iterable[str],
    module_type: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
) -> dict[str, nn.Module]:
    """Find sub-modules whose full name ends with, or fully matches, a pattern.

    A pattern is either a plain name suffix (``"query"`` matches
    ``encoder.layer.0.attention.self.query``) or a regular expression that must
    match the *whole* module name (``r".*\\.(query|value)"``).
    Every pattern must match at least one module: a typo should fail loudly,
    not train a model with nothing adapted.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = list(patterns)
    if not patterns:
        raise ValueError("Give at least one module name pattern, e.g. ['query', 'value'].")

    found: dict[str, nn.Module] = {}
    unmatched = set(patterns)
    for name, module in model.named_modules():  # model order, so results are stable
        if not name or (module_type is not None and not isinstance(module, module_type)):
            continue
        hits = [pattern for pattern in patterns if _matches(name, pattern)]
        if hits:
            found[name] = module
            unmatched.difference_update(hits)
    if unmatched:
        kind = "" if module_type is None else f" of type {_type_names(module_type)}"
        raise UnknownModuleError(
            f"No module{kind} matches {sorted(unmatched)}. "
            f"Available module names (last part): {leaf_name_suffixes(model)}. "
            "Use one of these, or a regular expression matching the full name "
            "(see model.named_modules())."
        )
    return found


def _matches(name: str, pattern: str) -> bool:
    if name == pattern or name.endswith("." + pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _type_names(module_type: type | tuple[type, ...]) -> str:
    types = module_type if isinstance(module_type, tuple) else (module_type,)
    return " or ".join(t.__name__ for t in types)


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """Return (parent module, attribute name) for a dotted module name."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, child


def replace_module(model: nn.Module, name: str, new_module: nn.Module) -> nn.Module:
    """Put ``new_module`` where ``name`` was; return the module that was there."""
    parent, child = get_parent(model, name)
    old = getattr(parent, child)
    setattr(parent, child, new_module)
    return old


def freeze(model: nn.Module) -> nn.Module:
    """Switch off gradients for every parameter of ``model``."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def unfreeze_matching(model: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """Switch gradients on for parameters whose name contains any pattern.

    Returns the names switched on; fails if a pattern matches nothing.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    switched: list[str] = []
    for pattern in patterns:
        hits = [name for name, _ in model.named_parameters() if pattern in name]
        if not hits:
            raise UnknownModuleError(
                f"No parameter name contains {pattern!r}. "
                f"Parameter names look like: {[n for n, _ in model.named_parameters()][:6]} ..."
            )
        switched.extend(hits)
    for name, parameter in model.named_parameters():
        if name in switched:
            parameter.requires_grad_(True)
    return switched


def train_only(model: nn.Module, new: Iterable[nn.Module | nn.Parameter]) -> list[str]:
    """Freeze ``model``, then let the ``new`` modules or parameters and the task ``head`` train.

    Every method's ``add_*`` ends with this call, so "trainable = what the method
    added + the head" is written once. (LoRA passes its A and B, not the LoRALinear,
    whose frozen base layer must stay frozen.) A causal LM's ``lm_head`` is not such a
    head: it is the pre-trained output layer (often tied to the input embeddings), so it
    stays frozen. Returns the trainable parameter names.
    """
    freeze(model)
    for part in new:
        part.requires_grad_(True)
    head = getattr(model, "head", None)
    if isinstance(head, nn.Module):  # a classifier: the new task needs its own head
        head.requires_grad_(True)
    return trainable_names(model)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that will receive gradients."""
    return [name for name, p in model.named_parameters() if p.requires_grad]
