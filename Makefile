# Two commands do all the set-up (see README.md):
#   make demo   set up, start a 2-host local cluster serving a tiny DeepSeek-V3-architecture model, ask it one question
#   make test   set up, then lint and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# uv installs the locked working set (uv.lock, with the CPU-only overrides in pyproject.toml),
# compiled to bytecode: with PYTHONDONTWRITEBYTECODE set (as here) every process would otherwise
# compile what it imports (`import ray.serve.llm`: 26 s -> 8 s here), and the tests start hundreds;
# it is itself installed from PyPI into a small tools venv, pinned.
UV_VERSION = 0.13.9
TOOLS   = .tools
UV      = $(TOOLS)/bin/uv

.PHONY: setup system-deps system-deps-demo demo test lint bench faults finetune-local autoscaling-local mutation clean image image-stop image-lock wheel-test

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --extra dev --compile-bytecode --python $(PYTHON)
	touch $(STAMP)

# The project's own modules are compiled too: with PYTHONDONTWRITEBYTECODE set (as on this
# machine class) every `llmfleet` run would otherwise compile infra/ again (~0.3 s of `cost`).
# A stale .pyc is harmless: Python checks the source's mtime and recompiles in memory.
setup: $(STAMP)
	@$(BIN)/python -m compileall -q infra policy ray_cluster >/dev/null

# The Debian packages each set of commands uses (scripts/system-deps.sh lists them with what uses
# each: `bash scripts/system-deps.sh --list demo`), installed with apt-get when root; the script says
# which it installs, as root, before it does, and without root prints what is missing and the
# apt-get command. The demo's: iproute2 (the hosts' namespaces, each node's NIC) and prometheus (the
# local cluster's metrics). The tests' add shellcheck, iptables, redis-server, openssh-server/client,
# and docker.io, mmdebstrap, docker-registry and zstd (the CPU node image).
system-deps:
	@bash scripts/system-deps.sh test

system-deps-demo:
	@bash scripts/system-deps.sh demo

demo: system-deps-demo setup
	$(BIN)/llmfleet local up --hosts 2
	$(BIN)/llmfleet local chat "In one sentence, what does a Ray head node do?" --thinking-budget 16

# The CPU variant of the node image (images/Dockerfile FROM images/cpu-base), pushed to a local
# registry; prints its repo@sha256 reference. Starts dockerd and docker-registry if needed and
# leaves them running for `llmfleet local up --image REF`; `make image-stop` stops them.
image: setup system-deps
	UV=$(abspath $(UV)) $(BIN)/python -m infra.local.image_build

# The image's hashed Python sets from uv.lock (images/cpu-base/requirements.txt and
# images/requirements.lock.txt): run after any uv.lock change; tests/test_image_lock.py fails until then.
image-lock: setup
	UV=$(abspath $(UV)) $(BIN)/python -m infra.local.image_lock

image-stop: setup
	$(BIN)/python -m infra.local.image_build --stop

# basedpyright: the type checker ([tool.basedpyright] in pyproject.toml; ~45 s of one core here).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/hadolint images/Dockerfile
	$(BIN)/basedpyright

test: setup system-deps lint
	$(BIN)/pytest -q -rs --durations=15

# The package as a user installs it (issue #30): build the sdist and the wheel from it, install the
# wheel into a fresh venv outside the checkout, and run `llmfleet init`, `plan`, `preview` and
# `cost` in a new project directory (tests/test_wheel.py, also part of `make test`).
# WHEEL_PYTHON=3.13 installs it on another interpreter (uv finds or downloads it).
WHEEL_PYTHON ?=
wheel-test: setup
	UV=$(abspath $(UV)) $(if $(WHEEL_PYTHON),LLMFLEET_WHEEL_PYTHON=$(WHEEL_PYTHON)) $(BIN)/pytest -q -rs tests/test_wheel.py

