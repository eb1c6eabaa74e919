"""Backend registry: which implementation computes the op, chosen per call by device and availability.

Choosing by hand happens here and only here (``requested_backend``), once per call, in the caller's thread,
before the op runs; precedence, highest first: the call's ``backend=`` argument, this thread's innermost
``use_backend(...)`` block, the ``LSVIT_BACKEND`` environment variable (read once, when this module is
imported). The name travels with the op's arguments to its kernels and to its backward (ops.py), so the
backward always runs on the forward's backend. With no name, the op's kernel for the tensors' device takes the
first backend of ``AUTO_ORDER`` that can run the weight's dtype here. A backend named explicitly that cannot
run raises ``BackendUnavailableError`` saying why; only automatic selection falls back, and it logs the first
fallback once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

log = logging.getLogger("lsvit_kernels")

ENV_VAR = "LSVIT_BACKEND"
ENV_BACKEND: Optional[str] = os.environ.get(ENV_VAR, "").strip() or None  # read once: no lookup per call

# Automatic order per device type, the fastest available backend first; the op has one dispatcher kernel per
# device type listed here (ops.py), and every other device runs FALLBACK_ORDER.
AUTO_ORDER = {
    "cuda": ("triton", "cuda", "reference"),
    "cpu": ("cpu", "reference"),
}
FALLBACK_ORDER = ("reference",)


# forward(video, weight, bias, pos_embed, cls_token) -> tokens
ForwardFn = Callable[[Tensor, Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]], Tensor]
# backward(grad_tokens, video, weight, pos_rows, has_bias, has_cls, output_mask) -> 5 gradients, None where masked
BackwardFn = Callable[[Tensor, Tensor, Tensor, int, bool, bool, list[bool]], tuple[Optional[Tensor], ...]]


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here."""


@dataclass
class Backend:
    """One implementation of the op.

    forward(video, weight, bias, pos_embed, cls_token) -> tokens (B, T', S + N, E)
    backward(grad_tokens, video, weight, pos_rows, has_bias, has_cls, output_mask)
        -> (grad_video, grad_weight, grad_bias, grad_pos, grad_cls), None where output_mask is False.
    Arguments are normalized by ops.py (see docs/op.md): video is logical (B, T, C, H, W) with any strides,
    weight is contiguous (E, C, t, ph, pw), bias (E,), pos_embed (R, E), cls_token (E,), all contiguous and in
    the weight's dtype; grad_tokens is contiguous.
    """

    name: str
    devices: tuple[str, ...]
    forward: ForwardFn
    backward: BackwardFn
    # Returns None when the backend can run on this device type, else the reason it cannot.
    unavailable_reason: Callable[[str], Optional[str]]
    description: str = ""
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


class _State(threading.local):
    def __init__(self) -> None:
        self.stack: list[Optional[str]] = []
        self.last: Optional[str] = None


_BACKENDS: dict[str, Backend] = {}
_state = _State()
_logged_fallbacks: set[tuple[str, str]] = set()


def register_backend(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    return backend


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_BACKENDS)}")
    return _BACKENDS[name]


def available_backends(device_type: str = "cpu") -> list[str]:
    """Backends that can run on ``device_type`` here, in automatic order first."""
    order = list(AUTO_ORDER.get(device_type, FALLBACK_ORDER)) + sorted(_BACKENDS)
    seen: list[str] = []
    for name in order:
        b = _BACKENDS.get(name)
        if b and name not in seen and device_type in b.devices and b.unavailable_reason(device_type) is None:
            seen.append(name)
    return seen


def why_unavailable(name: str, device_type: str) -> Optional[str]:
    """None when backend ``name`` can run on ``device_type``, else the reason."""
    backend = get_backend(name)
    if device_type not in backend.devices:
        return f"backend {name!r} runs on {'/'.join(backend.devices)} tensors, not {device_type}"
    return backend.unavailable_reason(device_type)


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Run the op with backend ``name`` inside the block (``None`` restores automatic choice)."""
    if name is not None:
        get_backend(name)
    _state.stack.append(name)
    try:
        yield
    finally:
        _state.stack.pop()


def requested_backend(explicit: Optional[str] = None) -> Optional[str]:
    """The backend named by the call, this thread's ``use_backend`` block or ``LSVIT_BACKEND``; None: automatic.

    Traced by ``torch.compile``, which guards on this thread's ``use_backend`` state, so a compiled model
    recompiles for another choice instead of reusing the traced one.
    """
    if explicit:
        return explicit
    if _state.stack and _state.stack[-1] is not None:
        return _state.stack[-1]
    return ENV_BACKEND


def resolve(device_type: str, explicit: Optional[str] = None, dtype: Optional[torch.dtype] = None) -> Backend:
    """The backend that will compute a call on ``device_type``."""
    name = requested_backend(explicit)
    if name and name != "auto":
        backend = get_backend(name)
        reason = why_unavailable(name, device_type)
        if reason is None and dtype is not None and dtype not in backend.dtypes:
            reason = f"backend {name!r} does not support {dtype}; it supports {backend.dtypes}"
        if reason is not None:
            raise BackendUnavailableError(f"backend {name!r} was requested but cannot run: {reason}")
        return backend
    for name in AUTO_ORDER.get(device_type, FALLBACK_ORDER):
        backend = _BACKENDS.get(name)
        if backend is None:
            continue
        reason = why_unavailable(name, device_type)
        if reason is None and (dtype is None or dtype in backend.dtypes):
            return backend
        key = (device_type, name)
        if key not in _logged_fallbacks:
            _logged_fallbacks.add(key)
            log.info("lsvit_kernels: backend %r skipped on %s: %s", name, device_type, reason or f"no {dtype}")
    return _BACKENDS["reference"]


def mark_ran(name: str) -> None:
    _state.last = name


def last_backend() -> Optional[str]:
    """Name of the backend that computed the most recent call in this thread (forward or backward)."""
    return _state.last
