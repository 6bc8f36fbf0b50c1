# Quick start: `make run` (the app) and `make test` (the whole suite). Both create .venv when
# missing, install the pinned requirements and then this checkout in editable mode (pyproject.toml:
# the `hsfm` command, `import hsfm_core` from any folder); a stamp file skips the install when
# nothing changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8501
PYTEST_WORKERS ?= auto

.PHONY: run test venv clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# --no-deps: requirements.txt's exact pins are the dependencies; --no-build-isolation: build with the venv's
# setuptools (no download per install; 70.1 builds wheels without the `wheel` package). --compile-kernels:
# umap's numba kernels into numba's disk cache, once per installation, as pip compiles .pyc files (23–29
# CPU-s; otherwise the first map of every process started before the cache exists pays them).
$(VENV)/.installed-run: requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --quiet "setuptools>=70.1"
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m hsfm_core.analysis.projection --compile-kernels
	touch $@

$(VENV)/.installed-test: requirements.txt requirements-test.txt $(VENV)/.installed-run
	$(PY) -m pip install -r requirements.txt -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT) --browser.gatherUsageStats false $(if $(WORKSPACE),-- --workspace $(WORKSPACE),)

# The suite on every core (pytest-xdist): tests/conftest.py keeps the shared fixtures built once, the
# Slurm tests on one worker and the browser tests one at a time. PYTEST_WORKERS=0: one process.
test: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
