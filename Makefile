# The two commands of the README: `make demo` and `make test` (and `make test-fast`
# while you work).
# Both create .venv in the repository, install the project with its training
# and test dependencies, and build the Cython kernels.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install mosquitto lint bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "appliance needs Python 3.11 or newer (found " + sys.version.split()[0] + ")")'
	@echo "== creating $(VENV) (the first build takes about 3-4 minutes; later runs start at once)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# pip runs --quiet: say what each long step is doing, so a silent minute is not a hang
$(STAMP): $(BIN)/python setup.py pyproject.toml $(wildcard kernels/*.pyx) $(wildcard kernels/*.pxi)
	@echo "== installing the build tools (Cython, numpy, setuptools)"
	$(BIN)/pip install --quiet "Cython>=3.0,<4" "numpy>=2.0" "setuptools>=68"
	@echo "== installing appliance and its dependencies (DuckDB, onnxruntime, scikit-learn, ...) and compiling the Cython kernels: the longest step, 2-3 minutes"
	$(BIN)/pip install --quiet --no-build-isolation -e ".[train,dev]"
	@echo "== built: $(VENV)/bin/appliance"
	@touch $(STAMP)

install: $(STAMP)

# The tests talk to a real broker: install Debian's mosquitto when it is missing.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; \
	  else \
	    echo "mosquitto is missing: install the Debian package 'mosquitto' (apt-get install mosquitto)"; exit 1; \
	  fi; }
	@# the TLS test makes its certificates with the openssl command
	@command -v openssl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; \
	  else \
	    echo "openssl is missing: install the Debian package 'openssl' (apt-get install openssl)"; exit 1; \
	  fi; }

demo: install mosquitto
	@echo "== starting the demo: a private mosquitto, the simulated line and the service (Ctrl-C stops it)"
	$(BIN)/appliance demo

test: install mosquitto
	$(BIN)/ruff check appliance kernels tests
	$(BIN)/python -m pytest -q

# Unit and kernel tests: no broker, no service process, no root; under a minute.  The
# markers (see pyproject.toml) keep out whatever one of them comes to need later.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not broker and not root" tests/unit tests/kernels

bench: install
	$(BIN)/appliance bench kernels
	$(BIN)/appliance bench ingest

lint: install
	$(BIN)/ruff check appliance kernels tests

clean:
	rm -rf $(VENV) build *.egg-info kernels/*.c kernels/*.so
