"""The compiled CUDA kernels (backend "cuda", csrc/cuda/patch_embed_cuda.cu) against a float64 conv3d oracle.

Same form as test_native_cpu.py; every test needs a GPU (marked ``gpu``) and touches CUDA only when it runs.
"""

from __future__ import annotations

import pytest
import torch

import lsvit_kernels as lk
from lsvit_kernels.backends import native

from .native_cases import CASES, Case, as_float64_leaves, leaves, make_inputs, reference_float64, scaled_tolerance

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not native._has_cuda_kernels(),
        reason=f"the compiled library has no CUDA kernels: {native._load_error or 'built without its CUDA part'}",
    ),
]


def poisoned(fn):
    """Run fn with NaN-filled fresh allocations (so unwritten output elements fail)."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        return fn()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = was_filling


def run_cuda(inp, **kwargs):
    out = poisoned(
        lambda: lk.patch_embed(
            inp.video,
            inp.weight,
            inp.bias,
            inp.pos_embed,
            cls_token=inp.cls_token,
            layout=inp.layout,
            backend="cuda",
            **kwargs,
        )
    )
    assert lk.last_backend() == "cuda"
    return out


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("layout", ["BTCHW", "BCTHW"])
@pytest.mark.parametrize(
    "cls,pos,bias",
    [(False, "slot", True), (True, "token", True), (True, "none", False), (True, "slot", True), (False, "none", True)],
)
def test_forward_float32_matches_float64(case, layout, cls, pos, bias):
    inp = make_inputs(case, device="cuda", layout=layout, cls=cls, pos=pos, bias=bias)
    out = run_cuda(inp)
    ref = reference_float64(inp)
    assert out.shape == ref.shape and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=scaled_tolerance(ref, 1e-5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("layout,cls,pos", [("BTCHW", True, "slot"), ("BCTHW", False, "token")])
def test_16bit_error_at_most_twice_plain_pytorch(dtype, case, layout, cls, pos):
    inp = make_inputs(case, device="cuda", dtype=dtype, layout=layout, cls=cls, pos=pos)
    out = run_cuda(inp)
    ref = reference_float64(inp)
    plain = lk.patch_embed(
        inp.video, inp.weight, inp.bias, inp.pos_embed, cls_token=inp.cls_token, layout=layout, backend="reference"
    )
    err = (out.double() - ref).abs().max().item()
    plain_err = (plain.double() - ref).abs().max().item()
    assert out.dtype == dtype
    assert err <= 2 * plain_err + 1e-3 * scaled_tolerance(ref, 1.0), (err, plain_err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("layout,cls,pos", [("BTCHW", True, "token"), ("BCTHW", False, "slot")])
def test_every_gradient_matches_float64(dtype, case, layout, cls, pos):
    inp = make_inputs(case, device="cuda", dtype=dtype, layout=layout, cls=cls, pos=pos)
    for t in (inp.video, inp.weight, inp.bias, inp.pos_embed, inp.cls_token):
        if t is not None:
            t.requires_grad_()
    out = run_cuda(inp)
    grad_out = torch.randn_like(out)
    grads = poisoned(lambda: torch.autograd.grad(out, leaves(inp), grad_out))
    ref_inp = as_float64_leaves(inp)
    ref_grads = torch.autograd.grad(reference_float64(ref_inp), leaves(ref_inp), grad_out.double())
    assert len(grads) == len(ref_grads) == 4 + cls
    rel = 1e-5 if dtype == torch.float32 else 2e-2
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=rel, atol=scaled_tolerance(want, rel))


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_uint8_video(weight_dtype):
    inp = make_inputs(CASES[0], device="cuda", dtype=weight_dtype, video_dtype=torch.uint8, cls=True, pos="slot")
    mean, std = [0.45, 0.40, 0.50], [0.22, 0.25, 0.21]
    inp.weight.requires_grad_()
    out = run_cuda(inp, mean=mean, std=std)
    (grad_weight,) = torch.autograd.grad(out, [inp.weight], torch.ones_like(out))
    ref_inp = as_float64_leaves(inp)
    m = torch.tensor(mean, dtype=torch.float64, device="cuda").view(1, 1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64, device="cuda").view(1, 1, 3, 1, 1)
    ref_inp.video = (inp.video.double() / 255.0 - m) / s
    ref = reference_float64(ref_inp)
    (ref_grad_weight,) = torch.autograd.grad(ref, [ref_inp.weight], torch.ones_like(ref))
    rel = 1e-5 if weight_dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ref, rtol=rel, atol=scaled_tolerance(ref, rel))
    atol = scaled_tolerance(ref_grad_weight, rel)
    torch.testing.assert_close(grad_weight.double(), ref_grad_weight, rtol=rel, atol=atol)


def test_non_contiguous_video_of_any_strides():
    case = CASES[0]
    base = torch.randn(
        case.batch, case.frames * 2, case.channels, case.width, case.height + 3, device="cuda", requires_grad=True
    )
    video = base[:, ::2, :, :, 1 : 1 + case.height].transpose(3, 4)
    assert video.stride(-1) != 1
    inp = make_inputs(case, device="cuda", cls=True, pos="token")
    inp.video = video
    out = run_cuda(inp)
    ref_inp = as_float64_leaves(inp)
    ref = reference_float64(ref_inp)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=scaled_tolerance(ref, 1e-5))
    grad_out = torch.randn_like(out)
    (grad_video,) = poisoned(lambda: torch.autograd.grad(out, [video], grad_out))
    (ref_grad_video,) = torch.autograd.grad(ref, [ref_inp.video], grad_out.double())
    atol = scaled_tolerance(ref_grad_video, 1e-5)
    torch.testing.assert_close(grad_video.double(), ref_grad_video, rtol=1e-5, atol=atol)


def test_benchmark_shape_bf16():
    """The suite's shape (2x16x3x224x224, tubelet 2x16x16, E=768): many full tiles and a partial last one."""
    inp = make_inputs(Case(2, 16, 3, 224, 224, 768, 2, 16, 16), device="cuda", dtype=torch.bfloat16, cls=True)
    out = run_cuda(inp)
    ref = reference_float64(inp)
    plain = lk.patch_embed(inp.video, inp.weight, inp.bias, inp.pos_embed, cls_token=inp.cls_token, backend="reference")
    err = (out.double() - ref).abs().max().item()
    plain_err = (plain.double() - ref).abs().max().item()
    assert err <= 2 * plain_err + 1e-3 * scaled_tolerance(ref, 1.0), (err, plain_err)


