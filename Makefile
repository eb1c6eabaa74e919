# Two commands set everything up on a fresh machine with only Python:
#   make bench   the main job: the benchmark suite (creates .venv, installs, builds the compiled library)
#   make test    the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch>=2.5
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup bench test lint gpu-validate gpu-audit clean

setup: $(VENV)/.ready

$(VENV)/.ready: setup.py pyproject.toml $(wildcard csrc/*.* csrc/*/*.*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q setuptools wheel ninja "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --no-build-isolation -e ".[test]"
	$(BIN)/python -c "import lsvit_kernels as lk; from lsvit_kernels.backends import native; \
	print('lsvit_kernels built: compiled library', native._has_ext(), '| CUDA kernels', native._has_cuda_kernels(), \
	'| CPU backends', lk.available_backends('cpu'))"
	touch $@

bench: setup
	$(BIN)/lsvit-bench $(BENCH_ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

gpu-validate: setup
	$(BIN)/python -m benchmarks.gpu_validate

gpu-audit: setup
	$(BIN)/python -m benchmarks.gpu_audit

# clang-format comes with the test extra; without it (another venv) the C++ check is skipped with a note.
CLANG_FORMAT ?= $(firstword $(wildcard $(BIN)/clang-format) $(shell command -v clang-format))
CSRC_FILES := $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	@if [ -n "$(CLANG_FORMAT)" ]; then \
		echo "$(CLANG_FORMAT) --dry-run --Werror <csrc files>"; $(CLANG_FORMAT) --dry-run --Werror $(CSRC_FILES); \
	else echo "lint: clang-format not found, csrc/ formatting not checked (pip install clang-format)"; fi

clean:
	rm -rf build *.egg-info lsvit_kernels/*.so $(VENV)
