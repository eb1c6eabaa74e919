"""Triton backward kernels (grad_weight, grad_video, row sums for grad_bias / grad_pos / grad_cls) vs the float64
reference, in Triton's interpreter on CPU (or on a GPU when present), and autograd through the op."""

from __future__ import annotations

import pytest
import torch

import lsvit_kernels as lk
from lsvit_kernels import registry
from lsvit_kernels.backends import reference

triton_backend = pytest.importorskip("lsvit_kernels.backends.triton_patch_embed")
from lsvit_kernels.backends.triton_tuning import KernelConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    registry.why_unavailable("triton", DEVICE) is not None,
    reason=f"triton backend cannot run on {DEVICE}: {registry.why_unavailable('triton', DEVICE)}",
)
NAMES = ("grad_video", "grad_weight", "grad_bias", "grad_pos", "grad_cls")


def make_case(dtype, layout="BTCHW", strided=False, shape=(2, 4, 3, 12, 20), e=200, tubelet=(2, 3, 5), cls=True):
    """Logical (B, T, C, H, W) video (a permuted / strided view when asked), weight and grid."""
    b, t, c, h, w = shape
    wide = w * 2 if strided else w
    dims = (b, t, c, h, wide) if layout == "BTCHW" else (b, c, t, h, wide)
    video = (
        torch.randn(dims, device=DEVICE).to(dtype)
        if dtype != torch.uint8
        else torch.randint(0, 256, dims, dtype=torch.uint8, device=DEVICE)
    )
    video = video[..., ::2] if strided else video
    if layout == "BCTHW":
        video = video.permute(0, 2, 1, 3, 4)
    wdtype = torch.float32 if dtype == torch.uint8 else dtype
    weight = (torch.randn(e, c, *tubelet, device=DEVICE) * 0.2).to(wdtype)
    grid = lk.patch_grid(video.shape, weight.shape, has_cls=cls)
    return video, weight, grid


def check_grads(got, ref64, same_dtype, dtype, mask):
    for name, g, r, s, m in zip(NAMES[: len(mask)], got, ref64, same_dtype, mask, strict=True):
        if not m:
            assert g is None, f"{name} computed though output_mask is False"
            continue
        assert g is not None and g.shape == r.shape, name
        assert not g.isnan().any(), f"{name}: NaN"
        err = (g.double() - r).abs().max().item()
        scale = r.abs().max().item()
        if dtype in (torch.float32, torch.uint8):
            assert err <= 1e-5 * scale + 1e-6, f"{name}: err {err} scale {scale}"
        else:
            bound = 2 * (s.double() - r).abs().max().item() + 2e-3 * scale
            assert err <= bound, f"{name}: err {err} > {bound} (plain torch {dtype} err x2 + eps)"


@pytest.mark.parametrize(
    "dtype,layout,strided,pos,cls",
    [
        (torch.float32, "BTCHW", False, "broadcast", True),
        (torch.float32, "BCTHW", True, "per_token", True),
        (torch.float32, "BTCHW", True, "per_token", False),
        (torch.bfloat16, "BCTHW", False, "broadcast", True),
        (torch.bfloat16, "BTCHW", True, "per_token", True),
        (torch.float16, "BCTHW", True, "broadcast", False),
    ],
)
def test_backward_matches_float64_reference(dtype, layout, strided, pos, cls):
    video, weight, grid = make_case(dtype, layout, strided, cls=cls)
    pos_rows = grid.tokens_per_step * (grid.steps if pos == "per_token" else 1)
    grad_tokens = torch.randn(grid.output_shape, device=DEVICE).to(dtype)
    mask = [True, True, True, True, cls]
    args = (pos_rows, True, cls, mask)
    got = triton_backend.backward(grad_tokens, video, weight, *args)
    ref64 = reference.backward(grad_tokens.double(), video.double(), weight.double(), *args)
    same = reference.backward(grad_tokens, video, weight, *args)
    check_grads(got, ref64, same, dtype, mask)
    assert got[0].dtype == video.dtype and got[1].dtype == weight.dtype


@pytest.mark.parametrize(
    "mask",
    [
        [True, False, False, False, False],
        [False, True, False, False, False],
        [False, False, True, False, True],  # bias and CLS without pos: row sums broadcast over time
        [False, False, False, True, False],
    ],
    ids=lambda m: "-".join(n for n, x in zip(NAMES, m, strict=True) if x),
)
def test_output_mask_computes_only_what_is_asked(mask):
    video, weight, grid = make_case(torch.float32, "BCTHW", strided=True, shape=(1, 2, 3, 8, 12), tubelet=(2, 4, 4))
    pos_rows = grid.steps * grid.tokens_per_step  # T' = 1: per-token == broadcast rows; broadcast path taken
    grad_tokens = torch.randn(grid.output_shape, device=DEVICE)
    args = (pos_rows, True, True, mask)
    got = triton_backend.backward(grad_tokens, video, weight, *args)
    ref64 = reference.backward(grad_tokens.double(), video.double(), weight.double(), *args)
    check_grads(got, ref64, ref64, torch.float32, mask)


