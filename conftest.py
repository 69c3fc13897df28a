"""Time every notebook under nbval: print the table at the end of each test run and keep it.

The measured seconds go to ``build/last_test_run.json`` (not committed). ``python
scripts/publish_runtimes.py`` copies a complete, passing run into ``runtimes.json``, the
README syllabus and the lesson headers: the one source of every runtime the course states.
The budgets (a lesson <= 4 min, a practice notebook <= 60 s on a 2-core CPU) are tested
against ``runtimes.json`` in tests/test_runtimes.py.

``make test`` runs notebooks side by side (pytest-xdist, one thread each), so its seconds are not what a
learner sees; the run records how it ran, and only a run of one notebook at a time on all the cores
(``make runtimes``) is published.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections import defaultdict
from pathlib import Path

import pytest

LAST_RUN = Path(__file__).parent / "build" / "last_test_run.json"
# Lessons 01 and 02 share the adapters they train (artifacts/adapters): run one after the other, lesson 02 loads
# three of its four source adapters from lesson 01. Side by side in make test's two processes, it trained all four.
SHARED_ARTIFACTS = {"notebooks/01_bottleneck_adapters.ipynb", "notebooks/02_adapter_fusion.ipynb"}


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: ignored where pytest-xdist is not installed
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile (make test): each file whole in one process, as usual, but lessons 01 and 02 in the same one.

    (pytest-xdist's own --dist loadgroup would do this with marks, but with pytest 9 it no longer groups: it
    renames item._nodeid, which pytest 9 does not read any more.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LessonScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return "the adapter library (lessons 01 and 02)" if path in SHARED_ARTIFACTS else path

    return LessonScheduling(config, log)


def _device() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def pytest_terminal_summary(terminalreporter):
    seconds: dict[str, float] = defaultdict(float)
    failed: set[str] = set()
    for reports in terminalreporter.stats.values():
        for report in reports:
            path = getattr(report, "nodeid", "").split("::")[0]
            if path.endswith(".ipynb"):
                seconds[path] += getattr(report, "duration", 0.0)
                if getattr(report, "failed", False):
                    failed.add(path)
    if not seconds:
        return
    workers = terminalreporter.config.getoption("numprocesses", None) or 0  # pytest-xdist's -n; 0 without it
    threads = os.environ.get("OMP_NUM_THREADS", "all cores")
    terminalreporter.write_sep("-", f"notebook runtimes under nbval ({max(workers, 1)} at a time, threads: {threads})")
    for path, total in sorted(seconds.items()):
        terminalreporter.write_line(f"{path:<50} {total:6.0f} s" + ("  (FAILED)" if path in failed else ""))
    LAST_RUN.parent.mkdir(exist_ok=True)
    LAST_RUN.write_text(json.dumps({
        "date": datetime.date.today().isoformat(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "device": _device(), "workers": workers, "threads": threads, "failed": sorted(failed),
        "seconds": {path: round(total) for path, total in sorted(seconds.items())}}, indent=2) + "\n")
