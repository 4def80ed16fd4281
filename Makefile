# Two commands on a fresh machine: `make test` and `make demo`. Both create .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,dicom]"
	touch $(STAMP)

install: $(STAMP)

# The whole suite, `slow` tests included (CI runs this), on two pytest workers (a test file
# stays on one worker, with its module fixtures); JOBS=1 runs it in one process.
JOBS ?= 2
test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -n $(JOBS) --dist loadfile tests

# Everything but the tests marked `slow`.
test-fast: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m chestxray_tf.cli.demo --workdir demo_workdir

clean:
	rm -rf $(VENV) build *.egg-info
