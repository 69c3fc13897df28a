"""Self-checks for lessons and graded exercises.

Three tools:

* :func:`compare` - "does my tensor equal the reference?" printed as
  exact / close / max difference (the habit of checking every piece you build);
* :func:`expect_close` - a measured number against its published reference,
  with an explicit tolerance (CPU and GPU runs must both pass it);
* :class:`Question` - one graded exercise task. ``check(answer)`` prints
  ``not attempted``, ``incorrect`` (with a hint, never the answer) or ``correct``.
"""

from __future__ import annotations

import inspect
import json
import random
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

NOT_ATTEMPTED = "not attempted"
INCORRECT = "incorrect"
CORRECT = "correct"


def compare(name: str, ours: torch.Tensor, reference: torch.Tensor, atol: float = 1e-5,
            report_exact: bool = True) -> bool:
    """Print whether ``ours`` equals ``reference`` exactly, closely, or not; return closeness.

    The maximum difference is printed in scientific notation with one digit, so
    the line reads the same on any machine for a genuinely tiny difference.
    ``report_exact=False`` prints "close" for an exact match too: use it where the two sides
    sum in a different order, so that matching to the last bit depends on the CPU's kernels.
    """
    exact = report_exact and torch.equal(ours, reference)
    close = exact or (ours.shape == reference.shape and torch.allclose(ours, reference, atol=atol, rtol=0))
    if ours.shape != reference.shape:
        print(f"{name:<28} shapes differ: {tuple(ours.shape)} vs {tuple(reference.shape)}")
        return False
    diff = (ours.float() - reference.float()).abs().max().item()
    verdict = "exact" if exact else ("close" if close else "DIFFERENT")
    bound = "0" if exact else (f"<= {atol:.0e}" if close else f"{diff:.1e}")
    print(f"{name:<28} {verdict:<9} max abs diff {bound}")
    return close


def expect_close(name: str, value: float, reference: float, tol: float) -> None:
    """Assert ``|value - reference| <= tol`` and print the (value-free) outcome.

    The printed line shows the reference (3 significant digits) and the tolerance,
    not the measured value: it is identical on every machine that passes, which keeps stored
    notebook outputs valid on CPUs and GPUs alike. Print the value itself in a
    cell whose output the tests ignore.
    """
    if abs(value - reference) > tol:
        raise AssertionError(
            f"{name}: measured {value:.4f}, expected {reference:.4f} +/- {tol}. "
            "Different library versions or hardware can move results a little; "
            "a large gap usually means a bug or a changed setting."
        )
    print(f"[OK] {name} within {tol} of the reference {reference:.3g}")


class NotAttempted(Exception):
    """Raised by a grader when the learner has not filled the task in yet."""


REPOSITORY = "https://github.com/peft-from-scratch/peft-from-scratch/blob/main"
SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"  # there in a clone of the course


@dataclass
class Question:
    """One graded task.

    ``grader(answer)`` raises ``AssertionError(message)`` when the answer is wrong;
    the message must help without revealing the answer. An answer of ``None``
    (the exercise stub) or code that raises ``NotImplementedError`` counts as
    not attempted.

    Help comes on demand, in tiers: ``hint()`` gives the ``nudge`` first (the same
    words an incorrect answer gets), then the ``recipe`` (the steps, short of code),
    and ``solution()`` prints the solved code from ``solutions/``.
    """

    title: str
    grader: Callable[[Any], None] | None  # None for multiple choice: the options grade it
    nudge: str
    recipe: str = ""
    choices: tuple[str, ...] = ()  # multiple choice: the right option first; options() shows them shuffled
    seed: int = 0  # the learner's seed for the order of the options
    notebook: str = ""  # the practice notebook's file name; set by register()
    name: str = ""  # the variable the notebook imports (q1, q2, ...); set by register()
    hints_given: int = field(default=0, repr=False)

    def check(self, answer: Any) -> str:
        status, message = self._grade(answer)
        label = {NOT_ATTEMPTED: "[not attempted]", INCORRECT: "[incorrect]", CORRECT: "[correct]"}[status]
        print(f"{label} {self.title}" + (f": {message}" if message else ""))
        return status

    def hint(self) -> None:
        """Print the next tier of help: the nudge, then the recipe, then where the solution is."""
        tiers = [self.nudge] + ([self.recipe] if self.recipe else [])
        tier = min(self.hints_given, len(tiers))
        self.hints_given += 1
        if tier < len(tiers):
            more = " (call hint() again for more)" if tier + 1 < len(tiers) else ""
            print(f"Hint {tier + 1} of {len(tiers)}{more}: {tiers[tier]}")
        else:
            print(f"No more hints. {self.name}.solution() prints the solved code.")

    def options(self, seed: int = 0) -> None:
        """Print the options of a multiple-choice task, lettered in the order ``seed`` gives."""
        self.seed = seed
        for letter, text in zip("abcdefgh", self.shuffled_choices()):
            print(f"{letter}) {text}")

    def shuffled_choices(self) -> list[str]:
        """The options in this learner's order: the right one is not always the same letter."""
        order = list(self.choices)
        random.Random(f"{self.title}|{self.seed}").shuffle(order)  # per task too: not the same letter everywhere
        return order

    def _grade_choice(self, answer: Any) -> None:
        letters = "abcdefgh"[: len(self.choices)]
        assert isinstance(answer, str) and len(answer) == 1 and answer in letters, (
            f"Answer with one letter, as a string: one of {list(letters)} (the order options() printed).")
        assert self.shuffled_choices()[letters.index(answer)] == self.choices[0], (
            "That is not the option the measurements support.")

    def solution(self) -> None:
        """Print the solved code of this task, read from the course's ``solutions/`` notebook."""
        print(solution_code(self.notebook, self.name))

    def _grade(self, answer: Any) -> tuple[str, str]:
        if answer is None or answer is Ellipsis:
            return NOT_ATTEMPTED, "replace the placeholder with your answer, then run this cell again."
        try:
            (self.grader or self._grade_choice)(answer)
        except (NotImplementedError, NotAttempted):
            return NOT_ATTEMPTED, "fill in the TODO, then run this cell again."
        except AssertionError as error:
            return INCORRECT, f"{error} Hint: {self.nudge}"
        except Exception as error:  # a learner's crash is an answer too: say what it raised, not a traceback
            return INCORRECT, f"your code raised {type(error).__name__}: {error} Hint: {self.nudge}"
        return CORRECT, ""


