"""Shared by the scripts that write a notebook from a list of cells (build_lesson_06.py, build_lesson_07.py).

A builder keeps a young lesson's source in one Python file: ``(kind, source)`` pairs, kind "md" or "code".
``python scripts/build_lesson_NN.py`` writes the notebook unexecuted (then ``scripts/execute_notebooks.py``
stores it executed); ``--markdown-only`` copies changed prose into the executed notebook, keeping its outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import publish_runtimes
from course_meta import KERNELSPEC

ROOT = Path(__file__).resolve().parents[1]


def build(cells: list[tuple[str, str]], lesson: str) -> nbformat.NotebookNode:
    """The notebook of ``cells``; its first cell states ``lesson``'s published runtime, as every lesson's does."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = KERNELSPEC
    notebook.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                      for kind, src in cells]
    runtimes = json.loads(publish_runtimes.RUNTIMES.read_text())
    if lesson in runtimes["seconds"]:
        notebook.cells[0].source = publish_runtimes.expected_first_cell(notebook.cells[0].source, runtimes, lesson)
    return notebook


def refresh_markdown(cells: list[tuple[str, str]], lesson: str) -> None:
    """Write the current prose around the executed code cells of ``lesson``, keeping their outputs.

    Only for prose changes: the code cells must be the same, in the same order.
    """
    path = ROOT / lesson
    stored, fresh = nbformat.read(path, as_version=4), build(cells, lesson)
    executed = [cell for cell in stored.cells if cell.cell_type == "code"]
    if [c.source for c in executed] != [c.source for c in fresh.cells if c.cell_type == "code"]:
        raise SystemExit("The code cells changed: rebuild without --markdown-only and execute the notebook again.")
    code = iter(executed)
    stored.cells = [next(code) if cell.cell_type == "code" else cell for cell in fresh.cells]
    nbformat.write(stored, path)


def main(cells: list[tuple[str, str]], lesson: str) -> None:
    """The command line of a builder: write ``lesson`` unexecuted, or only its prose with ``--markdown-only``."""
    if "--markdown-only" in sys.argv:
        refresh_markdown(cells, lesson)
        print(f"updated the prose of {lesson} (outputs kept)")
    else:
        nbformat.write(build(cells, lesson), ROOT / lesson)
        print(f"wrote {lesson}")
