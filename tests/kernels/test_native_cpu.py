"""The compiled CPU kernel (backend "cpu", csrc/cpu/patch_embed_cpu.cpp) against a float64 conv3d oracle."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap

import pytest
import torch

import lsvit_kernels as lk
from lsvit_kernels import registry
from lsvit_kernels.backends import native

from .native_cases import CASES, Case, as_float64_leaves, leaves, make_inputs, reference_float64, scaled_tolerance

pytestmark = pytest.mark.skipif(
    not native._has_ext(), reason=f"the compiled library is not built: {native._load_error}"
)


@contextlib.contextmanager
def poisoned_allocations():
    """Every at::empty inside is NaN-filled, so an output element the kernel forgets to write fails the test."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = was_filling


def run_cpu(inp, **kwargs):
    with poisoned_allocations():
        out = lk.patch_embed(
            inp.video,
            inp.weight,
            inp.bias,
            inp.pos_embed,
            cls_token=inp.cls_token,
            layout=inp.layout,
            backend="cpu",
            **kwargs,
        )
    assert lk.last_backend() == "cpu"
    return out


@contextlib.contextmanager
def cpu_tuning(schedule: str = "auto", block_rows: int = 0):
    """The kernel's schedule and rows per block (0: the default) inside the block, restored afterwards."""
    old_schedule = torch.ops.lsvit_cpu.set_schedule(schedule)
    old_rows = torch.ops.lsvit_cpu.set_block_rows(block_rows)
    try:
        yield
    finally:
        torch.ops.lsvit_cpu.set_schedule(old_schedule)
        torch.ops.lsvit_cpu.set_block_rows(old_rows)


@pytest.fixture(params=[(1, "onednn"), (2, "onednn"), (1, "aten"), (2, "aten")], ids=lambda p: f"threads{p[0]}-{p[1]}")
def kernel_config(request):
    """Every oracle test at 1 and 2 threads (2: the kGemm schedule, 1: kBlocks) and with both GEMM engines."""
    threads, engine = request.param
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    old_engine = torch.ops.lsvit_cpu.set_gemm_engine(engine)
    try:
        yield request.param
    finally:
        torch.ops.lsvit_cpu.set_gemm_engine(old_engine)
        torch.set_num_threads(old_threads)


def test_poisoning_reaches_cpp_allocations():
    with poisoned_allocations():
        assert torch.empty(4).isnan().all()


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("layout", ["BTCHW", "BCTHW"])
@pytest.mark.parametrize(
    "cls,pos,bias",
    [
        (False, "slot", True),
        (True, "token", True),
        (True, "none", False),
        (False, "token", False),
        (True, "slot", True),
        (False, "none", True),
    ],
)
def test_forward_matches_float64(kernel_config, case, layout, cls, pos, bias):
    inp = make_inputs(case, layout=layout, cls=cls, pos=pos, bias=bias)
    out = run_cpu(inp)
    ref = reference_float64(inp)
    assert out.shape == ref.shape and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=scaled_tolerance(ref, 1e-5))


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize(
    "layout,cls,pos",
    [("BTCHW", True, "slot"), ("BCTHW", False, "token"), ("BTCHW", True, "token"), ("BCTHW", True, "none")],
)
def test_every_gradient_matches_float64(kernel_config, case, layout, cls, pos):
    inp = make_inputs(case, layout=layout, cls=cls, pos=pos)
    for t in (inp.video, inp.weight, inp.bias, inp.pos_embed, inp.cls_token):
        if t is not None:
            t.requires_grad_()
    ref_inp = as_float64_leaves(inp)
    out = run_cpu(inp)
    grad_out = torch.randn_like(out)
    with poisoned_allocations():
        grads = torch.autograd.grad(out, leaves(inp), grad_out)
    ref = reference_float64(ref_inp)
    ref_grads = torch.autograd.grad(ref, leaves(ref_inp), grad_out.double())
    assert len(grads) == len(ref_grads) == 3 + (pos != "none") + cls
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=scaled_tolerance(want, 1e-5))


@pytest.mark.parametrize("schedule", ["blocks", "gemm"])
@pytest.mark.parametrize("block_rows", [7, 64])
def test_small_uneven_blocks(kernel_config, block_rows, schedule):
    """Blocks of unequal sizes (not dividing the rows), many per time step and per worker."""
    with cpu_tuning(schedule, block_rows):
        _check_uneven_blocks()


