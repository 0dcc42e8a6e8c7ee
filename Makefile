# The README's commands. Everything runs inside .venv, which these targets create.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
TORCH   := torch==2.13.0
STAMP   := .venv/.installed

.PHONY: demo test test-slow bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)          # first: a plain `torch` requirement would pull a CUDA build
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m kinema.cli demo --out out/demo

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

test-slow: $(STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/world.py
	$(PY) benchmarks/vae.py
	$(PY) benchmarks/dit.py
	$(PY) benchmarks/generate.py

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

clean:
	rm -rf .venv out
