# lovense-worker: `make run` and `make test` are the two commands a newcomer needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEPLOY_TOOLS := $(VENV)/deploy-tools

.PHONY: docs install run test test-unit test-integration test-faults test-cluster lint typecheck bench schemas rabbitmq clean deploy-tools node-example

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its dev tools

# Offline checkers for tests/deploy (kubectl's kustomize, promtool, AsyncAPI/Compose/CRD schemas).
$(DEPLOY_TOOLS)/.installed: tests/deploy/tools/install.sh tests/deploy/tools/package.json tests/deploy/tools/package-lock.json | $(STAMP)
	tests/deploy/tools/install.sh $(DEPLOY_TOOLS)
	touch $@

deploy-tools: $(DEPLOY_TOOLS)/.installed  ## install the checkers tests/deploy needs into .venv/deploy-tools

# The Node producer example, run by tests/integration/test_node_producer.py: npm ci from its lockfile.
examples/node/node_modules/.package-lock.json: examples/node/package.json examples/node/package-lock.json
	cd examples/node && npm ci --no-audit --no-fund
	touch $@

node-example: examples/node/node_modules/.package-lock.json  ## install the Node producer example's packages (npm ci)

rabbitmq:  ## make sure RabbitMQ (with the consistent-hash plugin) answers
	scripts/ensure-rabbitmq.sh

run: install rabbitmq  ## run the worker (against the simulator unless a developer token is set)
	@if [ -n "$$LOVENSE_DEVELOPER_TOKEN" ] || [ -n "$$LOVENSE_DEVELOPER_TOKEN_FILE" ]; then \
		exec $(BIN)/lovense-worker run; \
	else \
		exec $(BIN)/lovense-worker run --simulator; \
	fi

test: install rabbitmq deploy-tools node-example  ## the whole suite, against the real RabbitMQ
	$(BIN)/pytest -q

test-unit: install  ## unit tests only (no sockets)
	$(BIN)/pytest -q tests/unit

test-integration: install rabbitmq node-example
	$(BIN)/pytest -q tests/integration

test-faults: install rabbitmq  ## fault-injection tests (restart RabbitMQ; run by make test too)
	$(BIN)/pytest -q tests/faults

test-cluster: install  ## a local 3-node RabbitMQ cluster (scripts/rabbitmq-cluster.sh, ports 5681-5683; run by make test too)
	$(BIN)/pytest -q tests/cluster

lint: install
	$(BIN)/ruff check worker tests bench scripts
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The bench runs in its own vhost: the integration tests purge the shard queues.
# A cluster's nodes, comma-separated, work too (create the vhost on it first).
BENCH_AMQP_URL ?= amqp://guest:guest@localhost:5672/lovense-bench

bench: install rabbitmq  ## benchmarks; figures go to bench/results.json
	@if command -v rabbitmqctl >/dev/null 2>&1; then \
		rabbitmqctl add_vhost lovense-bench >/dev/null 2>&1 || true; \
		rabbitmqctl set_permissions -p lovense-bench guest '.*' '.*' '.*' >/dev/null; \
	fi
	LOVENSE_AMQP_URL='$(BENCH_AMQP_URL)' scripts/ensure-rabbitmq.sh
	LOVENSE_AMQP_URL='$(BENCH_AMQP_URL)' $(BIN)/python -m bench

schemas: install  ## regenerate schemas/ from the msgspec types
	$(BIN)/python -m worker.schemas schemas

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

docs: install  ## regenerate the README's configuration table and layout tables from the code
	$(BIN)/python scripts/docs.py
