"""Writing files without losing any: atomic replacement, and folders we may write into.

Two promises the course keeps wherever it saves something:

* a file is replaced in one step (written under a temporary name beside it, then renamed
  over it), so a job killed mid-write leaves the previous complete file, never half a file;
* a save never destroys a file it did not write: a folder holding someone else's files is
  refused with the names found, unless the caller says ``overwrite=True``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(file: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary)`` to a temporary name beside ``file``, then rename it over ``file`` in one step."""
    temporary = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, file)
    finally:
        temporary.unlink(missing_ok=True)  # a write that failed leaves no temporary file behind


def write_text_atomically(file: Path, text: str) -> None:
    """Write ``text`` to ``file`` atomically (see :func:`replace_atomically`)."""
    replace_atomically(file, lambda temporary: temporary.write_text(text))


def _leftover(name: str, files: tuple[str, ...]) -> bool:
    """A temporary file of ours left by a killed write (".<file>.<pid>.tmp")."""
    return any(name.startswith(f".{file}.") and name.endswith(".tmp") for file in files)


def foreign_files(folder: Path, files: tuple[str, ...], config_file: str, kind_key: str,
                  kind: str) -> tuple[list[str], str | None]:
    """What in ``folder`` a save of ``files`` (of this ``kind``) would not own.

    Returns the names of files that are not among ``files``, and the kind of checkpoint
    that ``config_file`` says the folder holds (``None`` when there is none, or when it is
    not a config we wrote). A new or empty folder gives ``([], None)``.
    """
    if not folder.exists():
        return [], None
    present = sorted(p.name for p in folder.iterdir() if not _leftover(p.name, files))
    foreign = [name for name in present if name not in files]
    saved_kind = None
    if config_file in present:
        try:
            saved_kind = json.loads((folder / config_file).read_text()).get(kind_key)
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            saved_kind = None
        if saved_kind is None:
            foreign.append(config_file)  # a config.json that is not ours: someone else's file
    elif any(name in files for name in present):
        foreign += [name for name in present if name in files]  # our file names, but no config of ours
    return sorted(foreign), saved_kind
