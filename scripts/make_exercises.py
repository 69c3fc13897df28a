"""Generate exercises/ from solutions/: the only way exercise notebooks are made.

In a solution notebook, the code a learner must write sits between two marker
lines::

    ### BEGIN SOLUTION
    ...solution code...
    ### END SOLUTION

The generator replaces each block with a stub and clears every output:

* inside a function (indented markers): ``raise NotImplementedError`` - the
  check that calls the function then reports "not attempted";
* at the top level: every name the block assigns is set to ``None``, which
  the checks also report as "not attempted".

    python scripts/make_exercises.py           # write exercises/
    python scripts/make_exercises.py --check   # exit 1 if exercises/ is stale
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
BEGIN = re.compile(r"^(?P<indent>\s*)### BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*### END SOLUTION\s*$")
TODO = "# TODO: your code here"


def _assigned_names(code: str) -> list[str]:
    """Names assigned at the top level of a code block, in order."""
    names: list[str] = []
    for node in ast.parse(textwrap.dedent(code)).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and name.id not in names:
                    names.append(name.id)
    return names


def _stub(indent: str, solution: list[str]) -> list[str]:
    if indent:
        return [f"{indent}{TODO}", f"{indent}raise NotImplementedError"]
    names = _assigned_names("\n".join(solution))
    if not names:
        raise ValueError("A top-level solution block must assign at least one name:\n" + "\n".join(solution))
    return [TODO] + [f"{name} = None" for name in names]


def strip_solutions(source: str) -> str:
    """Replace every marked solution block in one cell's source by its stub."""
    out: list[str] = []
    block: list[str] | None = None
    indent = ""
    for line in source.splitlines():
        if block is None and (match := BEGIN.match(line)):
            block, indent = [], match.group("indent")
        elif block is not None and END.match(line):
            out.extend(_stub(indent, block))
            block = None
        elif block is not None:
            block.append(line)
        else:
            out.append(line)
    if block is not None:
        raise ValueError("### BEGIN SOLUTION without ### END SOLUTION")
    return "\n".join(out)


def solution_lines(source: str) -> list[str]:
    """The code lines inside solution blocks (used to detect leaks)."""
    lines, inside = [], False
    for line in source.splitlines():
        if BEGIN.match(line):
            inside = True
        elif END.match(line):
            inside = False
        elif inside and line.strip() and not line.strip().startswith("#"):
            lines.append(line.strip())
    return lines


def make_exercise(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    exercise = nbformat.v4.new_notebook(metadata={k: v for k, v in solution.metadata.items() if k != "peft_teach"})
    for cell in solution.cells:
        if cell.cell_type == "code":
            new = nbformat.v4.new_code_cell(strip_solutions(cell.source))
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(cell.source)
        else:
            new = nbformat.v4.new_raw_cell(cell.source)
        new.pop("id", None)
        exercise.cells.append(new)
    return exercise


def render(notebook: nbformat.NotebookNode) -> str:
    # Cell ids are dropped so regeneration is byte-for-byte reproducible.
    for cell in notebook.cells:
        cell.pop("id", None)
    notebook.nbformat, notebook.nbformat_minor = 4, 4
    return nbformat.writes(notebook) + "\n"


def expected_exercises() -> dict[Path, str]:
    return {
        ROOT / "exercises" / path.name: render(make_exercise(nbformat.read(path, as_version=4)))
        for path in sorted((ROOT / "solutions").glob("*.ipynb"))
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="Generate exercises/ from solutions/.")
    parser.add_argument("--check", action="store_true", help="only report stale exercises")
    args = parser.parse_args()
    stale = []
    for path, text in expected_exercises().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.parent.mkdir(exist_ok=True)
                path.write_text(text)
    for path in stale:
        print(("stale: " if args.check else "wrote: ") + str(path.relative_to(ROOT)))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
