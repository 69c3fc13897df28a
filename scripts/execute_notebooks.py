"""Execute notebooks in place, the way the tests will see them, and time them.

    python scripts/execute_notebooks.py notebooks/00_setup_and_baselines.ipynb [...]

Progress bars are switched off (PEFT_TEACH_PROGRESS=0) so stored outputs match
what the tests produce. Each notebook's wall time is stored in its metadata
(``peft_teach.runtime_seconds``) and appended to ``runtimes.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ROOT / "runtimes.json"


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
    notebook.metadata.setdefault("peft_teach", {})["runtime_seconds"] = round(seconds)
    nbformat.write(notebook, path)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args()
    runtimes = json.loads(RUNTIMES.read_text()) if RUNTIMES.exists() else {}
    for path in args.notebooks:
        seconds = execute(path)
        key = str(path.resolve().relative_to(ROOT))
        runtimes[key] = {"seconds": round(seconds), "cpu": platform.processor() or platform.machine(),
                         "threads": os.cpu_count()}
        print(f"{key}: {seconds:.0f} s")
    RUNTIMES.write_text(json.dumps(dict(sorted(runtimes.items())), indent=2) + "\n")


if __name__ == "__main__":
    main()
