# The README's commands. Everything runs inside .venv, which these targets create.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
TORCH   := torch==2.13.0
STAMP   := .venv/.installed

.PHONY: demo test test-slow bench lint clean shapes-model

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

# The whole bundled stack from scratch: data, VAE, latents, DiT, export, adherence. The candidate recipe of
# docs/experiments/learning-efficiency.md, not yet measured end to end (issue 23). Every step resumes, so running it
# again continues where it stopped. MODEL=models/shapes-64 replaces the bundled one.
KINEMA  := .venv/bin/kinema
MODEL   ?= runs/shapes-model
HOLDOUT := "yellow triangle" "cyan square" "purple diamond" "white circle"
shapes-model: $(STAMP)
	$(KINEMA) data synth --n 8192 --out data/shapes-train --seed 0
	$(KINEMA) vae train --data data/shapes-train --preset shapes-s4c8 --out runs/vae-s4c8 --steps 6000 --preload
	$(KINEMA) data synth --n 8192 --out data/shapes-dit --seed 2 --holdout $(HOLDOUT)
	$(KINEMA) vae encode --vae runs/vae-s4c8 --data data/shapes-dit --out data/latents-dit-s4c8
	$(KINEMA) dit train --latents data/latents-dit-s4c8 --preset shapes --out runs/dit-shapes-s4c8
	$(KINEMA) dit export --run runs/dit-shapes-s4c8 --out $(MODEL) --weights ema --fp16
	$(KINEMA) eval adherence --model $(MODEL) --n 50 --out $(MODEL)-adherence

clean:
	rm -rf .venv out