def _check_uneven_blocks():
    for cls in (False, True):
        inp = make_inputs(CASES[3], cls=cls, pos="token")
        for t in (inp.video, inp.weight, inp.bias):
            t.requires_grad_()
        out = run_cpu(inp)
        grad_out = torch.randn_like(out)
        with poisoned_allocations():
            grads = torch.autograd.grad(out, [inp.video, inp.weight, inp.bias], grad_out)
        ref_inp = as_float64_leaves(inp)
        ref = reference_float64(ref_inp)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=scaled_tolerance(ref, 1e-5))
        ref_grads = torch.autograd.grad(ref, [ref_inp.video, ref_inp.weight, ref_inp.bias], grad_out.double())
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=scaled_tolerance(want, 1e-5))


def test_float64_is_exact_enough_for_gradcheck(kernel_config):
    inp = make_inputs(Case(1, 2, 2, 4, 6, 3, 2, 2, 3), dtype=torch.float64, cls=True, pos="token")
    args = [t.requires_grad_() for t in (inp.video, inp.weight, inp.bias, inp.pos_embed, inp.cls_token)]

    def fn(video, weight, bias, pos, cls):
        return lk.patch_embed(video, weight, bias, pos, cls_token=cls, backend="cpu")

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("schedule", ["blocks", "gemm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_16bit_error_at_most_twice_plain_pytorch(kernel_config, dtype, case, schedule):
    """bf16 runs a bf16 GEMM (fp32 accumulation) under both schedules; small blocks make several of them."""
    inp = make_inputs(case, dtype=dtype, cls=True, pos="slot", layout="BCTHW")
    with cpu_tuning(schedule, 5):
        out = run_cpu(inp)
    ref = reference_float64(inp)
    plain = lk.patch_embed(
        inp.video, inp.weight, inp.bias, inp.pos_embed, cls_token=inp.cls_token, layout="BCTHW", backend="reference"
    )
    err = (out.double() - ref).abs().max().item()
    plain_err = (plain.double() - ref).abs().max().item()
    assert out.dtype == dtype
    assert err <= 2 * plain_err + 1e-3 * scaled_tolerance(ref, 1.0), (err, plain_err)


@pytest.mark.parametrize("schedule", ["blocks", "gemm"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_rows", [5, 0])
def test_16bit_gradients(kernel_config, dtype, schedule, block_rows):
    """Several bf16 grad_weight blocks (5 rows: each block's sum rounded once, summed in fp32) and one block."""
    inp = make_inputs(CASES[0], dtype=dtype, cls=True, pos="token")
    for t in (inp.video, inp.weight, inp.bias, inp.pos_embed, inp.cls_token):
        t.requires_grad_()
    with cpu_tuning(schedule, block_rows):
        out = run_cpu(inp)
        grad_out = torch.randn_like(out)
        with poisoned_allocations():
            grads = torch.autograd.grad(out, leaves(inp), grad_out)
    ref_inp = as_float64_leaves(inp)
    ref_grads = torch.autograd.grad(reference_float64(ref_inp), leaves(ref_inp), grad_out.double())
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == dtype
        # one rounding of a fp32-accumulated sum to 8 (bf16) / 11 (fp16) mantissa bits
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=scaled_tolerance(want, 1e-2))


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_uint8_video_with_folded_normalization(kernel_config, weight_dtype):
    inp = make_inputs(CASES[0], dtype=weight_dtype, video_dtype=torch.uint8, cls=True, pos="slot")
    mean, std = [0.45, 0.40, 0.50], [0.22, 0.25, 0.21]
    inp.weight.requires_grad_()
    out = run_cpu(inp, mean=mean, std=std)
    (grad_weight,) = torch.autograd.grad(out, [inp.weight], torch.ones_like(out))

    ref_inp = as_float64_leaves(inp)
    m = torch.tensor(mean, dtype=torch.float64).view(1, 1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 1, 3, 1, 1)
    ref_inp.video = (inp.video.double() / 255.0 - m) / s
    ref = reference_float64(ref_inp)
    (ref_grad_weight,) = torch.autograd.grad(ref, [ref_inp.weight], torch.ones_like(ref))
    rel = 1e-5 if weight_dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), ref, rtol=rel, atol=scaled_tolerance(ref, rel))
    torch.testing.assert_close(
        grad_weight.double(), ref_grad_weight, rtol=rel, atol=scaled_tolerance(ref_grad_weight, rel)
    )


def test_non_contiguous_video_of_any_strides(kernel_config):
    case = CASES[0]
    base = torch.randn(case.batch, case.frames * 2, case.channels, case.width, case.height + 3, requires_grad=True)
    video = base[:, ::2, :, :, 1 : 1 + case.height].transpose(3, 4)  # every 2nd frame, W stride != 1, an offset
    assert video.shape == (case.batch, case.frames, case.channels, case.height, case.width)
    assert video.stride(-1) != 1
    inp = make_inputs(case, cls=True, pos="token")
    inp.video = video
    out = run_cpu(inp)
    ref_inp = as_float64_leaves(inp)
    ref = reference_float64(ref_inp)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=scaled_tolerance(ref, 1e-5))
    grad_out = torch.randn_like(out)
    with poisoned_allocations():
        (grad_video,) = torch.autograd.grad(out, [video], grad_out)
    (ref_grad_video,) = torch.autograd.grad(ref, [ref_inp.video], grad_out.double())
    torch.testing.assert_close(
        grad_video.double(), ref_grad_video, rtol=1e-5, atol=scaled_tolerance(ref_grad_video, 1e-5)
    )


