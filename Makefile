# datatool: `make demo` sets up and runs the main job on the embedded demo data;
# `make test` runs the tests. Both create .venv on first use; nothing is installed by hand.
# The Label Studio server lives in its own environment, .lsvenv (it pins its own
# label-studio-sdk): built once for `make test` (its tests start a server) and `make labelstudio`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo
DEMO_PATIENTS ?= 10
# LSVENV=/path/to/.lsvenv uses a Label Studio environment built elsewhere
LSVENV  ?= .lsvenv
LSSTAMP := $(LSVENV)/.installed
LS_PORT ?= 8080
# A fixed token and password are fine for this local demo server (it listens on 127.0.0.1
# only); never use them on a shared server.
LS_USER  ?= demo@datatool.local
LS_PASS  ?= datatool-demo
LS_TOKEN ?= d0d0d0d0datatooldemotoken0000000000000000
LS_OFFLINE := SENTRY_DSN= FRONTEND_SENTRY_DSN= LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false

# Debian's Orthanc and its DICOMweb plugin, the PACS of the network tests and benchmarks:
# installed when missing (as root on Debian; elsewhere a line says what to install).
ORTHANC_INSTALL := if [ ! -x /usr/sbin/Orthanc ] || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb; \
	else echo "Orthanc is missing and this is not a root Debian machine: install orthanc and orthanc-dicomweb" >&2; fi; fi

.PHONY: install demo test lint typecheck bench clean labelstudio labelstudio-demo mutate mutate-ci

# torch==2.13.0 first: on this kind of machine it is a CPU wheel on local disk (a plain
# "torch" would pull a multi-GB CUDA build); on a GPU machine install the CUDA build you need.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# About 1 GB and several minutes on first use: a line per step, and pip's own progress.
$(LSSTAMP):
	@echo "[1/3] creating the Label Studio environment $(LSVENV)"
	$(PYTHON) -m venv $(LSVENV)
	@echo "[2/3] installing label-studio 1.23 into $(LSVENV) (about 1 GB, several minutes)"
	$(LSVENV)/bin/python -m pip install --progress-bar on "label-studio>=1.23,<1.24"
	@echo "[3/3] Label Studio ready in $(LSVENV)"
	touch $(LSSTAMP)

install: $(STAMP)

# The whole job on the demo data, from a fresh workspace each time: DICOM exams in (two of
# the files cine loops, their frames labelled like stills), two raters' ITK-SNAP labels
# synced, agreement, consensus, a frozen split, the tiny model trained on the CPU and scored
# like the study; then the labels checked against each other, anatomy and the model, and the
# head of the review queue; last, the study report in one HTML file.
DT := cd $(DEMO)/workspace && ../../$(BIN)/datatool
demo: $(STAMP)
	$(BIN)/datatool demo-data $(DEMO)/data --patients $(DEMO_PATIENTS) --seed 0 --cines 2
	rm -rf $(DEMO)/workspace
	$(BIN)/datatool init $(DEMO)/workspace
	$(DT) ingest ../data/dicom
	$(DT) ingest-clinical ../data/clinical.csv
	$(DT) status
	$(DT) cohort
	$(DT) rater add rater1
	$(DT) rater add rater2
	$(DT) sync itksnap ../data/labels/rater1 --rater rater1 --dicom-root ../data/dicom
	$(DT) sync itksnap ../data/labels/rater2 --rater rater2 --dicom-root ../data/dicom
	$(DT) labels
	$(DT) agreement
	$(DT) consensus --method staple
	$(DT) split create demo --ratios 6:2:2 --folds 5 --seed 0
	$(DT) split check demo
	$(DT) train --split demo --preset cpu --epochs 25
	$(DT) score 1
	$(DT) qa --run 1
	$(DT) qa list --limit 15
	$(DT) report
	@echo "study report: $(CURDIR)/$(DEMO)/workspace/reports/study.html"