# bench_local_serving.py starts vLLM's own server, then a 2-host local cluster (network namespaces
# as root), and drives both with vLLM's own benchmark client, one after the other.
bench: setup
	$(BIN)/python benchmarks/bench_cost.py
	$(BIN)/python benchmarks/bench_local_serving.py
	$(BIN)/python benchmarks/bench_render.py

# The fault-injection suite (issue #26 point 8; not in CI: ~30 min, two 3-host local clusters, root
# for the network namespaces): each fault under a steady openai-client load, then the fault table
# (case, recovery time, failed/total requests) in benchmarks/faults-table.md, for benchmarks/RESULTS.md.
# Bytecode for the venv's packages first: every engine start spawns two processes that import
# vLLM and torch, and Ray's dashboard agent imports Ray; in a venv synced without
# --compile-bytecode, with PYTHONDONTWRITEBYTECODE set (this machine class), each compiled them
# from source every time: ~2.5x the import CPU, and the restarted head's raylet aborted on its
# fixed 15 s wait for the agent (benchmarks/RESULTS.md, the runs of 2026-12-07). A pass over a compiled venv
# costs ~9 s; its non-zero exit is a few vendored files that are not Python 3 (never imported).
faults: setup system-deps
	-@$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib/python3*/site-packages
	LLMFLEET_FAULTS_TABLE=benchmarks/faults-table.md LLMFLEET_FAULTS_LOGS=$${LLMFLEET_FAULTS_LOGS:-/tmp/llmfleet-faults-logs} $(BIN)/pytest -m faults -s -q tests/test_engine_liveness.py tests/test_faults.py

# Issue #33's proof (not in CI: its own 3-host local cluster, minutes on the shared 2-core machine;
# root for the network namespaces): a LoRA fine-tune on the trainer host while a steady client load
# hits the serving replica, then the adapter served (tests/test_finetune_local.py).
finetune-local: setup system-deps
	$(BIN)/pytest -m finetune -q tests/test_finetune_local.py

# Issue #32's live proof (not in CI: its own 3-host local cluster; root for the namespaces): an
# idle replica released by Serve's autoscaler, a burst bringing it back without a redeploy
# (tests/test_local_autoscaling.py; passed whole on 2026-12-07 09:19, 231 s, see its docstring).
autoscaling-local: setup system-deps
	$(BIN)/pytest -m autoscaling -q tests/test_local_autoscaling.py

# Mutation testing of the security-relevant checks (issue #25; not in CI: ~4,580 mutants, one at a
# time: 10-25 a minute were measured on the shared 2-core machine under load, ~170 at load 2-6 once
# the tests killed them; a policy mutant reuses the offline captures its clean run made,
# tests/captures.py):
# mutmut 3 ([tool.mutmut] in pyproject.toml) breaks one condition at a time in the policy pack,
# the stack's key values and rules, the bearer token check and gate, and the budget gate, and
# runs the light tests that cover it; a surviving mutant is a check no test defends. Results in
# mutants/ (`$(BIN)/mutmut show NAME` shows one); the score per module is printed at the end and
# recorded in benchmarks/RESULTS.md. `make mutation MUTATE='ray_cluster.auth.*'` runs a subset.
# The globs select mutants by name; ? stands for mutmut's class separator in method names.
MUTATE ?= ray_cluster.auth.* \
	ray_cluster.serve_app.x?BearerGate?* ray_cluster.serve_app.x_parse_args__* \
	ray_cluster.serve_app.x__check_gated__* \
	infra.commands._cost_tables.x_budget_message__* infra.commands.cost.x__gate_on_budget__* \
	infra.stack.config_values.* infra.stack.config_rules.* policy.*
MUTATION_MIN ?= 95

mutation: setup
	nice -n 19 $(BIN)/mutmut run --max-children 1 $(foreach p,$(MUTATE),'$(p)')
	$(BIN)/python scripts/mutation_score.py --check $(MUTATION_MIN) $(foreach p,$(MUTATE),'$(p)')

clean:
	-$(BIN)/llmfleet local down
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache mutants