def test_auto_selection_prefers_cpu_backend():
    inp = make_inputs(CASES[1])
    with lk.use_backend(None):
        lk.patch_embed(inp.video, inp.weight, inp.bias, inp.pos_embed)
    assert lk.last_backend() == "cpu"
    assert lk.available_backends("cpu")[0] == "cpu"


def test_opcheck_with_cpu_kernel_active():
    inp = make_inputs(CASES[0], cls=True, pos="token")
    video = inp.video.requires_grad_()
    weight = inp.weight.requires_grad_()
    args = (video, weight.contiguous(), inp.bias, inp.pos_embed, inp.cls_token, "cpu")
    torch.library.opcheck(torch.ops.lsvit.patch_embed.default, args)
    plain = (inp.video.detach(), inp.weight.detach(), inp.bias, inp.pos_embed, inp.cls_token)
    torch.library.opcheck(torch.ops.lsvit.native_patch_embed_forward.default, plain)
    grad = torch.randn(2, 2, 1 + CASES[0].num_spatial, 24)
    torch.library.opcheck(
        torch.ops.lsvit.native_patch_embed_backward.default,
        (grad, inp.video.detach(), inp.weight.detach(), inp.pos_embed.shape[0], True, True, [True] * 5),
    )


TUBELETS = "not divisible into tubelets"  # the kernel's invariant message


@pytest.mark.parametrize(
    "video_shape,match,kernel_match",
    [
        ((1, 3, 3, 8, 8), r"num_frames=3 is not divisible by tubelet_size=2; use 2 or 4, or tubelet_size=1", TUBELETS),
        ((1, 2, 3, 10, 8), r"video height=10 is not divisible by patch height=4", TUBELETS),
        ((1, 2, 2, 8, 8), r"video has C=2 channels but weight expects C=3", "weight shape"),
        ((1, 2, 3, 8), None, "rank"),  # the public function reads a 4D video as one image
    ],
)
def test_public_errors_and_kernel_invariants(video_shape, match, kernel_match):
    """The public function raises the user-facing error; a direct kernel call stops at a terse invariant."""
    video, weight = torch.randn(video_shape), torch.randn(4, 3, 2, 4, 4)
    with pytest.raises(RuntimeError, match=f"lsvit kernel: .*{kernel_match}"):
        torch.ops.lsvit.native_patch_embed_forward(video, weight, None, None, None)
    if match is not None:
        with pytest.raises(ValueError, match=match):
            lk.patch_embed(video, weight, backend="cpu")


def test_kernel_invariants_dtype_and_pos_rows():
    video, weight = torch.randn(1, 2, 3, 8, 8), torch.randn(4, 3, 2, 4, 4)
    with pytest.raises(RuntimeError, match="lsvit kernel: operand device/dtype"):
        torch.ops.lsvit.native_patch_embed_forward(video, weight, torch.randn(4, dtype=torch.float64), None, None)
    with pytest.raises(RuntimeError, match="lsvit kernel: video dtype"):
        torch.ops.lsvit.native_patch_embed_forward(video.half(), weight, None, None, None)
    with pytest.raises(RuntimeError, match="lsvit kernel: pos_embed rows"):
        torch.ops.lsvit.native_patch_embed_forward(video, weight, None, torch.randn(5, 4), None)


