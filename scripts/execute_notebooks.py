"""Execute notebooks in place, the way the tests will see them.

    python scripts/execute_notebooks.py notebooks/00_setup_and_baselines.ipynb [...]

Progress bars are switched off (PEFT_TEACH_PROGRESS=0) so stored outputs match
what the tests produce. The wall time is printed, not stored: the runtimes the
course states come from the test run (conftest.py, scripts/publish_runtimes.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# What a stored widget shows until its cell runs again. JupyterLab drops a saved widget's
# state once a kernel starts and falls back to the output's text, which by default is
# ipywidgets' repr ("interactive(children=(SelectionSlider(...").
STORED_WIDGET_TEXT = "[interactive widget: run this cell (and the cells above it) to use it]"


def label_stored_widgets(notebook) -> int:
    """Give every widget output a readable text fallback; returns how many it changed."""
    changed = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data and data.get("text/plain") != STORED_WIDGET_TEXT:
                data["text/plain"] = STORED_WIDGET_TEXT
                changed += 1
    return changed


def execute(path: Path, timeout: int = 3000) -> float:
    notebook = nbformat.read(path, as_version=4)
    os.environ["PEFT_TEACH_PROGRESS"] = "0"
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError:
        # Keep what ran, for debugging, without touching the stored notebook.
        failed = Path(tempfile.gettempdir()) / f"FAILED_{path.name}"
        nbformat.write(notebook, failed)
        print(f"{path}: failed; partial outputs in {failed}")
        raise
    seconds = time.perf_counter() - start
    notebook.metadata.pop("peft_teach", None)  # runtimes live in runtimes.json only
    label_stored_widgets(notebook)
    nbformat.write(notebook, path)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args()
    for path in args.notebooks:
        seconds = execute(path)
        print(f"{path}: {seconds:.0f} s")


if __name__ == "__main__":
    main()
