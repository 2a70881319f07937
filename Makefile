VENV ?= .venv
PY := $(VENV)/bin/python
SCAN_OUT ?= /tmp/ecomatch-sample-scan

.PHONY: setup test scan
$(VENV)/.installed: setup.py scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q tests

scan: setup
	$(VENV)/bin/ecomatch scan --input 'sample_data/*.parquet' --calibration sample_data/calibration.json --output $(SCAN_OUT)
