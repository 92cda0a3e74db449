# vipcore: one entry point for set-up, demo, tests and benchmarks.
# Everything the project needs is installed from here (Python packages into
# .venv; keepalived, nftables, iproute2 and ping with apt when run as root).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
BACKENDS := $(sort $(dir $(wildcard backends/*/pyproject.toml)))
STAMP  := $(VENV)/.installed

.PHONY: setup system demo test test-unit test-lab lint typecheck bench clean-lab

setup: system $(STAMP)

# System packages the lab and the keepalived backend need (root only; skipped otherwise).
system:
	@if [ "$$(id -u)" = "0" ]; then \
	  missing=""; \
	  command -v keepalived >/dev/null 2>&1 || missing="$$missing keepalived"; \
	  command -v nft >/dev/null 2>&1 || missing="$$missing nftables"; \
	  command -v ip >/dev/null 2>&1 || missing="$$missing iproute2"; \
	  command -v ping >/dev/null 2>&1 || missing="$$missing iputils-ping"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else \
	  echo "not root: skipping apt packages (keepalived, iproute2); lab tests will be skipped"; \
	fi

$(STAMP): pyproject.toml $(wildcard backends/*/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=68" wheel
	$(PIP) install -q -e '.[test]' $(foreach b,$(BACKENDS),-e $(b))
	touch $(STAMP)

demo: setup
	$(VENV)/bin/vipcore lab demo

lint: setup
	$(VENV)/bin/lint-imports

typecheck: setup
	$(VENV)/bin/mypy

test-unit: setup
	$(VENV)/bin/pytest -m "not lab"

test-lab: setup
	$(VENV)/bin/pytest -m lab

test: setup typecheck lint
	$(VENV)/bin/pytest

bench: setup
	$(PY) bench/resolve.py
	$(PY) bench/manifests.py
	$(PY) bench/advert_path.py
	$(PY) bench/failover.py
	$(PY) bench/failover_phases.py
	$(PY) bench/membership.py
	$(PY) bench/chaos.py
	$(PY) bench/leadership.py
	$(PY) bench/liveness_worker.py
	$(PY) bench/scale.py --sizes 1000x10000

clean-lab:
	$(VENV)/bin/vipcore lab down || true
