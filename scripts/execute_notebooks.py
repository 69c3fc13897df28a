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
