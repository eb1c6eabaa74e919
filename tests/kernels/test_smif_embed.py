"""smif_patch_embed against LSViT's PyTorch input stage (lsvit/smif.py + cat + patch_embed), every backend.

The oracle is the unfused composition differentiated by autograd; the op's forward runs in a backend and its
backward is written out (backends/smif_reference.py), so both directions are checked on fresh random inputs:
2D and 3D, odd sizes, H != W, one frame, windows longer than the clip, strided and BCTHW video, uint8 input.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import lsvit_kernels
from lsvit.smif import SMIF
from lsvit_kernels import patch_embed, registry, smif_embed, smif_patch_embed

from .test_native_cpu import poisoned_allocations
from .threads import run_per_thread

BACKENDS = smif_embed.available_backends("cpu")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ROOT = Path(__file__).resolve().parents[2]


def make_problem(shape, patch, tubelet, embed_dim, dtype, *, motion=True, cls=True, pos="slot", bias=True, window=5):
    """Random parameters of LSViT's input stage; the SMIF parameters far from their init (a small gate would hide
    errors in the fusion) and the threshold near the typical motion, so both sides of relu occur."""
    b, t, c, h, w = shape
    weight = torch.randn(embed_dim, c, tubelet, patch[0], patch[1], dtype=dtype) * 0.2
    if tubelet == 1 and window % 2:  # exercise the Conv2d weight layout
        weight = weight[:, :, 0]
    smif = SMIF(c, window=window).to(dtype)
    with torch.no_grad():
        smif.threshold_logit.copy_(torch.randn(c) * 0.3 - 0.2)
        smif.fuse.weight.copy_(torch.randn_like(smif.fuse.weight) * 0.5)
        smif.fuse.bias.copy_(torch.randn(c) * 0.2)
        smif.gate.copy_(torch.randn(c) * 0.5)
    steps, tokens = t // tubelet, (1 if cls else 0) + (h // patch[0]) * (w // patch[1])
    pos_rows = {"slot": tokens, "token": steps * tokens, None: 0}[pos]
    return {
        "weight": weight,
        "motion_weight": torch.randn_like(weight) * 0.2 if motion else None,
        "bias": torch.randn(embed_dim, dtype=dtype) if bias else None,
        "pos_embed": torch.randn(pos_rows, embed_dim, dtype=dtype) if pos else None,
        "cls_token": torch.randn(embed_dim, dtype=dtype) if cls else None,
        "smif": smif,
    }


def smif_args(p):
    smif = p["smif"]
    return {
        "threshold_logit": smif.threshold_logit,
        "fuse_weight": smif.fuse.weight,
        "fuse_bias": smif.fuse.bias,
        "gate": smif.gate,
        "window": 2 * smif.radius + 1,
    }


def normalize(x, mean, std):
    shape = (1, 1, -1, 1, 1)
    return (x - torch.tensor(mean, dtype=x.dtype).view(shape)) / torch.tensor(std, dtype=x.dtype).view(shape)


def oracle(video, p, mean=None, std=None):
    """Today's input stage: normalize, SMIF's X' and S as PyTorch passes, cat, patch_embed with cat([W, W_m])."""
    if video.dtype == torch.uint8:
        x = video.double() / 255
        if mean is not None:
            x = (x - torch.tensor(mean, dtype=x.dtype).view(1, 1, -1, 1, 1)) / torch.tensor(std, dtype=x.dtype).view(
                1, 1, -1, 1, 1
            )
        x = x.to(p["weight"].dtype)
    else:
        x = video
    weight, smif = p["weight"], p["smif"]
    if p["motion_weight"] is not None:
        x, weight = torch.cat([smif(x), smif.signed_motion(x)], 2), torch.cat([weight, p["motion_weight"]], 1)
    else:
        x = smif(x)
    return patch_embed(x, weight, p["bias"], p["pos_embed"], cls_token=p["cls_token"], backend="reference")


