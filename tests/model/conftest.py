"""Tiny LSViT configurations: the real architecture at sizes a shared 2-core CPU runs in milliseconds."""

import pytest

from lsvit.config import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    values = dict(
        image_size=24,
        patch_size=8,
        in_channels=3,
        num_frames=4,
        embed_dim=16,
        depth=2,
        num_heads=2,
        num_classes=5,
        drop_path_rate=0.0,
        smif_window=3,
    )
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture(autouse=True)
def _no_config_environment(monkeypatch):
    """Tests build configs in code; an APPCONFIG__ variable in the caller's shell must not leak in."""
    import os

    for name in list(os.environ):
        if name.startswith("APPCONFIG__"):
            monkeypatch.delenv(name)
