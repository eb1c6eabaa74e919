"""Backends "cpu" and "cuda": the compiled library ``lsvit_kernels._C`` (sources in csrc/).

The library registers C++ kernels (``TORCH_LIBRARY_IMPL``) for the kernel-level schemas that ``ops.py``
declares, ``lsvit::native_patch_embed_forward`` / ``_backward``. It is optional (torchvision's ``_has_ops``
pattern): it is loaded lazily, on the first question about it, never at ``import lsvit_kernels``; when it is
missing the registry falls back (logging the reason once) and a backend requested by name raises
``BackendUnavailableError`` with rebuild instructions.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Optional

import torch
from torch import Tensor

from .. import ops  # noqa: F401  (ops declares the schemas, and their fakes, that the library implements)
from ..registry import Backend, register_backend

log = logging.getLogger("lsvit_kernels")

EXT_MODULE = "lsvit_kernels._C"
REBUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`) on a machine "
    "with a C++ compiler, plus nvcc (CUDA_HOME) for the CUDA kernels; see docs/native.md"
)

_lock = threading.Lock()
_ext = None  # the loaded module, once loaded
_load_error: Optional[str] = None  # why it could not be loaded, once tried


def _load() -> None:
    """Import the library once; the schemas in ops.py must exist first, so import that before."""
    global _ext, _load_error
    with _lock:
        if _ext is not None or _load_error is not None:
            return
        try:
            _ext = importlib.import_module(EXT_MODULE)
        except ModuleNotFoundError as err:
            _load_error = f"the compiled library {EXT_MODULE} is not built ({err}); {REBUILD_HINT}"
            log.info("lsvit_kernels: %s", _load_error)
        except (ImportError, OSError, RuntimeError) as err:  # built but broken: ABI mismatch, missing symbols
            _load_error = f"the compiled library {EXT_MODULE} failed to load: {err}; rebuild it: {REBUILD_HINT}"
            log.warning("lsvit_kernels: %s", _load_error)


def _has_ext() -> bool:
    """True when the compiled library is built and loaded (loads it on first call)."""
    _load()
    return _ext is not None


def _assert_has_ext() -> None:
    """Raise with rebuild instructions when the compiled library is not available."""
    if not _has_ext():
        raise RuntimeError(_load_error)


def _has_cuda_kernels() -> bool:
    return _has_ext() and bool(getattr(_ext, "with_cuda", 0))


def _cpu_unavailable(device_type: str) -> Optional[str]:
    return None if _has_ext() else _load_error


def _cuda_unavailable(device_type: str) -> Optional[str]:
    if not _has_ext():
        return _load_error
    if not _has_cuda_kernels():
        return (
            f"{EXT_MODULE} was built without its CUDA kernels (no nvcc or torch without CUDA at build time, or "
            f"LSVIT_SKIP_CUDA=1); {REBUILD_HINT}"
        )
    if not torch.cuda.is_available():
        return "CUDA is not available (no GPU or driver)"
    return None


def forward(*args) -> Tensor:
    """The kernel-level forward; arguments as ``Backend.forward``'s (``torch.ops`` dispatches on the device)."""
    return torch.ops.lsvit.native_patch_embed_forward(*args)


def backward(*args) -> tuple[Optional[Tensor], ...]:
    """The kernel-level backward; arguments as ``Backend.backward``'s, None where ``output_mask`` is False."""
    *leading, output_mask = args
    grads = torch.ops.lsvit.native_patch_embed_backward(*leading, [bool(m) for m in output_mask])
    return tuple(g if m else None for g, m in zip(grads, output_mask, strict=True))


CPU_BACKEND, CUDA_BACKEND = (
    register_backend(Backend(name, (name,), forward, backward, unavailable, description, dtypes))
    for name, unavailable, description, dtypes in (
        (
            "cpu",
            _cpu_unavailable,
            "compiled C++: blocked gather into an L2 panel + BLAS GEMM onto bias + pos, parallel over blocks",
            (torch.float32, torch.bfloat16, torch.float16, torch.float64),
        ),
        (
            "cuda",
            _cuda_unavailable,
            "compiled CUDA: implicit GEMM, tubelets gathered into shared memory, tensor cores for 16-bit",
            (torch.float32, torch.bfloat16, torch.float16),
        ),
    )
)
