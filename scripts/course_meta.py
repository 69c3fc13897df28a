"""Facts every notebook-writing script shares, kept in one place."""

REPO_URL = "https://github.com/peft-from-scratch/peft-from-scratch"
# The kernel JupyterLab installs with ipykernel; the same display name keeps a freshly opened
# notebook from being marked modified.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
