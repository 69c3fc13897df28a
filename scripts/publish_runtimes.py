"""Publish the notebook runtimes of the last test run: the one source of every runtime the course states.

    make runtimes    # every notebook alone, one after another (writes build/last_test_run.json), then this script
    python scripts/publish_runtimes.py     # -> runtimes.json, the README syllabus, the lesson headers

Only a run in which every lesson and practice notebook ran, alone and on all the cores, and passed is
published: ``make test`` runs two notebooks at a time on one thread each, which is not what a learner sees.
tests/test_runtimes.py fails when the README or a lesson header disagrees with
``runtimes.json``, or when a notebook is over its budget there.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat

from peft_teach.files import write_text_atomically

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ROOT / "runtimes.json"
LAST_RUN = ROOT / "build" / "last_test_run.json"
README = ROOT / "README.md"
HEADER = re.compile(r"^\*\*Runtime \(measured\):\*\*.*$", re.M)
README_PARAGRAPH = re.compile(r"^Runtimes: .*?(?=\n\n)", re.M | re.S)
SYLLABUS_ROW = re.compile(r"^(\| (\d\d) \| \[[^\]]+\]\(notebooks/([^)]+)\) \|.*\| )([^|]*)( \|)$", re.M)


def notebooks() -> list[Path]:
    return sorted(ROOT.glob("notebooks/[0-9]*.ipynb")) + sorted(ROOT.glob("solutions/[0-9]*.ipynb"))


def machine_words(runtimes: dict) -> str:
    return f"a {runtimes['cpu_count']}-core {runtimes['machine']} CPU"


def header_line(runtimes: dict, lesson: str) -> str:
    seconds = runtimes["seconds"][lesson]
    gpu = runtimes.get("gpu_seconds", {}).get(lesson)
    gpu_text = f"{gpu} s on {runtimes['gpu']}" if gpu is not None else "not measured yet"
    return (f"**Runtime (measured):** {seconds} s under nbval on {machine_words(runtimes)} "
            f"({runtimes['date']}, `runtimes.json`); GPU: {gpu_text}.")


def readme_paragraph(runtimes: dict) -> str:
    return (f"Runtimes: nbval's execution of each notebook alone on {machine_words(runtimes)} "
            f"({runtimes['date']}, `make runtimes`), published from that run by `scripts/publish_runtimes.py` into "
            "`runtimes.json`, this table and the lesson headers. `make test` prints its own at the end of every "
            "run, two notebooks at a time on one thread each, so they are longer. "
            "GPU runtimes: " + ("see `runtimes.json`." if runtimes.get("gpu_seconds") else "not measured yet."))


def expected_readme(text: str, runtimes: dict) -> str:
    def row(match: re.Match) -> str:
        lesson = f"notebooks/{match.group(3)}"
        return f"{match.group(1)}{runtimes['seconds'][lesson]} s{match.group(5)}"

    return README_PARAGRAPH.sub(lambda _: readme_paragraph(runtimes), SYLLABUS_ROW.sub(row, text))


def expected_first_cell(source: str, runtimes: dict, lesson: str) -> str:
    return HEADER.sub(lambda _: header_line(runtimes, lesson), source)


def publish(run: dict) -> dict:
    wanted = {str(p.relative_to(ROOT)) for p in notebooks()}
    missing = sorted(wanted - set(run["seconds"]))
    if missing or run["failed"]:
        sys.exit(f"Not publishing: notebooks missing from the run {missing}, failed {run['failed']}. "
                 "Run `make runtimes`.")
    if run.get("workers", 0) > 1 or run.get("threads", "all cores") != "all cores":
        sys.exit(f"Not publishing: that run had {run['workers']} notebooks at a time on {run['threads']} thread(s) "
                 "each (make test), not one at a time on all the cores. Run `make runtimes`.")
    runtimes = {key: run[key] for key in ("date", "machine", "cpu_count", "device")}
    runtimes["seconds"] = {path: run["seconds"][path] for path in sorted(wanted)}
    write_text_atomically(RUNTIMES, json.dumps(runtimes, indent=2) + "\n")
    write_text_atomically(README, expected_readme(README.read_text(), runtimes))
    for path in ROOT.glob("notebooks/[0-9]*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        lesson = str(path.relative_to(ROOT))
        notebook.cells[0].source = expected_first_cell(notebook.cells[0].source, runtimes, lesson)
        nbformat.write(notebook, path)
    return runtimes


def main() -> None:
    if not LAST_RUN.exists():
        sys.exit(f"No {LAST_RUN.relative_to(ROOT)}: run `make runtimes` first.")
    runtimes = publish(json.loads(LAST_RUN.read_text()))
    for path, seconds in runtimes["seconds"].items():
        print(f"{path:<50} {seconds:>5} s")


if __name__ == "__main__":
    main()
