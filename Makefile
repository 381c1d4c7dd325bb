# `make run`: set up .venv with the core install (ONNX Runtime, no torch) and serve the bundled model on
#             http://127.0.0.1:8000
#             (`make run PORT=8080 HOST=...` for another address)
# `make test`: set up .venv with every extra and the test tools, and run the test suite
# `make fuzz`: fuzz the upload decoder for longer than the test suite does (random seeds, 5,000 examples a test)
# `make frontend`: rebuild the web app (frontend/, React + Vite) into mediflow/serving/static (needs Node 20.19+ and npm;
#                  `make run` does not: the built app ships in the package)
# `make onnx`: export the bundled model to ONNX (+ int8 with its validation AUC check when DATA exists)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000

BUNDLED := mediflow/bundled/mediflow_lungs_best
DATA ?= ../shared/data/chest_xray224

.PHONY: lint run test setup clean onnx frontend fuzz

# One venv, two stamps: `make run` installs the core only; `make test` (or any target that trains or
# exports) adds every extra, also after a `make run` made the venv. The full install holds the core.
$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-core: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-all: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-core

setup: $(VENV)/.installed-all

run: $(VENV)/.installed-core
	$(VENV)/bin/mediflow serve --host $(HOST) --port $(PORT)

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The style and bug rules of pyproject.toml's [tool.ruff]; `make test` (and so CI) runs it first.
lint: $(VENV)/.installed-all
	$(VENV)/bin/ruff check .

fuzz: $(VENV)/.installed-all
	MEDIFLOW_FUZZ_PROFILE=long $(PY) -m pytest -q tests/data/test_fuzz_decode.py $(PYTEST_ARGS)

onnx: $(VENV)/.installed-all
	$(VENV)/bin/mediflow export --model $(BUNDLED).pth --onnx $(BUNDLED).onnx $(if $(wildcard $(DATA)),--int8 --data $(DATA))

frontend:
	cd frontend && npm ci && npm run build

clean:
	rm -rf $(VENV) .pytest_cache
