"""The compiled library as built: which kernels it registers, their resource usage, and the build description."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsvit_kernels.backends import native

ROOT = Path(__file__).resolve().parents[2]
OPS = ("lsvit::native_patch_embed_forward", "lsvit::native_patch_embed_backward")
KERNELS = (
    "patch_embed_wmma_kernel",
    "patch_embed_fma_kernel",
    "cls_rows_kernel",
    "gather_patches_kernel",
    "scatter_patches_kernel",
)

needs_ext = pytest.mark.skipif(not native._has_ext(), reason=f"the compiled library is not built: {native._load_error}")


def _cuda_built() -> bool:
    return native._has_cuda_kernels()


needs_cuda_build = pytest.mark.skipif(
    not _cuda_built(), reason="the compiled library was built without its CUDA part (no nvcc or LSVIT_SKIP_CUDA=1)"
)


@needs_ext
def test_cpu_kernels_are_registered():
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


@needs_ext
@needs_cuda_build
def test_cuda_kernels_are_registered():
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


def _cuobjdump() -> str | None:
    import triton  # ships cuobjdump in its wheel

    candidates = [
        Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "cuobjdump",
        Path("/usr/local/cuda/bin/cuobjdump"),
        Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump",
    ]
    found = [str(c) for c in candidates if c.exists()]
    return found[0] if found else shutil.which("cuobjdump")


@needs_ext
@needs_cuda_build
def test_cuda_kernels_do_not_spill():
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (CUDA_HOME/bin or the triton wheel)")
    dump = subprocess.run(
        [tool, "--dump-resource-usage", native._ext.__file__], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    usage = re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", dump)
    names = " ".join(name for name, _ in usage)
    for kernel in KERNELS:
        assert kernel in names, f"{kernel} missing from the fatbinary: {names}"
    for name, line in usage:
        assert "STACK:0 " in line and "LOCAL:0 " in line, f"{name} spills: {line}"


def _spec(monkeypatch, **env):
    """Run csrc_build.extension_spec with `env`; monkeypatch undoes what it sets (os.environ, CUDA_HOME)."""
    from torch.utils import cpp_extension

    for key in ("LSVIT_SKIP_CUDA", "LSVIT_FORCE_CUDA", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(key, raising=False)
    if "CUDA_HOME" in os.environ:
        monkeypatch.setenv("CUDA_HOME", os.environ["CUDA_HOME"])
    else:
        monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(ROOT / "csrc"))
    sys.modules.pop("csrc_build", None)
    import csrc_build

    messages: list[str] = []
    ext_modules, cmdclass = csrc_build.extension_spec(ROOT, messages.append)
    return ext_modules, cmdclass, messages


def test_build_spec_cpu_only(monkeypatch):
    ext_modules, cmdclass, messages = _spec(monkeypatch, LSVIT_SKIP_CUDA="1")
    (ext,) = ext_modules
    assert ext.name == "lsvit_kernels._C"
    assert not any(s.endswith(".cu") for s in ext.sources)
    assert "build_ext" in cmdclass
    assert any("CPU kernel only" in m and "LSVIT_SKIP_CUDA=1" in m for m in messages), messages


def test_build_spec_with_cuda_toolchain(monkeypatch):
    if not torch.version.cuda:
        pytest.skip("torch is not a CUDA build")
    ext_modules, _, messages = _spec(monkeypatch)
    if any("CUDA part skipped" in m for m in messages):
        pytest.skip(f"no CUDA toolchain here: {messages}")
    (ext,) = ext_modules
    assert any(s.endswith("patch_embed_cuda.cu") for s in ext.sources)
    assert ("LSVIT_WITH_CUDA", None) in ext.define_macros
    if not torch.cuda.is_available():
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0+PTX"


def test_force_cuda_without_toolchain_is_fatal(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match="LSVIT_FORCE_CUDA=1 but the CUDA part cannot be built"):
        _spec(monkeypatch, LSVIT_FORCE_CUDA="1")
