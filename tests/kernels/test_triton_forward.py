"""Triton forward kernel vs the float64 reference, run in Triton's interpreter on CPU (or on a GPU when present).

Shapes are small and odd on purpose: E=200 and K=90 are not multiples of any block size, H != W, T'=1, B=1, and
the explicit configs make tiles cross token, time-step and batch boundaries.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import lsvit_kernels as lk
from lsvit_kernels import registry

triton_backend = pytest.importorskip("lsvit_kernels.backends.triton_patch_embed")
from lsvit_kernels.backends import triton_tuning  # noqa: E402
from lsvit_kernels.backends.triton_tuning import KernelConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    registry.why_unavailable("triton", DEVICE) is not None,
    reason=f"triton backend cannot run on {DEVICE}: {registry.why_unavailable('triton', DEVICE)}",
)

# name: (B, T, C, H, W, E, (t, ph, pw)); t = 0 means a Conv2d weight on a 4D image
SHAPES = {
    "tubelet": (2, 4, 3, 12, 20, 200, (2, 3, 5)),  # K = 90, N = 16, T' = 2
    "one_step_batch1": (1, 2, 3, 8, 12, 200, (2, 4, 4)),  # T' = 1, B = 1, K = 96
    "image2d": (2, 1, 3, 8, 20, 72, (0, 4, 5)),  # Conv2d weight, 4D (B, C, H, W) input
}


def make_video(shape, layout: str, dtype: torch.dtype, strided: bool) -> torch.Tensor:
    """A random video in ``layout``; ``strided`` makes it a non-contiguous view (every other pixel along W)."""
    b, t, c, h, w = shape
    dims = (b, t, c, h, w * (2 if strided else 1)) if layout == "BTCHW" else (b, c, t, h, w * (2 if strided else 1))
    if dtype == torch.uint8:
        video = torch.randint(0, 256, dims, dtype=torch.uint8, device=DEVICE)
    else:
        video = torch.randn(dims, device=DEVICE).to(dtype)
    return video[..., ::2] if strided else video


def make_params(name: str, dtype: torch.dtype, bias: bool, pos: str, cls: bool):
    b, t, c, h, w, e, (pt, ph, pw) = SHAPES[name]
    weight_shape = (e, c, ph, pw) if pt == 0 else (e, c, pt, ph, pw)
    weight = torch.randn(weight_shape, device=DEVICE).to(dtype) * 0.2
    grid = lk.patch_grid((b, t, c, h, w), weight_shape, has_cls=cls)
    pos_rows = {"none": 0, "broadcast": grid.tokens_per_step, "per_token": grid.steps * grid.tokens_per_step}[pos]
    return {
        "weight": weight,
        "bias": torch.randn(e, device=DEVICE).to(dtype) if bias else None,
        "pos_embed": torch.randn(pos_rows, e, device=DEVICE).to(dtype) if pos_rows else None,
        "cls_token": torch.randn(e, device=DEVICE).to(dtype) if cls else None,
    }


def as64(t):
    return None if t is None else t.double()


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref).abs().max().item()


def check_close(got: torch.Tensor, ref64: torch.Tensor, torch_same_dtype: torch.Tensor, dtype: torch.dtype):
    """fp32: tight; fp16/bf16: at most 2x plain PyTorch's error in that dtype plus a small epsilon."""
    assert not got.isnan().any(), "unwritten (NaN) elements"
    scale = ref64.abs().max().item()
    if dtype == torch.float32:
        assert max_err(got, ref64) <= 1e-5 * scale + 1e-6
    else:
        bound = 2 * max_err(torch_same_dtype, ref64) + 1e-3 * scale
        assert max_err(got, ref64) <= bound


