# Two commands set everything up on a fresh machine with only Python:
#   make bench   the main job: the benchmark suite (creates .venv, installs, builds the compiled library)
#   make test    the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch>=2.5
# Optional fast video decoder; it needs the system FFmpeg libraries (the ffmpeg target). Without either, the data
# loader decodes with PyAV (its wheels carry their own FFmpeg).
TORCHCODEC_SPEC ?= torchcodec>=0.17
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup bench test lint gpu-validate clean ffmpeg

setup: $(VENV)/.ready

$(VENV)/.ready: setup.py pyproject.toml $(wildcard csrc/*.* csrc/*/*.*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q setuptools wheel ninja "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --no-build-isolation -e ".[test]"
	-$(MAKE) --no-print-directory ffmpeg
	-$(BIN)/python -m pip install -q "$(TORCHCODEC_SPEC)" || echo "torchcodec not installed: videos decode with PyAV"
	$(BIN)/python -c "from lsvit.decode import resolve_decoder, torchcodec_error; \
	print('video decoder:', resolve_decoder('auto'), '|', torchcodec_error() or 'torchcodec loads')"
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

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# System FFmpeg libraries for torchcodec: installed with apt-get when running as root on Debian/Ubuntu; otherwise
# a note (the package falls back to PyAV).
ffmpeg:
	@if ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so'; then echo "system FFmpeg libraries present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg \
		|| echo "apt-get could not install ffmpeg: videos decode with PyAV"; \
	else echo "no system FFmpeg and no root apt-get: install ffmpeg for torchcodec, or decode with PyAV"; fi

clean:
	rm -rf build *.egg-info lsvit_kernels/*.so $(VENV)
