# Two commands do all the set-up (see README.md):
#   make demo   set up, start a 2-host local cluster serving a tiny DeepSeek-V3-architecture model, ask it one question
#   make test   set up, then lint and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: setup system-deps demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Debian packages the tests use: shellcheck (user data), iproute2 (network-namespace hosts),
# openssh-server/client (the existing-hosts bootstrap over real SSH). Installed when root.
system-deps:
	@bash scripts/system-deps.sh

demo: setup system-deps
	$(BIN)/llmfleet local up --hosts 2
	$(BIN)/llmfleet local chat "In one sentence, what does a Ray head node do?"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/hadolint images/Dockerfile

test: setup system-deps lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_cost.py
	$(BIN)/python benchmarks/bench_local_serving.py

clean:
	-$(BIN)/llmfleet local down
	rm -rf $(VENV) .pytest_cache .ruff_cache
