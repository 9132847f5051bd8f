# shipper: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
KAFKA_PORT ?= 9092
export KAFKA_PORT

.PHONY: help venv test test-fast test-deploy lint demo bench kafka-up kafka-down clean

help:
	@echo "make demo        local Kafka + shipper on sample logs (Ctrl-C stops all)"
	@echo "make test        create .venv, install, run the whole suite against a real broker"
	@echo "make test-deploy build and run the image, play the pod, boot the unit (root)"
	@echo "make lint        ruff + mypy --strict"
	@echo "make bench       throughput/latency/stall benchmarks beside kcat and rsyslog"
	@echo "make kafka-up    start a local single-node Kafka (KRaft) on 127.0.0.1:$(KAFKA_PORT)"
	@echo "make kafka-down  stop it"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,dev,all-codecs]'
	touch $(STAMP)

venv: $(STAMP)

# The test session starts its own broker on a free port (or uses KAFKA_BOOTSTRAP) and
# stops it at the end, even on failure.
test: $(STAMP)
	$(BIN)/ruff check shipper tests bench scripts
	$(BIN)/ruff format --check shipper tests bench scripts
	$(BIN)/mypy
	scripts/kafka-local fetch --security >/dev/null
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The image under podman, the Kubernetes manifests (offline schemas, then podman kube play)
# and the systemd unit booted under systemd-nspawn, against the session's broker. Needs
# root; installs the Debian packages it lacks. Base root filesystems are cached in .cache/.
DEPLOY_STAMP := $(VENV)/.installed-deploy

$(DEPLOY_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,dev,all-codecs,deploy]'
	touch $(DEPLOY_STAMP)

test-deploy: $(DEPLOY_STAMP)
	scripts/deploy-packages
	scripts/kafka-local fetch >/dev/null
	$(BIN)/python -m pytest tests/deploy $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not kafka and not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check shipper tests bench scripts
	$(BIN)/ruff format --check shipper tests bench scripts
	$(BIN)/mypy

# Ctrl-C stops the demo cleanly and make exits 0: the script takes the terminal's foreground
# for itself, so Ctrl-C reaches it alone and make only sees its exit code.
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

kafka-up:
	scripts/kafka-local start

kafka-down:
	scripts/kafka-local stop

clean:
	-scripts/kafka-local stop --purge
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
