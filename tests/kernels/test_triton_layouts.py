"""The kernels' k orders and operand placements against the float64 reference, in Triton's interpreter (or on a
GPU when present), at odd sizes: channels-last videos (k walked as (dt, dh, dw, c), weight permuted to match),
odd patch widths (P=7 rows start unaligned, as P=14 does), uint8 videos (the video tile as the dot's B operand;
grad_weight's int32-word reads) and the tuning tables' own block shapes shrunk to interpreter size."""

from __future__ import annotations

import pytest
import torch

import lsvit_kernels as lk
from lsvit_kernels import registry
from lsvit_kernels.backends import reference

triton_backend = pytest.importorskip("lsvit_kernels.backends.triton_patch_embed")
from lsvit_kernels.backends import triton_tuning  # noqa: E402
from lsvit_kernels.backends.triton_tuning import KernelConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    registry.why_unavailable("triton", DEVICE) is not None,
    reason=f"triton backend cannot run on {DEVICE}: {registry.why_unavailable('triton', DEVICE)}",
)
# (B, T, C, H, W), E, (t, ph, pw): K and E not block multiples, H != W
SHAPES = {
    "tubelet": ((2, 4, 3, 12, 20), 72, (2, 3, 5)),  # K = 90
    "odd_patch": ((1, 2, 3, 14, 21), 40, (1, 7, 7)),  # P = 7: unaligned rows, T' = 2, B = 1
}
SMALL = KernelConfig(16, 32, 32, group_m=2, num_warps=1, num_stages=1)


def channels_last_video(shape, dtype):
    """A logical (B, T, C, H, W) view of (B, T, H, W, C) memory: stride_c == 1, stride_w == C."""
    b, t, c, h, w = shape
    if dtype == torch.uint8:
        data = torch.randint(0, 256, (b, t, h, w, c), dtype=torch.uint8, device=DEVICE)
    else:
        data = torch.randn(b, t, h, w, c, device=DEVICE).to(dtype)
    return data.permute(0, 1, 4, 2, 3)


def params(name, dtype):
    shape, e, tubelet = SHAPES[name]
    weight = (torch.randn(e, shape[2], *tubelet, device=DEVICE) * 0.2).to(dtype)
    grid = lk.patch_grid(shape, weight.shape, has_cls=True)
    bias = torch.randn(e, device=DEVICE).to(dtype)
    pos = torch.randn(grid.tokens_per_step, e, device=DEVICE).to(dtype)
    cls = torch.randn(e, device=DEVICE).to(dtype)
    return weight, bias, pos, cls, grid


def test_channels_last_order_is_chosen_from_the_strides():
    shape, _, tubelet = SHAPES["tubelet"]
    grid = lk.patch_grid(shape, (8, 3, *tubelet))
    assert triton_backend.channels_last_order(grid, channels_last_video(shape, torch.float32).stride())
    assert not triton_backend.channels_last_order(grid, torch.empty(shape).stride())
    weight = torch.arange(8 * 3 * 2 * 3 * 5.0).view(8, 3, 2, 3, 5)
    permuted = triton_backend.k_ordered_weight(weight, channels_last=True)  # (E, t ph pw C)
    assert torch.equal(permuted.view(8, 2, 3, 5, 3), weight.permute(0, 2, 3, 4, 1))


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8])
def test_forward_channels_last_and_odd_patches(name, dtype):
    wdtype = torch.float32 if dtype == torch.uint8 else dtype
    weight, bias, pos, cls, grid = params(name, wdtype)
    shape = SHAPES[name][0]
    for video in (channels_last_video(shape, dtype), channels_last_video(shape, dtype).contiguous()):
        out = torch.full(grid.output_shape, float("nan"), dtype=wdtype, device=DEVICE)
        got = triton_backend.forward(video, weight, bias, pos, cls, config=SMALL, out=out)
        ref64 = reference.forward(video.double(), weight.double(), bias.double(), pos.double(), cls.double())
        same = reference.forward(video.to(wdtype), weight, bias, pos, cls)
        assert not got.isnan().any(), "unwritten elements"
        err, scale = (got.double() - ref64).abs().max().item(), ref64.abs().max().item()
        if wdtype == torch.float32:
            assert err <= 1e-5 * scale + 1e-6
        else:
            assert err <= 2 * (same.double() - ref64).abs().max().item() + 1e-3 * scale


@pytest.mark.parametrize("name", list(SHAPES))
def test_backward_channels_last_and_odd_patches(name):
    """grad_weight in the channels-last k order is permuted back to (E, C, t, ph, pw); grad_video written into a
    channels-last buffer walks the same order."""
    weight, *_, grid = params(name, torch.float32)
    video = channels_last_video(SHAPES[name][0], torch.float32)
    grad_tokens = torch.randn(grid.output_shape, device=DEVICE)
    ref = reference.backward(grad_tokens.double(), video.double(), weight.double(), 0, False, True, [1, 1, 0, 0, 0])
    got_w = triton_backend.grad_weight(grad_tokens, video, weight, True, config=SMALL, programs=3)
    assert got_w.shape == weight.shape
    assert (got_w.double() - ref[1]).abs().max() <= 1e-5 * ref[1].abs().max()
    out = torch.full_like(video, float("nan"))  # channels-last strides, poisoned
    assert out.stride() == video.stride()
    got_v = triton_backend.grad_video(grad_tokens, video, weight, True, config=SMALL, out=out)
    assert not got_v.isnan().any()
    assert (got_v.double() - ref[0]).abs().max() <= 1e-5 * ref[0].abs().max()