# The tests run on up to four pytest-xdist workers, one test module per worker at a time
# (module fixtures are made once); `make test TEST_WORKERS=0` runs them in one process.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ "$$n" -gt 4 ] && n=4; echo $$n)
test: $(STAMP) $(LSSTAMP) lint typecheck
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Mutation testing (mutmut 3, tests/mutate.py): each module that computes a figure is mutated
# in a sandbox under build/mutate/ against the tests that check it; prints the kill rate per
# module and every survivor not listed as equivalent (exit status 1 if there is one).
# `make mutate MUTATE="metrics shape"` picks modules; `make mutate` runs them all (long: see
# the README); `make mutate MUTATE="--again shape"` only the last pass's survivors (and its
# timeouts and the mutants no test reached).
# `make mutate-ci` is the one small module that CI runs, so the habit cannot rot.
MUTATE ?=
MUTATE_CI := metrics-core
# mutmut workers (default: one per core); MUTATE_CHILDREN=1 on a shared machine
MUTATE_CHILDREN ?=
mutate: $(STAMP)
	$(BIN)/python tests/mutate.py $(if $(MUTATE_CHILDREN),--children $(MUTATE_CHILDREN)) $(MUTATE)

mutate-ci: $(STAMP)
	$(BIN)/python tests/mutate.py $(MUTATE_CI)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow the editable install's import hook (model/ and migrations/ install as
# datatool.model and datatool.migrations), so it checks a copy laid out as the wheel is.
TYPECHECK := build/typecheck
typecheck: $(STAMP)
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)
	cp -r datatool $(TYPECHECK)/datatool
	cp -r model $(TYPECHECK)/datatool/model
	cp -r migrations $(TYPECHECK)/datatool/migrations
	cp -r schemas $(TYPECHECK)/datatool/schemas
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy -p datatool --config-file $(CURDIR)/pyproject.toml

# A Label Studio server for people, in the foreground (Ctrl-C stops it), on 127.0.0.1 only.
labelstudio: $(LSSTAMP)
	mkdir -p $(DEMO)/labelstudio-files $(DEMO)/labelstudio-data
	@echo "Label Studio: http://127.0.0.1:$(LS_PORT)  (log in as $(LS_USER) / $(LS_PASS))"
	@echo "For datatool, in another shell:"
	@echo "  export LABEL_STUDIO_URL=http://127.0.0.1:$(LS_PORT)"
	@echo "  export LABEL_STUDIO_API_KEY=$(LS_TOKEN)   # fixed demo token: local demo server only"
	@echo "  export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=$(CURDIR)/$(DEMO)/labelstudio-files"
	@echo "  cd $(DEMO)/workspace   # made by 'make demo'"
	@echo "  ../../$(BIN)/datatool rater add AN1 && ../../$(BIN)/datatool labelstudio push --rater AN1"
	$(LS_OFFLINE) LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \
	LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=$(CURDIR)/$(DEMO)/labelstudio-files \
	$(LSVENV)/bin/label-studio start --no-browser --internal-host 127.0.0.1 -p $(LS_PORT) \
		--data-dir $(CURDIR)/$(DEMO)/labelstudio-data --username $(LS_USER) \
		--password $(LS_PASS) --user-token $(LS_TOKEN) --enable-legacy-api-token

# Label Studio with the model's drafts, on the workspace of 'make demo' (run it first), truly
# blind: one server per demo rater (DEMO_RATERS; ports LS_PORT, LS_PORT+1, ...; its own data
# folder demo/labelstudio-data-RATER, login RATER@datatool.local / LS_PASS and token), holding
# only that rater's project with run 1's drafts; the catalogue records each rater's server. The
# ML backend of run 1 (HTTP Basic auth, a password made for this run) is connected to each;
# its request log goes to demo/backend.log, each server's to demo/labelstudio-RATER.log. It
# prints per rater the URL, the login and the exports to paste. Ctrl-C stops everything and
# exits 0. Loopback ML backends and webhooks are allowed, which a shared server should not do.
BACKEND_PORT ?= 9090
DEMO_RATERS ?= rater1 rater2
labelstudio-demo: $(STAMP) $(LSSTAMP)
	@$(BIN)/python -m datatool.demo.labelstudio --lsvenv $(LSVENV) --demo $(DEMO) \
		--raters $(DEMO_RATERS) --port $(LS_PORT) --backend-port $(BACKEND_PORT) \
		--password $(LS_PASS) --secret $(LS_TOKEN)

bench: $(STAMP) $(LSSTAMP)
	@$(ORTHANC_INSTALL)
	$(BIN)/python bench/ingest.py --orthanc
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/agreement.py
	$(BIN)/python bench/qa.py
	$(BIN)/python bench/model.py
	$(BIN)/python bench/prelabel.py
	$(BIN)/python bench/propagate.py --modes direct,chain --pairs 4
	$(BIN)/python bench/network.py

clean:
	rm -rf $(DEMO) .pytest_cache build
