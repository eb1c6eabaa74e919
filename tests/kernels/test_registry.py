"""Backend selection: automatic, env var, context manager, per call; clear errors for unavailable backends."""

import pytest
import torch

import lsvit_kernels as lk
from lsvit_kernels import registry

from .strategies import make_problem


def _call(**kw):
    p = make_problem(b=1, steps=1, t=1, gh=1, gw=1, e=4)
    return lk.patch_embed(*p.args(), **p.kwargs(), **kw)


def test_reference_always_available():
    assert "reference" in lk.available_backends("cpu")
    assert "reference" in lk.available_backends("cuda")


def test_automatic_choice_is_observable():
    _call()
    assert lk.last_backend() == lk.available_backends("cpu")[0]


def test_env_var_overrides_auto(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "reference")
    _call()
    assert lk.last_backend() == "reference"


def test_context_manager_beats_env(monkeypatch):
    monkeypatch.setenv(registry.ENV_VAR, "no-such-backend")
    with lk.use_backend("reference"):
        _call()
    assert lk.last_backend() == "reference"


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        _call(backend="nope")
    with pytest.raises(ValueError, match="unknown backend"):
        with lk.use_backend("nope"):
            pass


def test_unavailable_backend_raises_with_reason():
    fake = registry.Backend(
        name="unit-test-missing",
        devices=("cpu",),
        forward=lambda *a: None,
        backward=lambda *a: None,
        unavailable_reason=lambda device: "its library is not installed",
    )
    registry.register_backend(fake)
    try:
        with pytest.raises(lk.BackendUnavailableError, match="its library is not installed"):
            _call(backend="unit-test-missing")
        assert "unit-test-missing" not in lk.available_backends("cpu")
    finally:
        registry._BACKENDS.pop("unit-test-missing")


def test_backend_for_other_device_is_refused():
    reason = registry.why_unavailable("reference", "cpu")
    assert reason is None
    fake = registry.Backend("unit-test-gpu-only", ("cuda",), lambda *a: None, lambda *a: None, lambda d: None)
    registry.register_backend(fake)
    try:
        with pytest.raises(lk.BackendUnavailableError, match="runs on cuda tensors, not cpu"):
            _call(backend="unit-test-gpu-only")
    finally:
        registry._BACKENDS.pop("unit-test-gpu-only")


def test_backward_records_backend():
    p = make_problem(b=1, steps=1, t=1, gh=1, gw=1, e=4)
    w = p.weight.requires_grad_()
    with lk.use_backend("reference"):
        out = lk.patch_embed(p.video, w)
    registry.mark_ran("none")
    out.sum().backward()
    assert lk.last_backend() == "reference"
    assert w.grad is not None and torch.isfinite(w.grad).all()
