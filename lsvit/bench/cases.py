"""Benchmark cases: one video geometry x dtype x mode, and the case lists the suite runs.

Three ways to pick cases (see ``select_cases``):
- no grid flag: the curated default list for the device (CPU: a representative subset that fits the ~5 minute
  budget on 2 cores; GPU: a wider grid), or the tiny ``--quick`` list;
- ``--full``: the full cross product of every axis value;
- any axis flag (``--sizes``, ``--frames``, ...): the cross product of the given values, the other axes at their
  single default value (``--full`` + flags: the full values for the axes not given).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from lsvit_kernels import geometry

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("fwd", "fwdbwd")  # forward only; forward + backward (training: no gradient for the video)

# Pixel normalization used for uint8 cases (ImageNet statistics, in [0, 1] units as torchvision's).
UINT8_MEAN = (0.485, 0.456, 0.406)
UINT8_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Case:
    """One benchmark geometry. The video is ``(batch, frames, channels, size, size)``, BTCHW, contiguous."""

    batch: int
    frames: int
    size: int
    tubelet: int
    embed_dim: int = 768
    dtype: str = "float32"  # compute dtype: weight, bias, pos, cls and output
    uint8_input: bool = False  # raw uint8 pixels in, normalization folded (ours) or applied first (baselines)
    mode: str = "fwd"
    patch: int = 16
    channels: int = 3
    tags: tuple[str, ...] = field(default=(), compare=False)  # e.g. "headline" for the GPU target shape

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not benchmarked; use one of {sorted(DTYPES)}")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is unknown; use one of {MODES}")
        self.grid()  # raises the geometry's error (e.g. frames not divisible by the tubelet) early

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_3d(self) -> bool:
        return self.tubelet > 1

    def grid(self) -> geometry.PatchGrid:
        """The op's patch grid with a CLS slot per time step (every contestant produces the same tokens)."""
        video = (self.batch, self.frames, self.channels, self.size, self.size)
        weight = (self.embed_dim, self.channels, self.tubelet, self.patch, self.patch)
        return geometry.patch_grid(video, weight, has_cls=True, pos_rows=1 + (self.size // self.patch) ** 2)

    def flops(self) -> int:
        """Useful FLOPs: the projection GEMM forward; + the weight-gradient GEMM for fwdbwd (no video grad)."""
        fwd = self.grid().flops()
        return fwd * 2 if self.mode == "fwdbwd" else fwd

    def min_bytes(self) -> int:
        """Bytes a perfectly fused kernel must move: read video, weight, bias, pos; write tokens.

        fwdbwd adds reading the token gradient and the video again and writing the weight/bias/pos/cls grads.
        """
        g = self.grid()
        elt = torch.finfo(self.torch_dtype).bits // 8
        video = g.batch * g.frames * g.channels * g.height * g.width * (1 if self.uint8_input else elt)
        params = (g.embed_dim * g.patch_dim + g.embed_dim + g.tokens_per_step * g.embed_dim + g.embed_dim) * elt
        tokens = g.batch * g.steps * g.tokens_per_step * g.embed_dim * elt
        fwd = video + params + tokens
        return fwd + tokens + video + params if self.mode == "fwdbwd" else fwd

    @property
    def kind(self) -> str:
        return "2D" if self.tubelet == 1 else f"3D t={self.tubelet}"

    @property
    def label(self) -> str:
        inp = "u8->" if self.uint8_input else ""
        return (
            f"{self.kind} {self.size}px T={self.frames} B={self.batch} E={self.embed_dim} {inp}{self.dtype} {self.mode}"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tags"] = list(self.tags)
        d["label"] = self.label
        d["tokens_per_clip"] = self.grid().num_patches
        d["flops"] = self.flops()
        d["min_bytes"] = self.min_bytes()
        return d


@dataclass
class Axes:
    """Values of each axis; the cross product is the case list."""

    sizes: list[int]
    frames: list[int]
    tubelets: list[int]
    batches: list[int]
    embed_dims: list[int]
    dtypes: list[str]
    modes: list[str]
    uint8: list[bool]


SINGLE = Axes([224], [16], [1, 2, 4], [2], [768], ["float32"], ["fwd"], [False])
FULL_CPU = Axes(
    [112, 224], [8, 16, 32], [1, 2, 4], [1, 2, 4], [192, 768], ["float32", "bfloat16"], list(MODES), [False]
)
FULL_GPU = Axes(
    [112, 224],
    [8, 16, 32],
    [1, 2, 4],
    [8, 32],
    [384, 768],
    ["float32", "bfloat16", "float16"],
    list(MODES),
    [False, True],
)


def cross_product(axes: Axes) -> list[Case]:
    cases = []
    for size, frames, tub, batch, e, dt, mode, u8 in itertools.product(
        axes.sizes, axes.frames, axes.tubelets, axes.batches, axes.embed_dims, axes.dtypes, axes.modes, axes.uint8
    ):
        if frames % tub:
            continue
        cases.append(Case(batch, frames, size, tub, e, dt, u8, mode))
    return cases


def headline_cases() -> list[Case]:
    """The GPU target shape: bf16, B=32, T=16, 224 px, E=768, tubelet 2, forward and forward + backward."""
    return [Case(32, 16, 224, 2, 768, "bfloat16", False, mode, tags=("headline",)) for mode in MODES]


def default_cpu_cases() -> list[Case]:
    """A representative subset sized for ~5 minutes on a 2-core CPU (the full grid is ``--full``)."""
    c = Case
    return [
        # 2D vs tubelets at the common training geometry
        c(2, 16, 224, 1),
        c(2, 16, 224, 2),
        c(2, 16, 224, 4),
        # resolution, frame count and batch size
        c(4, 8, 112, 1),
        c(2, 32, 112, 2),
        c(1, 16, 112, 2),
        c(8, 16, 112, 2),
        # small embedding
        c(2, 16, 224, 2, embed_dim=192),
        # bfloat16
        c(2, 16, 224, 1, dtype="bfloat16"),
        c(2, 16, 224, 2, dtype="bfloat16"),
        # forward + backward (training)
        c(2, 16, 224, 1, mode="fwdbwd"),
        c(2, 16, 224, 2, mode="fwdbwd"),
        c(2, 16, 224, 2, dtype="bfloat16", mode="fwdbwd"),
    ]


def default_gpu_cases() -> list[Case]:
    """A wider grid for a GPU: every tubelet at both resolutions and all dtypes, uint8 input, fwd + bwd."""
    cases: list[Case] = []
    for tub in (1, 2, 4):
        for size in (112, 224):
            cases.append(Case(32, 16, size, tub, 768, "bfloat16"))
        cases.append(Case(32, 16, 224, tub, 768, "float32"))
        cases.append(Case(32, 16, 224, tub, 768, "float16"))
        cases.append(Case(32, 16, 224, tub, 768, "bfloat16", uint8_input=True))
        cases.append(Case(32, 16, 224, tub, 768, "bfloat16", mode="fwdbwd"))
    for frames in (8, 32):
        cases.append(Case(32, frames, 224, 2, 768, "bfloat16"))
    for batch in (8, 64):
        cases.append(Case(batch, 16, 224, 2, 768, "bfloat16"))
    cases.append(Case(32, 16, 224, 2, 384, "bfloat16"))
    cases.append(Case(32, 16, 224, 2, 768, "float32", mode="fwdbwd"))
    cases += headline_cases()
    return _dedupe(cases)


def quick_cases() -> list[Case]:
    """Tiny sizes for the end-to-end smoke test: seconds, not minutes."""
    return [
        Case(1, 4, 32, 1, 32),
        Case(1, 4, 32, 2, 32),
        Case(1, 4, 32, 2, 32, mode="fwdbwd"),
        Case(1, 4, 32, 2, 32, dtype="bfloat16"),
        Case(1, 4, 32, 2, 32, uint8_input=True),
    ]


def _dedupe(cases: list[Case]) -> list[Case]:
    seen: dict[Case, Case] = {}
    for case in cases:
        if case in seen:
            tags = tuple(dict.fromkeys(seen[case].tags + case.tags))
            seen[case] = Case(**{**asdict(case), "tags": tags})
        else:
            seen[case] = case
    return list(seen.values())


def select_cases(
    device: str,
    *,
    quick: bool = False,
    full: bool = False,
    sizes: Optional[list[int]] = None,
    frames: Optional[list[int]] = None,
    tubelets: Optional[list[int]] = None,
    batches: Optional[list[int]] = None,
    embed_dims: Optional[list[int]] = None,
    dtypes: Optional[list[str]] = None,
    modes: Optional[list[str]] = None,
    uint8: Optional[list[bool]] = None,
    headline: bool = False,
) -> list[Case]:
    """The case list for the flags (see the module docstring)."""
    given = {
        "sizes": sizes,
        "frames": frames,
        "tubelets": tubelets,
        "batches": batches,
        "embed_dims": embed_dims,
        "dtypes": dtypes,
        "modes": modes,
        "uint8": uint8,
    }
    for name in ("dtypes",):
        for value in given[name] or []:
            if value not in DTYPES:
                raise ValueError(f"--dtype {value!r} is not benchmarked; use one of {sorted(DTYPES)}")
    if any(v is not None for v in given.values()) or full:
        base = (FULL_GPU if device == "cuda" else FULL_CPU) if full else SINGLE
        axes = Axes(**{k: (v if v is not None else getattr(base, k)) for k, v in given.items()})
        cases = cross_product(axes)
    elif quick:
        cases = quick_cases()
    else:
        cases = default_gpu_cases() if device == "cuda" else default_cpu_cases()
    if headline:
        cases = _dedupe(cases + headline_cases())
    if not cases:
        raise ValueError("no benchmark case matches these flags (frames must be divisible by the tubelet)")
    return cases
