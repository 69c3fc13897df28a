"""Report how long each notebook took under nbval, at the end of every test run.

The budgets (a lesson <= 4 min on a 2-core CPU) are checked by reading this table.
"""

from collections import defaultdict


def pytest_terminal_summary(terminalreporter):
    seconds: dict[str, float] = defaultdict(float)
    for reports in terminalreporter.stats.values():
        for report in reports:
            path = getattr(report, "nodeid", "").split("::")[0]
            if path.endswith(".ipynb"):
                seconds[path] += getattr(report, "duration", 0.0)
    if seconds:
        terminalreporter.write_sep("-", "notebook runtimes under nbval")
        for path, total in sorted(seconds.items()):
            terminalreporter.write_line(f"{path:<50} {total:6.0f} s")
