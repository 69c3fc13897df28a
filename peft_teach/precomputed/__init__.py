"""Results too slow to compute inside a lesson on a CPU, stored by ``scripts/precompute.py``.

``load(name)`` returns the stored dictionary: ``results`` plus ``recipe`` (the
settings used) and ``machine`` (where and how long it ran). Lessons re-train at
least one stored configuration live and check it against these numbers.
``checkpoint(name)`` is the folder of a stored trained method (a few hundred kB,
written by the method's ``save_*`` function), for a lesson that measures a trained
model but has no time left to train it.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft_teach.files import write_text_atomically as write_atomically  # the scripts store with it

FOLDER = Path(__file__).parent


def path(name: str) -> Path:
    return FOLDER / f"{name}.json"


def store(name: str, results: dict) -> Path:
    """Write ``results`` as the stored ``name`` (atomically; see :func:`write_atomically`)."""
    write_atomically(path(name), json.dumps(results, indent=2) + "\n")
    return path(name)


def load(name: str) -> dict:
    file = path(name)
    if not file.exists():
        available = sorted(p.stem for p in FOLDER.glob("*.json"))
        raise FileNotFoundError(f"No precomputed results called {name!r} (available: {available}). "
                                f"Create them with: python scripts/precompute.py {name}")
    return json.loads(file.read_text())


def checkpoint(name: str) -> Path:
    """The folder of the stored checkpoint ``name`` (load it with the method's ``load_*`` function)."""
    folder = FOLDER / name
    if not folder.is_dir():
        raise FileNotFoundError(f"No stored checkpoint called {name!r}. "
                                f"Create it with: python scripts/precompute.py {name}")
    return folder
