# maas: the two commands of the README's quick start, and a few helpers.
#   make pipeline   create .venv if missing, then rebuild the whole pipeline (dvc repro)
#   make test       create .venv if missing, then run the whole test suite
#   make report     build reports/index.html from whatever stages have run, and open it
# Everything runs from the project's own virtualenv; nothing is installed globally.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# DVC stages call papermill, and papermill starts the notebook kernel: both from .venv.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# `make pipeline V=1`: every library's log lines, TensorFlow's C++ start-up lines included.
ifdef V
export MAAS_VERBOSE := $(V)
endif

.PHONY: help venv pipeline test lab report lint bench bench-serving bench-grpc protos lock clean-venv docs docs-serve

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# The stamp depends on the pins and the project metadata: change either and the next
# command brings the environment up to date.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name maas --display-name "Python (maas)" >/dev/null
	@touch $@

venv: $(STAMP)  ## create or update .venv from requirements.lock

pipeline: $(STAMP)  ## run the whole pipeline with the default, full-size parameters
	$(BIN)/dvc repro

test: $(STAMP)  ## run the whole test suite
	$(BIN)/python -m pytest

lab: $(STAMP)  ## open JupyterLab on the project kernel "Python (maas)"
	cd notebooks && ../$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root)

report: $(STAMP)  ## build reports/index.html from whatever stages have run, and open it
	$(BIN)/python -m maas.report --open

lint: $(STAMP)  ## ruff: lint and format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)  ## time make venv + make pipeline on a fresh clone (~20 min): reports/benchmarks/pipeline.md
	$(BIN)/python benchmarks/pipeline.py

bench-serving: $(STAMP)  ## the model server against the naive Flask server, under load
	$(BIN)/python benchmarks/serving.py --clients 32 --duration 10

bench-grpc: $(STAMP)  ## gRPC against REST on one model, 16 and 64 concurrent clients
	$(BIN)/python benchmarks/grpc.py

# grpcio-tools is needed only here (it is not a dependency): run in a throwaway venv with
# `pip install grpcio-tools==1.85.1`, then `make protos PROTOC_PYTHON=that/venv/bin/python`.
PROTOC_PYTHON ?= $(BIN)/python
protos:  ## regenerate the Python stubs of src/maas/serving/grpc/*.proto
	cd src && $(PROTOC_PYTHON) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
	  --grpc_python_out=. maas/serving/grpc/grpc_predict_v2.proto

lock: $(STAMP)  ## re-pin requirements.lock from the current .venv
	{ echo '# Pinned, tested-together versions (Python 3.11, Linux x86_64). Regenerate with `make lock`.'; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^maas'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-venv:  ## remove .venv
	rm -rf $(VENV)

# The documentation site (mkdocs.yml): reference pages are generated from the code at build time.
docs: $(STAMP)  ## build the documentation site into site/ (strict: broken links fail)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)  ## serve the documentation site on http://127.0.0.1:8000, rebuilt on change
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000
