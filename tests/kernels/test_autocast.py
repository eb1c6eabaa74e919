"""Autocast is the op's own dispatcher kernel: under ``torch.autocast`` every caller (the function, a swapped conv,
its TorchScript and fx forms) runs the op in the region's dtype, as autocast runs a conv; uint8 video and float64
stay as they are; gradients reach float32 parameters in float32."""

import pytest
import torch

import lsvit_kernels as lk

from .conv_oracle import assert_close_to_oracle, conv_tokens


def operands(dtype=torch.float32):
    video = torch.randn(2, 4, 3, 8, 12, dtype=dtype)  # (B, T, C, H, W)
    weight = torch.randn(6, 3, 2, 4, 4, dtype=dtype)
    bias, pos, cls = torch.randn(6, dtype=dtype), torch.randn(7, 6, dtype=dtype), torch.randn(6, dtype=dtype)
    return video, weight, bias, pos, cls


def test_op_runs_in_the_autocast_dtype_with_float32_gradients():
    video, *params = operands()
    video.requires_grad_(True)
    for p in params:
        p.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lk.patch_embed(video, params[0], params[1], params[2], cls_token=params[3])
    assert out.dtype == torch.bfloat16
    # float64 oracle on the bf16-rounded operands (what autocast feeds the op), held to plain bf16 PyTorch
    rounded = [t.detach().bfloat16().double() for t in (video, *params)]
    expected = conv_tokens(rounded[0], rounded[1], rounded[2], rounded[3], rounded[4])
    plain = conv_tokens(*(t.bfloat16() for t in rounded), dtype=torch.bfloat16)
    assert_close_to_oracle(out, expected, plain)
    out.float().square().sum().backward()
    assert video.grad.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)


def test_the_region_dtype_is_read_per_call_and_float64_is_left_alone():
    video, weight, bias, _, _ = operands()
    with torch.autocast("cpu", dtype=torch.float16):
        assert lk.patch_embed(video, weight, bias).dtype == torch.float16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lk.patch_embed(video, weight, bias).dtype == torch.bfloat16
        assert lk.patch_embed(video.double(), weight.double(), bias.double()).dtype == torch.float64
    assert lk.patch_embed(video, weight, bias).dtype == torch.float32  # outside the region


def test_uint8_video_is_not_cast():
    _, weight, bias, _, _ = operands()
    pixels = torch.randint(0, 256, (2, 4, 3, 8, 12), dtype=torch.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lk.patch_embed(pixels, weight, bias, mean=mean, std=std)
    assert out.dtype == torch.bfloat16
    m = torch.tensor(mean, dtype=torch.float64).view(1, 1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 1, 3, 1, 1)
    expected = conv_tokens((pixels.double() / 255 - m) / s, weight.double(), bias.double())
    plain = conv_tokens((pixels.double() / 255 - m) / s, weight, bias, dtype=torch.bfloat16)
    assert_close_to_oracle(out, expected, plain)


@pytest.mark.parametrize("form", ["eager", "torchscript", "fx"])
def test_swapped_conv_under_autocast_in_every_form(form):
    conv = torch.nn.Conv3d(3, 6, (2, 4, 4), stride=(2, 4, 4))
    fused = lk.FusedPatchConv3d(3, 6, (2, 4, 4))
    fused.load_state_dict(conv.state_dict())
    module = {"eager": lambda: fused, "torchscript": lambda: torch.jit.script(fused)}.get(
        form, lambda: torch.fx.symbolic_trace(fused)
    )()
    x = torch.randn(2, 3, 4, 8, 12)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lk.registry.mark_ran(None)
        got = module(x)
        assert lk.last_backend() is not None, "the fused op ran"
        expected = conv(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
