# Two commands do all the set-up: `make lab` opens the course, `make test` runs every test.
# The first run of either creates .venv with the pinned versions in constraints.txt.
# Linux without a GPU: `make lab TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the small
# CPU build of torch instead of PyPI's CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.minilocal-installed

.PHONY: lab test env release clean-env

lab: $(STAMP)
	$(BIN)/jupyter lab course/ $(if $(filter 0,$(shell id -u)),--allow-root)

test: $(STAMP)
	$(BIN)/python -m pytest --nbval tests course solutions

env: $(STAMP)

release: $(STAMP)
	$(BIN)/python -m minilocal.release

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "minilocal needs Python 3.10 or newer; this is " + sys.version.split()[0] + ". Run: make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (minilocal)" >/dev/null
	@touch $@

clean-env:
	rm -rf $(VENV)
