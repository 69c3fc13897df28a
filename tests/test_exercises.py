"""Exercises are generated from solutions, never edited by hand, and run untouched."""

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_exercises  # noqa: E402
from course_meta import KERNELSPEC  # noqa: E402

SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


def test_every_lesson_has_a_practice_notebook():
    lessons = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert lessons and lessons == {p.name for p in SOLUTIONS}
    assert lessons == {p.name for p in (ROOT / "exercises").glob("*.ipynb")}


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_every_practice_notebook_grades_a_task_on_the_real_model(solution):
    # its question module builds the packaged MiniLM (or SmolLM2) or feeds it real inputs when a check runs
    module = (ROOT / "peft_teach" / "questions" / f"lesson_{solution.name[:2]}.py").read_text()
    calls = ("build_classifier(", "load_base_model(", "review_batch(", "review_ids(", "llm.load_llm(")
    assert any(call in module for call in calls), (
        f"{solution.name}: no graded task runs the real model")


@pytest.mark.parametrize("notebook", sorted(ROOT.glob("[nse]*/[0-9]*.ipynb")), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebooks_name_the_kernel_jupyterlab_installs(notebook):
    # Another display name ("Python 3") makes JupyterLab mark the notebook modified as it opens.
    assert nbformat.read(notebook, as_version=4).metadata.kernelspec == KERNELSPEC


def test_exercises_are_up_to_date():
    stale = [p.name for p, text in make_exercises.expected_exercises().items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"Regenerate with `python scripts/make_exercises.py`: {stale}"


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_exercises_leak_no_solution_code(solution):
    solved_sources = [c.source for c in nbformat.read(solution, as_version=4).cells if c.cell_type == "code"]
    inside = {line for source in solved_sources for line in make_exercises.solution_lines(source)}
    assert inside, "a practice notebook needs at least one solution block"
    # A line may legitimately appear both inside and outside a solution block.
    outside = {line.strip() for source in solved_sources
               for line in make_exercises.strip_solutions(source).splitlines()}
    exercise = nbformat.read(ROOT / "exercises" / solution.name, as_version=4)
    exercise_lines = {line.strip() for c in exercise.cells if c.cell_type == "code" for line in c.source.splitlines()}
    leaked = (inside - outside) & exercise_lines
    assert not leaked, f"solution lines found in the exercise: {sorted(leaked)[:3]}"
    assert all(not c.get("outputs") for c in exercise.cells if c.cell_type == "code")


def test_generator_stubs():
    source = "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n" \
             "### BEGIN SOLUTION\nanswer, other = 1, 2\n### END SOLUTION\nq1.check(answer)"
    stubbed = make_exercises.strip_solutions(source)
    assert "return 2 * x" not in stubbed and "raise NotImplementedError" in stubbed
    assert "answer = None" in stubbed and "other = None" in stubbed and stubbed.endswith("q1.check(answer)")
    with pytest.raises(ValueError):
        make_exercises.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda p: p.name)
def test_untouched_exercise_runs_and_reports_not_attempted(solution):
    path = ROOT / "exercises" / solution.name
    notebook = nbformat.read(path, as_version=4)
    os.environ["PEFT_TEACH_PROGRESS"] = "0"
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    printed = "\n".join(out.get("text", "") for c in notebook.cells if c.cell_type == "code"
                        for out in c.outputs if out.output_type == "stream")
    statuses = [line for line in printed.splitlines()
                if line.startswith(("[not attempted]", "[incorrect]", "[correct]"))]
    assert statuses, "the exercise printed no check results"
    assert all(s.startswith("[not attempted]") for s in statuses), statuses
