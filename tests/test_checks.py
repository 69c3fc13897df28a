import pytest
import torch

from peft_teach import checks


def test_question_statuses(capsys):
    question = checks.Question("Q1 count", checks.grade_number(42), hint="Count both matrices.")
    assert question.check(None) == checks.NOT_ATTEMPTED
    assert question.check(41) == checks.INCORRECT
    out = capsys.readouterr().out
    assert "Count both matrices." in out and "42" not in out  # never reveal the answer
    assert "low" not in out and "high" not in out  # nor which way it is off (no bisection)
    assert question.check(42) == checks.CORRECT


def test_function_grader_reports_unfinished_code_as_not_attempted():
    def stub(x):
        raise NotImplementedError

    question = checks.Question("Q2 double", checks.grade_function(lambda: (torch.ones(3),), lambda x: 2 * x), "x + x")
    assert question.check(stub) == checks.NOT_ATTEMPTED
    assert question.check(lambda x: 3 * x) == checks.INCORRECT
    assert question.check(lambda x: x[:2]) == checks.INCORRECT
    assert question.check(lambda x: x + x) == checks.CORRECT


def test_choice_grader():
    question = checks.Question("Q3", checks.grade_choice("b", ("a", "b")), "look at the plot")
    assert question.check("c") == checks.INCORRECT
    assert question.check("a") == checks.INCORRECT
    assert question.check("b") == checks.CORRECT


def test_compare_and_expect_close(capsys):
    assert checks.compare("same", torch.ones(2), torch.ones(2))
    assert checks.compare("near", torch.ones(2), torch.ones(2) + 1e-7)
    assert not checks.compare("far", torch.ones(2), torch.zeros(2))
    assert not checks.compare("shape", torch.ones(2), torch.ones(3))
    out = capsys.readouterr().out
    assert "exact" in out and "close" in out and "DIFFERENT" in out and "shapes differ" in out
    checks.expect_close("acc", 0.91, 0.9, 0.02)
    assert "0.91" not in capsys.readouterr().out
    with pytest.raises(AssertionError, match="0.8000"):
        checks.expect_close("acc", 0.8, 0.9, 0.02)


def test_a_crashing_answer_is_incorrect_with_what_it_raised(capsys):
    def crashes(x):
        return x @ torch.ones(5)  # wrong shapes: torch raises RuntimeError

    question = checks.Question("Q4 crash", checks.grade_function(lambda: (torch.ones(3),), lambda x: 2 * x), "x + x")
    assert question.check(crashes) == checks.INCORRECT
    out = capsys.readouterr().out
    assert "your code raised RuntimeError" in out and "Traceback" not in out
