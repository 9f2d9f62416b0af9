# The two entry points of the README: `make demo` and `make test`. Each creates .venv when missing.
# TORCH is the PyTorch requirement pip installs (the build is the one the index serves), e.g. TORCH=torch.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test benchmark default-model ablation held-out-model evaluate-default evaluate-folds clean

# The bundled default model, trained here on a CPU (see README "The bundled default model"): supervoxel pseudo-labels of
# the CHAOS T2 patients outside fold 0 (ids 1, 2, 3, 5, 8 stay held out) plus CT and MR phantoms -> tiny VAE
# -> SD-FSMIS with the spatial prior -> Resources/. Resumable: run it again after an interruption; finished
# stages are kept and training continues from its saved state.
WORK ?= work
SDFSMIS := $(BIN)/sdfsmis
MODEL := Resources/Models/tiny
CHAOS ?= ../shared/data/chaos-t2
HELD_OUT_FOLD ?= 0
RUN ?= $(WORK)/fold$(HELD_OUT_FOLD)
VAE_STEPS ?= 2400
TRAIN_STEPS ?= 2700

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

$(RUN)/chaos-supervoxels/.done: | $(BIN)/.installed
	$(SDFSMIS) pseudolabels $(CHAOS) --out $(@D) && touch $@

$(RUN)/phantoms-%/.done: | $(BIN)/.installed
	$(SDFSMIS) phantom --out $(@D) --patients $(if $(filter ct,$*),12,4) --modality $* --seed 0
	$(SDFSMIS) pseudolabels $(@D) && touch $@

$(RUN)/tiny-base/sd/vae/config.json: $(RUN)/chaos-supervoxels/.done $(RUN)/phantoms-ct/.done
	$(SDFSMIS) tiny-base --data $(CHAOS) --supervoxels $(RUN)/chaos-supervoxels --fold $(HELD_OUT_FOLD) \
		--dataset chaos-t2 --extra-data $(RUN)/phantoms-ct --out $(RUN)/tiny-base --steps $(VAE_STEPS) \
		--batch-size 4 --crop 128 --lr 2e-3 $$(test -d $(RUN)/tiny-base/vae-state && echo --resume)

# Training shared by the default model and its ablations; each run folder resumes from its own state/.
TRAIN_ARGS = --data $(CHAOS) --supervoxels $(RUN)/chaos-supervoxels --fold $(HELD_OUT_FOLD) --dataset chaos-t2 \
	--extra-data $(RUN)/phantoms-ct --extra-data $(RUN)/phantoms-mr \
	--base-model $(RUN)/tiny-base/sd --dino $(RUN)/tiny-base/dino --steps $(TRAIN_STEPS) --batch-size 4 \
	--gradient-accumulation 1 --unet-lr 3e-4 --mlp-lr 5e-4 --validate-every 250 --save-every 50 \
	--checkpoint-dtype float16 --out $(@D) $$(test -d $(@D)/state && echo --resume)
TRAINING_INPUTS := $(RUN)/tiny-base/sd/vae/config.json $(RUN)/phantoms-mr/.done

$(RUN)/sdfsmis/model.safetensors: $(TRAINING_INPUTS)
	$(SDFSMIS) train $(TRAIN_ARGS) --spatial-prior --pairing distance --max-distance 4

# Ablations: the default recipe with one of our options taken back (the paper's adjacent pairs; no spatial prior).
$(RUN)/adjacent-pairs/model.safetensors: $(TRAINING_INPUTS)
	$(SDFSMIS) train $(TRAIN_ARGS) --spatial-prior --pairing adjacent

$(RUN)/no-spatial-prior/model.safetensors: $(TRAINING_INPUTS)
	$(SDFSMIS) train $(TRAIN_ARGS) --pairing distance --max-distance 4

ablation: $(RUN)/no-spatial-prior/model.safetensors $(RUN)/adjacent-pairs/model.safetensors

