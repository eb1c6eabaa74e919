"""Triton backend on a real GPU at real sizes (B=2..8, 16 frames, 224x224, tubelet 2x16x16, E=768): the same float64
comparisons as the interpreter tests, peak memory (no patch matrix in forward or backward), int64 offsets."""

from __future__ import annotations

import pytest
import torch

import lsvit_kernels as lk
from lsvit_kernels.backends import reference

pytestmark = pytest.mark.gpu
E, TUBELET = 768, (2, 16, 16)


def _backend():
    from lsvit_kernels.backends import triton_patch_embed

    return triton_patch_embed


def _video(b, layout, dtype, t=16, size=224):
    dims = (b, t, 3, size, size) if layout == "BTCHW" else (b, 3, t, size, size)
    if dtype == torch.uint8:
        return torch.randint(0, 256, dims, dtype=torch.uint8, device="cuda")
    return torch.randn(dims, device="cuda").to(dtype)


def _params(dtype, grid, per_token=False):
    pos_rows = grid.tokens_per_step * (grid.steps if per_token else 1)
    return {
        "weight": (torch.randn(E, 3, *TUBELET, device="cuda") * 0.02).to(dtype),
        "bias": torch.randn(E, device="cuda").to(dtype),
        "pos_embed": torch.randn(pos_rows, E, device="cuda").to(dtype),
        "cls_token": torch.randn(E, device="cuda").to(dtype),
    }


def _err(a, ref):
    return (a.double() - ref).abs().max().item()


def _check(got, ref64, same, dtype):
    assert not got.isnan().any()
    scale = ref64.abs().max().item()
    if dtype == torch.float32:
        assert _err(got, ref64) <= 1e-4 * scale
    else:
        assert _err(got, ref64) <= 2 * _err(same, ref64) + 2e-3 * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("layout", ["BTCHW", "BCTHW"])
