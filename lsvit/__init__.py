"""lsvit: the LSViT video action-recognition transformer on lsvit_kernels' fused patch embedding."""

__version__ = "0.1.0"
