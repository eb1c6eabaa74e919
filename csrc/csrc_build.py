"""How setup.py builds the compiled library ``lsvit_kernels._C`` from csrc/ (torchvision / flash-attention style).

One extension module holds everything: the CPU kernel always, the CUDA kernels when torch is a CUDA build and
``nvcc`` is found (decided from the toolchain, not from ``torch.cuda.is_available()``, so a GPU-less build
machine still builds them). Environment flags (also in setup.py's docstring):

  LSVIT_SKIP_CUDA=1       CPU part only
  LSVIT_FORCE_CUDA=1      build the CUDA part even if the toolchain check fails; CUDA errors are then fatal
                          (otherwise a failed CUDA compile falls back to a CPU-only library, loudly)
  CUDA_HOME               CUDA toolkit (default: /usr/local/cuda when it has bin/nvcc, else torch's guess)
  TORCH_CUDA_ARCH_LIST    GPU architectures (default: the visible GPUs', else "8.0;9.0+PTX")
  MAX_JOBS                parallel compile jobs for ninja
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

EXT_NAME = "lsvit_kernels._C"
DEFAULT_ARCHES = "8.0;9.0+PTX"  # A100 and H100/H200; the PTX lets newer GPUs JIT-compile the sm_90 code
# -fopenmp, where the compiler supports it: at::parallel_for is a header template whose OpenMP region exists
# only in a translation unit compiled with it; without it every region of the library runs on the calling
# thread. Linking with it records libgomp.so.1, which resolves to the copy libtorch_cpu has already loaded (same
# soname; docs/native.md, "Threads").
CXX_FLAGS = ["-O3"]  # torch adds its own -std (C++20 for torch 2.14)
OPENMP_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "--threads", "2", "-lineinfo"]
_CUDA_ONLY_LIBRARIES = ("cudart", "c10_cuda", "torch_cuda")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() in ("1", "true", "yes", "on")


def _cuda_home(cpp_extension) -> Path | None:
    """The toolkit to compile with. torch infers /usr/local from a /usr/local/bin/nvcc wrapper, which has no
    headers, so /usr/local/cuda wins when it exists (docs/native.md)."""
    for candidate in (os.environ.get("CUDA_HOME"), "/usr/local/cuda", cpp_extension.CUDA_HOME):
        if candidate and (Path(candidate) / "bin" / "nvcc").exists():
            return Path(candidate)
    return None


def _cuda_reason_not(torch, cpp_extension) -> tuple[str | None, Path | None]:
    """(why the CUDA part is not built or None, CUDA home)."""
    if _flag("LSVIT_SKIP_CUDA"):
        return "LSVIT_SKIP_CUDA=1", None
    if not torch.version.cuda:
        return f"torch {torch.__version__} is not a CUDA build", None
    home = _cuda_home(cpp_extension)
    if home is None:
        return "nvcc not found (set CUDA_HOME to a CUDA toolkit)", None
    return None, home


def _sources(root: Path, with_cuda: bool) -> list[str]:
    csrc = root / "csrc"
    cpu = csrc / "cpu"
    files = [
        csrc / "register.cpp",
        csrc / "common.cpp",
        cpu / "patch_embed_cpu.cpp",
        cpu / "gemm_cpu.cpp",
        cpu / "bf16_gemm.cpp",
    ]
    files += [cpu / "smif_embed_cpu.cpp"]  # LSViT's input stage; binds its own kernel (TORCH_LIBRARY_IMPL)
    if with_cuda:
        files.append(csrc / "cuda" / "patch_embed_cuda.cu")
    return [str(f.relative_to(root)) for f in files]


def _drop_cuda(ext, root: Path) -> None:
    """Turn the CUDA extension into the CPU-only one in place (after a failed CUDA compile)."""
    ext.sources = _sources(root, with_cuda=False)
    ext.libraries = [lib for lib in ext.libraries if lib not in _CUDA_ONLY_LIBRARIES]
    ext.define_macros = [m for m in ext.define_macros if m[0] != "LSVIT_WITH_CUDA"]
    if isinstance(ext.extra_compile_args, dict):
        ext.extra_compile_args = {"cxx": ext.extra_compile_args.get("cxx", [])}


def openmp_flags(log: Callable[[str], None]) -> list[str]:
    """``-fopenmp`` when the C++ compiler builds and links an OpenMP program with it, else nothing: the library
    then builds all the same, and its parallel regions run on the calling thread."""
    import shutil
    import subprocess
    import tempfile

    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"
    program = (
        "#include <omp.h>\nint main() {\n  int n = 0;\n#pragma omp parallel\n  n = omp_get_num_threads();\n"
        "  return n < 1;\n}\n"
    )
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "probe.cpp"
        source.write_text(program)
        try:
            done = subprocess.run(
                [compiler, *OPENMP_FLAGS, str(source), "-o", str(Path(folder) / "probe")],
                capture_output=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            done = None
    if done is not None and done.returncode == 0:
        return list(OPENMP_FLAGS)
    log(f"{compiler} cannot build OpenMP code: the library's parallel regions will run on one thread")
    return []


def extension_spec(root: Path, log: Callable[[str], None]):
    """(ext_modules, cmdclass) for setup(): the compiled library and the build command that compiles it."""
    import torch
    from torch.utils import cpp_extension

    cuda_skip_reason, cuda_home = _cuda_reason_not(torch, cpp_extension)
    force_cuda = _flag("LSVIT_FORCE_CUDA")
    if cuda_skip_reason and force_cuda and not _flag("LSVIT_SKIP_CUDA"):
        raise RuntimeError(f"LSVIT_FORCE_CUDA=1 but the CUDA part cannot be built: {cuda_skip_reason}")
    with_cuda = cuda_skip_reason is None
    include_dirs = [str(root / "csrc")]
    openmp = openmp_flags(log)
    macros = [("LSVIT_WITH_CUDA", None)] if with_cuda else []

    if with_cuda:
        os.environ["CUDA_HOME"] = str(cuda_home)
        cpp_extension.CUDA_HOME = str(cuda_home)  # read by CUDAExtension and the nvcc command line
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            visible = torch.cuda.is_available() and torch.cuda.device_count() > 0
            if not visible:
                os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHES
        arches = os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPUs' (torch default)")
        ext = cpp_extension.CUDAExtension(
            EXT_NAME,
            _sources(root, with_cuda=True),
            include_dirs=include_dirs,
            define_macros=macros,
            extra_compile_args={"cxx": CXX_FLAGS + openmp, "nvcc": NVCC_FLAGS},
            extra_link_args=openmp,
        )
        log(f"building {EXT_NAME}: CPU + CUDA kernels (CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={arches})")
    else:
        ext = cpp_extension.CppExtension(
            EXT_NAME,
            _sources(root, with_cuda=False),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": CXX_FLAGS + openmp},
            extra_link_args=openmp,
        )
        log(f"building {EXT_NAME}: CPU kernel only (CUDA part skipped: {cuda_skip_reason})")
    ninja = cpp_extension.is_ninja_available()
    log(f"MAX_JOBS={os.environ.get('MAX_JOBS', 'all cores')}; ninja={'yes' if ninja else 'no'}")

    base = cpp_extension.BuildExtension.with_options(use_ninja=ninja)

    class BuildLsvitExtension(base):
        """torch's BuildExtension, timed, and falling back to the CPU-only library if CUDA fails to compile."""

        def build_extension(self, extension):
            start = time.perf_counter()
            try:
                super().build_extension(extension)
            except Exception as err:  # noqa: BLE001  (any compiler failure)
                if not (with_cuda and extension.name == EXT_NAME) or force_cuda:
                    raise RuntimeError(
                        f"building {EXT_NAME} failed: {err}. Fix the toolchain, or install without the compiled "
                        f"library (LSVIT_SKIP_EXT=1) or without its CUDA part (LSVIT_SKIP_CUDA=1)"
                    ) from err
                log(
                    f"the CUDA part failed to compile ({err}); rebuilding {EXT_NAME} CPU-only "
                    f"(LSVIT_FORCE_CUDA=1 makes this fatal)"
                )
                _drop_cuda(extension, root)
                super().build_extension(extension)
            log(f"built {extension.name} in {time.perf_counter() - start:.0f} s")

    return [ext], {"build_ext": BuildLsvitExtension}
