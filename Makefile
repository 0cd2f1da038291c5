# Two entry points do all set-up on a fresh machine (Python >= 3.11 with venv,
#   and pip access to the package index):
#   make demo   create .venv, install, run side tuning on synthetic clips, write the report,
#               and predict one exported clip with the trained model
#   make test   create .venv, install, lint, run the whole test suite (one pytest-xdist worker per core, up to 4)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bench run --method side_tuning --dataset synthetic
	$(VENV)/bin/bench report
	$(VENV)/bin/bench data export --dataset synthetic --split test --count 1 --video --out results/export
	$(VENV)/bin/bench predict "$$(ls -td results/runs/synthetic_side_tuning_* | head -n 1)" \
		results/export/test_0_0000 --render results/predict/test_0_0000.png

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -n auto --maxprocesses 4 --dist load

clean:
	rm -rf $(VENV) results/runs results/report results/export results/predict
