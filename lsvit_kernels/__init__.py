"""lsvit_kernels: fused patch embedding for video and image transformers.

Public API: ``patch_embed`` (the op), ``FusedPatchConv2d`` / ``FusedPatchConv3d`` (the ``nn.Conv2d`` /
``nn.Conv3d`` drop-in modules; ``tokens()`` for the op's full form), ``replace_patch_embeddings`` (swap them into
any model), ``smif_patch_embed`` (LSViT's input stage: SMIF motion computed in the patch gather), the geometry
helpers, backend controls (``use_backend``, ``available_backends``, ``last_backend``) and ``onnx`` (export).
``PatchEmbed2d`` / ``PatchEmbed3d`` are deprecated names kept for older code.
"""

from . import (
    backends,  # noqa: F401  (registers the backends)
    onnx,  # noqa: F401  (ONNX export of the op: see docs/op.md)
)
from .geometry import PatchGrid, patch_grid, token_counts
from .modules import FusedPatchConv2d, FusedPatchConv3d, PatchEmbed2d, PatchEmbed3d
from .ops import fold_normalization, patch_embed
from .registry import BackendUnavailableError, available_backends, backend_names, last_backend, use_backend
from .replace import ReplacementReport, replace_patch_embeddings, restore_patch_embeddings
from .smif_embed import smif_patch_embed

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
    "smif_patch_embed",
    "token_counts",
    "use_backend",
]
