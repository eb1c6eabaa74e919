"""Double backward of the op: gradcheck and gradgradcheck in float64 on every backend that computes float64, and
the Triton backend's second derivatives (float32) against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import lsvit_kernels as lk
from lsvit_kernels import registry

from .strategies import make_problem

FLOAT64_BACKENDS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            registry.why_unavailable(name, "cpu") is not None, reason=str(registry.why_unavailable(name, "cpu"))
        ),
    )
    for name in ("reference", "cpu")
]

# (description, make_problem arguments): small odd sizes, H != W, with and without bias / pos / CLS, 2D and 3D
CASES = {
    "3d-bias-slotpos-cls": dict(b=1, steps=2, t=2, c=1, gh=1, gw=2, ph=1, pw=3, e=3, layout="BCTHW"),
    "3d-tokenpos-nocls-nobias": dict(
        b=2, steps=1, t=3, c=1, gh=2, gw=1, ph=1, pw=1, e=3, pos="token", cls=False, bias=False, contiguous=False
    ),
    "3d-weight-only": dict(b=1, steps=1, t=1, c=2, gh=1, gw=3, ph=3, pw=1, e=2, pos=None, cls=False, bias=False),
    "2d-image-cls": dict(b=2, steps=1, t=1, c=1, gh=1, gw=2, ph=3, pw=1, e=3, conv2d_weight=True),
}


def _inputs(case: str):
    """(function of the differentiable leaves, leaves) for one case, in float64."""
    p = make_problem(**CASES[case], dtype=torch.float64)
    image = p.weight.dim() == 4
    video = p.video[:, 0] if image else p.video  # a 4D image for a Conv2d weight
    names = [n for n in ("bias", "pos_embed", "cls_token") if getattr(p, n) is not None]
    leaves = [video, p.weight] + [getattr(p, n) for n in names]
    leaves = [t.detach().requires_grad_() for t in leaves]
    layout = "BTCHW" if image else p.layout

    def fn(backend):
        return lambda video, weight, *rest: lk.patch_embed(
            video, weight, **dict(zip(names, rest)), layout=layout, backend=backend
        )

    return fn, leaves


@pytest.mark.parametrize("backend", FLOAT64_BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_gradcheck_and_gradgradcheck(backend, case):
    fn, leaves = _inputs(case)
    assert gradcheck(fn(backend), leaves)
    assert gradgradcheck(fn(backend), leaves)


def test_third_derivative_runs_through_the_op_again():
    """Each derivative is the op or its backward again, so create_graph works at any order."""
    fn, leaves = _inputs("3d-bias-slotpos-cls")
    out = fn("reference")(*leaves)
    (g_video,) = torch.autograd.grad(out.square().sum(), leaves[:1], create_graph=True)
    (g_weight,) = torch.autograd.grad(g_video.square().sum(), leaves[1:2], create_graph=True)
    (g_video2,) = torch.autograd.grad(g_weight.sum(), leaves[:1])
    assert g_video2.shape == leaves[0].shape and g_video2.abs().sum() > 0


def test_backward_op_passes_opcheck():
    p = make_problem(b=1, steps=2, t=1, c=2, gh=1, gw=2, ph=2, pw=3, e=4, dtype=torch.float64)
    grid = lk.patch_grid(p.video.shape, p.weight.shape, has_cls=True)
    grad_tokens = torch.randn(grid.output_shape, dtype=torch.float64, requires_grad=True)
    args = (
        grad_tokens,
        p.video.requires_grad_(),
        p.weight.requires_grad_(),
        p.pos_embed.shape[0],
        True,
        True,
        [True] * 5,
        "reference",
    )
    torch.library.opcheck(torch.ops.lsvit.patch_embed_backward.default, args)


def _second_derivatives(backend, leaves, fn):
    """Gradients of a function of the first gradients (taken with create_graph=True) w.r.t. every leaf."""
    out = fn(backend)(*leaves)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    first = torch.autograd.grad((out * weights).sum(), leaves, create_graph=True)
    second = torch.autograd.grad(sum((g.double() ** 2).sum() for g in first), leaves, allow_unused=True)
    # None where the first gradient does not depend on the leaf (the bias)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(second, leaves)]


@pytest.mark.skipif(registry.why_unavailable("triton", "cpu") is not None, reason="triton cannot run here")
def test_triton_second_derivatives_match_the_float64_reference():
    fn, leaves64 = _inputs("3d-bias-slotpos-cls")
    leaves32 = [t.detach().float().requires_grad_() for t in leaves64]
    expected = _second_derivatives("reference", leaves64, fn)
    got = _second_derivatives("triton", leaves32, fn)
    assert lk.last_backend() == "triton"
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
