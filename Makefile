# datatool: `make demo` sets up and runs the main job on the embedded demo data;
# `make test` runs the tests. Both create .venv on first use; nothing is installed by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo
DEMO_PATIENTS ?= 10

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/datatool demo-data $(DEMO)/data --patients $(DEMO_PATIENTS) --seed 0
	$(BIN)/datatool init $(DEMO)/workspace
	cd $(DEMO)/workspace && ../../$(BIN)/datatool ingest ../data/dicom
	cd $(DEMO)/workspace && ../../$(BIN)/datatool ingest-clinical ../data/clinical.csv
	cd $(DEMO)/workspace && ../../$(BIN)/datatool status
	cd $(DEMO)/workspace && ../../$(BIN)/datatool cohort

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(DEMO) .pytest_cache