# (shape, layout, strided, dtype, bias, pos, cls): a covering set rather than the full product
CASES = [
    ("tubelet", "BTCHW", False, torch.float32, True, "broadcast", True),
    ("tubelet", "BCTHW", False, torch.float32, True, "per_token", True),
    ("tubelet", "BCTHW", True, torch.float32, False, "none", False),
    ("tubelet", "BTCHW", True, torch.float16, True, "per_token", False),
    ("tubelet", "BCTHW", False, torch.bfloat16, True, "broadcast", True),
    ("tubelet", "BTCHW", False, torch.bfloat16, False, "per_token", True),
    ("one_step_batch1", "BTCHW", False, torch.float32, True, "broadcast", True),
    ("one_step_batch1", "BCTHW", True, torch.bfloat16, True, "per_token", True),
    ("one_step_batch1", "BTCHW", False, torch.float16, False, "none", True),
    ("image2d", "BTCHW", False, torch.float32, True, "broadcast", True),
    ("image2d", "BTCHW", True, torch.bfloat16, True, "broadcast", False),
]


@needs_triton
@pytest.mark.parametrize("name,layout,strided,dtype,bias,pos,cls", CASES)
def test_forward_matches_float64_reference(name, layout, strided, dtype, bias, pos, cls):
    b, t, c, h, w, e, (pt, _, _) = SHAPES[name]
    params = make_params(name, dtype, bias, pos, cls)
    if pt == 0:  # image: 4D (B, C, H, W)
        video = make_video((b, 1, c, h, w), "BTCHW", dtype, strided)[:, 0]
        layout = "BTCHW"
    else:
        video = make_video((b, t, c, h, w), layout, dtype, strided)
    got = lk.patch_embed(video, **params, layout=layout, backend="triton")
    assert lk.last_backend() == "triton"
    ref64 = lk.patch_embed(
        video.double(), **{k: as64(v) for k, v in params.items()}, layout=layout, backend="reference"
    )
    torch_same = lk.patch_embed(video, **params, layout=layout, backend="reference")
    assert got.shape == ref64.shape and got.dtype == dtype and got.is_contiguous()
    check_close(got, ref64, torch_same, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["BTCHW", "BCTHW"])
def test_uint8_video_matches_normalize_then_embed(dtype, layout):
    """Raw uint8 pixels with mean/std folded into the weight == (x / 255 - mean) / std embedded in float64."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    params = make_params("tubelet", dtype, True, "broadcast", True)
    video = make_video(SHAPES["tubelet"][:5], layout, torch.uint8, strided=layout == "BCTHW")
    got = lk.patch_embed(video, **params, mean=mean, std=std, layout=layout, backend="triton")

    shape = (1, 3, 1, 1, 1) if layout == "BCTHW" else (1, 1, 3, 1, 1)
    m64 = torch.tensor(mean, dtype=torch.float64, device=DEVICE).view(shape)
    s64 = torch.tensor(std, dtype=torch.float64, device=DEVICE).view(shape)
    normalized = (video.double() / 255 - m64) / s64
    ref64 = lk.patch_embed(normalized, **{k: as64(v) for k, v in params.items()}, layout=layout, backend="reference")
    torch_same = lk.patch_embed(normalized.to(dtype), **params, layout=layout, backend="reference")
    if dtype == torch.float32:
        assert max_err(got, ref64) <= 1e-4 * ref64.abs().max().item()  # the fold rounds W to float32
    else:
        check_close(got, ref64, torch_same, dtype)


@needs_triton
@pytest.mark.parametrize(
    "config",
    [
        KernelConfig(16, 16, 16, group_m=3, num_warps=1, num_stages=1),  # K = 90 over 6 steps, ragged groups
        KernelConfig(64, 64, 128, group_m=1, num_warps=1, num_stages=1),  # BLOCK_K > K, tile > all tokens
        KernelConfig(32, 128, 32, group_m=8, num_warps=1, num_stages=1),
    ],
    ids=str,
)
def test_forward_explicit_configs_write_every_element(config):
    """Any block sizes give the reference; a NaN-poisoned output buffer is fully overwritten (CLS rows too)."""
    params = make_params("tubelet", torch.float32, True, "per_token", True)
    video = make_video(SHAPES["tubelet"][:5], "BTCHW", torch.float32, strided=True)
    grid = lk.patch_grid(video.shape, params["weight"].shape, has_cls=True)
    out = torch.full(grid.output_shape, float("nan"), device=DEVICE)
    triton_backend.forward(video, **params, config=config, out=out)
    ref64 = triton_backend_reference(video, params)
    assert not out.isnan().any()
    assert max_err(out, ref64) <= 1e-5 * ref64.abs().max().item()


def triton_backend_reference(video, params):
    from lsvit_kernels.backends import reference

    return reference.forward(video.double(), *(as64(params[k]) for k in ("weight", "bias", "pos_embed", "cls_token")))


@needs_triton
def test_zero_batch_and_errors():
    params = make_params("tubelet", torch.float32, True, "none", False)
    empty = torch.randn(0, 4, 3, 12, 20, device=DEVICE)
    assert lk.patch_embed(empty, params["weight"], backend="triton").shape == (0, 2, 16, 200)
    with pytest.raises(TypeError, match="supports"):
        triton_backend.forward(torch.randn(1, 4, 3, 12, 20).double(), params["weight"].double(), *[None] * 3)
    with pytest.raises(ValueError, match="out must be"):
        video = make_video(SHAPES["tubelet"][:5], "BTCHW", torch.float32, False)
        triton_backend.forward(video, params["weight"], None, None, None, out=torch.empty(3, device=DEVICE))


def test_registration_and_selection():
    backend = registry.get_backend("triton")
    assert "cuda" in backend.devices
    assert registry.resolve("cpu").name != "triton", "the automatic CPU order must not pick triton"
    if triton_backend.INTERPRET:
        assert "cpu" in backend.devices and registry.why_unavailable("triton", "cpu") is None
        assert "TRITON_INTERPRET" in registry.why_unavailable("triton", "cuda")
    else:
        assert "cpu" not in backend.devices


def test_imports_without_triton():
    """With triton unimportable the package still imports and the backend says why it cannot run."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import lsvit_kernels as lk\n"
        "from lsvit_kernels import registry\n"
        "print(registry.why_unavailable('triton', 'cuda'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert "triton is not importable" in result.stdout