def fused(video, p, backend, **kwargs):
    return smif_patch_embed(
        video, p["weight"], p["motion_weight"], p["bias"], p["pos_embed"], cls_token=p["cls_token"],
        backend=backend, **smif_args(p), **kwargs,
    )  # fmt: skip


def parameters(p):
    names = ["weight", "motion_weight", "bias", "pos_embed", "cls_token"]
    tensors = [p[n] for n in names if p[n] is not None]
    return tensors + list(p["smif"].parameters())


CASES = [  # (B, T, C, H, W), patch, tubelet, window, extra options
    ((2, 5, 3, 6, 10), (3, 5), 1, 5, {}),
    ((1, 4, 2, 4, 6), (2, 3), 2, 5, {"pos": "token"}),
    ((2, 3, 3, 4, 4), (2, 2), 1, 7, {"cls": False, "bias": False}),  # window longer than the clip
    ((1, 1, 3, 4, 6), (2, 3), 1, 3, {"pos": None}),  # one frame: no motion
    ((2, 6, 1, 3, 5), (3, 5), 3, 3, {"motion": False}),
    ((1, 4, 3, 4, 4), (4, 4), 1, 1, {}),  # window 1: no neighbours
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,patch,tubelet,window,options", CASES)
def test_forward_and_every_gradient_match_pytorch_float64(backend, shape, patch, tubelet, window, options):
    p = make_problem(shape, patch, tubelet, 7, torch.float64, window=window, **options)
    wide = torch.randn(shape[0], shape[1], shape[2] + 2, shape[3], shape[4], dtype=torch.float64)
    video = wide[:, :, 1:-1].requires_grad_()  # strided: a channel slice
    params = parameters(p)
    for t in params:
        t.requires_grad_()
    expected = oracle(video, p)
    got = fused(video, p, backend)
    assert lsvit_kernels.last_backend() == backend
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(expected)
    want = torch.autograd.grad(expected, [video, *params], upstream, allow_unused=True)
    have = torch.autograd.grad(got, [video, *params], upstream, allow_unused=True)
    for w, h in zip(want, have):
        if w is None:  # a parameter the output does not depend on (SMIF's fusion without neighbours)
            assert h is None or h.abs().max() == 0
        else:
            torch.testing.assert_close(h, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wanted", ["all", "weight", "motion_weight", "smif.threshold_logit", "smif.fuse.weight"])
def test_parameter_gradients_without_a_video_gradient(backend, wanted):
    """Training: the clip needs no gradient, so the backward skips the input gradient of S; every subset of
    parameters asked for still gets the oracle's gradients."""
    p = make_problem((2, 5, 3, 6, 10), (3, 5), 1, 7, torch.float64, pos="token")
    named = {"weight": p["weight"], "motion_weight": p["motion_weight"]}
    named.update({f"smif.{n}": t for n, t in p["smif"].named_parameters()})
    params = list(named.values()) if wanted == "all" else [named[wanted]]
    for t in params:
        t.requires_grad_()
    video = torch.randn(2, 5, 3, 6, 10, dtype=torch.float64)
    upstream = torch.randn(oracle(video, p).shape, dtype=torch.float64)
    want = torch.autograd.grad(oracle(video, p), params, upstream)
    have = torch.autograd.grad(fused(video, p, backend), params, upstream)
    for w, h in zip(want, have, strict=True):
        torch.testing.assert_close(h, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    p = make_problem((1, 4, 2, 2, 3), (1, 3), 2, 3, torch.float64)
    smif = p["smif"]
    video = torch.randn(1, 4, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    inputs = [video, p["weight"], p["motion_weight"], p["bias"], p["pos_embed"], p["cls_token"]]
    inputs += [smif.threshold_logit.detach(), smif.fuse.weight.detach(), smif.fuse.bias.detach(), smif.gate.detach()]
    inputs = [t.detach().clone().requires_grad_() for t in inputs]

    def op(v, w, wm, b, pos, cls, theta, fw, fb, gate):
        return smif_patch_embed(
            v, w, wm, b, pos, cls_token=cls, threshold_logit=theta, fuse_weight=fw, fuse_bias=fb, gate=gate,
            backend=backend,
        )  # fmt: skip

    assert torch.autograd.gradcheck(op, inputs, eps=1e-6, atol=1e-6, fast_mode=True)


# Low precision: error against the float64 oracle at most 2x that of the unfused PyTorch path in the same dtype
# (plus a floor for the few elements where both are tiny).
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_forward_and_gradients(backend, dtype):
    shape = (2, 5, 3, 8, 12)
    p64 = make_problem(shape, (4, 4), 1, 16, torch.float64)
    p = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in p64.items()}
    p["smif"] = SMIF(3, 5).to(dtype)
    p["smif"].load_state_dict(p64["smif"].state_dict())
    video64 = torch.randn(shape, dtype=torch.float64)
    video = video64.to(dtype)
    floor = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]

    def run(fn, v, params):
        v = v.clone().requires_grad_()
        tensors = parameters(params)
        for t in tensors:
            t.requires_grad_()
        out = fn(v, params)
        grads = torch.autograd.grad(out, [v, *tensors], torch.ones_like(out) / out.numel() ** 0.5)
        return [out.detach(), *grads]

    truth = run(oracle, video64, p64)
    plain = run(oracle, video, p)
    mine = run(lambda v, q: fused(v, q, backend), video, p)
    for t, a, m in zip(truth, plain, mine):
        scale = t.abs().max().item() + 1e-30
        plain_error = (a.double() - t).abs().max().item() / scale
        my_error = (m.double() - t).abs().max().item() / scale
        assert my_error <= 2 * plain_error + floor, (my_error, plain_error)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_uint8_input_normalized_per_gathered_value(backend, normalize):
    """uint8 pixels with mean/std give what normalize-then-SMIF gives (not what folding into W would)."""
    shape = (2, 4, 3, 8, 6)
    p = make_problem(shape, (4, 3), 2, 9, torch.float64)
    video = torch.randint(0, 256, shape, dtype=torch.uint8)
    kwargs = {"mean": MEAN, "std": STD} if normalize else {}
    expected = oracle(video, p, **kwargs)
    torch.testing.assert_close(fused(video, p, backend, **kwargs), expected, rtol=1e-10, atol=1e-10)
    params = parameters(p)
    for t in params:
        t.requires_grad_()
    upstream = torch.randn_like(expected)
    want = torch.autograd.grad(oracle(video, p, **kwargs), params, upstream)
    have = torch.autograd.grad(fused(video, p, backend, **kwargs), params, upstream)
    for w, h in zip(want, have):
        torch.testing.assert_close(h, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_video_with_mean_std_and_bcthw_layout(backend):
    shape = (1, 3, 3, 4, 4)
    p = make_problem(shape, (2, 2), 1, 5, torch.float64)
    video = torch.rand(1, 3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    normalized = (video - torch.tensor(MEAN, dtype=video.dtype).view(1, 1, 3, 1, 1)) / torch.tensor(
        STD, dtype=video.dtype
    ).view(1, 1, 3, 1, 1)
    expected = oracle(normalized, p)
    got = fused(video.transpose(1, 2), p, backend, mean=MEAN, std=STD, layout="BCTHW")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(expected)
    (want,) = torch.autograd.grad(expected, video, upstream)
    (have,) = torch.autograd.grad(got, video, upstream)
    torch.testing.assert_close(have, want, rtol=1e-9, atol=1e-10)


def test_bad_arguments_name_the_problem():
    p = make_problem((1, 3, 3, 4, 4), (2, 2), 1, 5, torch.float32)
    video = torch.randn(1, 3, 3, 4, 4)
    with pytest.raises(ValueError, match="window=4 must be an odd integer"):
        smif_patch_embed(video, p["weight"], **{**smif_args(p), "window": 4})
    with pytest.raises(ValueError, match=r"fuse_weight must have shape \[3, 6\]"):
        smif_patch_embed(video, p["weight"], **{**smif_args(p), "fuse_weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="motion_weight must have the weight's shape"):
        smif_patch_embed(video, p["weight"], torch.zeros(5, 3, 2, 2, 2), **smif_args(p))
    with pytest.raises(TypeError, match="cast the video"):
        smif_patch_embed(video.double(), p["weight"], **smif_args(p))
    with pytest.raises(ValueError, match="give both mean and std"):
        smif_patch_embed(video, p["weight"], mean=MEAN, **smif_args(p))
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        smif_patch_embed(video, p["weight"], backend="nope", **smif_args(p))
    with lsvit_kernels.use_backend("cuda"):  # the patch op's, without a SMIF kernel: SMIF in torch, then cuda
        assert smif_embed.resolve("cpu") == "reference"


def test_torch_compile_traces_the_op():
    p = make_problem((1, 3, 3, 4, 4), (2, 2), 1, 5, torch.float32)
    video = torch.randn(1, 3, 3, 4, 4)
    compiled = torch.compile(lambda v: fused(v, p, None), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(video), fused(video, p, None))


def _spy_on_smif(monkeypatch):
    """Record (thread name, backend, "forward"/"backward") for every SMIF forward of the "cpu" and "reference"
    backends, and every patch-embedding backward (the projection's part of the shared SMIF backward)."""
    calls = []
    for name in ("cpu", "reference"):
        forward, devices, why = smif_embed.BACKENDS[name]

        def spy_forward(*args, _real=forward, _name=name):
            calls.append((threading.current_thread().name, _name, "forward"))
            return _real(*args)

        monkeypatch.setitem(smif_embed.BACKENDS, name, (spy_forward, devices, why))
        patch_backend = registry.get_backend(name)

        def spy_backward(*args, _real=patch_backend.backward, _name=name):
            calls.append((threading.current_thread().name, _name, "backward"))
            return _real(*args)

        monkeypatch.setattr(patch_backend, "backward", spy_backward)
    return calls


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the compiled library is not built")
def test_compiled_backward_runs_on_the_forward_backend_in_every_thread(monkeypatch):
    """Compiled once, called from threads that each choose a backend with use_backend: every backward runs on the
    backend its own forward ran on, and each forward on the one its thread chose (None: the automatic cpu)."""
    calls = _spy_on_smif(monkeypatch)
    p = make_problem((1, 3, 3, 4, 6), (2, 3), 1, 4, torch.float32)
    params = parameters(p)
    video = torch.randn(1, 3, 3, 4, 6)
    compiled = torch.compile(lambda v: fused(v, p, None), backend="aot_eager")
    for t in params:
        t.requires_grad_()

    def step(backend):
        with lsvit_kernels.use_backend(backend):
            grads = torch.autograd.grad(compiled(video).sum(), params)
        assert all(torch.isfinite(g).all() for g in grads)

    chosen = run_per_thread(step)  # "first" compiles, with the cpu backend
    for thread, backend in chosen.items():
        ran = [(name, kind) for where, name, kind in calls if where == thread]
        assert {name for name, _ in ran} == {backend}, (backend, ran)
        assert [kind for _, kind in ran] == ["forward", "backward", "backward"] * 3, ran  # X' with W, S with W_m


def test_eager_backward_runs_on_the_forward_backend_after_the_block(monkeypatch):
    calls = _spy_on_smif(monkeypatch)
    p = make_problem((1, 3, 3, 4, 6), (2, 3), 1, 4, torch.float32)
    weight = p["weight"].requires_grad_()
    with lsvit_kernels.use_backend("reference"):
        out = fused(torch.randn(1, 3, 3, 4, 6), p, None)
    out.sum().backward()  # outside the block: still the forward's backend
    # only W needs a gradient: one projection backward (X' with W), the one of S with W_m is skipped
    assert [(name, kind) for _, name, kind in calls] == [("reference", "forward"), ("reference", "backward")]
    assert weight.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_runs_the_op_in_the_region_dtype(backend):
    p = make_problem((1, 3, 3, 8, 8), (4, 4), 1, 16, torch.float32)
    video = torch.randn(1, 3, 3, 8, 8)
    params = parameters(p)
    for t in params:
        t.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused(video, p, backend)
    assert out.dtype == torch.bfloat16
    expected = fused(video, p, backend)
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.1)
    grads = torch.autograd.grad(out.float().sum(), params)
    assert all(g.dtype == torch.float32 for g in grads)  # through the casts, to the float32 parameters


@pytest.mark.skipif("cpu" not in BACKENDS, reason="the compiled library is not built")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.uint8])
def test_cpu_kernel_threads_and_row_runs(threads, dtype):
    """Runs of tokens split at every thread chunk boundary, CLS rows between runs, W stride != 1; fresh memory is
    NaN-poisoned so an element the kernel leaves unwritten fails."""
    shape = (2, 5, 3, 6, 35)  # 7 patches per row of patches: runs that chunks of 8 rows cut
    p = make_problem(shape, (3, 5), 1, 6, torch.float64, pos="token")
    wide = torch.randint(0, 256, (2, 5, 3, 6, 70), dtype=torch.uint8)
    video = (wide if dtype == torch.uint8 else wide.double() / 255)[..., ::2]  # W stride 2
    kwargs = {"mean": MEAN, "std": STD}
    expected = oracle(video, p, **kwargs) if dtype == torch.uint8 else oracle(normalize(video, MEAN, STD), p)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with poisoned_allocations():
            got = fused(video, p, "cpu", **kwargs)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    """Schema, fake (meta) implementation, autograd registration and dispatch of the op and its CPU kernel."""
    p = make_problem((1, 3, 2, 4, 6), (2, 3), 1, 5, torch.float64, pos="token")
    smif = p["smif"]
    video = torch.randn(1, 3, 2, 4, 6, dtype=torch.float64, requires_grad=True)
    weight = p["weight"].unsqueeze(2).contiguous().requires_grad_()
    motion_weight = p["motion_weight"].unsqueeze(2).contiguous()
    params = [smif.threshold_logit.detach(), smif.fuse.weight.detach().flatten(1), smif.fuse.bias.detach()]
    args = (video, weight, motion_weight, p["bias"], p["pos_embed"], p["cls_token"], *params, smif.gate.detach())
    torch.library.opcheck(torch.ops.lsvit.smif_patch_embed.default, (*args, 1, None, None, 1.0, backend))
    if backend == "cpu":
        small = [torch.rand(2, dtype=torch.float64), params[1], params[2], smif.gate.detach()]
        kernel_args = (video.detach(), weight.detach(), motion_weight, p["bias"], p["pos_embed"], p["cls_token"])
        kernel_args += (*small, torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 1)
        torch.library.opcheck(torch.ops.lsvit.native_smif_patch_embed_forward.default, kernel_args)


def test_triton_kernel_compiles_for_sm90_without_local_memory():
    """Static check without a GPU: the forward kernel compiles for sm_90 (uint8 clip, bf16 weights, the 3D
    benchmark shape) to a cubin whose PTX uses no local memory (no spills)."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # interpreted kernels cannot compile
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    script = (
        "import torch; from lsvit_kernels.backends import triton_smif; "
        "k = triton_smif.compile_for_gpu(90, torch.bfloat16, torch.uint8); "
        "print(len(k.asm['cubin']) > 0, '.local' in k.asm['ptx'])"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["True", "False"], done.stdout
