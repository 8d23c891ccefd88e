# Hanzo Registry: `make run` starts the embedded registry; `make test` sets up everything and runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HANZO_REGISTRY_ADDR ?= 127.0.0.1:5000
HANZO_REGISTRY_DATA_DIR ?= ./var

.PHONY: help venv run serve infra-up infra-down tools servers test test-unit test-contract test-integration \
        conformance stack lint proto proto-check bench image clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is required"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(VENV)/bin/uv pip sync --quiet --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	touch $@

venv: $(STAMP) ## create .venv with the locked dependencies

lock: ## re-resolve requirements.lock from pyproject.toml
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -q -o requirements.lock

run: $(STAMP) ## start the embedded all-in-one registry on $(HANZO_REGISTRY_ADDR)
	@mkdir -p $(HANZO_REGISTRY_DATA_DIR)
	@echo "Hanzo Registry on http://$(HANZO_REGISTRY_ADDR)  (data: $(HANZO_REGISTRY_DATA_DIR); Ctrl-C stops it)"
	@echo "Log in as admin with the API key the first start writes to $(HANZO_REGISTRY_DATA_DIR)/bootstrap-admin.key:"
	@echo '  crane auth login $(HANZO_REGISTRY_ADDR) -u admin -p "$$(cat $(HANZO_REGISTRY_DATA_DIR)/bootstrap-admin.key)"'
	@echo '  (or docker login / skopeo login --tls-verify=false / oras login --plain-http; curl -u "hanzo:<key>")'
	@echo "The console: http://$(HANZO_REGISTRY_ADDR)/console/ (user admin, that key)"
	HANZO_REGISTRY_ADDR=$(HANZO_REGISTRY_ADDR) HANZO_REGISTRY_DATA_DIR=$(HANZO_REGISTRY_DATA_DIR) \
		exec $(VENV)/bin/hanzo-registry serve

infra-up: ## install (cached) and start Kafka, FerretDB and SeaweedFS S3 on loopback
	bash deploy/local/infra-up.sh

infra-down: ## stop what infra-up started
	bash deploy/local/infra-down.sh

tools: ## install the reference clients: OCI conformance suite, crane, oras, skopeo, docker-registry ...
	bash deploy/local/tools.sh

proto: $(STAMP) ## regenerate services/core/proto from proto/
	$(PY) scripts/gen_proto.py

proto-check: $(STAMP)
	$(PY) scripts/gen_proto.py --check

lint: $(STAMP) ## ruff, mypy (strict on services/core), import layers
	$(VENV)/bin/ruff check services tests scripts bench
	$(VENV)/bin/mypy services bench tests
	$(VENV)/bin/lint-imports

test-unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

test-contract: $(STAMP)
	$(VENV)/bin/pytest -q tests/contract

test-integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration

servers: ## infra-up and tools side by side (their builds are independent; each is cached)
	$(MAKE) --no-print-directory -j2 infra-up tools

test: $(STAMP) servers ## everything: unit, contract and integration tests on the real servers, conformance
	$(VENV)/bin/pytest -q -p no:cacheprovider tests
	bash scripts/conformance.sh

conformance: $(STAMP) ## OCI conformance suite against the embedded and the distributed assembly
	bash scripts/conformance.sh

stack: $(STAMP) infra-up ## the distributed assembly: every service its own process on the infra
	bash scripts/stack.sh

bench: $(STAMP) ## benchmarks (throughput, RSS) against the registry and CNCF Distribution; the pull gates' cost
	$(PY) -m bench.run
	$(PY) -m bench.gates
	$(PY) -m bench.scanner
	$(PY) -m bench.replication
	$(PY) -m bench.gc
	$(PY) -m bench.cache
	$(PY) -m bench.soak
	$(PY) -m bench.console

image: ## build the container image with buildah on a debootstrap Debian base (cached; no Docker engine)
	bash deploy/local/image.sh

clean: ## remove the venv and local data (not the infra cache)
	rm -rf $(VENV) var reports
