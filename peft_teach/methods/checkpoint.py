"""One checkpoint format for every method: a folder with two small files.

    <folder>/weights.safetensors   the method's tensors, plus the head under ``head.*``
    <folder>/config.json           {"method", "config", "base_model"}

Tensor names are those in the model, relative to the backbone. ``config`` is what ``add_*`` needs to rebuild the method's modules; ``base_model``
is :func:`~peft_teach.models.base_model_fingerprint` of the model it was trained
on, so loading into another base model fails with one exception type
(:class:`~peft_teach.models.IncompatibleBaseModelError`) that names the fields
that differ. Only the method's own tensors are stored: kilobytes, not the 90 MB
base model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from peft_teach.files import foreign_files, replace_atomically, write_text_atomically
from peft_teach.models import base_model_fingerprint, check_same_base

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt, or holds another method."""


class SavedConfig(dict):
    """A checkpoint's saved settings; a missing one raises CheckpointError naming it, not a bare KeyError."""

    def __init__(self, values: dict, file: Path, method: str):
        super().__init__(values)
        self.file, self.method = file, method

    def __missing__(self, key: str):
        raise CheckpointError(f"{self.file} has no setting {key!r}, which load_{self.method} needs: the file was "
                              f"edited, or written by another version. Save the checkpoint again with "
                              f"save_{self.method}(...).")

    def pop(self, key: str, *default):
        if key not in self and not default:
            self.__missing__(key)
        return super().pop(key, *default)


def check_folder(folder: Path, method: str, overwrite: bool, also_ours: tuple[str, ...] = ()) -> None:
    """Refuse to save ``method`` into ``folder`` if that would replace files the save did not write.

    A new or empty folder, or one holding a ``method`` checkpoint (saved again), is fine.
    Anything else (the user's own files, another method's checkpoint, a config.json that
    is not ours) needs ``overwrite=True``, which replaces only the two checkpoint files.
    ``also_ours`` names files a caller writes beside the checkpoint (e.g. a recipe).
    """
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} is a file, not a folder: a checkpoint is a folder of two files. "
                              "Pass a folder path.")
    foreign, saved = foreign_files(folder, (WEIGHTS_FILE, CONFIG_FILE, *also_ours), CONFIG_FILE, "method", method)
    if overwrite:
        return
    if foreign:
        raise CheckpointError(f"{folder} already holds files that save_{method} did not write: {foreign}. "
                              f"Save into a new or empty folder, or pass overwrite=True to write {WEIGHTS_FILE} "
                              f"and {CONFIG_FILE} there anyway (only those two are replaced).")
    if saved is not None and saved != method:
        raise CheckpointError(f"{folder} holds a {saved!r} checkpoint; saving {method!r} there would replace it. "
                              "Save into another folder, or pass overwrite=True to replace it.")


def save_checkpoint(folder: str | Path, method: str, config: dict, tensors: dict[str, torch.Tensor],
                    model: nn.Module, head: nn.Module | None = None, overwrite: bool = False) -> Path:
    """Write ``tensors`` (and ``head``'s, as ``head.*``) and the JSON description into ``folder``.

    Each file is replaced atomically, and a folder holding files this save did not write
    is refused unless ``overwrite=True`` (:func:`check_folder`).
    """
    folder = Path(folder)
    check_folder(folder, method, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    # Names relative to the backbone: a checkpoint from a classifier loads into a bare backbone too.
    state = {name.removeprefix("backbone."): tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    if head is not None:
        state.update({f"head.{key}": value.detach().cpu().contiguous() for key, value in head.state_dict().items()})
    replace_atomically(folder / WEIGHTS_FILE, lambda temporary: save_file(state, str(temporary)))
    meta = {"method": method, "config": config, "base_model": base_model_fingerprint(model)}
    write_text_atomically(folder / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    return folder


def read_checkpoint(folder: str | Path, method: str, model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """The saved ``config`` and tensors, after checking the method and the base model."""
    folder = Path(folder)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / file).is_file():
            raise CheckpointError(f"{folder} has no {file}: it is not a checkpoint folder. "
                                  f"Pass the folder that save_{method}(...) wrote.")
    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not valid JSON ({error}); the checkpoint is damaged. "
                              f"Save it again with save_{method}(...).") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder / CONFIG_FILE} is not a checkpoint description (a JSON object). "
                              f"Pass the folder that save_{method}(...) wrote.")
    if meta.get("method") != method:
        raise CheckpointError(f"{folder} holds a {meta.get('method')!r} checkpoint, not {method!r}. "
                              f"Load it with load_{meta.get('method')}(...).")
    missing = [key for key in ("config", "base_model") if not isinstance(meta.get(key), dict)]
    if missing:
        raise CheckpointError(f"{folder / CONFIG_FILE} lacks the field(s) {missing}: the file was edited, or written "
                              f"by another version. Save the checkpoint again with save_{method}(...).")
    check_same_base(meta["base_model"], model, str(folder))
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{folder / WEIGHTS_FILE} could not be read ({error}); the file is damaged or "
                              f"truncated. Save it again with save_{method}(...).") from None
    return SavedConfig(meta["config"], folder / CONFIG_FILE, method), tensors


def split_head(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the method's tensors, the head's tensors without the ``head.`` prefix)."""
    head = {key.removeprefix("head."): value for key, value in tensors.items() if key.startswith("head.")}
    own = {key: value for key, value in tensors.items() if not key.startswith("head.")}
    return own, head


def load_into(module: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict`` with an error that says which checkpoint does not fit."""
    own = module.state_dict()
    if set(own) != set(tensors) or any(own[k].shape != tensors[k].shape for k in own):
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        expected = {k: tuple(v.shape) for k, v in own.items()}
        raise CheckpointError(f"The checkpoint's {what} does not fit this model: saved {shapes}, "
                              f"model expects {expected}. Load it into the model it was saved from "
                              "(same method settings and number of labels).")
    with torch.no_grad():
        for key, value in tensors.items():
            own[key].copy_(value)


def load_head(model: nn.Module, head: dict[str, torch.Tensor]) -> None:
    """Load saved head tensors into the model's (active) head, if both exist."""
    if head and isinstance(getattr(model, "head", None), nn.Module):
        load_into(model.head, head, "classifier head (check num_labels)")


def load_one_module(model: nn.Module, folder: str | Path, method: str, add) -> dict[str, nn.Module]:
    """``load_*`` of a method that adds one module to the model (soft prompt, prefix, Prefix-Tuning+).

    ``add(config)`` rebuilds the module from the saved settings and returns ``{name: module}``;
    the saved tensors are named ``<name>.<key>``.
    """
    config, tensors = read_checkpoint(folder, method, model)
    own, head = split_head(tensors)
    added = add(config)
    (name, module), = added.items()
    load_into(module, {key.removeprefix(f"{name}."): value for key, value in own.items()}, name)
    load_head(model, head)
    return added
