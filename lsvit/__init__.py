"""lsvit: the LSViT video action-recognition transformer on lsvit_kernels' fused patch embedding."""

from .config import ModelConfig
from .model import LSViTForAction

__version__ = "0.1.0"

__all__ = ["LSViTForAction", "ModelConfig"]