def multiple_choice(title: str, right: str, wrong: tuple[str, ...], nudge: str, recipe: str = "") -> Question:
    """A multiple-choice task; ``q.options(seed)`` prints its options in a per-learner order."""
    return Question(title, None, nudge, recipe, choices=(right, *wrong))


def register(notebook: str, questions: dict[str, Any]) -> None:
    """Tell every Question among ``questions`` (a module's globals) its name and practice notebook."""
    for name, value in questions.items():
        if isinstance(value, Question):
            value.notebook, value.name = notebook, name


def solution_code(notebook: str, name: str) -> str:
    """The code of the solution cell(s) that answer ``name`` in ``solutions/<notebook>``, markers removed.

    The answer is the last cell with a solution block at or before the cell that calls
    ``<name>.check(``. Outside a clone of the course, the notebook's address instead.
    """
    path = SOLUTIONS / notebook
    if not path.exists():
        return f"The solutions are not in this installation; {name} is solved in {REPOSITORY}/solutions/{notebook}"
    cells = [cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
             for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]
    check = next(i for i, source in enumerate(cells) if f"{name}.check(" in source)
    answer = next(i for i in range(check, -1, -1) if "### BEGIN SOLUTION" in cells[i])
    keep = [line for line in cells[answer].splitlines()
            if "### BEGIN SOLUTION" not in line and "### END SOLUTION" not in line and f"{name}.check(" not in line]
    return "\n".join(keep).strip()


def _refusal(qualified_name: str) -> Callable:
    def refuse(*args, **kwargs):
        raise AssertionError(f"Your code called {qualified_name}, the package's own version of what this task "
                             "asks you to write. Write it yourself; the lesson shows the steps.")
    return refuse


@contextmanager
def blocked(*targets: tuple[object, str]) -> Iterator[None]:
    """While grading, the package functions a task asks the learner to write refuse to run.

    Each target is ``(module or class, attribute name)``. A function is usually imported by name
    (``from peft_teach.models import mean_pool``, in the notebook too), so every loaded module that
    holds the same function object gets the refusal as well. Everything is restored on exit.
    """
    replaced: list[tuple[object, str, object]] = []
    try:
        for owner, name in targets:
            original = inspect.getattr_static(owner, name)
            refusal = _refusal(f"{getattr(owner, '__name__', owner)}.{name}")
            places = [owner]
            if inspect.ismodule(owner):
                places += [module for module in list(sys.modules.values())
                           if module is not None and module is not owner
                           and any(value is original for value in list(getattr(module, "__dict__", {}).values()))]
            for place in places:
                names = [name] if place is owner else [key for key, value in list(vars(place).items())
                                                       if value is original]
                for key in names:
                    replaced.append((place, key, inspect.getattr_static(place, key)))
                    setattr(place, key, refusal)
        yield
    finally:
        for place, key, original in reversed(replaced):
            setattr(place, key, original)


