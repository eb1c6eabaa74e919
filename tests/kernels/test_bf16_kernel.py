"""The bf16 micro-kernel engine of the CPU backend (csrc/cpu/bf16_gemm.cpp) against a float64 conv3d oracle.

The kernel multiplies bf16 values exactly, accumulates in fp32 and adds bias + pos in fp32 before one rounding,
so its error is about half a bf16 unit of the result: the tolerance here is that, far tighter than the 16-bit
tests of test_native_cpu.py, and the tests force the engine so that a CPU where "auto" picks it is not needed
to reach it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
import torch

from lsvit_kernels.backends import native

from .native_cases import CASES, Case, as_float64_leaves, leaves, make_inputs, reference_float64, scaled_tolerance
from .test_native_cpu import cpu_tuning, poisoned_allocations, run_cpu


def _cpu_has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not native._has_ext(), reason=f"the compiled library is not built: {native._load_error}"),
    pytest.mark.skipif(not _cpu_has_avx512_bf16(), reason="this CPU has no avx512_bf16"),
]

BF16_RTOL = 2.0**-8  # one rounding to bf16 (half a unit: 2^-9) plus fp32 accumulation


@contextlib.contextmanager
def engine(name: str, threads: int):
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    old = torch.ops.lsvit_cpu.set_gemm_engine(name)
    try:
        yield
    finally:
        torch.ops.lsvit_cpu.set_gemm_engine(old)
        torch.set_num_threads(old_threads)


@pytest.fixture(params=[1, 2], ids=lambda t: f"threads{t}")
def bf16_kernel(request):
    with engine("bf16kernel", request.param):
        assert torch.ops.lsvit_cpu.gemm_engine(torch.bfloat16) == "bf16kernel"
        yield request.param


def _assert_one_rounding(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), ref, rtol=BF16_RTOL, atol=scaled_tolerance(ref, 1e-5))


# Odd K (C t ph pw = 3 * 1 * 3 * 3 = 27), E not a multiple of the 48-column block and above it (50), H != W,
# one frame, and M = 8 * 11 = 88 tokens: blocks of 128 rows keep a remainder strip.
ODD_K = Case(1, 1, 3, 24, 33, 50, 1, 3, 3)
# E = 100 (two full 48-column blocks and 4 columns), K = 2 * 2 * 4 * 4 = 64, 2 steps.
WIDE = Case(2, 4, 2, 16, 12, 100, 2, 4, 4)
KERNEL_CASES = [*CASES, ODD_K, WIDE]


@pytest.mark.parametrize("case", KERNEL_CASES, ids=str)
@pytest.mark.parametrize("layout", ["BTCHW", "BCTHW"])
@pytest.mark.parametrize(
    "cls,pos,bias", [(False, "slot", True), (True, "token", True), (True, "none", False), (False, "none", True)]
)
@pytest.mark.parametrize("block_rows", [0, 9])
def test_forward_is_one_rounding_of_the_exact_result(bf16_kernel, case, layout, cls, pos, bias, block_rows):
    inp = make_inputs(case, dtype=torch.bfloat16, layout=layout, cls=cls, pos=pos, bias=bias)
    with cpu_tuning(block_rows=block_rows):
        out = run_cpu(inp)
    _assert_one_rounding(out, reference_float64(inp))


@pytest.mark.parametrize("case", [CASES[0], ODD_K], ids=str)
def test_uint8_and_non_contiguous_video(bf16_kernel, case):
    inp = make_inputs(case, dtype=torch.bfloat16, video_dtype=torch.uint8, cls=True, pos="slot")
    out = run_cpu(inp)
    exact = dataclasses.replace(inp, weight=(inp.weight * (1.0 / 255.0)))  # the bf16 weight the kernel gets
    _assert_one_rounding(out, reference_float64(exact))
    video = make_inputs(case, dtype=torch.bfloat16).video
    wide = torch.randn(case.batch, case.frames * 2, case.channels, case.width, case.height + 1, dtype=torch.bfloat16)
    inp.video = wide[:, ::2, :, :, 1:].transpose(3, 4)  # every 2nd frame, W stride != 1, an offset
    assert inp.video.shape == video.shape and inp.video.stride(-1) != 1
    _assert_one_rounding(run_cpu(inp), reference_float64(inp))


# An odd number of tokens (15: the last pair has one), K = 54 over two column blocks, E = 50.
ODD_TOKENS = Case(1, 2, 3, 15, 9, 50, 2, 3, 3)


@pytest.mark.parametrize("case", [ODD_K, ODD_TOKENS, CASES[2]], ids=str)
@pytest.mark.parametrize("block_rows", [0, 9])
def test_every_gradient(bf16_kernel, case, block_rows):
    """grad_weight is the kernel's (fp32 sum over every token, one rounding: the forward's tolerance); the other
    gradients come from the shared code and get the 16-bit tolerance of test_native_cpu.py."""
    inp = make_inputs(case, dtype=torch.bfloat16, cls=True, pos="token", layout="BCTHW")
    for t in (inp.video, inp.weight, inp.bias, inp.pos_embed, inp.cls_token):
        t.requires_grad_()
    with cpu_tuning(block_rows=block_rows):
        out = run_cpu(inp)
        grad_out = torch.randn_like(out)
        with poisoned_allocations():
            grads = torch.autograd.grad(out, leaves(inp), grad_out)
    ref_inp = as_float64_leaves(inp)
    ref_grads = torch.autograd.grad(reference_float64(ref_inp), leaves(ref_inp), grad_out.double())
    _assert_one_rounding(grads[1], ref_grads[1])
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=scaled_tolerance(want, 1e-2))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("block_rows", [0, 3, 5])
def test_weight_gradient_token_split_over_threads(threads, block_rows):
    """With more threads grad_weight splits the token pairs: each worker sums a range of chunks into its own fp32
    accumulator, summed in worker order. 15 tokens make 8 pairs, in 1 chunk (block_rows 0: fewer chunks than
    threads), 4 chunks of 2 pairs (3) or 3 chunks of 3, 3 and 2 pairs (5): splits of 1 + 3 / 1 + 1 + 2 or 1 + 2 /
    1 + 1 + 1 chunks, the last pair holding one token. One rounding of the exact sum, and the same bits on every
    call."""
    inp = make_inputs(ODD_TOKENS, dtype=torch.bfloat16, cls=True, pos="slot", layout="BCTHW")
    inp.weight.requires_grad_()
    with engine("bf16kernel", threads), cpu_tuning(block_rows=block_rows):
        out = run_cpu(inp)
        grad_out = torch.randn_like(out)
        with poisoned_allocations():
            (first,) = torch.autograd.grad(out, [inp.weight], grad_out, retain_graph=True)
        (second,) = torch.autograd.grad(out, [inp.weight], grad_out)
    ref_inp = as_float64_leaves(inp)
    (want,) = torch.autograd.grad(reference_float64(ref_inp), [ref_inp.weight], grad_out.double())
    _assert_one_rounding(first, want)
    assert torch.equal(first, second)


def test_weight_gradient_of_uint8_video(bf16_kernel):
    """The kernel-level op (raw pixels, no 1/255 scale) against the oracle on the same pixels."""
    inp = make_inputs(ODD_TOKENS, dtype=torch.bfloat16, video_dtype=torch.uint8, cls=False, pos="none")
    grad_tokens = torch.randn(1, 1, ODD_TOKENS.num_spatial, ODD_TOKENS.embed_dim, dtype=torch.bfloat16)
    with poisoned_allocations():
        grads = torch.ops.lsvit.native_patch_embed_backward(
            grad_tokens, inp.video, inp.weight, 0, True, False, [False, True, False, False, False]
        )
    ref_inp = as_float64_leaves(inp)
    (want,) = torch.autograd.grad(reference_float64(ref_inp), [ref_inp.weight], grad_tokens.double())
    _assert_one_rounding(grads[1], want)


def test_auto_picks_the_kernel_from_512_tokens_and_other_engines_still_run():
    """ "auto" (the default) runs the kernel for bf16 calls of at least 512 patch tokens on 1 and 2 threads, its
    grad_weight on 2 threads from 2048 tokens (smaller calls measured faster on oneDNN: docs/native.md);
    "bf16kernel" runs it at any size and thread count; "onednn" and "aten" never."""
    for threads in (1, 2):
        with engine("auto", threads):
            assert torch.ops.lsvit_cpu.gemm_engine(torch.bfloat16) == "bf16kernel"
            assert torch.ops.lsvit_cpu.gemm_engine(torch.float32) in ("onednn", "aten")
            assert not torch.ops.lsvit_cpu.uses_bf16_kernel(511)
            assert torch.ops.lsvit_cpu.uses_bf16_kernel(512)
            weight_grad_min = 512 if threads == 1 else 2048
            assert not torch.ops.lsvit_cpu.uses_bf16_kernel(weight_grad_min - 1, True)
            assert torch.ops.lsvit_cpu.uses_bf16_kernel(weight_grad_min, True)
            assert torch.ops.lsvit_cpu.fused_engine(torch.bfloat16, 512) == "bf16kernel"
            assert torch.ops.lsvit_cpu.fused_engine(torch.bfloat16, weight_grad_min - 1, True) == "onednn"
            assert torch.ops.lsvit_cpu.fused_engine(torch.bfloat16, weight_grad_min, True) == "bf16kernel"
            assert torch.ops.lsvit_cpu.fused_engine(torch.bfloat16, 511) == "onednn"
            assert torch.ops.lsvit_cpu.fused_engine(torch.float32, 512) == "onednn"
    with engine("bf16kernel", 2):
        assert torch.ops.lsvit_cpu.uses_bf16_kernel(1, True)
    big = Case(1, 2, 3, 96, 88, 20, 1, 4, 4)  # 2 x 24 x 22 = 1056 tokens
    assert big.batch * big.steps * big.num_spatial >= 512
    inp = make_inputs(big, dtype=torch.bfloat16, cls=True, pos="slot")
    ref = reference_float64(inp)
    for threads in (1, 2):
        with engine("auto", threads):
            _assert_one_rounding(run_cpu(inp), ref)
    for name in ("onednn", "aten"):
        with engine(name, 1):
            assert torch.ops.lsvit_cpu.gemm_engine(torch.bfloat16) != "bf16kernel"
            assert not torch.ops.lsvit_cpu.uses_bf16_kernel(10**6) and not torch.ops.lsvit_cpu.uses_bf16_kernel(
                10**6, True
            )
            assert torch.ops.lsvit_cpu.fused_engine(torch.bfloat16, 10**6) == name
            out = run_cpu(inp)
        torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=scaled_tolerance(ref, 1e-2))
