# mcufleet developer interface. `make test` does all set-up on a fresh Debian/Ubuntu machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := .cache/node
# smpmgr, the independent SMP client the simulator's conformance tests drive, lives in its own venv:
# it pins smpclient exactly, and its plugin loader breaks with pydantic 2.14 (see smp-libs.md §4.3).
SMPMGR_VENV := .cache/smpmgr
SMPMGR_PINS := smpmgr==0.19.1 'pydantic>=2.11,<2.14'
# apt-get needs root; fall back to sudo when it exists.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# Real Zephyr 4.4 + MCUboot builds: smpclient 7.3.0's sdist ships them under tests/fixtures/smp-server
# (with SHA256SUMS), and its tests/integration is run against our simulator too.
SMPCLIENT_SDIST := smpclient-7.3.0.tar.gz
SMPCLIENT_SDIST_SHA256 := 86aa4bc1c621805d97f449793a4077f049aa88a98a1e916bf59423d072bd2a3b
FIRMWARE_DIR := .cache/smpclient-7.3.0

.PHONY: help venv system-deps firmware-deps node-deps smpmgr check lint typecheck imports test test-fast demo bench bench-system contract clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "mcufleet needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP) ## create .venv and install mcufleet with its test extras

system-deps: ## install mosquitto, prometheus, alertmanager, postgresql and systemd (systemd-analyze) with apt-get when missing
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then \
	    echo "missing system packages:$$missing. Run as root or install sudo, or: apt-get install$$missing"; exit 1; fi; \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

firmware-deps: ## install QEMU and 32-bit libc with apt-get when missing; fetch and check the real-firmware fixtures
	@missing=""; \
	command -v qemu-system-arm >/dev/null || missing="$$missing qemu-system-arm"; \
	for package in libc6-i386 lib32gcc-s1; do \
	  dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "ok installed" || missing="$$missing $$package"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then \
	    echo "missing system packages:$$missing. Run as root or install sudo, or: apt-get install$$missing"; exit 1; fi; \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@$(MAKE) --no-print-directory $(FIRMWARE_DIR)/.checked

$(FIRMWARE_DIR)/.checked: Makefile
	@mkdir -p .cache
	@[ -f .cache/$(SMPCLIENT_SDIST) ] || $(PYTHON) -m pip download --quiet --no-deps --no-binary :all: -d .cache smpclient==7.3.0
	@echo "$(SMPCLIENT_SDIST_SHA256)  .cache/$(SMPCLIENT_SDIST)" | sha256sum --check --quiet || { echo "the smpclient 7.3.0 sdist does not match its pinned sha256"; exit 1; }
	rm -rf $(FIRMWARE_DIR) && tar -xzf .cache/$(SMPCLIENT_SDIST) -C .cache
	@cd $(FIRMWARE_DIR)/tests/fixtures/smp-server && grep -v " manifest.json$$" SHA256SUMS | sha256sum --check --quiet --ignore-missing || { echo "a real-firmware fixture does not match SHA256SUMS (manifest.json is not listed correctly there and is not checked)"; exit 1; }
	@touch $@

$(NODE_DIR)/node_modules/@asyncapi/parser/package.json: deploy/contract/package.json
	@mkdir -p $(NODE_DIR)
	cp deploy/contract/package.json $(NODE_DIR)/package.json
	cd $(NODE_DIR) && npm install --no-audit --no-fund --silent
	@touch $@

node-deps: system-deps $(NODE_DIR)/node_modules/@asyncapi/parser/package.json ## install the AsyncAPI validator from npm

$(SMPMGR_VENV)/.installed: Makefile
	@[ -x $(SMPMGR_VENV)/bin/python ] || $(PYTHON) -m venv $(SMPMGR_VENV)
	$(SMPMGR_VENV)/bin/python -m pip install --quiet $(SMPMGR_PINS)
	@touch $@

smpmgr: $(SMPMGR_VENV)/.installed ## install smpmgr (the independent SMP client) in its own venv

check: $(STAMP) ## ruff + mypy --strict + import-linter
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

contract: $(STAMP) ## regenerate deploy/contract/ from schemas/
	$(BIN)/mcufleet contract export

test: system-deps firmware-deps node-deps smpmgr $(STAMP) check ## full set-up, static checks, then every test
	$(BIN)/mcufleet contract check
	MCUFLEET_NODE_MODULES=$(CURDIR)/$(NODE_DIR)/node_modules MCUFLEET_SMPMGR=$(CURDIR)/$(SMPMGR_VENV)/bin/smpmgr MCUFLEET_FIRMWARE_DIR=$(CURDIR)/$(FIRMWARE_DIR) $(BIN)/pytest

test-fast: $(STAMP) ## unit tests only (no real components)
	$(BIN)/pytest -m "not integration and not chaos"

demo: system-deps $(STAMP) ## run the whole system locally on embedded defaults
	$(BIN)/mcufleet demo

bench: system-deps $(STAMP) ## run every benchmark, write bench/results.json and bench/results.md
	$(BIN)/python -m bench

bench-system: system-deps $(STAMP) ## the 100k-device system benchmark (about 30 min; merged into bench/results.json)
	$(BIN)/python -m bench.bench_system 100k

clean: ## remove the venv and caches
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