def assert_not_the_package(answer: Any, *targets: tuple[object, str]) -> None:
    """Handing in the package's own function (one of ``targets``) is not an answer."""
    assert callable(answer), "Pass the function itself (no parentheses)."
    for owner, name in targets:
        if answer is getattr(owner, name):
            _refusal(f"{getattr(owner, '__name__', owner)}.{name}")()


def grade_number(expected: float, tol: float = 0.0, what: str = "value",
                 known_wrong: dict[float, str] | None = None) -> Callable[[Any], None]:
    """A grader for a numeric answer, exact or within ``tol``.

    ``known_wrong`` maps the number a classic mistake gives to a sentence naming that mistake.
    """

    def grader(answer: Any) -> None:
        assert isinstance(answer, (int, float)) and not isinstance(answer, bool), (
            f"Expected a number for the {what}, got {type(answer).__name__}."
        )
        for wrong, mistake in (known_wrong or {}).items():
            assert abs(answer - wrong) > tol, mistake
        # Never say which way the answer is off: that would let a learner find it by bisection.
        assert abs(answer - expected) <= tol, f"Your {what} does not match; recompute it step by step."

    # read by the tests' table of wrong answers
    grader.expected, grader.tol, grader.known_wrong = expected, tol, known_wrong
    return grader


def grade_choice(expected: str, options: tuple[str, ...]) -> Callable[[Any], None]:
    """A grader for a multiple-choice answer given as one of ``options``."""

    def grader(answer: Any) -> None:
        assert answer in options, f"Answer with one of {list(options)}."
        assert answer == expected, "That is not the option the measurements support."

    grader.expected, grader.options = expected, options  # read by the tests' table of wrong answers
    return grader


def assert_same_tensor(result: Any, expected: torch.Tensor, atol: float = 1e-5, shape_note: str = "",
                       values_note: str = "The shape is right but the values differ.") -> None:
    """The checks every tensor answer goes through: a tensor, the expected shape, then the values."""
    assert isinstance(result, torch.Tensor), f"Return a tensor, not {type(result).__name__}."
    assert result.shape == expected.shape, (
        f"Output shape {tuple(result.shape)} is not the expected {tuple(expected.shape)}.{shape_note}")
    if result.dtype != expected.dtype:
        # A right answer computed in float32 is still right against a float64 reference: compare in the
        # reference's dtype, at float32's precision (about 7 digits). Coarser dtypes (float16, bfloat16)
        # get no extra tolerance, so a loose answer cannot hide behind its dtype.
        if result.dtype == torch.float32:
            atol = max(atol, 100 * torch.finfo(torch.float32).eps)
        result = result.to(expected.dtype)
    largest = (result.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert torch.allclose(result, expected, atol=atol, rtol=0), f"{values_note} (largest difference {largest:.1e})"


def name_the_mistake(result: Any, expected: torch.Tensor, inputs: tuple,
                     known_wrong: dict[str, Callable[..., torch.Tensor]], atol: float) -> None:
    """Raise with the mistake's name when a wrong ``result`` equals what a known mistake computes."""
    if not isinstance(result, torch.Tensor) or result.shape != expected.shape:
        return
    result = result.to(expected.dtype)
    if torch.allclose(result, expected, atol=atol, rtol=0):
        return
    for mistake, wrong in known_wrong.items():
        if torch.allclose(result, wrong(*inputs).to(expected.dtype), atol=atol, rtol=0):
            raise AssertionError(f"Your result is exactly what {mistake} gives.")


def grade_function(
    make_inputs: Callable[[], tuple], reference: Callable[..., torch.Tensor], atol: float = 1e-5,
    block: tuple[tuple[object, str], ...] = (),
    known_wrong: dict[str, Callable[..., torch.Tensor]] | None = None,
) -> Callable[[Any], None]:
    """A grader for a function: it must match ``reference`` on generated inputs.

    ``block`` names the package functions that would answer the task for the learner:
    they refuse to run while the learner's function does (see :func:`blocked`).
    ``known_wrong`` maps a classic mistake, said in words, to what it computes; a wrong
    answer that matches one is told that mistake by name.
    """

    def grader(function: Any) -> None:
        assert_not_the_package(function, *block)
        inputs = make_inputs()
        expected = reference(*inputs)
        with blocked(*block):
            result = function(*inputs)
        name_the_mistake(result, expected, inputs, known_wrong or {}, atol)
        assert_same_tensor(result, expected, atol)

    # read by the tests' table of wrong answers
    grader.make_inputs, grader.reference, grader.known_wrong, grader.block = make_inputs, reference, known_wrong, block
    return grader
