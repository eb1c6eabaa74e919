"""lsvit_kernels: fused patch embedding for video and image transformers.

Public API: ``patch_embed`` (the op), ``PatchEmbed2d`` / ``PatchEmbed3d`` (drop-in modules), the geometry
helpers, backend controls (``use_backend``, ``available_backends``, ``last_backend``) and ``onnx`` (export).
"""

from . import (
    backends,  # noqa: F401  (registers the backends)
    onnx,  # noqa: F401  (ONNX export of the op: see docs/op.md)
)
from .geometry import PatchGrid, patch_grid, token_counts
from .modules import PatchEmbed2d, PatchEmbed3d
from .ops import fold_normalization, patch_embed
from .registry import BackendUnavailableError, available_backends, backend_names, last_backend, use_backend
from .replace import (
    FusedPatchConv2d,
    FusedPatchConv3d,
    ReplacementReport,
    replace_patch_embeddings,
    restore_patch_embeddings,
)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "FusedPatchConv2d",
    "FusedPatchConv3d",
    "PatchEmbed2d",
    "PatchEmbed3d",
    "PatchGrid",
    "ReplacementReport",
    "available_backends",
    "backend_names",
    "fold_normalization",
    "last_backend",
    "patch_embed",
    "patch_grid",
    "replace_patch_embeddings",
    "restore_patch_embeddings",
    "token_counts",
    "use_backend",
]
