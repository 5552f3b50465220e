# Two commands for a newcomer: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv when missing and install the project with the versions pinned in the lock
# (LOCK, used as pip constraints), again whenever pyproject.toml, the lock or this Makefile changes.
# `make lock` regenerates the lock after a dependency change in pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements/lock.txt
# One stamp per install: $(STAMP)-demo has the engine, $(STAMP)-test adds the test and bench extras.
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# FAISS build: GPU where a CUDA driver answers, else CPU.
FAISS  ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
EXTRAS_demo := $(FAISS)
EXTRAS_test := test,bench,$(FAISS)
# uv only writes the lock (`make lock`); installs use the venv's pip, which finds the local CPU
# build of torch where the machine has one, and PyPI's CUDA build for the same pin elsewhere.
UV_PIN ?= uv==0.13.9

.PHONY: demo test bench redis postgres chromium lock clean

$(STAMP)-%: pyproject.toml $(LOCK) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[$(EXTRAS_$*)]'
	touch $@

# Regenerate the lock from pyproject.toml: every extra (test, bench, cpu, gpu), Python 3.11 and up,
# markers for each platform, so CPU and CUDA machines install from the same file. Pins that still
# fit are kept; to move them: `make lock LOCK_ARGS=--upgrade` (all) or
# `make lock LOCK_ARGS='--upgrade-package pandas'`. Commit the new lock with the pyproject change.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q '$(UV_PIN)'
	$(BIN)/uv pip compile -q pyproject.toml --universal --python-version 3.11 \
	  --extra test --extra bench --extra cpu --extra gpu \
	  --custom-compile-command 'make lock' -o $(LOCK) $(LOCK_ARGS)

# The online-store tests run against a real redis-server (Debian's package), started by the tests.
redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  $(SUDO) apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null

# The contact-ledger tests also run against a real PostgreSQL (Debian's package), a private cluster started
# by the tests (initdb lives in /usr/lib/postgresql/<major>/bin, off the PATH).
PG_INITDB = command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
postgres:
	@$(PG_INITDB) || { \
	  echo "installing postgresql (Debian package)"; \
	  $(SUDO) apt-get install -y -q postgresql >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q postgresql >/dev/null; }; }
	@$(PG_INITDB)

# The web page tests drive Debian's headless Chromium through Playwright (the `browser` fixture points
# Playwright at it with executable_path). Playwright's own browser builds are never used: the pip package
# downloads none, and `playwright install` is not run. A Chinese font (fonts-wqy-zenhei) renders the zh pages.
chromium:
	@{ command -v chromium >/dev/null || command -v chromium-browser >/dev/null; } && \
	  fc-list :lang=zh 2>/dev/null | grep -q . || { \
	  echo "installing chromium and a Chinese font (Debian packages)"; \
	  $(SUDO) apt-get install -y -q chromium fonts-wqy-zenhei >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium fonts-wqy-zenhei >/dev/null; }; }
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null

demo: $(STAMP)-demo
	$(BIN)/nba demo

# The layers first (import-linter contracts in pyproject.toml), then the suite.
test: $(STAMP)-test redis postgres chromium
	$(BIN)/lint-imports
	NBA_REQUIRE_REDIS=1 NBA_REQUIRE_POSTGRES=1 NBA_REQUIRE_CHROMIUM=1 $(BIN)/python -m pytest -q

bench: $(STAMP)-test redis
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_features.py

clean:
	rm -rf $(VENV) .nba .pytest_cache
