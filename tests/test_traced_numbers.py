"""Every number a lesson's prose quotes must come from somewhere a reader can check.

A decimal number or a percentage in a lesson's markdown (an accuracy, a ratio, a
timing) must appear in that notebook's stored outputs, in a lesson the sentence
names ("lesson 00's ..."), or in ``peft_teach/precomputed/`` - rounded to the
digits the prose shows. A paper's figure is exempt when its sentence names the
table, figure or section it comes from, as the developers' guide asks. Formulas
(``$...$``), code spans, links, library versions, arXiv ids and model sizes
("22.7M") are not results and are skipped. So a result typed by hand, or left
behind when a lesson was re-run, fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LESSONS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))

QUOTED = re.compile(r"(?<![\w.$\\^{-])(\d+\.\d+|\d+(?:\.\d+)?\s?%)(?![\w.]*\d|e-?\d)"
                    r"(?!\s?(?:[MBk]|million|billion)\b)")
SOURCED = re.compile(r"\b(?:Table|Tables|Fig\.|Figure|Sec\.|Section|§|Eq\.)\s?\d")
VERSIONS = re.compile(r"`?\b(?:transformers|adapters|torch|peft|Python|JupyterLab|nbval)`?\W{0,2}\s+\d+(?:\.\d+)+")
NOT_RESULTS = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`]*`|\]\([^)]*\)|<[^>]*>|arXiv:?\s?\d{4}\.\d{4,5}", re.S)
SENTENCES = re.compile(r"(?<=[.;!?])\s+(?=[A-Z(*])|\n\s*[-|*]\s|\n\n")
LESSON_REFERENCE = re.compile(r"[Ll]esson (\d\d)")


def renderings(value: float) -> set[str]:
    """How prose may show ``value``: 0 to 4 decimals, as itself or as a percentage."""
    return {text for digits in range(5) for text in (f"{value:.{digits}f}", f"{100 * value:.{digits}f}%")}


def numbers_in(text: str) -> set[str]:
    found: set[str] = set()
    for match in re.finditer(r"\d[\d,]*(?:\.\d+)?(?:e-?\d+)?", text):
        try:
            found |= renderings(float(match.group(0).replace(",", "")))
        except ValueError:
            continue
    return found


def output_numbers(path: Path) -> set[str]:
    notebook = json.loads(path.read_text())
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")))
            for kind in ("text/plain", "text/markdown"):
                texts.append("".join(output.get("data", {}).get(kind, "")))
    return numbers_in("\n".join(texts))


def precomputed_numbers() -> set[str]:
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                found.update(numbers_in(str(key)))
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found.update(renderings(value))

    for file in (ROOT / "peft_teach" / "precomputed").glob("*.json"):
        walk(json.loads(file.read_text()))
    return found


def untraced(path: Path, stored: set[str]) -> list[str]:
    """Quoted numbers of lesson ``path`` found nowhere they could come from, with their sentence."""
    own = output_numbers(path)
    problems = []
    for index, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        prose = NOT_RESULTS.sub(" ", VERSIONS.sub(" ", "".join(cell["source"])))
        for sentence in SENTENCES.split(prose):
            if SOURCED.search(sentence):
                continue
            allowed = own | stored
            for other in LESSON_REFERENCE.findall(sentence):
                for lesson in LESSONS:
                    if lesson.name.startswith(other):
                        allowed = allowed | output_numbers(lesson)
            for match in QUOTED.finditer(sentence):
                number = match.group(1).replace(" ", "")
                if number not in allowed:
                    problems.append(f"cell {index}: {number} in {' '.join(sentence.split())[:160]!r}")
    return problems


@pytest.fixture(scope="module")
def stored() -> set[str]:
    return precomputed_numbers()


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.name)
def test_every_number_in_the_prose_is_traced(lesson, stored):
    problems = untraced(lesson, stored)
    assert not problems, ("Numbers in the prose that no output or precomputed result shows (print them, "
                          "compute them in the notebook, or cite the paper's table/figure):\n" + "\n".join(problems))


def test_the_check_catches_a_number_typed_by_hand(tmp_path):
    lesson = tmp_path / "07_demo.ipynb"
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "We reach 0.912 and 3.5% overhead."},
             {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": "print(0.9123)",
              "outputs": [{"output_type": "stream", "name": "stdout", "text": "accuracy 0.9123\n"}]},
             {"cell_type": "markdown", "metadata": {}, "source": "The paper reports 95.1% (Table 2)."}]
    lesson.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    problems = untraced(lesson, set())
    assert len(problems) == 1 and "3.5%" in problems[0]  # 0.912 rounds 0.9123; the cited 95.1% is sourced
