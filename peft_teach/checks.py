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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

NOT_ATTEMPTED = "not attempted"
INCORRECT = "incorrect"
CORRECT = "correct"


def compare(name: str, ours: torch.Tensor, reference: torch.Tensor, atol: float = 1e-5) -> bool:
    """Print whether ``ours`` equals ``reference`` exactly, closely, or not; return closeness.

    The maximum difference is printed in scientific notation with one digit, so
    the line reads the same on any machine for a genuinely tiny difference.
    """
    exact = torch.equal(ours, reference)
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


@dataclass
class Question:
    """One graded task.

    ``grader(answer)`` raises ``AssertionError(message)`` when the answer is wrong;
    the message must help without revealing the answer. An answer of ``None``
    (the exercise stub) or code that raises ``NotImplementedError`` counts as
    not attempted.
    """

    title: str
    grader: Callable[[Any], None]
    hint: str

    def check(self, answer: Any) -> str:
        status, message = self._grade(answer)
        label = {NOT_ATTEMPTED: "[not attempted]", INCORRECT: "[incorrect]", CORRECT: "[correct]"}[status]
        print(f"{label} {self.title}" + (f": {message}" if message else ""))
        return status

    def _grade(self, answer: Any) -> tuple[str, str]:
        if answer is None or answer is Ellipsis:
            return NOT_ATTEMPTED, "replace the placeholder with your answer, then run this cell again."
        try:
            self.grader(answer)
        except (NotImplementedError, NotAttempted):
            return NOT_ATTEMPTED, "fill in the TODO, then run this cell again."
        except AssertionError as error:
            return INCORRECT, f"{error} Hint: {self.hint}"
        except Exception as error:  # a learner's crash is an answer too: say what it raised, not a traceback
            return INCORRECT, f"your code raised {type(error).__name__}: {error} Hint: {self.hint}"
        return CORRECT, ""


def grade_number(expected: float, tol: float = 0.0, what: str = "value") -> Callable[[Any], None]:
    """A grader for a numeric answer, exact or within ``tol``."""

    def grader(answer: Any) -> None:
        assert isinstance(answer, (int, float)) and not isinstance(answer, bool), (
            f"Expected a number for the {what}, got {type(answer).__name__}."
        )
        # Never say which way the answer is off: that would let a learner find it by bisection.
        assert abs(answer - expected) <= tol, f"Your {what} does not match; recompute it step by step."

    return grader


def grade_choice(expected: str, options: tuple[str, ...]) -> Callable[[Any], None]:
    """A grader for a multiple-choice answer given as one of ``options``."""

    def grader(answer: Any) -> None:
        assert answer in options, f"Answer with one of {list(options)}."
        assert answer == expected, "That is not the option the measurements support."

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


def grade_function(
    make_inputs: Callable[[], tuple], reference: Callable[..., torch.Tensor], atol: float = 1e-5
) -> Callable[[Any], None]:
    """A grader for a function: it must match ``reference`` on generated inputs."""

    def grader(function: Any) -> None:
        assert callable(function), "Pass the function itself (no parentheses)."
        inputs = make_inputs()
        expected = reference(*inputs)
        assert_same_tensor(function(*inputs), expected, atol)

    return grader
