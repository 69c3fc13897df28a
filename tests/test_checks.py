import pytest
import torch

from peft_teach import checks


def test_question_statuses(capsys):
    question = checks.Question("Q1 count", checks.grade_number(42), nudge="Count both matrices.")
    assert question.check(None) == checks.NOT_ATTEMPTED
    assert question.check(41) == checks.INCORRECT
    out = capsys.readouterr().out
    assert "Count both matrices." in out and "42" not in out  # never reveal the answer
    assert "low" not in out and "high" not in out  # nor which way it is off (no bisection)
    assert question.check(42) == checks.CORRECT


def test_number_grader_names_a_known_mistake(capsys):
    grader = checks.grade_number(42, known_wrong={21: "You counted one matrix of the two."})
    question = checks.Question("Q1 count", grader, nudge="Count both matrices.")
    assert question.check(21) == checks.INCORRECT
    assert "one matrix of the two" in capsys.readouterr().out
    assert question.check(40) == checks.INCORRECT
    assert "one matrix of the two" not in capsys.readouterr().out
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


def test_compare_can_leave_exactness_unsaid_where_it_depends_on_the_cpu(capsys):
    assert checks.compare("same", torch.ones(2), torch.ones(2), report_exact=False)
    assert capsys.readouterr().out.split()[1:] == ["close", "max", "abs", "diff", "<=", "1e-05"]
    assert not checks.compare("far", torch.ones(2), torch.zeros(2), report_exact=False)
    assert "DIFFERENT" in capsys.readouterr().out


def test_a_crashing_answer_is_incorrect_with_what_it_raised(capsys):
    def crashes(x):
        return x @ torch.ones(5)  # wrong shapes: torch raises RuntimeError

    question = checks.Question("Q4 crash", checks.grade_function(lambda: (torch.ones(3),), lambda x: 2 * x), "x + x")
    assert question.check(crashes) == checks.INCORRECT
    out = capsys.readouterr().out
    assert "your code raised RuntimeError" in out and "Traceback" not in out


def test_multiple_choice_grades_the_letter_in_the_order_the_learner_saw(capsys):
    question = checks.multiple_choice("Q9 colours", "green", ("red", "blue", "grey"), nudge="look again")
    letters = {}
    for seed in range(20):
        capsys.readouterr()  # forget the previous round's verdicts
        question.options(seed=seed)
        shown = [line.split(") ", 1)[1] for line in capsys.readouterr().out.strip().splitlines()]
        assert sorted(shown) == sorted(question.choices)
        right = "abcd"[shown.index("green")]
        letters[seed] = right
        assert question.check(right) == checks.CORRECT
        assert question.check("abcd"[(shown.index("green") + 1) % 4]) == checks.INCORRECT
    assert len(set(letters.values())) > 1  # the right letter moves with the learner's seed
    assert question.check("green") == checks.INCORRECT  # a letter is asked for


def test_the_courses_multiple_choice_options_are_even_in_length_and_not_all_the_same_letter():
    from peft_teach.questions import lesson_00, lesson_01, lesson_02, lesson_05

    questions = [q for module in (lesson_00, lesson_01, lesson_02, lesson_05) for q in vars(module).values()
                 if isinstance(q, checks.Question) and q.choices]
    assert len(questions) == 4
    for question in questions:
        lengths = [len(option) for option in question.choices]
        assert max(lengths) <= 1.1 * min(lengths), question.title  # the longest option is no giveaway
    seed_0 = {q.title: q.shuffled_choices().index(q.choices[0]) for q in questions if q.seed == 0}
    assert len(set(seed_0.values())) > 1


def test_classic_mistakes_are_named():
    from peft_teach.questions import lesson_00, lesson_01, lesson_02, lesson_05

    cases = [
        (lesson_00.q1, lambda hidden, mask: hidden.mean(dim=1), "padding included"),
        (lesson_01.q1, lambda h, wd, bd, wu, bu: torch.relu(h @ wd.T + bd) @ wu.T + bu, "residual"),
        (lesson_02.q1, lambda q, k: torch.softmax((q.unsqueeze(2) * k).sum(-1) / q.shape[-1] ** 0.5, dim=-1),
         "1/sqrt(d)"),
        (lesson_02.q1, lambda q, k: torch.softmax((q.unsqueeze(2) * k).sum(-1), dim=1), "over the tokens"),
        (lesson_05.q1, lambda x, w, b, a, bb, alpha, r: x @ w.T + b + alpha * (x @ a.T) @ bb.T, "alpha instead"),
    ]
    for question, wrong, name in cases:
        status, message = question._grade(wrong)
        assert status == checks.INCORRECT and name in message, (question.title, message)
