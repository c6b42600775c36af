# Two commands do all the set-up on a fresh clone:  `make train`  and  `make test`.
# An already active virtualenv is used as is; otherwise .venv is created here.
SHELL := /bin/bash
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
PYTHON_BOOT ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.uda-install-stamp
TOY_DIR ?= data/toy
TRAIN_CONFIG ?= configs/toy/dranet.yaml
export OMP_NUM_THREADS ?= 1

.PHONY: install train test test-real toy clean help

help:
	@echo "make train   set up, generate the toy benchmark if absent, train on it, print target mIoU"
	@echo "make test    set up and run the test suite (without the realscale tests)"
	@echo "make test-real  the realscale tests: real configs at real shapes on the CPU (an hour)"
	@echo "make toy     (re)generate the toy benchmark in $(TOY_DIR)"

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --upgrade pip setuptools wheel
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(TOY_DIR)/toy_meta.json: | $(STAMP)
	$(PY) -m uda data make-toy --out $(TOY_DIR)

toy: $(STAMP)
	$(PY) -m uda data make-toy --out $(TOY_DIR)

train: $(STAMP) $(TOY_DIR)/toy_meta.json
	$(PY) -m uda train --config $(TRAIN_CONFIG) data.source.root=$(TOY_DIR)/source data.target.root=$(TOY_DIR)/target

test: $(STAMP)
	$(PY) -m pytest -m "not realscale" $(PYTEST_ARGS)

test-real: $(STAMP)
	$(PY) -m pytest -m realscale $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
