# Quick start: `make demo` (set up, then transcribe the bundled sample) and `make test` (set up, then run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo

.PHONY: setup espeak demo test test-fast clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,dev,diarize]"
	touch $(STAMP)

setup: $(STAMP)

# espeak-ng (a Debian package) speaks the demo sample; installed once if missing.
espeak:
	@command -v espeak-ng >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; }

demo: setup espeak
	$(PY) -m pipelines.samples --output samples/demo
	$(PY) -m pipelines.transcribe --manifest samples/demo/manifest.jsonl --output $(OUT) --config configs/local.yaml
	$(PY) -m pipelines.show $(OUT)

test: setup espeak
	$(PY) -m pytest -q

# Unit tests only: no Ray, no S3 server, nothing slow (a couple of minutes).
test-fast: setup
	$(PY) -m pytest -q -m "not ray and not s3 and not slow"

clean:
	rm -rf out samples .pytest_cache