@pytest.mark.parametrize("per_token", [False, True])
def test_forward_real_size(dtype, layout, per_token):
    video = _video(2, layout, dtype)
    grid = lk.patch_grid((2, 16, 3, 224, 224), (E, 3, *TUBELET), has_cls=True)
    params = _params(dtype, grid, per_token)
    got = lk.patch_embed(video, **params, layout=layout)
    assert lk.last_backend() == "triton"  # first in the automatic CUDA order
    ref64 = lk.patch_embed(
        video.double(), **{k: v.double() for k, v in params.items()}, layout=layout, backend="reference"
    )
    same = lk.patch_embed(video, **params, layout=layout, backend="reference")
    _check(got, ref64, same, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_uint8_forward_real_size(dtype):
    mean, std = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
    video = _video(4, "BCTHW", torch.uint8)
    grid = lk.patch_grid((4, 16, 3, 224, 224), (E, 3, *TUBELET), has_cls=True)
    params = _params(dtype, grid)
    got = lk.patch_embed(video, **params, mean=mean, std=std, layout="BCTHW", backend="triton")
    normalized = (video.double() / 255 - 0.45) / 0.225
    ref64 = lk.patch_embed(
        normalized, **{k: v.double() for k, v in params.items()}, layout="BCTHW", backend="reference"
    )
    same = lk.patch_embed(normalized.to(dtype), **params, layout="BCTHW", backend="reference")
    if dtype == torch.float32:
        assert _err(got, ref64) <= 1e-4 * ref64.abs().max().item()
    else:
        _check(got, ref64, same, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_backward_real_size(dtype):
    video = _video(2, "BCTHW", dtype).permute(0, 2, 1, 3, 4)
    grid = lk.patch_grid(video.shape, (E, 3, *TUBELET), has_cls=True)
    params = _params(dtype, grid, per_token=True)
    grad_tokens = torch.randn(grid.output_shape, device="cuda").to(dtype)
    args = (grid.steps * grid.tokens_per_step, True, True, [True] * 5)
    got = _backend().backward(grad_tokens, video, params["weight"], *args)
    ref64 = reference.backward(grad_tokens.double(), video.double(), params["weight"].double(), *args)
    same = reference.backward(grad_tokens, video, params["weight"], *args)
    for g, r, s in zip(got, ref64, same, strict=True):
        _check(g, r, s, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_grad_weight_real_size(dtype, channels_last):
    """grad_weight of a uint8 video at the headline geometry: read as int32 words on tensor cores (bf16), with the
    exact-fp32 uint8 tile (float32)."""
    video = _video(2, "BTCHW", torch.uint8)
    if channels_last:
        video = video.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    grid = lk.patch_grid(video.shape, (E, 3, *TUBELET), has_cls=True)
    weight = _params(dtype, grid)["weight"]
    grad_tokens = torch.randn(grid.output_shape, device="cuda").to(dtype)
    backend = _backend()
    cfg = backend._config("grad_weight", grid, dtype, torch.uint8, video.device)
    launch, _ = backend.grad_weight_launch(grad_tokens, video, weight, True, cfg, programs=132)
    assert launch.meta["VIDEO_WORDS"] is (dtype == torch.bfloat16)
    got = backend.grad_weight(grad_tokens, video, weight, True)
    mask = [False, True, False, False, False]
    ref64 = reference.backward(grad_tokens.double(), video.double(), weight.double(), 0, False, True, mask)[1]
    same = reference.backward(grad_tokens, video.to(dtype), weight, 0, False, True, mask)[1]
    _check(got, ref64, same, dtype)


def test_no_patch_matrix_in_forward_or_backward():
    """Peak memory above the inputs: forward allocates only the tokens; backward (weight, bias, pos grads) only the
    float32 partial sums and the results; both far below the patch matrix the reference builds."""
    backend = _backend()
    dtype, b = torch.bfloat16, 16
    video = _video(b, "BCTHW", dtype).permute(0, 2, 1, 3, 4)
    grid = lk.patch_grid(video.shape, (E, 3, *TUBELET), has_cls=True)
    params = _params(dtype, grid)
    patch_matrix = b * grid.num_patches * grid.patch_dim * 2
    token_bytes = b * grid.steps * grid.tokens_per_step * E * 2

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = backend.forward(video, params["weight"], params["bias"], params["pos_embed"], params["cls_token"])
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= token_bytes + 2**20

    grad_tokens = torch.randn_like(out)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    grads = backend.backward(grad_tokens, video, params["weight"], grid.tokens_per_step, True, True, [0, 1, 1, 1, 1])
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert grads[0] is None
    assert extra < patch_matrix / 2, f"backward peak {extra} B vs patch matrix {patch_matrix} B"


def test_offsets_past_2_to_the_31():
    """A strided view whose channel stride puts elements past 2^31 (int64 video offsets and WIDE_K)."""
    b, t, c, h, w = 1, 2, 3, 32, 32
    stride_c = 2**30 + 4096  # (C - 1) * stride_c > 2^31
    storage = torch.randint(0, 256, ((c - 1) * stride_c + t * h * w,), dtype=torch.uint8, device="cuda")
    video = storage.as_strided((b, t, c, h, w), (t * h * w, h * w, stride_c, w, 1))
    weight = torch.randn(E, c, *TUBELET, device="cuda", dtype=torch.float32) * 0.02
    got = _backend().forward(video, weight, None, None, None)
    ref = reference.forward(video.contiguous().double(), weight.double(), None, None, None)
    assert _err(got, ref) <= 1e-4 * ref.abs().max().item()
    del storage


def test_tf32_follows_torch_matmul_precision():
    video = _video(2, "BTCHW", torch.float32)
    grid = lk.patch_grid(video.shape, (E, 3, *TUBELET))
    weight = _params(torch.float32, grid)["weight"]
    ref = lk.patch_embed(video.double(), weight.double(), backend="reference")
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        tf32 = lk.patch_embed(video, weight, backend="triton")
    finally:
        torch.set_float32_matmul_precision(previous)
    exact = lk.patch_embed(video, weight, backend="triton")
    scale = ref.abs().max().item()
    assert _err(exact, ref) <= 1e-5 * scale < _err(tf32, ref) <= 1e-2 * scale


def test_sweep_times_every_candidate():
    from lsvit.bench import triton_sweep

    grid = lk.patch_grid((2, 4, 3, 64, 64), (E, 3, *TUBELET), has_cls=True)
    rows = triton_sweep.sweep(grid, torch.bfloat16)
    assert {r["kernel"] for r in rows} == {"forward", "grad_weight", "grad_video"}
    assert all(r["us"] is not None and r["us"] > 0 for r in rows)
    assert sum(r["picked"] for r in rows if r["kernel"] == "forward") == 1
