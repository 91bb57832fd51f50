# The two commands the README promises: `make run` and `make test`. Both install what
# they need on a fresh Debian machine (as root): a venv with the project, etcd and
# nats-server (the embedded async queue).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= conf/controller.yaml
PYTEST_ARGS ?=
# `make test` measures coverage, twistd subprocesses included, and fails under the floor
# (setup.cfg [coverage:*], fail_under); `make test COVERAGE=` runs without it
COVERAGE ?= --cov --cov-report=term $(COVERAGE_FLOOR)
# the real kube-apiserver of ../shared/k8s when it is there, as .ci/run finds it
FAASTWIST_ENVTEST ?= $(wildcard $(abspath $(CURDIR)/../shared/k8s))
export FAASTWIST_ENVTEST
# the floor is setup.cfg's fail_under (measured with the kube-apiserver tests); without
# them the Knative provider is barely exercised, so the floor is the figure measured so
# (91.8% on 29 Nov 2026, rounded down; README, Development)
COVERAGE_FLOOR_NO_ENVTEST ?= 91
COVERAGE_FLOOR := $(if $(FAASTWIST_ENVTEST),,--cov-fail-under=$(COVERAGE_FLOOR_NO_ENVTEST))
# `make mutate`: every module of faastwist/, each against its own test file (.ci/mutate.py);
# `make mutate MUTATE_ARGS="gate/adaptor -j 1"`: some modules, fewer jobs;
# `MUTATE_ARGS="--shard 2/4"`: the second of four equal parts (one per CI job)
MUTATE_ARGS ?=
# the fast tier: no root, no apt, no external process (markers in setup.cfg)
UNIT_MARKERS := not etcd and not envtest and not slow and not process and not e2e and not nats and not cluster and not sandbox
# tests and `make run` use the working tree's code over the installed copy
export PYTHONPATH := $(CURDIR)


.PHONY: run test unit lint docs mutate install install-service service-deps system-deps browser-deps monitoring-deps bench bench-gate bench-workers bench-scale bench-reconcile bench-coldstart bench-async clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: setup.cfg setup.py pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q ".[test]"
	touch $@

# a regular (non-editable) install: it is what puts twisted/plugins/faasgate.py where
# twistd finds it (and the faastwist CLI into $(BIN)); redone only when a file of the
# package changed since the last one (the stamp), so `make run` starts at once
PACKAGE_FILES := $(shell find faastwist twisted -type f ! -name '*.pyc' ! -name dropin.cache ! -path '*/__pycache__/*')
$(VENV)/.installed: $(VENV)/.deps $(PACKAGE_FILES) setup.cfg setup.py pyproject.toml MANIFEST.in
	$(BIN)/pip install -q --no-deps --force-reinstall .
	touch $@

install: $(VENV)/.installed

# faastwist as a system service (as root): a venv in PREFIX with the package, the CLI
# on the PATH, the unit, and /etc/faastwist/controller.yaml when there is none yet
# (docs: operations). The unit names PREFIX and SYSCONFDIR as installed.
PREFIX ?= /opt/faastwist
SYSCONFDIR ?= /etc
BINDIR ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system
# Debian's interpreter: one under /root or /home (pyenv) is hidden by ProtectHome=yes
SERVICE_PYTHON ?= /usr/bin/python3
# (without this Makefile's PYTHONPATH: the installed copy only)
install-service: service-deps
	test -x $(PREFIX)/bin/python || $(SERVICE_PYTHON) -m venv $(PREFIX)
	env -u PYTHONPATH $(PREFIX)/bin/pip install -q .
	env -u PYTHONPATH $(PREFIX)/bin/pip install -q --no-deps --force-reinstall .
	# write twistd's plugin cache now: under ProtectSystem=strict the node cannot
	env -u PYTHONPATH $(PREFIX)/bin/twistd --help >/dev/null
	install -d $(BINDIR) $(UNITDIR)
	ln -sfn $(PREFIX)/bin/faastwist $(BINDIR)/faastwist
	sed -e 's#/opt/faastwist/#$(PREFIX)/#g' -e 's#/etc/faastwist/#$(SYSCONFDIR)/faastwist/#g' \
	  conf/faasgate.service > $(UNITDIR)/faasgate.service
	chmod 0644 $(UNITDIR)/faasgate.service
	install -d -m 0755 $(SYSCONFDIR)/faastwist
	test -e $(SYSCONFDIR)/faastwist/controller.yaml || \
	  install -m 0644 conf/etc/controller.yaml $(SYSCONFDIR)/faastwist/controller.yaml
	@if [ -d /run/systemd/system ] && [ "$(UNITDIR)" = /etc/systemd/system ]; then \
	  systemctl daemon-reload; fi
	@echo "installed; start it with: systemctl enable --now faasgate"

