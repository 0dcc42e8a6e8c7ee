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

# The whole bundled stack from scratch: data, VAE, latents, DiT, export, adherence: the bundled model's recipe
# (session 21; its model card and docs/experiments/learning-efficiency.md): the x4-space, 8-channel VAE for 12000 steps
# (1 h 45 min at 1 thread; probe ceiling 100% single-object) and the ladder's ref DiT predicting x0 at 80 tokens,
# 4000 + 8000 single-object steps (62 min on 2 shared cores): 98% single-object all-correct. It draws one object, so
# two-object prompts fail. Every step resumes, so running it again continues where it stopped.
KINEMA  := .venv/bin/kinema
MODEL   ?= runs/shapes-model
HOLDOUT := "yellow triangle" "cyan square" "purple diamond" "white circle"
DIT     := --preset ref --patch 1x4x4 --prediction x0 --sample-every 4000
shapes-model: $(STAMP)
	$(KINEMA) data synth --n 4096 --out data/shapes-train --seed 0
	$(KINEMA) vae train --data data/shapes-train --preset shapes-s4c8 --steps 12000 --out runs/vae-shapes-s4c8 --preload
	$(KINEMA) data synth --n 8192 --out data/shapes-dit-single --seed 3 --objects 1 --holdout $(HOLDOUT)
	$(KINEMA) vae encode --vae runs/vae-shapes-s4c8 --data data/shapes-dit-single --out data/latents-model-single
	# single objects, then 8000 more steps from those weights (a cosine restart: how the bundled model was made)
	$(KINEMA) dit train --latents data/latents-model-single $(DIT) --out runs/dit-model-4k --steps 4000
	$(KINEMA) dit train --latents data/latents-model-single $(DIT) --init-from runs/dit-model-4k/model --out runs/dit-model-12k --steps 8000
	$(KINEMA) dit export --run runs/dit-model-12k --out $(MODEL) --weights ema --fp16
	$(KINEMA) eval adherence --model $(MODEL) --n 50 --out $(MODEL)-adherence

clean:
	rm -rf .venv out