def test_direct_call_returns_undefined_where_mask_is_false():
    inp = make_inputs(CASES[1], pos="slot")
    grad = torch.randn(1, 1, CASES[1].num_spatial, CASES[1].embed_dim)
    grads = torch.ops.lsvit.native_patch_embed_backward(
        grad, inp.video, inp.weight, inp.pos_embed.shape[0], True, False, [False, True, False, True, True]
    )
    assert grads[0] is None and grads[2] is None and grads[4] is None
    assert grads[1].shape == inp.weight.shape and grads[3].shape == inp.pos_embed.shape


def test_missing_library_falls_back_and_named_backend_explains(monkeypatch):
    monkeypatch.setattr(native, "_ext", None)
    monkeypatch.setattr(native, "_load_error", "the compiled library lsvit_kernels._C is not built (test)")
    with pytest.raises(lk.BackendUnavailableError, match="not built"):
        registry.resolve("cpu", "cpu")
    assert registry.resolve("cpu").name == "reference"
    with pytest.raises(RuntimeError, match="not built"):
        native._assert_has_ext()


def test_import_without_the_library_logs_once_and_falls_back(tmp_path):
    script = textwrap.dedent(
        """
        import logging, sys
        sys.modules["lsvit_kernels._C"] = None  # as if the library had never been built
        logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
        import torch, lsvit_kernels as lk
        x, w = torch.randn(1, 2, 3, 8, 8), torch.randn(4, 3, 2, 4, 4)
        lk.patch_embed(x, w); lk.patch_embed(x, w)
        print("RAN", lk.last_backend())
        try:
            lk.patch_embed(x, w, backend="cpu")
        except lk.BackendUnavailableError as err:
            print("RAISED", err)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "RAN reference" in output
    assert "RAISED" in output and "build_ext --inplace" in output
    assert output.count("LOG lsvit_kernels: the compiled library lsvit_kernels._C is not built") == 1, output


def test_conv2d_weight_is_one_frame_tubelet():
    video, weight = torch.randn(2, 3, 3, 8, 12), torch.randn(5, 3, 4, 4)
    out = torch.ops.lsvit.native_patch_embed_forward(video, weight, None, None, None)
    want = torch.ops.lsvit.native_patch_embed_forward(video, weight.unsqueeze(2), None, None, None)
    assert out.shape == (2, 3, 6, 5)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_gemm_engine_switch():
    """oneDNN serves fp32 and bf16 where it runs; fp16 and fp64 (and everything when switched off) use ATen."""
    old = torch.ops.lsvit_cpu.set_gemm_engine("aten")
    try:
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            assert torch.ops.lsvit_cpu.gemm_engine(dtype) == "aten"
        torch.ops.lsvit_cpu.set_gemm_engine("onednn")
        assert torch.ops.lsvit_cpu.gemm_engine(torch.float16) == "aten"
        assert torch.ops.lsvit_cpu.gemm_engine(torch.float64) == "aten"
        torch._C._set_mkldnn_enabled(False)  # torch.backends.mkldnn.enabled = False, without its TF32 warning
        try:
            assert torch.ops.lsvit_cpu.gemm_engine(torch.float32) == "aten"
        finally:
            torch._C._set_mkldnn_enabled(True)
        avx512 = torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16")
        if torch.backends.mkldnn.is_available() and avx512:
            assert torch.ops.lsvit_cpu.gemm_engine(torch.float32) == "onednn"
        with pytest.raises(ValueError, match="must be 'auto', 'bf16kernel', 'onednn' or 'aten'"):
            torch.ops.lsvit_cpu.set_gemm_engine("mkl")
    finally:
        torch.ops.lsvit_cpu.set_gemm_engine(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_engines_agree(dtype):
    """Every GEMM engine gives the same tokens and weight gradient to the dtype's rounding ("bf16kernel" runs
    the bf16 micro-kernel where the CPU has avx512_bf16, else it falls back like "auto")."""
    inp = make_inputs(CASES[3], dtype=dtype, cls=True, pos="slot")
    inp.weight.requires_grad_()
    results = []
    for engine in ("onednn", "aten", "bf16kernel"):
        old = torch.ops.lsvit_cpu.set_gemm_engine(engine)
        try:
            out = run_cpu(inp)
            (grad_weight,) = torch.autograd.grad(out, [inp.weight], torch.ones_like(out))
        finally:
            torch.ops.lsvit_cpu.set_gemm_engine(old)
        results.append((out.double(), grad_weight.double()))
    rel = 1e-5 if dtype == torch.float32 else 2e-2
    for other in results[1:]:
        for got, want in zip(results[0], other, strict=True):
            torch.testing.assert_close(got, want, rtol=rel, atol=scaled_tolerance(want, rel))