def test_roofline_model_for_the_reference_shape():
    """The numbers docs/triton.md quotes: B=32, T=16, 224x224, tubelet 2x16x16, E=768, bf16, CLS slot."""
    grid = lk.patch_grid((32, 16, 3, 224, 224), (768, 3, 2, 16, 16), has_cls=True)
    cost = triton_tuning.kernel_cost("forward", grid, torch.bfloat16)
    assert cost.flops == grid.flops() == 2 * 32 * 1568 * 1536 * 768
    video_bytes = 32 * 16 * 3 * 224 * 224 * 2
    assert cost.bytes_written == 32 * 8 * 197 * 768 * 2
    assert video_bytes < cost.bytes_read < video_bytes + 4 * 2**20  # weight + pos + bias + cls are ~2.7 MB
    floor = triton_tuning.roofline_floor_us(grid, torch.bfloat16)
    assert floor == pytest.approx(cost.flops / 790e12 * 1e6)  # compute-bound at 790 TFLOP/s
    assert 145 < floor < 155
    uint8_cost = triton_tuning.kernel_cost("forward", grid, torch.bfloat16, video_dtype=torch.uint8)
    assert cost.bytes_read - uint8_cost.bytes_read == video_bytes // 2
    assert triton_tuning.roofline_floor_us(grid, torch.bfloat16, "backward") > 2 * floor


@needs_triton
def test_int64_offset_path(monkeypatch):
    """The WIDE (int64 offsets) variant, taken by videos past 2^31 elements, forced here on a small video."""
    monkeypatch.setattr(triton_backend, "_wide", lambda *tensors: True)
    params = make_params("tubelet", torch.float16, True, "per_token", True)
    video = make_video(SHAPES["tubelet"][:5], "BCTHW", torch.float16, strided=True).permute(0, 2, 1, 3, 4)
    got = triton_backend.forward(video, **params)
    ref64 = triton_backend_reference(video, params)
    same = lk.patch_embed(video, **params, backend="reference")
    check_close(got, ref64, same, torch.float16)
