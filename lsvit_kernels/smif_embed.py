"""``smif_patch_embed``: LSViT's input stage in one op, SMIF's short-term motion computed inside the patch gather.

For a clip ``X`` (B, T, C, H, W) (float, or uint8 with mean/std) the op returns the tokens of

    patch_embed([X'; S], [W, W_m], bias, pos_embed, cls_token)
    D = mean_j |X_j - X_t|,  M = relu(D - softplus(theta)),  X' = X + gamma (W_f [X; M] + b_f),
    S = mean_j sign(j - t) (X_j - X_t),   j over the frames within ``radius`` of t, clipped at the clip's ends

(lsvit/smif.py and docs/model.md) without any (B, T, 2C, H, W) tensor: the compiled kernels read each tubelet
pixel's neighbouring frames while gathering it, compute ``X'`` and ``S`` in registers and write them straight into
the GEMM's panel. Without ``motion_weight`` the op embeds ``X'`` alone. uint8 input is normalized on the fly, per
gathered value (SMIF thresholds differences, so the normalization cannot be folded into the weight).

Backends: "reference" (the PyTorch passes, backends/smif_reference.py), "cpu" (csrc/cpu/smif_embed_cpu.cpp),
"triton" (backends/triton_smif.py; CUDA, and CPU tensors in Triton's interpreter), chosen like the op's
(``backend=``, ``use_backend``, ``LSVIT_BACKEND``, else the fastest available). The call runs as the
patch-embedding op's does (ops.py): ``smif_patch_embed`` validates once (geometry) and names the backend once, in
the caller's thread; the name is an argument of ``lsvit::smif_patch_embed``, whose per-device kernels run it, and
of its backward ``lsvit::smif_patch_embed_backward``, so the backward runs where the forward ran (eager or
compiled). The backward is shared by all backends: the patch-embedding backward on the recomputed ``[X'; S]``
(on the patch op's backend of the same name), then SMIF's backward in torch ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from . import geometry, ops, registry
from .backends import native, smif_reference, triton_smif

_lib = torch.library.Library("lsvit", "FRAGMENT")
# Kernel-level schema implemented by csrc/cpu/smif_embed_cpu.cpp. The small SMIF parameters come prepared in the
# accumulation dtype (fp32, fp64 for fp64): threshold = softplus(theta) (C,), fuse_weight (C, 2C), fuse_bias,
# gate (C,), and the per-channel input map x = video * input_scale + input_shift (C,).
_lib.define(
    "native_smif_patch_embed_forward(Tensor video, Tensor weight, Tensor? motion_weight, Tensor? bias, "
    "Tensor? pos_embed, Tensor? cls_token, Tensor threshold, Tensor fuse_weight, Tensor fuse_bias, Tensor gate, "
    "Tensor input_scale, Tensor input_shift, int radius) -> Tensor"
)


def _fake_native(video, weight, motion_weight, bias, pos_embed, cls_token, *rest):
    return ops._fake_tokens(video, weight, bias, pos_embed, cls_token)


torch.library.register_fake("lsvit::native_smif_patch_embed_forward", _fake_native, lib=_lib)


def _native_forward(call: smif_reference.SmifCall) -> Tensor:
    return torch.ops.lsvit.native_smif_patch_embed_forward(
        *call[:6], *smif_reference.kernel_parameters(call), call.radius
    )


def _native_unavailable(device_type: str) -> Optional[str]:
    reason = native._cpu_unavailable(device_type)
    if reason is None and not torch._C._dispatch_has_kernel_for_dispatch_key(
        "lsvit::native_smif_patch_embed_forward", "CPU"
    ):
        reason = f"the compiled library was built without the SMIF kernel; {native.REBUILD_HINT}"
    return reason


# name -> (forward, devices, unavailable_reason(device_type)); the automatic order per device comes first.
BACKENDS = {
    "reference": (smif_reference.forward, ("cpu", "cuda", "mps", "xpu", "meta"), lambda device_type: None),
    "cpu": (_native_forward, ("cpu",), _native_unavailable),
    "triton": (triton_smif.forward, triton_smif.DEVICES, triton_smif.unavailable_reason),
}
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("triton", "reference")}


def available_backends(device_type: str = "cpu") -> list[str]:
    """Backends of ``smif_patch_embed`` that can run on ``device_type`` here."""
    return [n for n, (_, devices, why) in BACKENDS.items() if device_type in devices and why(device_type) is None]


def resolve(device_type: str, explicit: Optional[str] = None) -> str:
    """The backend that computes a call: named (``backend=``, ``use_backend``, ``LSVIT_BACKEND``) or automatic.
    A backend of the patch op without a SMIF kernel gives "reference", whose patch embedding then runs on it, so
    one setting serves both ops."""
    name = registry.requested_backend(explicit)
    if name in set(registry.backend_names()) - set(BACKENDS):
        return "reference"  # a patch-op backend without a SMIF kernel ("cuda"): SMIF in torch, the patch op there
    if name and name != "auto":
        if name not in BACKENDS:
            registry.get_backend(name)  # raises ValueError naming the known backends
        _, devices, why = BACKENDS[name]
        reason = why(device_type) if device_type in devices else f"it runs on {'/'.join(devices)} tensors"
        if reason is not None:
            raise registry.BackendUnavailableError(f"backend {name!r} was requested but cannot run: {reason}")
        return name
    for name in AUTO_ORDER.get(device_type, ("reference",)):
        _, devices, why = BACKENDS[name]
        if device_type in devices and why(device_type) is None:
            return name
    return "reference"


def _patch_backend(backend: Optional[str], dtype: Optional[torch.dtype] = None) -> Optional[str]:
    """The patch op's backend for the projection of ``[X'; S]`` of a call that names ``backend``: the patch op's
    backend of that name (that takes ``dtype``, when given), else None (the patch op's automatic choice)."""
    if backend not in registry.backend_names():
        return None
    return backend if dtype is None or dtype in registry.get_backend(backend).dtypes else None


def _run_forward(
    device_type, video, weight, motion_weight, bias, pos_embed, cls_token, threshold_logit, fuse_weight, fuse_bias,
    gate, radius, mean, std, pixel_scale, backend,
):  # fmt: skip
    grid = ops._grid_of(video, weight, cls_token)
    if grid.batch == 0:
        return weight.new_empty(grid.output_shape)
    name = resolve(device_type, backend)
    call = smif_reference.SmifCall(
        video, weight, motion_weight, bias, pos_embed, cls_token, threshold_logit, fuse_weight, fuse_bias, gate,
        radius, mean, std, pixel_scale,
    )  # fmt: skip
    if name == "reference":  # its patch embedding runs on the named patch-op backend (and marks it), else auto
        return BACKENDS[name][0](call, _patch_backend(backend))
    out = BACKENDS[name][0](call)
    registry.mark_ran(name)
    return out


def _run_backward(
    device_type, grad_tokens, video, weight, motion_weight, threshold_logit, fuse_weight, fuse_bias, gate, radius,
    mean, std, pixel_scale, pos_rows, has_bias, has_cls, needs, backend,
):  # fmt: skip
    saved = (video, weight, motion_weight, threshold_logit, fuse_weight, fuse_bias, gate)
    needs = [bool(n) for n in needs]
    grads = smif_reference.backward(
        grad_tokens.contiguous(), saved, radius, (mean, std, pixel_scale), pos_rows, has_bias, has_cls, needs,
        _patch_backend(backend, weight.dtype),
    )  # fmt: skip
    placeholder = weight.new_empty(0)
    return [g if g is not None else placeholder.clone() for g in grads]


# The op and its backward, declared as ops.py declares the patch-embedding op: the decorated functions are the
# default kernels (any device without a kernel of its own runs them), ``ops._register_kernels`` adds one kernel
# per device type, and the backward op receives the forward's ``backend``, named once by the caller's thread.
@torch.library.custom_op("lsvit::smif_patch_embed", mutates_args=())
def _smif_patch_embed(
    video: Tensor,
    weight: Tensor,
    motion_weight: Optional[Tensor],
    bias: Optional[Tensor],
    pos_embed: Optional[Tensor],
    cls_token: Optional[Tensor],
    threshold_logit: Tensor,
    fuse_weight: Tensor,
    fuse_bias: Tensor,
    gate: Tensor,
    radius: int,
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
    pixel_scale: float,
    backend: Optional[str],
) -> Tensor:
    """Tokens (B, T', S + N, E) of a logical (B, T, C, H, W) clip; arguments normalized by ``smif_patch_embed``."""
    return _run_forward(
        video.device.type, video, weight, motion_weight, bias, pos_embed, cls_token, threshold_logit, fuse_weight,
        fuse_bias, gate, radius, mean, std, pixel_scale, backend,
    )  # fmt: skip


@torch.library.custom_op("lsvit::smif_patch_embed_backward", mutates_args=())
def _smif_patch_embed_backward(
    grad_tokens: Tensor,
    video: Tensor,
    weight: Tensor,
    motion_weight: Optional[Tensor],
    threshold_logit: Tensor,
    fuse_weight: Tensor,
    fuse_bias: Tensor,
    gate: Tensor,
    radius: int,
    mean: Optional[Sequence[float]],
    std: Optional[Sequence[float]],
    pixel_scale: float,
    pos_rows: int,
    has_bias: bool,
    has_cls: bool,
    needs: Sequence[bool],
    backend: Optional[str],
) -> list[Tensor]:
    """Grads of (video, weight, motion_weight, bias, pos_embed, cls_token, threshold_logit, fuse_weight, fuse_bias,
    gate); an empty tensor where not asked for."""
    return _run_backward(
        video.device.type, grad_tokens, video, weight, motion_weight, threshold_logit, fuse_weight, fuse_bias, gate,
        radius, mean, std, pixel_scale, pos_rows, has_bias, has_cls, needs, backend,
    )  # fmt: skip


ops._register_kernels(_smif_patch_embed, _smif_patch_embed_backward, _run_forward, _run_backward)


@_smif_patch_embed.register_fake
def _fake_tokens(video, weight, motion_weight, bias, pos_embed, cls_token, *rest):
    return ops._fake_tokens(video, weight, bias, pos_embed, cls_token)


@_smif_patch_embed_backward.register_fake
def _fake_grads(grad_tokens, video, weight, motion_weight, threshold_logit, fuse_weight, fuse_bias, gate, *rest):
    pos_rows, has_bias, has_cls, needs, _ = rest[-5:]
    e, c = weight.shape[0], weight.shape[1]
    made = [needs[0], needs[1], needs[2] and motion_weight is not None, needs[3] and has_bias]
    made += [needs[4] and pos_rows > 0, needs[5] and has_cls, *needs[6:10]]
    shapes = [video.shape, weight.shape, weight.shape, (e,), (pos_rows, e), (e,), (c,), (c, 2 * c), (c,), (c,)]
    dtypes = [video.dtype] + [weight.dtype] * 5 + [t.dtype for t in (threshold_logit, fuse_weight, fuse_bias, gate)]
    return [weight.new_empty(s if m else (0,), dtype=d if m else weight.dtype) for s, d, m in zip(shapes, dtypes, made)]


def _autocast_kernel(device_type: str):
    """Autocast runs the op as the patch-embedding op does (ops.py): floating tensors of the device except float64
    in the region's dtype, uint8 video as it is, the op itself with autocast off."""

    def kernel(*args):
        dtype = torch.get_autocast_dtype(device_type)

        def cast(a):
            eligible = isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64
            return a.to(dtype) if eligible and a.device.type == device_type else a

        with torch.autocast(device_type, enabled=False):
            return _smif_patch_embed(*(cast(a) for a in args))

    return kernel


for _device_type, _key in ops._AUTOCAST_KEYS.items():
    if torch.amp.is_autocast_available(_device_type):
        _lib.impl("smif_patch_embed", _autocast_kernel(_device_type), _key)


def _setup_context(ctx, inputs, output):
    (video, weight, motion_weight, bias, pos_embed, cls_token, theta, fuse_w, fuse_b, gate) = inputs[:10]
    radius, mean, std, pixel_scale, backend = inputs[10:]
    ctx.save_for_backward(video, weight, motion_weight, theta, fuse_w, fuse_b, gate)
    ctx.options = (radius, mean, std, pixel_scale)
    ctx.pos_rows = 0 if pos_embed is None else pos_embed.shape[0]
    ctx.has_bias, ctx.has_cls = bias is not None, cls_token is not None
    ctx.backend = backend  # named by the caller before the op ran: the backward runs on the same backend


def _backward(ctx, grad_tokens):
    needs = list(ctx.needs_input_grad[:10])
    if not any(needs):
        return (None,) * 15
    grads = _smif_patch_embed_backward(
        grad_tokens.contiguous(), *ctx.saved_tensors, *ctx.options, ctx.pos_rows, ctx.has_bias, ctx.has_cls, needs,
        ctx.backend,
    )  # fmt: skip
    return tuple(g if n else None for g, n in zip(grads, needs)) + (None,) * 5


_smif_patch_embed.register_autograd(_backward, setup_context=_setup_context)


def smif_patch_embed(
    video: Tensor,
    weight: Tensor,
    motion_weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    pos_embed: Optional[Tensor] = None,
    *,
    threshold_logit: Tensor,
    fuse_weight: Tensor,
    fuse_bias: Tensor,
    gate: Tensor,
    window: int = 5,
    cls_token: Optional[Tensor] = None,
    layout: str = "BTCHW",
    mean: Optional[Sequence[float] | Tensor] = None,
    std: Optional[Sequence[float] | Tensor] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """SMIF + patch embedding of a clip in one op: ``patch_embed([X'; S], [weight, motion_weight], ...)``.

    Args:
        video: ``(B, T, C, H, W)`` (``layout="BTCHW"``) or ``(B, C, T, H, W)``, any strides; the weight's float
            dtype, or uint8 pixels (then ``mean``/``std`` in [0, 1] units, as ``lsvit.data.normalize_clip``).
        weight, bias, pos_embed, cls_token: as ``lsvit_kernels.patch_embed`` (weight ``(E, C, t, P, P)`` or
            ``(E, C, P, P)``).
        motion_weight: shaped like ``weight``; projects the signed motion ``S``. None: ``X'`` alone is embedded.
        threshold_logit, fuse_weight, fuse_bias, gate: SMIF's parameters (``SMIF.threshold_logit``,
            ``SMIF.fuse.weight`` ``(C, 2C)`` or ``(C, 2C, 1, 1)``, ``SMIF.fuse.bias``, ``SMIF.gate``), cast to the
            weight's dtype.
        window: SMIF's odd window ``2r + 1`` (``smif_window``).
        mean, std: per-channel normalization applied to every value SMIF reads: ``(x * s - mean) / std`` with
            ``s = 1/255`` for uint8 and 1 for float video.
        backend: "reference", "cpu", "triton" or None (automatic).

    Returns:
        ``(B, T', S + N, E)`` tokens in the weight's dtype, as ``patch_embed``.
    """
    if video.dim() != 5:
        raise ValueError(f"video must be 5D (B, T, C, H, W) or (B, C, T, H, W); got shape {list(video.shape)}")
    geometry.video_dims(video.shape, layout)
    if layout == "BCTHW":
        video = video.permute(0, 2, 1, 3, 4)  # a view: the op reads any strides
    if not isinstance(window, int) or window < 1 or window % 2 == 0:
        raise ValueError(f"window={window!r} must be an odd integer >= 1 (SMIF's 2r + 1 frames)")
    pixel_scale, weight5, pos_embed, cls_token = geometry.checked_operands(video, weight, bias, pos_embed, cls_token)
    c = weight5.shape[1]
    if motion_weight is not None:
        motion5 = motion_weight.unsqueeze(2) if motion_weight.dim() == 4 else motion_weight
        if motion5.shape != weight5.shape:
            raise ValueError(
                f"motion_weight must have the weight's shape {list(weight.shape)}; got {list(motion_weight.shape)}"
            )
        geometry.check_companion("motion_weight", motion_weight, weight)
        motion_weight = motion5.contiguous()
    fuse_weight = fuse_weight.reshape(fuse_weight.shape[0], -1) if fuse_weight.dim() == 4 else fuse_weight
    smif_params = {"threshold_logit": threshold_logit, "fuse_weight": fuse_weight, "fuse_bias": fuse_bias}
    smif_params["gate"] = gate
    expected = {"threshold_logit": (c,), "fuse_weight": (c, 2 * c), "fuse_bias": (c,), "gate": (c,)}
    for name, tensor in smif_params.items():
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(
                f"{name} must have shape {list(expected[name])} for C={c} channels; got {list(tensor.shape)}"
            )
        geometry.check_companion(name, tensor, weight, same_dtype=False)  # cast to the weight's dtype below
    theta, fuse_w, fuse_b, gate = (t.to(weight.dtype).contiguous() for t in smif_params.values())
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std to normalize the video, or neither")
    if mean is not None:
        mean, std = list(ops.channel_values("mean", mean, c)), list(ops.channel_values("std", std, c))
    name = registry.requested_backend(backend)  # named once, here: the op's kernels and its backward get it
    if name is not None:
        resolve(video.device.type, name)  # an unknown or unavailable name fails here, before any work
    return _smif_patch_embed(
        video,
        weight5.contiguous(),
        motion_weight,
        None if bias is None else bias.contiguous(),
        None if pos_embed is None else pos_embed.contiguous(),
        None if cls_token is None else cls_token.contiguous(),
        theta,
        fuse_w,
        fuse_b,
        gate,
        window // 2,
        mean,
        std,
        pixel_scale,
        name,
    )
