"""Model configuration: pydantic-settings, set in code or from ``APPCONFIG__<FIELD>`` environment variables.

Every field is validated at construction and on assignment (``validate_assignment=True``), and each error names
the field and the fix. Cross-field rules (image size vs patch size, heads vs embed dim) are checked on every
assignment too (a rejected assignment leaves the config unchanged), so change an interlocked pair in an order
where each step is valid, or build a new config: ``ModelConfig(**{**config.model_dump(), "embed_dim": 96,
"num_heads": 6})`` (``model_copy(update=...)`` would skip validation).
The frame count vs tubelet rule is checked by the model, which knows the clip length it is built for.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lsvit_kernels import backend_names
from lsvit_kernels.geometry import check_divisible

ENV_PREFIX = "APPCONFIG__"


class ModelConfig(BaseSettings):
    """Hyper-parameters of ``LSViTForAction``; defaults are ViT-B/16 on 16-frame 224x224 clips, 2D patching."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, validate_assignment=True, extra="forbid")

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_frames: Optional[int] = 16  # clip length the model is built for; required for 3D patching
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.1
    num_classes: int = 400
    smif_window: int = 5  # frames in the SMIF difference window, centred on the frame: odd
    motion_channels: bool = True  # SMIF's signed difference enters the patch embedding as C extra channels
    lmi_reduction: int = 4  # LMI reduces E to E / lmi_reduction channels before differencing
    lmi_position: Literal["start", "end"] = "start"  # LMI at the start of each block (TEA) or after its MLP
    temporal_embed: bool = True  # learned per-step embedding added with the spatial one (zero at init)
    use_3d_patch_embed: bool = False
    tubelet_size: int = 2  # frames per tubelet (3D patching only)
    kernel_backend: Optional[str] = None  # None: the op chooses per device (LSVIT_BACKEND env var applies)

    @field_validator(
        "image_size", "patch_size", "in_channels", "embed_dim", "depth", "num_heads", "num_classes",
        "lmi_reduction", "tubelet_size",
    )  # fmt: skip
    @classmethod
    def _positive(cls, value: int, info) -> int:
        if value < 1:
            raise ValueError(f"{info.field_name}={value} must be >= 1")
        return value

    @field_validator("num_frames")
    @classmethod
    def _positive_frames(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value < 1:
            raise ValueError(f"num_frames={value} must be >= 1 (or None to give it when building the model)")
        return value

    @field_validator("mlp_ratio")
    @classmethod
    def _positive_ratio(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"mlp_ratio={value} must be > 0")
        return value

    @field_validator("dropout", "attention_dropout", "drop_path_rate")
    @classmethod
    def _rate(cls, value: float, info) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{info.field_name}={value} must be a rate in [0, 1)")
        return value

    @field_validator("smif_window")
    @classmethod
    def _odd_window(cls, value: int) -> int:
        if value < 1 or value % 2 == 0:
            raise ValueError(
                f"smif_window={value} must be odd and >= 1 (the window is centred on the frame); "
                f"use {max(1, value - 1) if value > 1 else 1} or {value + 1 if value > 0 else 3}"
            )
        return value

    @field_validator("kernel_backend")
    @classmethod
    def _known_backend(cls, value: Optional[str]) -> Optional[str]:
        if value is None or value.strip() in ("", "auto"):
            return None
        names = backend_names()
        if value not in names:
            raise ValueError(f"kernel_backend={value!r} is not a registered backend; choose one of {sorted(names)}")
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # pydantic applies an assignment before the cross-field check runs; undo it when the check fails so a
        # rejected assignment leaves the config as it was.
        previous = self.__dict__.get(name)
        try:
            super().__setattr__(name, value)
        except ValidationError:
            if name in self.__dict__:
                self.__dict__[name] = previous
            raise

    @model_validator(mode="after")
    def _compatible(self) -> ModelConfig:
        try:
            check_divisible("image_size", self.image_size, "patch_size", self.patch_size)
        except ValueError as err:
            raise ValueError(f"image_size/patch_size: {err}") from None
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} does not divide embed_dim={self.embed_dim}; pick num_heads among the "
                f"divisors of embed_dim (e.g. {_divisors_near(self.embed_dim, self.num_heads)})"
            )
        if self.embed_dim // self.lmi_reduction < 1:
            raise ValueError(
                f"lmi_reduction={self.lmi_reduction} leaves no channels of embed_dim={self.embed_dim}; "
                f"use lmi_reduction <= {self.embed_dim}"
            )
        return self

    # ---- derived sizes -------------------------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Patches per side: image_size / patch_size."""
        return self.image_size // self.patch_size

    @property
    def patches_per_step(self) -> int:
        """N: spatial patch tokens per time step (no CLS)."""
        return self.grid_size**2

    @property
    def tokens_per_step(self) -> int:
        """1 + N: tokens in each time step's sequence, the CLS slot included (geometry's S + N)."""
        return 1 + self.patches_per_step

    @property
    def temporal_stride(self) -> int:
        """Frames per time step: tubelet_size in 3D, 1 in 2D."""
        return self.tubelet_size if self.use_3d_patch_embed else 1

    def num_steps(self, num_frames: Optional[int] = None) -> int:
        """T': time steps for a clip of ``num_frames`` (default ``self.num_frames``); raises if not divisible."""
        frames = self.num_frames if num_frames is None else num_frames
        if frames is None:
            raise ValueError("num_frames is None: pass the clip length")
        check_divisible("num_frames", frames, "tubelet_size", self.temporal_stride)
        return frames // self.temporal_stride

    def num_patch_tokens(self, num_frames: Optional[int] = None) -> int:
        """T' * N patch tokens per clip (CLS slots excluded): 3,136 / 1,568 / 784 for 16x224x224, t = 1/2/4."""
        return self.num_steps(num_frames) * self.patches_per_step

    @classmethod
    def from_checkpoint_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Rebuild a saved config exactly: environment variables are ignored (model_validate skips settings
        sources), so an ``APPCONFIG__*`` variable cannot change a checkpoint's architecture. A saved config
        holds every field, so a missing one predates it: it gets the value that reproduces the older model."""
        return cls.model_validate({**FIELDS_ADDED_LATER, **values})


# Fields added after checkpoints were first written, with the value that means "not present" in those.
FIELDS_ADDED_LATER: dict[str, Any] = {"temporal_embed": False, "motion_channels": False, "lmi_position": "end"}


def _divisors_near(n: int, near: int) -> str:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    divisors.sort(key=lambda d: abs(d - near))
    return ", ".join(str(d) for d in sorted(divisors[:3]))
