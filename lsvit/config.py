"""Model configuration: pydantic-settings, set in code or from ``APPCONFIG__<FIELD>`` environment variables.

Every field is validated at construction and on assignment (``validate_assignment=True``), and each error names
the field and the fix. Cross-field rules (image size vs patch size, heads vs embed dim) are checked on every
assignment too (a rejected assignment leaves the config unchanged), so change an interlocked pair in an order
where each step is valid, or build a new config: ``ModelConfig(**{**config.model_dump(), "embed_dim": 96,
"num_heads": 6})`` (``model_copy(update=...)`` would skip validation).
The frame count vs tubelet rule is checked by the model, which knows the clip length it is built for.
An ``APPCONFIG__`` variable that names no field is an error (a misspelling would otherwise be ignored silently).
"""

from __future__ import annotations

import difflib
import math
import os
from typing import Any, Literal, Optional

from pydantic import ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from lsvit_kernels import backend_names
from lsvit_kernels.geometry import check_divisible

ENV_PREFIX = "APPCONFIG__"

# Elements a tensor may hold: its size in bytes, even in float64, must fit the int64 PyTorch computes it in.
MAX_TENSOR_ELEMENTS = 2**60


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
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"mlp_ratio={value} must be a finite number > 0 (ViTs use 4.0)")
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
        if self.mlp_width < 1:
            raise ValueError(
                f"mlp_ratio={self.mlp_ratio} gives an MLP of width int(embed_dim * mlp_ratio) = {self.mlp_width}; "
                f"embed_dim * mlp_ratio must be at least 1 (ViTs use mlp_ratio=4.0)"
            )
        self._check_tensor_sizes()
        return self

    def _check_tensor_sizes(self) -> None:
        """Every tensor the model and one clip need must be indexable; checked before anything is allocated."""
        frames = self.num_frames or 1
        tensors = {
            "the positional table (1 + N) x embed_dim": self.tokens_per_step * self.embed_dim,
            "one clip num_frames x in_channels x image_size^2": frames * self.in_channels * self.image_size**2,
            "one clip's tokens": -(-frames // self.temporal_stride) * self.tokens_per_step * self.embed_dim,
            "the patch projection": self.embed_dim * self.in_channels * self.temporal_stride * self.patch_size**2,
            "the MLP weight embed_dim x width": self.embed_dim * self.mlp_width,
        }
        for what, elements in tensors.items():
            if elements > MAX_TENSOR_ELEMENTS:
                raise ValueError(
                    f"image_size={self.image_size}, patch_size={self.patch_size}, embed_dim={self.embed_dim}, "
                    f"mlp_ratio={self.mlp_ratio}, num_frames={self.num_frames}: {what} would hold {elements:.3g} "
                    f"elements, more than a tensor can index ({MAX_TENSOR_ELEMENTS:.3g}); use smaller sizes "
                    f"(ViT-B/16: image_size=224, patch_size=16, embed_dim=768, mlp_ratio=4.0)"
                )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' sources, plus a check that every ``APPCONFIG__`` variable names a field."""
        return init_settings, _KnownEnvironmentNames(settings_cls), env_settings, dotenv_settings, file_secret_settings

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
    def mlp_width(self) -> int:
        """Hidden width of each block's MLP: int(embed_dim * mlp_ratio)."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def temporal_stride(self) -> int:
        """Frames per time step: tubelet_size in 3D, 1 in 2D."""
        return self.tubelet_size if self.use_3d_patch_embed else 1

    def num_steps(self, num_frames: Optional[int] = None) -> int:
        """T': time steps for a clip of ``num_frames`` (default ``self.num_frames``); raises if not divisible."""
        frames = self.num_frames if num_frames is None else num_frames
        if frames is None:
            raise ValueError("num_frames is None: pass the clip length")
        check_divisible("num_frames", frames, "tubelet_size", self.temporal_stride, alternative="tubelet_size=1")
        return frames // self.temporal_stride

    def num_patch_tokens(self, num_frames: Optional[int] = None) -> int:
        """T' * N patch tokens per clip (CLS slots excluded): 3,136 / 1,568 / 784 for 16x224x224, t = 1/2/4."""
        return self.num_steps(num_frames) * self.patches_per_step

    @classmethod
    def from_checkpoint_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Rebuild a saved config exactly: every field is given explicitly and explicit values win over the
        environment, so an ``APPCONFIG__*`` variable cannot change a checkpoint's architecture. A saved config
        holds every field, so a missing one predates it: it gets the value that reproduces the older model."""
        return cls.model_validate({**FIELDS_ADDED_LATER, **values})


# Fields added after checkpoints were first written, with the value that means "not present" in those.
FIELDS_ADDED_LATER: dict[str, Any] = {"temporal_embed": False, "motion_channels": False, "lmi_position": "end"}


def _divisors_near(n: int, near: int) -> str:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    divisors.sort(key=lambda d: abs(d - near))
    return ", ".join(str(d) for d in sorted(divisors[:3]))


class _KnownEnvironmentNames(PydanticBaseSettingsSource):
    """Reads nothing; raises when an ``APPCONFIG__`` variable names no field, with the closest field names.

    pydantic-settings reads only the variables that match a field, so a misspelt one would be silently ignored.
    Names match case-insensitively, as pydantic-settings matches them.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        check_environment_names(os.environ, self.settings_cls.model_fields)
        return {}


def check_environment_names(environ, fields) -> None:
    """ValueError naming each ``APPCONFIG__`` variable in ``environ`` that is not one of ``fields``."""
    valid = sorted(name.upper() for name in fields)
    prefix = len(ENV_PREFIX)
    unknown = sorted(
        name for name in environ if name.upper().startswith(ENV_PREFIX) and name[prefix:].upper() not in valid
    )
    if not unknown:
        return
    problems = []
    for name in unknown:
        close = [ENV_PREFIX + c for c in difflib.get_close_matches(name[prefix:].upper(), valid, n=3, cutoff=0.6)]
        every = ", ".join(ENV_PREFIX + v for v in valid)
        hint = f"did you mean {' or '.join(close)}?" if close else f"valid names: {every}"
        problems.append(f"{name} ({hint})")
    raise ValueError(
        f"{'; '.join(problems)}: not a model setting. Fix the name or unset the variable "
        f"(every {ENV_PREFIX}<FIELD> variable sets a ModelConfig field)"
    )
