"""AdapterHub parity tests: they run only in the separate AdapterHub environment.

``adapters`` 1.3 needs transformers 4.57, while the course runs on transformers 5,
so these tests live in their own virtual environment (``.venv-adapterhub``, see
requirements-adapterhub.txt and the Makefile). In any environment without
``adapters`` the whole folder is skipped cleanly instead of failing to import.
"""

import importlib.util

import pytest

if importlib.util.find_spec("adapters") is None:
    # Not collected at all: the main suite (transformers 5) has no `adapters`.
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/adapterhub" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.adapterhub)