def test_opcheck_with_cuda_kernel_active():
    inp = make_inputs(CASES[0], device="cuda", cls=True, pos="token")
    args = (inp.video.requires_grad_(), inp.weight.requires_grad_(), inp.bias, inp.pos_embed, inp.cls_token, "cuda")
    torch.library.opcheck(torch.ops.lsvit.patch_embed.default, args)
    plain = (inp.video.detach(), inp.weight.detach(), inp.bias, inp.pos_embed, inp.cls_token)
    torch.library.opcheck(torch.ops.lsvit.native_patch_embed_forward.default, plain)


def test_kernel_invariants():
    video, weight = torch.randn(1, 3, 3, 8, 8, device="cuda"), torch.randn(4, 3, 2, 4, 4, device="cuda")
    with pytest.raises(RuntimeError, match="lsvit kernel: video not divisible into tubelets"):
        torch.ops.lsvit.native_patch_embed_forward(video, weight, None, None, None)
    with pytest.raises(RuntimeError, match="lsvit kernel: weight dtype Double not supported on cuda"):
        torch.ops.lsvit.native_patch_embed_forward(video[:, :2].double(), weight.double(), None, None, None)


# The tensor-core kernel copies the video in chunks of 8, 2 or 1 elements, chosen from the strides, the patch
# width and the alignment; these cases reach each width, partial M / N / K tiles, odd E and several tiles.
VECTOR_CASES = {
    "pw8_contiguous": (Case(2, 4, 3, 16, 24, 40, 2, 8, 8), "contiguous"),  # 8-element copies
    "pw14": (Case(1, 2, 3, 28, 42, 130, 2, 14, 14), "contiguous"),  # 2-element copies, K % 32 != 0
    # channels-last (C stride 1): read in (dt, dh, dw, c) order with the weight permuted, runs of pw * C values
    "channels_last": (Case(2, 2, 3, 16, 16, 48, 1, 8, 8), "channels_last"),  # 8-element copies (pw * C = 24)
    "channels_last_pw14": (Case(1, 2, 3, 28, 28, 36, 2, 14, 14), "channels_last"),  # 2-element (pw * C = 42)
    "w_stride_2": (Case(1, 2, 3, 8, 12, 20, 1, 4, 4), "w_stride_2"),  # 1 element, register-staged
    "misaligned": (Case(1, 2, 3, 16, 16, 24, 2, 8, 8), "offset"),  # pointer off by one element: 1 element
    "tiles_odd_e": (Case(3, 4, 2, 40, 56, 257, 2, 8, 8), "contiguous"),  # 2 M tiles, 3 N tiles, odd E
}


