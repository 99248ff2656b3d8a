# Two commands do all the set-up: `make lab` opens the course, `make test` runs every test.
# The first run of either creates .venv with the pinned versions in constraints.txt.
#   make lab PORT=8899 NB=03_overlapping.ipynb   another port, another notebook to open first
#   make PYTHON=python3.12 lab                    another interpreter (on the first run, or after
#                                                 `make clean-env`)
# Linux without a GPU: `make lab TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the small
# CPU build of torch instead of PyPI's CUDA build.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 8888
NB ?= 00_welcome.ipynb
BIN := $(VENV)/bin
STAMP := $(VENV)/.minilocal-installed
PYTEST := $(BIN)/python -m pytest --nbval
# Outputs must not depend on the CPU: the notebooks run again with torch on other kernel levels
# (only levels this CPU supports take effect) and with 2 threads, where summation orders differ.
TWO_THREADS := OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2

.PHONY: lab test test-portability env release gpu-check clean-env check-python

lab: check-python $(STAMP)
	cd course && ../$(BIN)/jupyter lab --port=$(PORT) $(if $(filter 0,$(shell id -u)),--allow-root) $(NB)

test: check-python $(STAMP)
	$(PYTEST) tests course solutions
	@$(MAKE) --no-print-directory test-portability

test-portability: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 $(PYTEST) -q solutions
	ATEN_CPU_CAPABILITY=default $(TWO_THREADS) $(PYTEST) -q course

env: check-python $(STAMP)

release: $(STAMP)
	$(BIN)/python -m minilocal.teaching.release

gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py runs/gpu-check

# A venv made by another interpreter than the one asked for on the command line is not reused.
check-python:
ifeq ($(origin PYTHON),command line)
	@want=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || \
	  { echo "PYTHON=$(PYTHON): no such interpreter on PATH; give one that exists, e.g. PYTHON=python3"; exit 2; }; \
	have=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || exit 0; \
	test "$$want" = "$$have" || { echo "$(VENV) was made with Python $$have, not $$want ($(PYTHON)). Rebuild it: make clean-env && make PYTHON=$(PYTHON) $(or $(MAKECMDGOALS),lab)"; exit 2; }
endif

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "minilocal needs Python 3.10 or newer; this is " + sys.version.split()[0] + ". Run: make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (minilocal)" >/dev/null
	@touch $@

clean-env:
	rm -rf $(VENV)
