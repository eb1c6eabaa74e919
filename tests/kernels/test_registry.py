"""Backend selection: automatic, env var, context manager, per call; clear errors for unavailable backends; the
backward on the forward's backend, eager and compiled, in several threads."""

import os
import subprocess
import sys
import threading

import pytest
import torch

import lsvit_kernels as lk
from lsvit_kernels import registry

from .strategies import make_problem
from .threads import run_per_thread


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
    monkeypatch.setattr(registry, "ENV_BACKEND", "reference")  # what LSVIT_BACKEND=reference sets at import
    _call()
    assert lk.last_backend() == "reference"


def test_env_var_is_read_at_import():
    code = (
        "import os, torch, lsvit_kernels as lk\n"
        "os.environ.pop('LSVIT_BACKEND')  # read once, at import: later changes do not count\n"
        "lk.patch_embed(torch.randn(1, 1, 2, 4, 4), torch.randn(3, 2, 4, 4))\n"
        "print(lk.last_backend())\n"
    )
    env = {**os.environ, registry.ENV_VAR: "reference", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "reference"


def test_context_manager_beats_env(monkeypatch):
    monkeypatch.setattr(registry, "ENV_BACKEND", "no-such-backend")
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


def _spy_on(monkeypatch, names):
    """Record (thread name, backend, "forward"/"backward") for every call the backends ``names`` compute."""
    calls = []
    for name in names:
        backend = registry.get_backend(name)
        for kind in ("forward", "backward"):

            def spy(*args, _real=getattr(backend, kind), _name=name, _kind=kind):
                calls.append((threading.current_thread().name, _name, _kind))
                return _real(*args)

            monkeypatch.setattr(backend, kind, spy)
    return calls


def _embed_and_backprop(fn, backend=None):
    p = make_problem(b=1, steps=1, t=1, gh=2, gw=2, e=4, cls=False)
    w = p.weight.requires_grad_()
    with lk.use_backend(backend):
        fn(p.video, w, p.bias, p.pos_embed).sum().backward()
    return w.grad


@pytest.mark.skipif(registry.why_unavailable("cpu", "cpu") is not None, reason="the compiled library is not built")
def test_compiled_backward_runs_on_the_forward_backend_in_every_thread(monkeypatch):
    """Compiled once, called from threads that each choose a backend with use_backend: every backward runs on the
    backend its own forward ran on, and each forward on the one its thread chose (None: the automatic cpu)."""
    calls = _spy_on(monkeypatch, ("cpu", "reference"))
    compiled = torch.compile(lk.patch_embed, backend="aot_eager")
    chosen = run_per_thread(lambda backend: _embed_and_backprop(compiled, backend))  # "first" compiles, with cpu
    for thread, backend in chosen.items():
        ran = [(name, kind) for where, name, kind in calls if where == thread]
        assert ran == [(backend, "forward"), (backend, "backward")] * 3, (backend, ran)


def test_eager_backward_runs_on_the_forward_backend_after_the_block(monkeypatch):
    calls = _spy_on(monkeypatch, ("reference",))
    p = make_problem(b=1, steps=1, t=1, gh=1, gw=1, e=4)
    w = p.weight.requires_grad_()
    with lk.use_backend("reference"):
        out = lk.patch_embed(p.video, w)
    out.sum().backward()  # outside the block: still the forward's backend
    assert [kind for _, name, kind in calls if name == "reference"] == ["forward", "backward"]
