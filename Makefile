# The two entry points of the README: `make demo` and `make test`. Each creates .venv when missing.
# TORCH selects the PyTorch build: the default is the CPU wheel; use e.g. TORCH=torch for a CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test benchmark demo-model clean

# Rebuild the bundled tiny model and demo phantoms from scratch (about 45 minutes on a 2-core CPU):
# phantoms -> supervoxel pseudo-labels -> tiny VAE pretraining -> SD-FSMIS training -> Resources/.
WORK ?= work
SDFSMIS := $(BIN)/sdfsmis
MODEL := Resources/Models/tiny
VAE_STEPS ?= 350
TRAIN_STEPS ?= 600

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/sdfsmis demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# A quick propagation benchmark (naive vs optimised, 6 query slices, about 5 minutes on 2 cores); the full one
# (60 slices and every optimisation alone, about an hour) is `python benchmarks/propagate.py`, see the README.
benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/propagate.py --slices 6 --ablation-slices 0 \
		--json $(WORK)/propagate-quick.json --markdown $(WORK)/propagate-quick.md

demo-model: $(BIN)/.installed
	$(SDFSMIS) phantom --out $(WORK)/phantoms-mr --patients 12 --modality mr --seed 0
	$(SDFSMIS) pseudolabels $(WORK)/phantoms-mr
	$(SDFSMIS) tiny-base --data $(WORK)/phantoms-mr --out $(WORK)/tiny-base --steps $(VAE_STEPS) --batch-size 2 --crop 96 --lr 2e-3
	$(SDFSMIS) train --data $(WORK)/phantoms-mr --base-model $(WORK)/tiny-base/sd --dino $(WORK)/tiny-base/dino \
		--validation 11,12 --out $(WORK)/tiny-run --steps $(TRAIN_STEPS) --batch-size 4 --gradient-accumulation 1 \
		--unet-lr 2e-4 --mlp-lr 5e-4 --validate-every 100 --save-every 100 --checkpoint-dtype float16
	rm -rf $(MODEL) && mkdir -p $(MODEL)/sd/unet
	cp -r $(WORK)/tiny-base/sd/vae $(MODEL)/sd/vae && cp -r $(WORK)/tiny-base/dino $(MODEL)/dino
	cp $(WORK)/tiny-base/sd/unet/config.json $(MODEL)/sd/unet/ && cp $(WORK)/tiny-run/model.safetensors $(MODEL)/
	rm -rf Resources/Data/phantoms
	$(SDFSMIS) phantom --out Resources/Data/phantoms --patients 2 --modality mr --seed 1 --first-id 101

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
