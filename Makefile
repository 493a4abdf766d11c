# The two set-up commands of README.md: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_PROMPT ?= How long does shipping take?

.PHONY: install demo test lint clean-demo

install: $(STAMP)

$(STAMP): setup/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r setup/requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The main job on the built-in tiny model and the sample data, offline.
demo: install
	$(BIN)/phi3e2e prepare --tiny
	$(BIN)/phi3e2e finetune --algo lora
	$(BIN)/phi3e2e chat --prompt "$(DEMO_PROMPT)"

test: install
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf gen-model/[!R]* gen-model/.*.partial model-cache/tiny-phi3 datasets/sample phi3e2e.json
