"""The README's Colab install, simulated: a fresh environment that already holds torch (as Colab does), then
the one-cell install, then a lesson.

What is simulated and what is not:
- Colab ships its own torch (a CUDA build) and an older transformers. Here the environment starts with
  torch 2.13.0, the only CPU build on this machine (a CUDA build needs several GB of NVIDIA libraries), and
  transformers 4.57, the last 4.x release. The test proves the install keeps the torch it finds (same
  version, same files) and brings transformers to 5.x, which the course needs.
- The cell installs from GitHub; with no network here, the same requirement points at this clone
  (`peft-teach @ file://...`), which pip resolves the same way.
- Lessons then run as Colab runs them: in a kernel of that environment, without the test extras.

Run with `make test-colab` (about 3 minutes); not part of `make test`.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = ROOT / "build" / "colab-simulation"
MARKER = ENV / "made-by-test_colab_install"  # we only ever delete an environment this test made
COLABS_OWN = ["torch==2.13.0", "transformers==4.57.6", "ipykernel", "nbclient", "nbformat"]
LESSONS = ["notebooks/05_lora.ipynb"]


def pip(*args: str) -> str:
    done = subprocess.run([str(ENV / "bin" / "python"), "-m", "pip", "install", "--no-compile", *args],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def readme_colab_requirements() -> list[str]:
    """The requirements of the README's Colab cells, in order ("%pip install -q ..." lines)."""
    lines = re.findall(r"^%pip install -q (.+)$", (ROOT / "README.md").read_text(), flags=re.MULTILINE)
    assert lines, "the README has no Colab install cell"
    return lines


def torch_files() -> dict[str, object]:
    probe = "import importlib.metadata as m, json; d = m.distribution('torch'); " \
            "print(json.dumps({'version': d.version, 'record': d.read_text('RECORD')}))"
    done = subprocess.run([str(ENV / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def colab():
    if ENV.exists():
        if not MARKER.exists():
            pytest.fail(f"{ENV} exists and was not made by this test: move it away, it will not be deleted.")
        shutil.rmtree(ENV)
    venv.create(ENV, with_pip=True)
    MARKER.write_text("")
    pip(*COLABS_OWN)
    before = torch_files()
    outputs = []
    for line in readme_colab_requirements():
        # the one change: GitHub -> this clone, for a machine without network
        line = re.sub(r'"peft-teach @ git\+\S+"', f'"peft-teach @ file://{ROOT}"', line)
        outputs.append(pip(*shlex.split(line)))
    return before, outputs


def test_the_install_keeps_the_torch_it_finds(colab):
    before, _ = colab
    after = torch_files()
    assert after["version"] == before["version"] and after["record"] == before["record"]
    version = subprocess.run([str(ENV / "bin" / "python"), "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True, check=True).stdout
    assert version.startswith("5."), version


@pytest.mark.parametrize("lesson", LESSONS)
def test_a_lesson_runs_in_that_environment(colab, lesson):
    script = ("import sys, nbformat; from nbclient import NotebookClient; "
              "nb = nbformat.read(sys.argv[1], as_version=4); "
              "NotebookClient(nb, timeout=600, kernel_name='python3', "
              "resources={'metadata': {'path': sys.argv[2]}}).execute()")
    path = ROOT / lesson
    done = subprocess.run([str(ENV / "bin" / "python"), "-c", script, str(path), str(path.parent)],
                          capture_output=True, text=True, timeout=900,
                          env={"PATH": f"{ENV / 'bin'}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               "PEFT_TEACH_PROGRESS": "0", "HOME": str(ENV)})
    assert done.returncode == 0, done.stderr[-4000:]
