"""The reference backend against the conv oracle: every layout and shape, every dtype, gradients."""

import pytest
import torch
from hypothesis import given, settings

import lsvit_kernels as lk

from .conv_oracle import assert_close_to_oracle, conv_tokens
from .strategies import make_problem, problems


def run(p, backend="reference"):
    return lk.patch_embed(*p.args(), **p.kwargs(), backend=backend)


@settings(max_examples=60, deadline=None)
@given(p=problems)
def test_matches_conv_oracle_float64(p):
    out = run(p)
    assert out.is_contiguous()
    assert_close_to_oracle(out, conv_tokens(*p.args(), **p.kwargs()))
    assert lk.last_backend() == "reference"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["BTCHW", "BCTHW"])
def test_dtypes(dtype, layout):
    p = make_problem(b=2, steps=3, t=2, c=3, gh=3, gw=2, ph=8, pw=8, e=20, layout=layout, dtype=dtype)
    out = run(p)
    assert out.dtype == dtype
    plain = conv_tokens(*p.args(), **p.kwargs(), dtype=dtype)
    assert_close_to_oracle(out, conv_tokens(*p.args(), **p.kwargs()), plain)


def test_image_input_with_conv2d_weight():
    p = make_problem(t=1, conv2d_weight=True, layout="BTCHW", cls=True, pos="slot")
    image = p.video[:, 0]  # (B, C, H, W)
    out = lk.patch_embed(image, p.weight, p.bias, p.pos_embed, cls_token=p.cls_token)
    expected = conv_tokens(image, p.weight, p.bias, p.pos_embed, p.cls_token)[:, 0]
    assert_close_to_oracle(out, expected)


@pytest.mark.parametrize("pos", ["slot", "token", None])
@pytest.mark.parametrize("cls", [True, False])
@pytest.mark.parametrize("layout", ["BTCHW", "BCTHW"])
def test_gradcheck(pos, cls, layout):
    p = make_problem(
        b=2,
        steps=2,
        t=2,
        c=2,
        gh=2,
        gw=1,
        ph=2,
        pw=3,
        e=3,
        layout=layout,
        dtype=torch.float64,
        pos=pos,
        cls=cls,
        contiguous=False,
    )
    inputs = [
        x.detach().requires_grad_() for x in (p.video, p.weight, p.bias, p.pos_embed, p.cls_token) if x is not None
    ]
    names = [n for n, x in zip("vwbpc", (p.video, p.weight, p.bias, p.pos_embed, p.cls_token)) if x is not None]

    def fn(*xs):
        d = dict(zip(names, xs))
        return lk.patch_embed(
            d["v"], d["w"], d.get("b"), d.get("p"), cls_token=d.get("c"), layout=layout, backend="reference"
        )

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_conv_autograd(dtype):
    p = make_problem(
        b=2, steps=2, t=2, c=3, gh=2, gw=3, ph=4, pw=4, e=10, dtype=dtype, layout="BCTHW", contiguous=False
    )
    leaves = [x.detach().requires_grad_() for x in (p.video, p.weight, p.bias, p.pos_embed, p.cls_token)]
    grad_out = torch.randn(conv_tokens(*p.args(), **p.kwargs()).shape, dtype=torch.float64)
    out = lk.patch_embed(*leaves[:4], cls_token=leaves[4], layout=p.layout, backend="reference")
    out.backward(grad_out.to(dtype))
    oracle_leaves = [x.detach().double().requires_grad_() for x in leaves]
    conv_tokens(*oracle_leaves[:4], oracle_leaves[4], layout=p.layout).backward(grad_out)
    for name, got, want in zip(("video", "weight", "bias", "pos", "cls"), leaves, oracle_leaves):
        assert got.grad is not None and got.grad.dtype == dtype, name
        tol = 1e-4 if dtype == torch.float32 else 0.1
        scale = max(want.grad.abs().max().item(), 1.0)
        assert (got.grad.double() - want.grad).abs().max().item() <= tol * scale, name


def test_uint8_video_with_folded_normalization():
    p = make_problem(video_dtype=torch.uint8, dtype=torch.float64, layout="BCTHW")
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = lk.patch_embed(*p.args(), **p.kwargs(), mean=mean, std=std, backend="reference")
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1, 1)
    normalized = (p.video.double() / 255 - m) / s
    assert_close_to_oracle(out, conv_tokens(normalized, *p.args()[1:], **p.kwargs()))


def test_uint8_without_normalization_scales_to_unit_range():
    p = make_problem(video_dtype=torch.uint8, dtype=torch.float64)
    out = run(p)
    assert_close_to_oracle(out, conv_tokens(p.video.double() / 255, *p.args()[1:], **p.kwargs()))
