# Two commands set everything up on a fresh machine with only Python:
#   make bench   the main job: the benchmark suite (creates .venv, installs, builds the compiled library)
#   make test    the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch>=2.5
# Optional video decoder (--decoder torchcodec); it needs the system FFmpeg libraries (the ffmpeg target). The
# default decoder is PyAV, whose wheels carry their own FFmpeg.
TORCHCODEC_SPEC ?= torchcodec>=0.17
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup bench test lint gpu-validate gpu-audit clean ffmpeg

setup: $(VENV)/.ready

$(VENV)/.ready: setup.py pyproject.toml $(wildcard csrc/*.* csrc/*/*.*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q setuptools wheel ninja "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --no-build-isolation -e ".[test]"
	-$(MAKE) --no-print-directory ffmpeg
	-$(BIN)/python -m pip install -q "$(TORCHCODEC_SPEC)" || echo "torchcodec not installed (--decoder pyav only)"
	$(BIN)/python -c "from lsvit.decode import torchcodec_error; \
	print('video decoders: pyav |', 'torchcodec' if torchcodec_error() is None else torchcodec_error())"
	$(BIN)/python -c "import lsvit_kernels as lk; from lsvit_kernels.backends import native; \
	print('lsvit_kernels built: compiled library', native._has_ext(), '| CUDA kernels', native._has_cuda_kernels(), \
	'| CPU backends', lk.available_backends('cpu'))"
	touch $@

bench: setup
	$(BIN)/lsvit-bench $(BENCH_ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

gpu-validate: setup
	$(BIN)/python -m lsvit.bench.gpu_validate

gpu-audit: setup
	$(BIN)/python -m lsvit.bench.gpu_audit

# clang-format comes with the test extra; without it (another venv) the C++ check is skipped with a note.
CLANG_FORMAT ?= $(firstword $(wildcard $(BIN)/clang-format) $(shell command -v clang-format))
CSRC_FILES := $(wildcard csrc/*.h csrc/*.cpp csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	@if [ -n "$(CLANG_FORMAT)" ]; then \
		echo "$(CLANG_FORMAT) --dry-run --Werror <csrc files>"; $(CLANG_FORMAT) --dry-run --Werror $(CSRC_FILES); \
	else echo "lint: clang-format not found, csrc/ formatting not checked (pip install clang-format)"; fi

# System FFmpeg libraries for torchcodec: installed with apt-get when running as root on Debian/Ubuntu; otherwise
# a note (the default decoder, PyAV, does not need them).
ffmpeg:
	@if ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so'; then echo "system FFmpeg libraries present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg \
		|| echo "apt-get could not install ffmpeg: --decoder torchcodec will not load"; \
	else echo "no system FFmpeg and no root apt-get: install ffmpeg for --decoder torchcodec"; fi

clean:
	rm -rf build *.egg-info lsvit_kernels/*.so $(VENV)
