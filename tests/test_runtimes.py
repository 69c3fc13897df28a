"""Runtimes: stated from one source (runtimes.json, published from a test run) and within budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import publish_runtimes  # noqa: E402

RUNTIMES = json.loads((ROOT / "runtimes.json").read_text())
LESSON_BUDGET_S, PRACTICE_BUDGET_S = 240, 60  # seconds on a 2-core CPU, the course's budgets


def test_every_notebook_has_a_published_runtime():
    expected = {str(p.relative_to(ROOT)) for p in publish_runtimes.notebooks()}
    assert set(RUNTIMES["seconds"]) == expected, "Run `make runtimes` (it publishes)."


@pytest.mark.parametrize("path", sorted(RUNTIMES["seconds"]))
def test_runtime_is_within_budget(path):
    budget = LESSON_BUDGET_S if path.startswith("notebooks/") else PRACTICE_BUDGET_S
    assert RUNTIMES["seconds"][path] <= budget, f"{path}: {RUNTIMES['seconds'][path]} s > {budget} s; make it faster"


def test_readme_states_the_published_runtimes():
    readme = (ROOT / "README.md").read_text()
    assert publish_runtimes.SYLLABUS_ROW.search(readme) and publish_runtimes.README_PARAGRAPH.search(readme)
    assert readme == publish_runtimes.expected_readme(readme, RUNTIMES), "python scripts/publish_runtimes.py"


@pytest.mark.parametrize("lesson", sorted(ROOT.glob("notebooks/[0-9]*.ipynb")), ids=lambda p: p.name)
def test_lesson_header_states_the_published_runtime(lesson):
    first = nbformat.read(lesson, as_version=4).cells[0].source
    assert publish_runtimes.HEADER.search(first), "the first cell needs a '**Runtime (measured):**' line"
    key = str(lesson.relative_to(ROOT))
    assert first == publish_runtimes.expected_first_cell(first, RUNTIMES, key), "python scripts/publish_runtimes.py"


def test_only_a_run_of_one_notebook_at_a_time_on_all_cores_is_published(monkeypatch, tmp_path):
    """make test runs two notebooks at a time on one thread each: its seconds are not what a learner sees."""
    monkeypatch.setattr(publish_runtimes, "RUNTIMES", tmp_path / "runtimes.json")
    monkeypatch.setattr(publish_runtimes, "README", tmp_path / "README.md")
    monkeypatch.setattr(publish_runtimes.nbformat, "write", lambda *args: None)
    (tmp_path / "README.md").write_text((ROOT / "README.md").read_text())
    run = {"date": "2026-12-07", "machine": "x86_64", "cpu_count": 2, "device": "cpu", "failed": [],
           "seconds": {str(p.relative_to(ROOT)): 1 for p in publish_runtimes.notebooks()}}
    for how in ({"workers": 2, "threads": "1"}, {"workers": 0, "threads": "1"}):
        with pytest.raises(SystemExit, match="make runtimes"):
            publish_runtimes.publish({**run, **how})
    assert not (tmp_path / "runtimes.json").exists()
    published = publish_runtimes.publish({**run, "workers": 0, "threads": "all cores"})
    assert set(published["seconds"].values()) == {1} and (tmp_path / "runtimes.json").exists()
