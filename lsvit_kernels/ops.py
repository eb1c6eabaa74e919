"""The patch-embedding op in one file: schema, per-device kernels, fake, autograd, autocast, public function.

How one call runs::

    patch_embed(video, weight, ..., backend=None)            validates once (geometry), folds mean/std, reads
      |                                                      the backend asked for by name (registry)
      v
    torch.ops.lsvit.patch_embed(video, weight, bias, pos, cls, backend)          the op, declared once below
      |  dispatcher: Autocast* kernel (casts, then redispatches), Autograd (``_setup_context`` / ``_backward``)
      v
    the op's kernel for the tensors' device (``_register_kernels``)       CPU: backends "cpu", "reference";
      |                                                                   CUDA: "triton", "cuda", "reference";
      v                                                                   any other device: "reference"
    registry.resolve(device, backend, dtype).forward(...)   the named backend, else the first that can run
      v
    backends/*.py: the Triton launch, torch.ops.lsvit.native_* (csrc/), or the PyTorch reference

The backward is ``lsvit::patch_embed_backward``, dispatched the same way, with the forward's ``backend``
argument: the backend is named once, by the caller's thread, before the op is called, and the op's arguments
carry it to the backward (under ``torch.compile`` it is a constant of the traced graph, and the guard on the
thread's ``use_backend`` state recompiles for another choice), so the backward always runs where the forward
ran. With ``backend=None`` both pick the device's first available backend for the weight's dtype, a fixed
choice per process.

The compiled library's kernels are registered by C++ (``TORCH_LIBRARY_IMPL``, csrc/register.cpp) on the
kernel-level schemas ``lsvit::native_patch_embed_forward`` / ``_backward``, declared here too, so that every
schema of the package lives in this file and the package imports without the library. They stay separate
from ``lsvit::patch_embed`` because the op's CPU and CUDA kernels also run other backends by name (tests,
benchmarks, users) and fall back to the reference when the library is not built.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Optional

import torch
from torch import Tensor

from . import geometry, onnx, registry

# Kernel-level schemas implemented by csrc/ (TORCH_LIBRARY_IMPL for CPU and CUDA).
_lib = torch.library.Library("lsvit", "FRAGMENT")
_lib.define(
    "native_patch_embed_forward(Tensor video, Tensor weight, Tensor? bias, Tensor? pos_embed, "
    "Tensor? cls_token) -> Tensor"
)
_lib.define(
    "native_patch_embed_backward(Tensor grad_tokens, Tensor video, Tensor weight, int pos_rows, bool has_bias, "
    "bool has_cls, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def _grid_of(video: Tensor, weight: Tensor, cls_token: Optional[Tensor]) -> geometry.PatchGrid:
    return geometry.grid_of(video.shape, weight.shape, has_cls=cls_token is not None)


def _fake_tokens(video, weight, bias, pos_embed, cls_token, backend=None):
    """Fake forward (shapes for FakeTensor / torch.compile) of ``patch_embed`` and the kernel-level op."""
    return weight.new_empty(_grid_of(video, weight, cls_token).output_shape)


def _fake_grads(video, weight, pos_rows, has_bias, has_cls, output_mask) -> list[Optional[Tensor]]:
    """Fake backward: (grad_video, grad_weight, grad_bias, grad_pos, grad_cls), None where not produced."""
    e = weight.shape[0]
    wanted = [
        output_mask[0],
        output_mask[1],
        output_mask[2] and has_bias,
        output_mask[3] and pos_rows > 0,
        output_mask[4] and has_cls,
    ]
    shapes = [video.shape, weight.shape, (e,), (pos_rows, e), (e,)]
    dtypes = [video.dtype] + [weight.dtype] * 4
    return [weight.new_empty(s, dtype=d) if w else None for s, d, w in zip(shapes, dtypes, wanted, strict=True)]


torch.library.register_fake("lsvit::native_patch_embed_forward", _fake_tokens, lib=_lib)
torch.library.register_fake(
    "lsvit::native_patch_embed_backward",
    lambda grad_tokens, video, weight, *flags: tuple(_fake_grads(video, weight, *flags)),
    lib=_lib,
)


def _run_forward(device_type, video, weight, bias, pos_embed, cls_token, backend):
    grid = _grid_of(video, weight, cls_token)
    if grid.batch == 0:
        return weight.new_empty(grid.output_shape)
    chosen = registry.resolve(device_type, backend, weight.dtype)
    out = chosen.forward(video, weight, bias, pos_embed, cls_token)
    registry.mark_ran(chosen.name)
    return out


def _run_backward(device_type, grad_tokens, video, weight, pos_rows, has_bias, has_cls, output_mask, backend):
    mask = [bool(m) for m in output_mask]
    mask[2] &= has_bias
    mask[3] &= pos_rows > 0
    mask[4] &= has_cls
    chosen = registry.resolve(device_type, backend, weight.dtype)
    grads = chosen.backward(grad_tokens.contiguous(), video, weight, pos_rows, has_bias, has_cls, mask)
    registry.mark_ran(chosen.name)
    placeholder = weight.new_empty(0)
    return [g if (m and g is not None) else placeholder.clone() for g, m in zip(grads, mask)]


# The op and its backward. The decorated functions are the default kernels (CompositeExplicitAutograd): any
# device without a kernel of its own (meta, mps, xpu, ...) runs the reference there.
@torch.library.custom_op("lsvit::patch_embed", mutates_args=())
def _patch_embed(
    video: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    pos_embed: Optional[Tensor],
    cls_token: Optional[Tensor],
    backend: Optional[str],
) -> Tensor:
    """Tokens (B, T', S + N, E) of a logical (B, T, C, H, W) video; see docs/op.md."""
    return _run_forward(video.device.type, video, weight, bias, pos_embed, cls_token, backend)


@torch.library.custom_op("lsvit::patch_embed_backward", mutates_args=())
def _patch_embed_backward(
    grad_tokens: Tensor,
    video: Tensor,
    weight: Tensor,
    pos_rows: int,
    has_bias: bool,
    has_cls: bool,
    output_mask: Sequence[bool],
    backend: Optional[str],
) -> list[Tensor]:
    """(grad_video, grad_weight, grad_bias, grad_pos, grad_cls); an empty tensor where not asked for."""
    return _run_backward(
        video.device.type, grad_tokens, video, weight, pos_rows, has_bias, has_cls, output_mask, backend
    )


def _register_kernels(forward_op, backward_op, run_forward, run_backward) -> None:
    """Register one forward and one backward kernel per device type of ``registry.AUTO_ORDER`` with the
    dispatcher (``custom_op.register_kernel``, PyTorch's CPU / CUDA dispatch keys).

    Each kernel runs the backend its call names, else the first backend of its device's list that can run the
    weight's dtype here (``registry.resolve``). A sibling op follows the same pattern: declare it with
    ``torch.library.custom_op`` (its body is the default kernel for other devices), write ``run_forward(device_type,
    *args)`` / ``run_backward(...)``, and call this.
    """
    for device_type in registry.AUTO_ORDER:

        def forward_kernel(*args, _device=device_type):
            return run_forward(_device, *args)

        def backward_kernel(*args, _device=device_type):
            return run_backward(_device, *args)

        forward_op.register_kernel(device_type)(forward_kernel)
        backward_op.register_kernel(device_type)(backward_kernel)


_register_kernels(_patch_embed, _patch_embed_backward, _run_forward, _run_backward)
_patch_embed.register_fake(_fake_tokens)


@_patch_embed_backward.register_fake
def _patch_embed_backward_fake(grad_tokens, video, weight, pos_rows, has_bias, has_cls, output_mask, backend):
    grads = _fake_grads(video, weight, pos_rows, has_bias, has_cls, output_mask)
    return [g if g is not None else weight.new_empty(0) for g in grads]


# Autocast: a kernel of its own on each autocast dispatch key (torchvision's csrc/ops/autocast), so every caller
# (the function below, swapped convs, scripted and compiled models, LSViT) gets it from the dispatcher. The op is
# a projection like the conv it replaces, which autocast runs in the region's lower-precision dtype: every
# floating tensor except float64 is cast to that dtype (read per call: ``torch.library.register_autocast`` fixes
# one dtype per device), uint8 video stays as it is, and the op runs with autocast off. The casts are
# differentiable, so gradients reach float32 parameters in float32.
_AUTOCAST_KEYS = {"cpu": "AutocastCPU", "cuda": "AutocastCUDA", "xpu": "AutocastXPU", "mps": "AutocastMPS"}


def _autocast_kernel(device_type: str):
    def kernel(*args):
        dtype = torch.get_autocast_dtype(device_type)

        def cast(a):  # what autocast casts for a conv: floating tensors of this device, float64 excepted
            eligible = isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64
            return a.to(dtype) if eligible and a.device.type == device_type else a

        with torch.autocast(device_type, enabled=False):
            return _patch_embed(*(cast(a) for a in args))

    return kernel


for _device_type, _key in _AUTOCAST_KEYS.items():
    if torch.amp.is_autocast_available(_device_type):
        _lib.impl("patch_embed", _autocast_kernel(_device_type), _key)


def _setup_context(ctx, inputs, output):
    video, weight, bias, pos_embed, cls_token, backend = inputs
    ctx.save_for_backward(video, weight)  # the video itself, never a patch matrix
    ctx.pos_rows = 0 if pos_embed is None else pos_embed.shape[0]
    ctx.has_bias = bias is not None
    ctx.has_cls = cls_token is not None
    ctx.backend = backend  # named by the caller before the op ran: the backward runs on the same backend


def _backward(ctx, grad_tokens):
    video, weight = ctx.saved_tensors
    mask = list(ctx.needs_input_grad[:5])
    if not any(mask):
        return None, None, None, None, None, None
    grads = _patch_embed_backward(
        grad_tokens.contiguous(), video, weight, ctx.pos_rows, ctx.has_bias, ctx.has_cls, mask, ctx.backend
    )
    return tuple(g if m else None for g, m in zip(grads, mask)) + (None,)


_patch_embed.register_autograd(_backward, setup_context=_setup_context)


# Double backward. The backward's outputs are linear in grad_tokens and bilinear in (video, weight):
#   grad_video  = unpatch(G W)       grad_weight = G^T patches(X)      (G: grad_tokens' patch slots)
#   grad_bias   = sum G              grad_pos    = sum grad_tokens     grad_cls = sum of the CLS slots
# so the vector-Jacobian products with upstream gradients (u_video, u_weight, u_bias, u_pos, u_cls) are the op
# and its backward again, on the same backend:
#   d grad_tokens = patch_embed(u_video, W) + patch_embed(X, u_weight, u_bias, u_pos, u_cls)
#   d video       = backward(grad_tokens, X, u_weight).grad_video
#   d weight      = backward(grad_tokens, u_video, W).grad_weight
# Both calls are differentiable themselves, so every order of derivative works on every backend that has a
# forward and a backward.


def _setup_backward_context(ctx, inputs, output):
    grad_tokens, video, weight, pos_rows, has_bias, has_cls, output_mask, backend = inputs
    ctx.save_for_backward(grad_tokens, video, weight)
    ctx.pos_rows, ctx.has_bias, ctx.has_cls, ctx.backend = pos_rows, has_bias, has_cls, backend
    ctx.produced = [bool(output_mask[0]), bool(output_mask[1]), output_mask[2] and has_bias]
    ctx.produced += [output_mask[3] and pos_rows > 0, output_mask[4] and has_cls]


def _backward_of_backward(ctx, upstream):
    grad_tokens, video, weight = ctx.saved_tensors
    u_video, u_weight, u_bias, u_pos, u_cls = (
        u if (made and u is not None) else None for u, made in zip(upstream, ctx.produced)
    )
    need_grad_tokens, need_video, need_weight = ctx.needs_input_grad[:3]
    d_grad_tokens = d_video = d_weight = None
    cls_slot = weight.new_zeros(weight.shape[0]) if ctx.has_cls else None  # keeps the CLS slot in the shape
    if need_grad_tokens:
        terms = []
        if u_video is not None:
            terms.append(_patch_embed(u_video, weight, None, None, cls_slot, ctx.backend))
        if any(u is not None for u in (u_weight, u_bias, u_pos, u_cls)):
            w = torch.zeros_like(weight) if u_weight is None else u_weight
            cls = cls_slot if u_cls is None else u_cls
            terms.append(_patch_embed(video, w, u_bias, u_pos, cls, ctx.backend))
        d_grad_tokens = sum(terms[1:], terms[0]) if terms else None
    flags = (ctx.pos_rows, ctx.has_bias, ctx.has_cls)
    if need_video and u_weight is not None:
        mask = [True, False, False, False, False]
        d_video = _patch_embed_backward(grad_tokens, video, u_weight, *flags, mask, ctx.backend)[0]
    if need_weight and u_video is not None:
        mask = [False, True, False, False, False]
        d_weight = _patch_embed_backward(grad_tokens, u_video, weight, *flags, mask, ctx.backend)[1]
    return d_grad_tokens, d_video, d_weight, None, None, None, None, None


_patch_embed_backward.register_autograd(_backward_of_backward, setup_context=_setup_backward_context)


def fold_normalization(
    weight: Tensor,
    bias: Optional[Tensor],
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    pixel_scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Fold ``(x * pixel_scale - mean_c) / std_c`` into a (E, C, t, ph, pw) weight and its bias.

    W' = W * pixel_scale / std_c and b' = b - sum_k W mean_c / std_c, so a kernel fed raw pixels (uint8 with
    ``pixel_scale=1/255``) computes exactly what normalize-then-embed computes, with no normalization pass.
    Differentiable: gradients reach the original weight and bias.
    """
    c = weight.shape[1]
    mean_t = torch.tensor(channel_values("mean", mean, c), dtype=torch.float64, device=weight.device)
    std_t = torch.tensor(channel_values("std", std, c), dtype=torch.float64, device=weight.device)
    shape = (1, c) + (1,) * (weight.dim() - 2)
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32  # fold in at least fp32
    w_acc = weight.to(acc)
    scale = (pixel_scale / std_t).to(acc).view(shape)
    shift = (mean_t / std_t).to(acc).view(shape)
    folded_w = (w_acc * scale).to(weight.dtype)
    folded_b = -(w_acc * shift).sum(dim=tuple(range(1, weight.dim())))
    if bias is not None:
        folded_b = folded_b + bias.to(acc)
    return folded_w, folded_b.to(weight.dtype)


def channel_values(name: str, values: Sequence[float] | Tensor, channels: int) -> tuple[float, ...]:
    """``mean`` / ``std`` as ``channels`` finite floats (``std`` also > 0), or a clear error.

    Checked before any work: a NaN or infinite value would turn every token into NaN, a zero ``std`` into inf.
    The checks run on Python floats, so tracing (``torch.export``, ``torch.compile``) sees constants.
    """
    fix = (
        f"pass {channels} finite numbers, one per channel, in the video's units (e.g. ImageNet's "
        f"mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225) for uint8 or [0, 1] video)"
    )
    if isinstance(values, Tensor):
        if values.dtype == torch.bool or values.is_complex():
            raise TypeError(f"{name} must hold real numbers; got a {values.dtype} tensor: {fix}")
        floats = values.detach().to("cpu", torch.float64).flatten().tolist()
    else:
        items = [values] if isinstance(values, (int, float)) else values
        if isinstance(values, (str, bytes)) or not isinstance(items, Iterable):
            raise TypeError(f"{name} must be a sequence of numbers or a tensor; got {values!r}: {fix}")
        items = list(items)
        bad = [v for v in items if isinstance(v, bool) or not isinstance(v, numbers.Real)]
        if bad:
            raise TypeError(f"{name} must hold numbers; got {bad[0]!r} in {values!r}: {fix}")
        floats = [float(v) for v in items]
    if len(floats) != channels:
        raise ValueError(f"{name} needs one value per channel (C={channels}); got {len(floats)}: {fix}")
    if not all(math.isfinite(v) for v in floats):
        raise ValueError(f"{name} must be finite; got {floats}: {fix}")
    if name == "std" and not all(v > 0 for v in floats):
        raise ValueError(f"std must be positive (it divides every pixel); got {floats}: {fix}")
    return tuple(floats)


def patch_embed(
    video: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    pos_embed: Optional[Tensor] = None,
    *,
    cls_token: Optional[Tensor] = None,
    layout: str = "BTCHW",
    mean: Optional[Sequence[float] | Tensor] = None,
    std: Optional[Sequence[float] | Tensor] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Cut a video into patches or tubelets, project them, add bias + positional embedding: one op.

    Args:
        video: ``(B, T, C, H, W)`` (``layout="BTCHW"``) or ``(B, C, T, H, W)`` (``layout="BCTHW"``), any
            strides, float32/float16/bfloat16/float64 (the weight's dtype) or uint8. A 4D ``(B, C, H, W)`` image
            is one frame.
        weight: ``nn.Conv3d`` layout ``(E, C, t, P, P)`` or ``nn.Conv2d`` layout ``(E, C, P, P)``.
        bias: ``(E,)`` or None.
        pos_embed: ``(S + N, E)`` broadcast over time steps, or ``(T' (S + N), E)`` one row per token (a leading
            dimension of 1 is allowed). With a CLS token, row 0 of each step belongs to the CLS slot.
        cls_token: ``E`` values (any shape); when given each time step gets a leading CLS slot,
            ``out[:, :, 0] = cls_token + pos_embed[0]``.
        mean, std: per-channel normalization folded into weight and bias (for uint8 video, mean/std are in
            [0, 1] units, as torchvision's): C finite numbers each, std > 0. No normalization pass runs.
        backend: a registered backend name; None chooses automatically (see ``registry``).

    Returns:
        ``(B, T', S + N, E)`` contiguous tokens in the weight's dtype (``(B, S + N, E)`` for a 4D image);
        ``.view(B * T', S + N, E)`` gives the per-step sequences, ``.flatten(1, 2)`` the per-clip sequence.
    """
    is_image = video.dim() == 4
    b, t, c, h, w = geometry.video_dims(video.shape, layout)
    if is_image:
        video = video.unsqueeze(1)
    elif layout == "BCTHW":
        video = video.permute(0, 2, 1, 3, 4)  # a view: the op reads any strides
    pixel_scale, weight5, pos_embed, cls_token = geometry.checked_operands(video, weight, bias, pos_embed, cls_token)
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ValueError("give both mean and std to fold normalization into the weight, or neither")
        weight5, bias = fold_normalization(weight5, bias, mean, std, pixel_scale)
    elif video.dtype == torch.uint8:
        weight5 = weight5 * pixel_scale  # raw pixels in [0, 255] map to [0, 1]

    args = (
        video,
        weight5.contiguous(),
        None if bias is None else bias.contiguous(),
        None if pos_embed is None else pos_embed.contiguous(),
        None if cls_token is None else cls_token.contiguous(),
    )
    # ONNX has no fused patch embedding: the dynamo exporter traces the same tokens in standard operators.
    if onnx.exporting_with_dynamo():
        out = onnx.decomposition(*args)
    else:  # the backend asked for by this call, this thread's use_backend or LSVIT_BACKEND; None: automatic
        out = _patch_embed(*args, registry.requested_backend(backend))
    return out[:, 0] if is_image else out
