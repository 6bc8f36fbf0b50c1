# Quick start: `make run` (the app) and `make test` (the whole suite). Both create .venv when
# missing and install the pinned requirements; a stamp file skips the install when nothing changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8501

.PHONY: run test venv clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: requirements.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements.txt requirements-test.txt $(VENV)/.installed-run
	$(PY) -m pip install -r requirements.txt -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT) --browser.gatherUsageStats false $(if $(WORKSPACE),-- --workspace $(WORKSPACE),)

test: $(VENV)/.installed-test
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
