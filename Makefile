# Two commands for a newcomer: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv when missing and (re)install the project when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# FAISS build: GPU where a CUDA driver answers, else CPU.
FAISS  ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: demo test bench redis clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,$(FAISS)]'
	touch $(STAMP)

# The online-store tests run against a real redis-server (Debian's package), started by the tests.
redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package)"; \
	  $(SUDO) apt-get install -y -q redis-server >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null

demo: $(STAMP)
	$(BIN)/nba demo

test: $(STAMP) redis
	NBA_REQUIRE_REDIS=1 $(BIN)/python -m pytest -q

bench: $(STAMP) redis
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_features.py

clean:
	rm -rf $(VENV) .nba .pytest_cache
