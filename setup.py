"""Build script: installs the Python packages and, when a toolchain is present, the compiled library in csrc/.

Environment flags (flash-attention style):
  LSVIT_SKIP_EXT=1          build no compiled library at all (pure-Python install)
  LSVIT_SKIP_CUDA=1         build the CPU part only
  LSVIT_FORCE_CUDA=1        build the CUDA part even if the toolchain check fails (errors are then fatal)
  TORCH_CUDA_ARCH_LIST      GPU architectures (default: the local GPU's, else "8.0;9.0")
  MAX_JOBS                  parallel compile jobs for ninja
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def _log(msg: str) -> None:
    print(f"[lsvit setup] {msg}", file=sys.stderr)


def _extensions():
    """The compiled library's extension(s), or [] when there is nothing to build or no toolchain."""
    if os.environ.get("LSVIT_SKIP_EXT") == "1":
        _log("LSVIT_SKIP_EXT=1: skipping the compiled library")
        return [], {}
    sources_dir = ROOT / "csrc"
    if not (sources_dir / "register.cpp").exists():
        _log("no csrc/register.cpp: pure-Python install")
        return [], {}
    try:
        import torch.utils.cpp_extension  # noqa: F401  (the build helpers csrc_build uses)
    except ImportError:
        _log("torch is not importable at build time (use --no-build-isolation): skipping the compiled library")
        return [], {}
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        _log("no C++ compiler found: skipping the compiled library; lsvit_kernels falls back to Triton/reference")
        return [], {}
    from csrc_build import extension_spec  # noqa: E402  (csrc/ owns its build description)

    return extension_spec(ROOT, _log)


sys.path.insert(0, str(ROOT / "csrc"))
ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
