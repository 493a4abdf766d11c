# The two set-up commands of README.md: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_PROMPT ?= How long does shipping take?

.PHONY: install demo test test-fast test-chaos test-gguf lint clean-demo

install: $(STAMP)

$(STAMP): setup/requirements.txt setup/requirements-azure.txt pyproject.toml
	@echo "Installing phi3e2e into $(VENV)/ with its pinned stack (setup/requirements*.txt: torch CPU, Olive,"
	@echo "onnxruntime-genai, transformers, azure-ai-ml, ...): about 2 minutes on a fresh machine, once."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r setup/requirements.txt -r setup/requirements-azure.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@# The GGUF tests' converter source (export --format gguf fetches the same file itself; 77 MB, sha256-checked there)
	rm -rf $(VENV)/llama-cpp-sdist
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(VENV)/llama-cpp-sdist
	touch $(STAMP)
	@echo "Installed. To type phi3e2e yourself: source $(VENV)/bin/activate (README.md: phi3e2e on your PATH)"

# The main job on the built-in tiny model and the sample data, offline, whatever the user has
# prepared: the tiny model and the sample live in their own project folder, $(DEMO)/, and the run
# in gen-model/demo-<time>/ (so `phi3e2e runs` lists it). phi3e2e.json and other runs are untouched.
DEMO := .demo
DEMO_RUN := demo-$(shell date +%Y%m%d-%H%M%S)
demo: install
	PHI3E2E_PROJECT_DIR=$(DEMO) $(BIN)/phi3e2e prepare --tiny
	PHI3E2E_PROJECT_DIR=$(CURDIR) $(BIN)/phi3e2e finetune --algo lora --run-name $(DEMO_RUN) \
		--model $(DEMO)/model-cache/tiny-phi3 --data $(DEMO)/datasets/sample
	PHI3E2E_PROJECT_DIR=$(CURDIR) $(BIN)/phi3e2e chat --model gen-model/$(DEMO_RUN) --prompt "$(DEMO_PROMPT)"

# The playground's browser test drives Debian's chromium, and the Ollama Modelfile's template is rendered by Go's
# own text/template, as Ollama renders it (CI runs as root on a fresh machine).
test: install
	@(test -x /usr/bin/chromium && command -v go >/dev/null) || (apt-get update -qq && apt-get install -y -qq chromium golang-go)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# The daily lane: everything that neither trains, builds nor starts a browser (418 tests, 73 s on 2 cores).
test-fast: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "not e2e and not browser"

# The Azure ML node emulated on CPU, killed at 10 moments (steps, checkpoint saves, merge, int4 build) and
# restarted over the same outputs each time (`make test` kills it at 3); PHI3E2E_CHAOS_SEED varies the moments.
test-chaos: install
	PHI3E2E_CHAOS_KILLS=10 $(BIN)/python -m pytest -q tests/test_aml_entry.py -k "killed or mlflow"

# Only what `make demo` made: its project folder and its runs (gen-model/demo-*, with their
# checkpoints and locks). The user's models, data, choices and runs stay. (The base int4 build
# eval cached in model-cache/.onnx-int4/ is a cache, kept like any other.)
clean-demo:
	rm -rf $(DEMO) gen-model/demo-* gen-model/.demo-*.partial gen-model/.checkpoints/demo-* gen-model/.locks/demo-*.lock

# llama.cpp as a benchmark peer, in its own venv (never one of phi3e2e's dependencies):
# llama-cpp-python built from its PyPI source distribution (6-10 minutes on 2 cores; every SIMD
# extension of this CPU but AMX, see benchmarks/peers/cmake_args.py), and the
# GGUF converter vendored in that same source distribution unpacked into $(PEERS)/llama.cpp/.
PEERS ?= .venv-peers
LLAMA_CPP_PYTHON ?= 0.3.36
LLAMA_SDIST := $(PEERS)/sdist/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz
PEERS_STAMP := $(PEERS)/.installed-$(LLAMA_CPP_PYTHON)-no-amx

.PHONY: bench-peers bench bench-llama-server

bench-peers: $(PEERS_STAMP)

$(PEERS_STAMP):
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet torch==2.13.0 transformers==5.24.0 tokenizers==0.23.3 \
		safetensors==0.8.0 numpy==2.4.6 sentencepiece==0.2.3 gguf==0.19.0
	rm -rf $(PEERS)/sdist
	$(PEERS)/bin/python -m pip download --quiet --no-binary :all: --no-deps llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(PEERS)/sdist
	CMAKE_ARGS="$$($(PYTHON) benchmarks/peers/cmake_args.py)" $(PEERS)/bin/python -m pip install --no-cache-dir --force-reinstall $(LLAMA_SDIST)
	rm -rf $(PEERS)/llama.cpp && mkdir -p $(PEERS)/llama.cpp
	tar xzf $(LLAMA_SDIST) -C $(PEERS)/llama.cpp --strip-components=3 \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/convert_hf_to_gguf.py \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/conversion \
		llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp/gguf-py
	$(PEERS)/bin/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
	touch $@

# llama.cpp's own C++ server (and llama-quantize) from the same vendored source, same SIMD flags: the anchor of
# benchmarks/serve_load.py --llama-server (6-10 minutes on 2 cores, once).
LLAMA_SERVER := $(PEERS)/llama.cpp-src/build/bin/llama-server

bench-llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): $(PEERS_STAMP)
	rm -rf $(PEERS)/llama.cpp-src && mkdir -p $(PEERS)/llama.cpp-src
	tar xzf $(LLAMA_SDIST) -C $(PEERS)/llama.cpp-src --strip-components=3 llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp
	cmake -S $(PEERS)/llama.cpp-src -B $(PEERS)/llama.cpp-src/build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
		-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF $$($(PYTHON) benchmarks/peers/cmake_args.py)
	cmake --build $(PEERS)/llama.cpp-src/build -j --target llama-server llama-quantize

# Which int4 build phi3e2e ships for CPUs: speed, size and quality of each candidate against
# llama.cpp Q4_0/Q4_K_M and transformers fp32 (docs/performance.md). About 15 minutes.
bench: install bench-peers
	$(BIN)/python benchmarks/int4_options.py

# export --format gguf's llama.cpp checks: llama-cpp-python (setup/requirements-gguf.txt) built from its PyPI
# source into .venv (6-10 minutes on 2 cores, once; AMX left out as for bench-peers), then the GGUF tests, where
# the greedy-token comparison and --quant Q4_K_M run (`make test` skips them without llama-cpp-python).
GGUF_STAMP := $(VENV)/.installed-gguf-$(LLAMA_CPP_PYTHON)
$(GGUF_STAMP): $(STAMP) setup/requirements-gguf.txt
	CMAKE_ARGS="$$($(PYTHON) benchmarks/peers/cmake_args.py)" $(BIN)/python -m pip install --quiet -r setup/requirements-gguf.txt
	touch $@
test-gguf: $(GGUF_STAMP)
	$(BIN)/python -m pytest -q tests/test_export_gguf.py