system-deps:
	@missing=""; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v xz >/dev/null || missing="$$missing xz-utils"; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	[ -x /usr/bin/node ] || missing="$$missing nodejs"; \
	[ -x /usr/bin/npm ] || missing="$$missing npm"; \
	[ -x /usr/bin/go ] || missing="$$missing golang-go"; \
	/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	/usr/bin/python3 -m pip --version >/dev/null 2>&1 || missing="$$missing python3-pip"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# what a service node runs (install-service): not the test tools of system-deps
service-deps:
	@missing=""; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	command -v bwrap >/dev/null || missing="$$missing bubblewrap"; \
	command -v setpriv >/dev/null || missing="$$missing util-linux"; \
	/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# alert-driven autoscaling's end-to-end test runs Debian's Prometheus and AlertManager
monitoring-deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing (for the autoscaling test)"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# the console's end-to-end test drives Debian's chromium; `make run` does not need it
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing: chromium chromium-driver (for the console's browser test)"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	fi

run: install system-deps
	@echo "faasgate: state in ./data (make clean removes it); the CLI is $(BIN)/faastwist"
	$(BIN)/twistd -n --pidfile= faasgate --config $(CONFIG)

test: lint install system-deps browser-deps monitoring-deps docs
	rm -f .coverage .coverage.*
	COVERAGE_FILE=$(CURDIR)/.coverage $(BIN)/pytest $(COVERAGE) $(PYTEST_ARGS)

# the documentation in docs/ as HTML (docs/_build/html); -W: a warning (a broken
# reference, a malformed table) fails the build, and so `make test`
docs: $(VENV)/.deps
	$(BIN)/sphinx-build -q -E -W --keep-going -b html docs docs/_build/html

# mutation testing of the decision modules against their unit tests (mutmut's mutants)
mutate: $(VENV)/.deps
	$(BIN)/python .ci/mutate.py $(MUTATE_ARGS)

# ruff (its small rule set) and mypy (strict on the decision packages), both configured in
# pyproject.toml (docs/development.rst); `make unit` and `make test` run it first. mypy's
# cache is .mypy_cache in the tree (ignored by git): a second run takes a few seconds
lint: $(VENV)/.deps
	$(BIN)/ruff check faastwist tests bench twisted
	$(BIN)/mypy

# the fast tier only: needs the venv, nothing else (runs as any user)
unit: lint $(VENV)/.deps
	$(BIN)/pytest -m "$(UNIT_MARKERS)" $(PYTEST_ARGS)

bench: bench-gate bench-workers bench-scale bench-reconcile bench-coldstart bench-async

bench-gate: install
	@command -v nginx >/dev/null && command -v wrk >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light wrk; }
	$(BIN)/python bench/gate.py $(BENCH_GATE_ARGS)
	$(BIN)/python bench/gate.py --only two-write
	$(BIN)/python bench/gate.py --only https --repeat 2

# httpServer.workers: N gate worker processes against nginx with N workers (N = 1, 2, cores)
bench-workers: install system-deps
	@command -v nginx >/dev/null && command -v wrk >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light wrk; }
	$(BIN)/python bench/workers.py $(BENCH_WORKERS_ARGS)

# a real node (twistd) on a real etcd with 10,000 functions: start-up, memory, admin
# list latency and the gate's p99 while lists run
bench-scale: install system-deps
	@command -v nginx >/dev/null && command -v wrk >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light wrk; }
	$(BIN)/python bench/scale.py $(BENCH_SCALE_ARGS)

# the real kube-apiserver from ../shared/k8s (needs etcd, openssl, curl, xz)
bench-reconcile: install system-deps
	FAASTWIST_ENVTEST=$${FAASTWIST_ENVTEST:-$(CURDIR)/../shared/k8s} $(BIN)/python bench/reconcile.py

bench-coldstart: install
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python bench/coldstart.py

bench-async: install system-deps
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python bench/async.py --enqueue

clean:
	rm -rf $(VENV) build *.egg-info data conf/data test-artifacts docs/_build .coverage .coverage.*