# The model of another held-out fold (HELD_OUT_FOLD=1..4), for the cross-validated evaluation below.
held-out-model: $(RUN)/sdfsmis/model.safetensors

default-model: $(RUN)/sdfsmis/model.safetensors
	rm -rf $(MODEL)/sd $(MODEL)/dino $(MODEL)/model.safetensors && mkdir -p $(MODEL)/sd/unet
	cp -r $(RUN)/tiny-base/sd/vae $(MODEL)/sd/vae && cp -r $(RUN)/tiny-base/dino $(MODEL)/dino
	cp $(RUN)/tiny-base/sd/unet/config.json $(MODEL)/sd/unet/ && cp $< $(MODEL)/

# The bundled model on its held-out fold in both ways of working, next to copy and Fill between slices, and each
# ablation beside it (EVALUATED=...), into Documentation/evaluation/ (about 3 minutes per model on 2 cores).
EVALUATION := Documentation/evaluation
EVALUATE = $(SDFSMIS) evaluate --data $(CHAOS) --dataset chaos-t2 --folds $(HELD_OUT_FOLD)
# $(call keep_results,NAME,RUNS,SUFFIX): copy work/evaluation/NAME-RUN/{results.json,table.md} into the docs.
keep_results = for run in $(2); do \
	cp $(WORK)/evaluation/$(1)-$$run/results.json $(EVALUATION)/$(1)$(3)-$$run.json; \
	cp $(WORK)/evaluation/$(1)-$$run/table.md $(EVALUATION)/$(1)$(3)-$$run.md; done
ABLATION_MODEL = --checkpoint $(RUN)/$*/model.safetensors --base-model $(RUN)/tiny-base/sd --dino $(RUN)/tiny-base/dino

evaluate-default: $(BIN)/.installed
	$(EVALUATE) --mode same-patient --query-range estimated --out $(WORK)/evaluation/default-same-estimated
	$(EVALUATE) --mode same-patient --query-range ground-truth --out $(WORK)/evaluation/default-same-ground-truth
	$(EVALUATE) --out $(WORK)/evaluation/default-cross
	$(call keep_results,default,same-estimated same-ground-truth cross,-fold$(HELD_OUT_FOLD))

# Every fold scored by its own model (after held-out-model for each fold): both ways of working, all 20 patients
# (FOLDS=0,1 scores a subset, e.g. while the others train); the files name their folds, e.g. folds-0-1-cross.md.
FOLDS ?= 0,1,2,3,4
comma := ,
FOLD_MODELS = --checkpoint '$(WORK)/fold{fold}/sdfsmis/model.safetensors' \
	--base-model '$(WORK)/fold{fold}/tiny-base/sd' --dino '$(WORK)/fold{fold}/tiny-base/dino'

evaluate-folds: $(BIN)/.installed
	$(SDFSMIS) evaluate --data $(CHAOS) --dataset chaos-t2 --folds $(FOLDS) --mode same-patient \
		--query-range estimated $(FOLD_MODELS) --out $(WORK)/evaluation/folds-same-estimated
	$(SDFSMIS) evaluate --data $(CHAOS) --dataset chaos-t2 --folds $(FOLDS) $(FOLD_MODELS) \
		--out $(WORK)/evaluation/folds-cross
	$(call keep_results,folds,same-estimated cross,-$(subst $(comma),-,$(FOLDS)))

evaluate-%: $(RUN)/%/model.safetensors
	$(EVALUATE) --mode same-patient --query-range estimated --methods sdfsmis $(ABLATION_MODEL) --label "$*" \
		--out $(WORK)/evaluation/$*-same-estimated
	$(EVALUATE) --methods sdfsmis $(ABLATION_MODEL) --label "$*" --out $(WORK)/evaluation/$*-cross
	$(call keep_results,$*,same-estimated cross,-fold$(HELD_OUT_FOLD))

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