def test_uint8_video_grad_weight():
    """uint8 video (no video gradient): grad_weight casts the pixels in registers like the forward."""
    video, weight, grid = make_case(torch.uint8, "BCTHW")
    grad_tokens = torch.randn(grid.output_shape, device=DEVICE)
    mask = [False, True, True, True, True]
    args = (grid.tokens_per_step, True, True, mask)
    got = triton_backend.backward(grad_tokens, video, weight, *args)
    ref64 = reference.backward(grad_tokens.double(), video.double(), weight.double(), *args)
    check_grads(got, ref64, ref64, torch.uint8, mask)


RAGGED = ((3, 2, 3, 9, 20), 200, (2, 3, 5))  # 36 tokens, E = 200, K = 90: every edge of a 16 x 16 tile ragged
WHOLE = ((3, 2, 3, 12, 20), 192, (2, 4, 4))  # 45 tokens, E = 192, K = 96: whole tiles of E and K


@pytest.mark.parametrize("splits, programs, case", [(1, 1, RAGGED), (3, 7, RAGGED), (3, 50, RAGGED), (2, 50, WHOLE)])
def test_split_reductions_and_explicit_configs(splits, programs, case):
    """grad_weight's stream-K grid and the row sums' splits give the same sums: 3 token steps of 16 (the last
    ragged) x tiles of 16 x 16; one program walking every tile, 7 programs each spanning tiles, or 50 programs
    of 4 or 5 steps (tiles shared by one or two programs, the unfilled slot zeroed); E and K ragged or whole
    tiles (the loads in the loop masked on tokens only)."""
    shape, e, tubelet = case
    video, weight, grid = make_case(torch.float32, "BTCHW", strided=True, shape=shape, e=e, tubelet=tubelet)
    grad_tokens = torch.randn(grid.output_shape, device=DEVICE)
    cfg = KernelConfig(16, 16, 16, group_m=3, num_warps=1, num_stages=1)
    got = triton_backend.grad_weight(grad_tokens, video, weight, True, config=cfg, programs=programs)
    ref = reference.backward(grad_tokens.double(), video.double(), weight.double(), 0, False, True, [0, 1, 0, 0, 0])
    assert (got.double() - ref[1]).abs().max() <= 1e-5 * ref[1].abs().max()

    groups, rows = grid.batch * grid.steps, grid.tokens_per_step
    sums = triton_backend.grad_row_sums(grad_tokens, groups, rows, KernelConfig(8, 64, 1, 1, 1, 1), splits=splits)
    expected = grad_tokens.double().reshape(groups, rows, -1).sum(0)
    assert (sums.double() - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_grad_video_writes_every_element_of_a_poisoned_buffer():
    video, weight, grid = make_case(torch.bfloat16, "BCTHW", strided=True)
    grad_tokens = torch.randn(grid.output_shape, device=DEVICE).to(torch.bfloat16)
    out = torch.full(video.shape, float("nan"), dtype=video.dtype, device=DEVICE)
    cfg = KernelConfig(16, 32, 64, group_m=2, num_warps=1, num_stages=1)
    triton_backend.grad_video(grad_tokens, video, weight, True, config=cfg, out=out)
    ref64 = reference.backward(grad_tokens.double(), video.double(), weight.double(), 0, False, True, [1, 0, 0, 0, 0])
    same = reference.backward(grad_tokens, video, weight, 0, False, True, [1, 0, 0, 0, 0])
    assert not out.isnan().any()
    check_grads((out,), ref64[:1], same[:1], torch.bfloat16, [True])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autograd_through_the_op_uses_the_triton_backward(dtype):
    video, weight, grid = make_case(dtype, "BCTHW")
    video = video.permute(0, 2, 1, 3, 4).contiguous()  # (B, C, T, H, W) leaf
    e = weight.shape[0]
    leaves = {
        "video": video.requires_grad_(),
        "weight": weight.requires_grad_(),
        "bias": torch.randn(e, device=DEVICE).to(dtype).requires_grad_(),
        "pos_embed": torch.randn(grid.tokens_per_step, e, device=DEVICE).to(dtype).requires_grad_(),
        "cls_token": torch.randn(e, device=DEVICE).to(dtype).requires_grad_(),
    }
    upstream = torch.randn(grid.output_shape, device=DEVICE).to(dtype)

    def grads(backend, tensors):
        out = lk.patch_embed(
            tensors["video"],
            tensors["weight"],
            tensors["bias"],
            tensors["pos_embed"],
            cls_token=tensors["cls_token"],
            layout="BCTHW",
            backend=backend,
        )
        return torch.autograd.grad(out, list(tensors.values()), upstream.to(out.dtype))

    got = grads("triton", leaves)
    assert lk.last_backend() == "triton"
    leaves64 = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    ref64 = grads("reference", leaves64)
    same = grads("reference", leaves)
    check_grads(got, ref64, same, dtype, [True] * 5)


def test_int64_offset_path(monkeypatch):
    """The WIDE (int64 offsets) variants of grad_weight and grad_video, forced on a small video."""
    monkeypatch.setattr(triton_backend, "_wide", lambda *tensors: True)
    video, weight, grid = make_case(torch.float32, "BCTHW", strided=True)
    grad_tokens = torch.randn(grid.output_shape, device=DEVICE)
    mask = [True, True, False, False, False]
    got = triton_backend.backward(grad_tokens, video, weight, 0, False, True, mask)
    ref64 = reference.backward(grad_tokens.double(), video.double(), weight.double(), 0, False, True, mask)
    check_grads(got, ref64, ref64, torch.float32, mask)
