"""The repository's address and the install recipe: one source (scripts/course_meta.py), used everywhere."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from course_meta import COLAB_NOTE, INSTALL_COMMAND, LLM_COLAB_NOTE, LLM_LESSONS, REPO, colab_badge  # noqa: E402

NOTEBOOKS = sorted(ROOT.glob("notebooks/[0-9]*.ipynb")) + sorted(ROOT.glob("solutions/[0-9]*.ipynb")) \
    + sorted(ROOT.glob("exercises/[0-9]*.ipynb"))
TEXT_FILES = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "CONTRIBUTING.md", *NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_notebook_opens_in_colab_and_says_how_to_install(notebook):
    first = nbformat.read(notebook, as_version=4).cells[0].source
    target = notebook.relative_to(ROOT)
    if target.parts[0] == "solutions":  # a practice badge opens the exercise, in both twins
        target = Path("exercises") / target.name
    assert colab_badge(str(target)) in first
    assert (LLM_COLAB_NOTE if target.name[:2] in LLM_LESSONS else COLAB_NOTE) in first


def test_readme_uses_the_same_install_recipe():
    assert INSTALL_COMMAND in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("file", TEXT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_to_the_repository_is_the_same(file):
    repositories = set(re.findall(r"github(?:\.com)?/(peft[\w-]*/[\w-]+)", file.read_text()))
    assert repositories <= {REPO}
