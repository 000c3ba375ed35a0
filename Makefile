# The two commands of the README: `make book` and `make test`. Each sets itself up on a fresh machine.
SHELL := /bin/bash
PY     ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROFILE ?= mini
DEVICE  ?= cpu
export PYTHONHASHSEED := 0

MATHJAX := .cache/static/mathjax/es5/tex-chtml.js

.PHONY: venv export book grid grid-deps test check-sync check-clean pytest nbtest book-build browser clean bench bench-full gpu-data gpu-check gpu-window

# The venv is rebuilt only when the pins or the package metadata change: a second run installs nothing.
# uv installs the pins, in parallel: the install step of .ci/run took 62 s here, against 127 s with pip. It compiles
# the bytecode as pip does, since where PYTHONDONTWRITEBYTECODE is set, as here, nothing else would (the notebook
# stage took about the same with and without it: 314 s and 301 s). uv does not read pip's configuration, so the extra indexes pip is configured with (this
# machine's local mirrors) are passed on, and like pip it takes the best match across them.
UV          := $(BIN)/uv
PIP_INDEXES := $(shell $(PY) -m pip config get global.extra-index-url 2>/dev/null)
UV_INSTALL  := $(UV) pip install -q --compile-bytecode --python $(BIN)/python $(foreach u,$(PIP_INDEXES),--extra-index-url $(u)) \
               $(if $(PIP_INDEXES),--index-strategy unsafe-best-match)
$(STAMP): requirements.txt settings.ini setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	test -x $(UV) || $(BIN)/pip install -q --disable-pip-version-check 'uv==0.13.9'
	$(UV_INSTALL) -r requirements.txt
	$(UV_INSTALL) --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	$(BIN)/python -c "import torch, nbdev, jupyter_book, papermill; assert torch.__version__.startswith('2.14.1'), torch.__version__"
	$(BIN)/pip check
	touch $@

venv: $(STAMP)

export: $(STAMP)
	$(BIN)/nbdev_export

# MathJax is served from the book itself (npm's mathjax package), so the rendered book works offline.
$(MATHJAX):
	rm -rf .cache/mathjax-pack && mkdir -p .cache/mathjax-pack .cache/static/mathjax
	cd .cache/mathjax-pack && npm pack --silent mathjax@3.2.2 >/dev/null && tar xzf mathjax-3.2.2.tgz
	rm -rf .cache/static/mathjax/es5 && mv .cache/mathjax-pack/package/es5 .cache/static/mathjax/es5 && rm -rf .cache/mathjax-pack

# A real browser for the book tests: Debian's chromium, driven by playwright (no browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Executed chapters go to book/ (never nbs/), then Sphinx renders them with execution off.
book-build: export $(MATHJAX)
	$(BIN)/python -m fgr.grid --profile $(PROFILE) --device $(DEVICE)
	$(BIN)/python tools/build_book.py --profile $(PROFILE) --device $(DEVICE)
	$(BIN)/jupyter-book build . --path-output book -W -n --keep-going

book: book-build
	@echo "book: open book/_build/html/index.html"

# The profile's rows as tasks (chapter 12): in local processes, one per core (per GPU with DEVICE=cuda).
grid: export
	$(BIN)/python -m fgr.grid --profile $(PROFILE) --device $(DEVICE)

# Ray, for the grid's --engine ray (an optional extra; import fgr never needs it).
grid-deps: $(STAMP)
	$(BIN)/python -c "import ray" 2>/dev/null || $(UV_INSTALL) 'ray==2.60.0'

# fgr/ is generated: exporting the notebooks again must not change it.
check-sync: $(STAMP)
	@tmp=$$(mktemp -d) && cp -r fgr $$tmp/ && $(BIN)/nbdev_export && \
	  if ! diff -r -q $$tmp/fgr fgr -x __pycache__; then echo "fgr/ is out of sync with nbs/: run nbdev_export and commit"; rm -rf $$tmp; exit 1; fi; rm -rf $$tmp

# Notebooks are committed clean (nbdev_clean, keeping cell tags for papermill and Jupyter Book).
check-clean: $(STAMP)
	@tmp=$$(mktemp -d) && cp -r nbs $$tmp/ && $(BIN)/nbdev_clean --fname $$tmp/nbs && \
	  if ! diff -r -q nbs $$tmp/nbs -x .ipynb_checkpoints; then echo "notebooks are not clean: run nbdev_clean"; rm -rf $$tmp; exit 1; fi; rm -rf $$tmp

pytest: $(STAMP)
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --durations=25

nbtest: $(STAMP)
	$(BIN)/nbdev_test --n_workers 2 --do_print

# Every notebook is executed once: the book build at PROFILE=tiny runs each chapter top to bottom (a failing cell fails
# it), so `nbtest` (nbdev_test, the same cells again) is for working on a chapter, not part of `make test`.
# The book first (the book tests read what the build wrote), then pytest.
# Installing the browser and ray (downloads and unpacking, 30 s on a fresh machine) overlaps the book build.
test: check-sync check-clean
	$(MAKE) -j3 --output-sync=line book-build browser grid-deps PROFILE=tiny
	$(MAKE) pytest

# Benchmarks (chapter 11): a smoke run, the full run, and the GPU check for a session with a lent GPU.
bench: $(STAMP)
	$(BIN)/python -m fgr.bench --quick

bench-full: $(STAMP)
	$(BIN)/python -m fgr.bench

gpu-data: $(STAMP)
	$(BIN)/python benchmarks/pack_gpu_data.py

# Runs where the venv is not (a bare GPU machine with its own torch): no dependency on the stamp.
gpu-check:
	bash tools/gpu_check.sh

# The GPU window (README): the gpu profile's grids on a lent GPU, or the tiny profile on a CPU; then import its archive.
gpu-window:
	bash tools/gpu_window.sh

clean:
	rm -rf book/_build book/chapters book/experiments book/intro.ipynb .cache/executed