# patch rows of 8 pixels (24 interleaved bytes channels-last): grad_weight may read a uint8 video as int32 words;
# K = 144 (4.5 tiles of 32), a 3 x 3 grid, T' = 2, E = 40
WORDS_SHAPE = ((2, 4, 3, 9, 24), 40, (2, 3, 8))
WORDS = KernelConfig(16, 32, 32, group_m=2, num_warps=1, num_stages=1, video_words=True)


def uint8_video(shape, layout):
    """A uint8 video whose layout allows 4-pixel words (contiguous, channels_last) or not (a pointer 1 byte past
    alignment, rows padded to an odd width)."""
    b, t, c, h, w = shape
    if layout == "channels_last":
        return channels_last_video(shape, torch.uint8)
    if layout == "unaligned":
        flat = torch.randint(0, 256, (b * t * c * h * w + 1,), dtype=torch.uint8, device=DEVICE)
        return flat[1:].view(shape)
    if layout == "padded_rows":
        return torch.randint(0, 256, (b, t, c, h, w + 1), dtype=torch.uint8, device=DEVICE)[..., :w]
    return torch.randint(0, 256, shape, dtype=torch.uint8, device=DEVICE)


@pytest.mark.parametrize(
    "layout, words, wide",
    [
        ("contiguous", True, False),
        ("contiguous", True, True),
        ("channels_last", True, False),
        ("unaligned", False, False),
        ("padded_rows", False, False),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grad_weight_reads_uint8_video_as_words(layout, words, wide, dtype, monkeypatch):
    """The int32-word path (unpacked to the 4 pixels of each word in registers) where the layout allows it, also
    with int64 offsets, the byte path where not: against the float64 reference, ragged K, E and token tiles."""
    if wide:
        monkeypatch.setattr(triton_backend, "_wide", lambda *tensors: True)
    shape, e, tubelet = WORDS_SHAPE
    video = uint8_video(shape, layout)
    weight = (torch.randn(e, shape[2], *tubelet, device=DEVICE) * 0.2).to(dtype)
    grid = lk.patch_grid(shape, weight.shape, has_cls=True)
    grad_tokens = torch.randn(grid.output_shape, device=DEVICE).to(dtype)
    launch, _ = triton_backend.grad_weight_launch(grad_tokens, video, weight, True, WORDS, programs=3)
    assert launch.meta["VIDEO_WORDS"] is words and launch.meta["WIDE"] is wide
    got = triton_backend.grad_weight(grad_tokens, video, weight, True, config=WORDS, programs=3)
    ref64 = reference.backward(grad_tokens.double(), video.double(), weight.double(), 0, False, True, [0, 1, 0, 0, 0])
    err, scale = (got.double() - ref64[1]).abs().max().item(), ref64[1].abs().max().item()
    if dtype == torch.float32:
        assert err <= 1e-5 * scale
    else:
        same = reference.backward(grad_tokens, video.to(dtype), weight, 0, False, True, [0, 1, 0, 0, 0])
        assert err <= 2 * (same[1].double() - ref64[1]).abs().max().item() + 2e-3 * scale


@pytest.mark.parametrize("arch", [80, 90])
def test_uint8_exact_float32_tiles(arch):
    """The uint8-video tiles of exact float32 (forward 64 x 32 x 32, grad_weight 32 x 32 x 64), as compiled, at
    odd sizes: K = 90 and E = 72 against tiles of 32 and 64, 64 tokens in steps of 32."""
    weight, bias, pos, cls, grid = params("tubelet", torch.float32)
    shape = SHAPES["tubelet"][0]
    video = torch.randint(0, 256, shape, dtype=torch.uint8, device=DEVICE)
    fwd = triton_tuning.candidate_configs("forward", arch, "ieee", torch.uint8)[0]
    got = triton_backend.forward(video, weight, bias, pos, cls, config=fwd)
    ref = reference.forward(video.double(), weight.double(), bias.double(), pos.double(), cls.double())
    assert (got.double() - ref).abs().max() <= 1e-5 * ref.abs().max()
    grad_tokens = torch.randn(grid.output_shape, device=DEVICE)
    gw = triton_tuning.candidate_configs("grad_weight", arch, "ieee", torch.uint8)[0]
    got_w = triton_backend.grad_weight(grad_tokens, video, weight, True, config=gw, programs=5)
    ref_w = reference.backward(grad_tokens.double(), video.double(), weight.double(), 0, False, True, [0, 1, 0, 0, 0])
    assert (got_w.double() - ref_w[1]).abs().max() <= 1e-5 * ref_w[1].abs().max()


@pytest.mark.parametrize("kernel", ["forward", "grad_video"])
def test_table_shaped_tiles_at_interpreter_size(kernel):
    """The tables' tile proportions (wide N, 2 CTAs' 3 stages; 128 x 256 halves) shrunk to run in the
    interpreter, with the uint8 B-operand path for the forward."""
    weight, bias, pos, cls, grid = params("tubelet", torch.float32)
    shape = SHAPES["tubelet"][0]
    for cfg in (KernelConfig(16, 32, 16, 2, 1, 3, 2), KernelConfig(16, 64, 16, 2, 1, 3, 1)):
        if kernel == "forward":
            video = torch.randint(0, 256, shape, dtype=torch.uint8, device=DEVICE)
            got = triton_backend.forward(video, weight, bias, pos, cls, config=cfg)
            ref = reference.forward(video.double(), weight.double(), bias.double(), pos.double(), cls.double())
        else:
            video = torch.randn(shape, device=DEVICE)
            grad_tokens = torch.randn(grid.output_shape, device=DEVICE)
            got = triton_backend.grad_video(grad_tokens, video, weight, True, config=cfg)
            ref = reference.backward(
                grad_tokens.double(), video.double(), weight.double(), 0, False, True, [1, 0, 0, 0, 0]
            )[0]
        assert (got.double() - ref).abs().max() <= 1e-5 * ref.abs().max() + 1e-6
