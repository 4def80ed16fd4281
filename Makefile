# Two commands on a fresh machine: `make test` and `make demo`. Both create .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo study-demo clean

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
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -n $(JOBS) --dist loadfile --durations=25 tests

# Everything but the tests marked `slow`.
test-fast: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -m "not slow" tests

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m chestxray_tf.cli.demo --workdir demo_workdir

# The comparison study (docs/study.md) of every task at the smoke sizes on a synthetic set
# (120 patients, 64 px, seed 0): configs/study.py:tiny; output in study_demo/study/
# (docs/study/ holds a committed one). A second run reuses the data and the finished runs.
STUDY_DEMO ?= study_demo
study-demo: $(STAMP)
	test -f $(STUDY_DEMO)/nih/test_list.txt || TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m \
	  tfrecords_tools.make_synthetic --output_dir=$(STUDY_DEMO)/nih --num_patients=120 \
	  --image_size=64 --seed=0
	test -f $(STUDY_DEMO)/tfrecords/manifest.json || TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m \
	  tfrecords_tools.build_nih --nih_dir=$(STUDY_DEMO)/nih --output_dir=$(STUDY_DEMO)/tfrecords \
	  --image_size=64 --num_shards=2 --num_folds=5 --fold_seed=0
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m chestxray_tf.cli.study --config=configs/study.py:tiny \
	  --manifest=$(STUDY_DEMO)/tfrecords/manifest.json --workdir=$(STUDY_DEMO)/study

clean:
	rm -rf $(VENV) build *.egg-info
