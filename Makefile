# Two commands do all set-up on a fresh Debian/Ubuntu machine with Python 3.11:
#   make run INPUT=/path/to/footage OUT=/path/to/out     (main job)
#   make test                                            (lint + full test suite)
# Both create .venv on first use (about 6 GB: PyTorch's default build carries CUDA libraries).

PY     ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.genmocap-installed
ARGS   ?=

.PHONY: setup run test lint system-deps test-deps clean

setup: system-deps $(STAMP)

# ffmpeg/ffprobe come from Debian; installed when missing and we are root (CI, containers).
system-deps:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null; \
	  else echo "ffmpeg missing: sudo apt-get install ffmpeg" >&2; exit 1; fi; }

# assimp (an FBX reader independent of Blender) for the export round-trip tests only.
test-deps:
	@command -v assimp >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq assimp-utils >/dev/null; \
	  else echo "assimp missing (export tests): sudo apt-get install assimp-utils" >&2; exit 1; fi; }

$(STAMP): pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 11), "genmocap needs CPython 3.11 (bpy 4.5 LTS)"'
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: setup
	@test -n "$(INPUT)" -a -n "$(OUT)" || { echo "usage: make run INPUT=<file|folder|glob|manifest> OUT=<folder> [ARGS='--until track ...']" >&2; exit 2; }
	$(BIN)/genmocap run $(INPUT) --out $(OUT) $(ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup test-deps lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
