# Two commands for a fresh machine: `make run` (a local raftchat) and `make test` (every check).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JSSDK := tests/e2e/jssdk
JSSDK_STAMP := $(JSSDK)/node_modules/.installed
GRPCJS := tests/e2e/grpcjs
GRPCJS_STAMP := $(GRPCJS)/node_modules/.installed

.PHONY: run test lint imports typecheck proto proto-check bench chaos chaos-deps tui-deps browser-deps \
	console-screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(JSSDK_STAMP): $(JSSDK)/package.json $(JSSDK)/package-lock.json
	cd $(JSSDK) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(GRPCJS_STAMP): $(GRPCJS)/package.json $(GRPCJS)/package-lock.json
	cd $(GRPCJS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: $(STAMP)
	$(BIN)/raftchat dev --nodes 3 --data ./data

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The layers: proto <- cluster <- node, and chaos, the bench and the client from outside
# (pyproject.toml, [tool.importlinter]).
imports: $(STAMP)
	$(BIN)/lint-imports

# Generated gRPC/protobuf modules (proto/raftchat/**/*_pb2*.py[i]) are committed; `proto`
# regenerates them from the .proto files with grpcio-tools and mypy-protobuf, and `proto-check`
# (part of `make test`, so of CI) fails when they differ. See docs/grpc.md.
proto: $(STAMP)
	$(BIN)/python -m proto.codegen

proto-check: $(STAMP)
	$(BIN)/python -m proto.codegen --check

# The chaos suite (tests/chaos) partitions nodes with iptables, which needs root.
chaos-deps:
	@command -v iptables >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq iptables; } || \
		echo "note: no iptables (and not root): the chaos tests will be skipped"

# The terminal client's test (tests/integration/test_client_tui.py) drives it in tmux.
tui-deps:
	@command -v tmux >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq tmux; } || \
		echo "note: no tmux (and not root): the terminal client test will be skipped"

# The web console's tests (tests/integration/test_console.py) drive Debian's chromium through its
# chromedriver; nothing downloads a browser.
browser-deps:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
		&& apt-get install -y -qq chromium chromium-driver; } || \
		echo "note: no chromium (and not root): the console tests will be skipped"

# Screenshots of every console page for the README and docs/console.md, taken by its tests.
console-screenshots: $(STAMP) browser-deps
	CONSOLE_SCREENSHOTS=docs/console $(BIN)/pytest -q tests/integration/test_console.py

# `make chaos ARGS="--nodes 5 --time 600 --nemesis all"`: one run; results in ./results.
chaos: $(STAMP) chaos-deps
	$(BIN)/raftchat chaos run $(ARGS)

test: $(STAMP) $(JSSDK_STAMP) $(GRPCJS_STAMP) chaos-deps tui-deps browser-deps lint imports typecheck proto-check
	$(BIN)/pytest

# Durable sends/s, SEND->SENDACK and delivery latency, commit latency, idle CPU and failover of a
# fresh local three-node cluster (127.0.0.11-13, so not while `make run` is going); see
# docs/benchmarks.md. Arguments: make bench ARGS="--duration 60 --window 8".
bench: $(STAMP)
	$(BIN)/raftchat bench $(ARGS)

clean:
	rm -rf $(VENV) data $(JSSDK)/node_modules $(GRPCJS)/node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