def _restride(video: torch.Tensor, memory: str) -> torch.Tensor:
    """The same logical (B, T, C, H, W) video with other strides or a misaligned start."""
    if memory == "channels_last":
        out = video.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3).detach()
        assert out.stride(-1) == video.shape[2]
        return out
    if memory == "w_stride_2":
        wide = torch.empty(*video.shape[:-1], 2 * video.shape[-1], dtype=video.dtype, device=video.device)
        out = wide[..., ::2].copy_(video)
        assert out.stride(-1) == 2
        return out.detach()
    if memory == "offset":
        flat = torch.empty(video.numel() + 1, dtype=video.dtype, device=video.device)
        return flat[1:].view(video.shape).copy_(video).detach()
    return video.detach()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(VECTOR_CASES))
def test_16bit_vector_widths_forward_and_gradients(dtype, name):
    case, memory = VECTOR_CASES[name]
    inp = make_inputs(case, device="cuda", dtype=dtype, cls=True, pos="token")
    inp.video = _restride(inp.video, memory).requires_grad_()
    inp.weight.requires_grad_()
    out = run_cuda(inp)
    ref_inp = as_float64_leaves(inp)
    ref = reference_float64(ref_inp)
    plain = lk.patch_embed(
        inp.video, inp.weight, inp.bias, inp.pos_embed, cls_token=inp.cls_token, backend="reference"
    ).detach()
    err = (out.double() - ref).abs().max().item()
    plain_err = (plain.double() - ref).abs().max().item()
    assert err <= 2 * plain_err + 1e-3 * scaled_tolerance(ref, 1.0), (err, plain_err)
    grad_out = torch.randn_like(out)
    grads = poisoned(lambda: torch.autograd.grad(out, [inp.video, inp.weight], grad_out))
    ref_grads = torch.autograd.grad(ref, [ref_inp.video, ref_inp.weight], grad_out.double())
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=scaled_tolerance(want, 2e-2))


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "name", ["pw8_contiguous", "pw14", "channels_last", "channels_last_pw14", "w_stride_2", "tiles_odd_e"]
)
def test_uint8_video_vector_widths(weight_dtype, name):
    case, memory = VECTOR_CASES[name]
    inp = make_inputs(case, device="cuda", dtype=weight_dtype, video_dtype=torch.uint8, cls=False, pos="slot")
    inp.video = _restride(inp.video, memory)
    mean, std = [0.45, 0.40, 0.50][: case.channels], [0.22, 0.25, 0.21][: case.channels]
    out = run_cuda(inp, mean=mean, std=std)
    ref_inp = as_float64_leaves(inp)
    shape = (1, 1, case.channels, 1, 1)
    m = torch.tensor(mean, dtype=torch.float64, device="cuda").view(shape)
    s = torch.tensor(std, dtype=torch.float64, device="cuda").view(shape)
    ref_inp.video = (inp.video.double() / 255.0 - m) / s
    ref = reference_float64(ref_inp)
    rel = 1e-5 if weight_dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ref, rtol=rel, atol=scaled_tolerance(ref, rel))


def test_pos_embed_view_at_an_odd_element():
    """The 16-bit epilogue reads pos in pairs; a pos view starting at an odd element must still be right."""
    case = VECTOR_CASES["pw8_contiguous"][0]
    inp = make_inputs(case, device="cuda", dtype=torch.bfloat16, cls=True, pos="slot")
    flat = torch.empty(inp.pos_embed.numel() + 1, device="cuda", dtype=torch.bfloat16)
    inp.pos_embed = flat[1:].view(inp.pos_embed.shape).copy_(inp.pos_embed)
    assert inp.pos_embed.is_contiguous() and inp.pos_embed.data_ptr() % 4 != 0
    out = run_cuda(inp)
    ref = reference_float64(inp)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=scaled_tolerance(ref, 2e-2))
