"""The contestants: every way to turn a video into the same tokens, side by side on the same inputs.

Every contestant produces ``(B, T', 1 + N, E)`` tokens (a CLS slot per time step, then the patches, bias and
positional embedding added) from the same video and parameters, so its output can be checked against one float64
reference before it is timed. In ``fwdbwd`` mode it also back-propagates the same token gradient and its weight,
bias, pos and cls gradients are checked (the video needs no gradient in training).

- ``conv``: ``nn.Conv2d`` (per frame) or ``nn.Conv3d`` (tubelets) + flatten + transpose + pos add + ``torch.cat``
  of the CLS slot: how video models are written today.
- ``linear``: reshape the video into patches + ``F.linear`` + pos add + ``torch.cat``: the fix vLLM,
  transformers and sglang adopted for their patch embeddings.
- ``compile``: ``torch.compile`` of ``linear`` (compile time measured and reported separately, not timed).
- ``gemm floor``: ``torch.mm`` of the same M x K x N on a patch matrix made beforehand: the GEMM alone, no
  patch gathering, no epilogue (fwdbwd: + the weight-gradient GEMM).
- ``ours:<backend>``: ``lsvit_kernels.patch_embed(..., backend=<backend>)`` for every backend available here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lsvit_kernels as lk
from lsvit_kernels import registry

from .cases import UINT8_MEAN, UINT8_STD, Case

Outputs = dict[str, Tensor]
GRAD_NAMES = ("grad_weight", "grad_bias", "grad_pos", "grad_cls")


class ContestantSkipped(Exception):
    """The contestant cannot run this case on this machine; the message says why."""


@dataclass
class CaseInputs:
    """Inputs shared by every contestant of one case: ``sets`` videos cycled through so caches do not flatter."""

    case: Case
    device: torch.device
    videos: list[Tensor]  # (B, T, C, H, W) contiguous, compute dtype or uint8
    weight: Tensor  # (E, C, t, P, P)
    bias: Tensor  # (E,)
    pos: Tensor  # (1 + N, E): the CLS row, then one row per spatial patch, broadcast over time steps
    cls: Tensor  # (E,)
    grad_tokens: list[Tensor]  # (B, T', 1 + N, E) per video (fwdbwd)
    _expected: dict[int, Outputs] = field(default_factory=dict)

    @property
    def sets(self) -> int:
        return len(self.videos)

    def float_video(self, i: int, dtype: torch.dtype) -> Tensor:
        """Video ``i`` as the model sees it: uint8 pixels normalized with ImageNet statistics, else as is."""
        video = self.videos[i]
        if video.dtype != torch.uint8:
            return video.to(dtype)
        mean = torch.tensor(UINT8_MEAN, dtype=dtype, device=video.device).view(1, 1, -1, 1, 1)
        std = torch.tensor(UINT8_STD, dtype=dtype, device=video.device).view(1, 1, -1, 1, 1)
        return (video.to(dtype) / 255 - mean) / std

    def expected(self, i: int) -> Outputs:
        """float64 reference outputs (and gradients in fwdbwd) for video ``i``: the reference backend in float64."""
        if i not in self._expected:
            params = [p.detach().double().requires_grad_(self.case.mode == "fwdbwd") for p in self.params()]
            weight, bias, pos, cls = params
            tokens = lk.patch_embed(
                self.float_video(i, torch.float64), weight, bias, pos, cls_token=cls, backend="reference"
            )
            out = {"tokens": tokens.detach()}
            if self.case.mode == "fwdbwd":
                tokens.backward(self.grad_tokens[i].double())
                out.update({name: p.grad for name, p in zip(GRAD_NAMES, params, strict=True)})
            self._expected[i] = out
        return self._expected[i]

    def params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.weight, self.bias, self.pos, self.cls

    def leaf_params(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fresh copies of (weight, bias, pos, cls) for one contestant, requiring grad in fwdbwd."""
        grad = self.case.mode == "fwdbwd"
        return tuple(p.detach().clone().requires_grad_(grad) for p in self.params())  # type: ignore[return-value]


def make_inputs(case: Case, device: torch.device | str, sets: int = 3, seed: int = 0) -> CaseInputs:
    """Fresh random inputs (never zeros) for ``case``: ``sets`` videos, one set of parameters."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)  # made on the device: fast for GPU-sized videos
    g = case.grid()
    dtype = case.torch_dtype

    def randn(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)

    shape = (g.batch, g.frames, g.channels, g.height, g.width)
    if case.uint8_input:
        videos = [torch.randint(0, 256, shape, generator=gen, device=device, dtype=torch.uint8) for _ in range(sets)]
    else:
        videos = [randn(*shape) for _ in range(sets)]
    weight = randn(g.embed_dim, g.channels, g.tubelet, g.patch_h, g.patch_w, scale=g.patch_dim**-0.5)
    grad_tokens = []
    if case.mode == "fwdbwd":
        grad_tokens = [randn(*g.output_shape, scale=0.1) for _ in range(sets)]
    return CaseInputs(
        case=case,
        device=device,
        videos=videos,
        weight=weight,
        bias=randn(g.embed_dim, scale=0.5),
        pos=randn(g.tokens_per_step, g.embed_dim, scale=0.5),
        cls=randn(g.embed_dim, scale=0.5),
        grad_tokens=grad_tokens,
    )


@dataclass
class Prepared:
    """A contestant made ready for one case.

    ``step(i)`` is what gets timed (forward, or forward + backward, on video ``i``); ``result(i)`` runs it and
    returns the tensors to check; ``expected(i)`` is the float64 truth (None: the case's reference).
    """

    step: Callable[[int], object]
    result: Callable[[int], Outputs]
    expected: Optional[Callable[[int], Outputs]] = None
    compile_s: Optional[float] = None
    notes: str = ""


@dataclass
class Contestant:
    name: str
    kind: str  # "baseline" | "compiled" | "floor" | "ours"
    description: str
    prepare: Callable[[CaseInputs], Prepared]


def _with_backward(inputs: CaseInputs, leaves: tuple[Tensor, ...], forward: Callable[[int], Tensor]) -> Prepared:
    """Wrap a token-producing forward into a Prepared for the case's mode."""
    if inputs.case.mode == "fwd":

        def step(i: int) -> Tensor:
            with torch.no_grad():
                return forward(i)

        return Prepared(step=step, result=lambda i: {"tokens": step(i)})

    def step_bwd(i: int) -> Tensor:
        for leaf in leaves:
            leaf.grad = None
        tokens = forward(i)
        tokens.backward(inputs.grad_tokens[i])
        return tokens

    def result(i: int) -> Outputs:
        tokens = step_bwd(i).detach()
        return {"tokens": tokens, **{name: leaf.grad for name, leaf in zip(GRAD_NAMES, leaves, strict=True)}}

    return Prepared(step=step_bwd, result=result)


def _cls_slot(cls: Tensor, pos: Tensor, batch: int, steps: int) -> Tensor:
    return (cls + pos[0]).expand(batch, steps, 1, -1)  # (B, T', 1, E)


def prepare_conv(inputs: CaseInputs) -> Prepared:
    case, g = inputs.case, inputs.case.grid()
    dtype = case.torch_dtype
    weight, bias, pos, cls = inputs.leaf_params()
    if case.tubelet == 1:
        conv: nn.Module = nn.Conv2d(g.channels, g.embed_dim, g.patch_h, stride=g.patch_h)
        conv_weight = weight.detach()[:, :, 0]
    else:
        kernel = (g.tubelet, g.patch_h, g.patch_w)
        conv = nn.Conv3d(g.channels, g.embed_dim, kernel, stride=kernel)
        conv_weight = weight.detach()
    conv = conv.to(device=inputs.device, dtype=dtype).requires_grad_(case.mode == "fwdbwd")
    with torch.no_grad():
        conv.weight.copy_(conv_weight)
        conv.bias.copy_(bias)

    def forward(i: int) -> Tensor:
        x = inputs.float_video(i, dtype)  # (B, T, C, H, W)
        if case.tubelet == 1:
            y = conv(x.reshape(g.batch * g.frames, g.channels, g.height, g.width))  # (B T, E, gh, gw)
            y = y.flatten(2).transpose(1, 2).reshape(g.batch, g.steps, g.num_spatial, g.embed_dim)
        else:
            y = conv(x.permute(0, 2, 1, 3, 4))  # (B, E, T', gh, gw)
            y = y.flatten(3).permute(0, 2, 3, 1)  # (B, T', N, E)
        y = y + pos[1:]
        return torch.cat([_cls_slot(cls, pos, g.batch, g.steps), y], dim=2)

    prepared = _with_backward(inputs, (conv.weight, conv.bias, pos, cls), forward)
    if case.mode == "fwdbwd":
        inner = prepared.result

        def result(i: int) -> Outputs:  # the conv weight has the Conv2d shape in 2D: compare as (E, C, t, P, P)
            out = inner(i)
            out["grad_weight"] = out["grad_weight"].reshape(weight.shape)
            return out

        prepared.result = result
    return prepared


def linear_tokens(x: Tensor, weight2d: Tensor, bias: Tensor, pos: Tensor, cls: Tensor, tubelet: int, patch: int):
    """reshape + F.linear + pos add + cat: x (B, T, C, H, W) -> (B, T', 1 + N, E)."""
    b, t, c, h, w = x.shape
    gh, gw = h // patch, w // patch
    patches = x.reshape(b, t // tubelet, tubelet, c, gh, patch, gw, patch).permute(0, 1, 4, 6, 3, 2, 5, 7)
    patches = patches.reshape(b, t // tubelet, gh * gw, c * tubelet * patch * patch)  # (B, T', N, K): a copy
    y = F.linear(patches, weight2d, bias) + pos[1:]
    return torch.cat([_cls_slot(cls, pos, b, t // tubelet), y], dim=2)


def _linear_parts(inputs: CaseInputs):
    case, g = inputs.case, inputs.case.grid()
    weight, bias, pos, cls = inputs.leaf_params()
    weight2d = weight.detach().reshape(g.embed_dim, g.patch_dim).clone().requires_grad_(case.mode == "fwdbwd")
    return weight2d, bias, pos, cls


def _linear_grad_fix(prepared: Prepared, inputs: CaseInputs) -> Prepared:
    if inputs.case.mode == "fwdbwd":
        inner = prepared.result

        def result(i: int) -> Outputs:
            out = inner(i)
            out["grad_weight"] = out["grad_weight"].reshape(inputs.weight.shape)
            return out

        prepared.result = result
    return prepared


def prepare_linear(inputs: CaseInputs) -> Prepared:
    case = inputs.case
    weight2d, bias, pos, cls = _linear_parts(inputs)

    def forward(i: int) -> Tensor:
        x = inputs.float_video(i, case.torch_dtype)
        return linear_tokens(x, weight2d, bias, pos, cls, case.tubelet, case.patch)

    return _linear_grad_fix(_with_backward(inputs, (weight2d, bias, pos, cls), forward), inputs)


def prepare_compile(inputs: CaseInputs) -> Prepared:
    case = inputs.case
    weight2d, bias, pos, cls = _linear_parts(inputs)
    dtype, uint8 = case.torch_dtype, case.uint8_input
    mean = torch.tensor(UINT8_MEAN, dtype=dtype, device=inputs.device).view(1, 1, -1, 1, 1)
    std = torch.tensor(UINT8_STD, dtype=dtype, device=inputs.device).view(1, 1, -1, 1, 1)

    def eager(video, weight2d, bias, pos, cls):
        x = (video.to(dtype) / 255 - mean) / std if uint8 else video
        return linear_tokens(x, weight2d, bias, pos, cls, case.tubelet, case.patch)

    torch.compiler.reset()  # a fresh cache per case: no recompile limit, no cross-case reuse
    compiled = torch.compile(eager, dynamic=False)

    def forward(i: int) -> Tensor:
        return compiled(inputs.videos[i], weight2d, bias, pos, cls)

    prepared = _linear_grad_fix(_with_backward(inputs, (weight2d, bias, pos, cls), forward), inputs)
    start = time.perf_counter()
    try:
        prepared.step(0)  # compiles (forward, and backward in fwdbwd)
        if inputs.device.type == "cuda":
            torch.cuda.synchronize(inputs.device)
    except Exception as exc:  # noqa: BLE001  (any compiler failure means: cannot compile here)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ContestantSkipped(f"torch.compile failed on this machine: {type(exc).__name__}: {first_line}") from exc
    prepared.compile_s = time.perf_counter() - start
    return prepared


def prepare_gemm_floor(inputs: CaseInputs) -> Prepared:
    case, g = inputs.case, inputs.case.grid()
    dtype = case.torch_dtype
    m = g.batch * g.num_patches
    weight_t = inputs.weight.reshape(g.embed_dim, g.patch_dim).t().contiguous()  # (K, E)
    from lsvit_kernels.backends.reference import patches

    patch_mats = [  # (M, K) per input set, made before timing
        patches(inputs.float_video(i, dtype), g).reshape(m, g.patch_dim).contiguous() for i in range(inputs.sets)
    ]
    grads = [gt[:, :, 1:].reshape(m, g.embed_dim).contiguous() for gt in inputs.grad_tokens]  # (M, E)

    def step(i: int):
        with torch.no_grad():
            out = torch.mm(patch_mats[i], weight_t)  # (M, E)
            if case.mode == "fwdbwd":
                return out, torch.mm(grads[i].t(), patch_mats[i])  # (E, K)
            return out

    def result(i: int) -> Outputs:
        out = step(i)
        if case.mode == "fwdbwd":
            return {"tokens": out[0], "grad_weight": out[1]}
        return {"tokens": out}

    def expected(i: int) -> Outputs:
        p64 = patch_mats[i].double()
        out = {"tokens": p64 @ weight_t.double()}
        if case.mode == "fwdbwd":
            out["grad_weight"] = grads[i].double().t() @ p64
        return out

    return Prepared(step=step, result=result, expected=expected, notes="patch matrix made beforehand")


def make_ours(backend: str) -> Contestant:
    def prepare(inputs: CaseInputs) -> Prepared:
        case = inputs.case
        reason = registry.why_unavailable(backend, inputs.device.type)
        if reason is None and case.torch_dtype not in registry.get_backend(backend).dtypes:
            reason = f"backend {backend!r} does not support {case.dtype}"
        if reason is not None:
            raise ContestantSkipped(reason)
        weight, bias, pos, cls = inputs.leaf_params()
        norm = {"mean": UINT8_MEAN, "std": UINT8_STD} if case.uint8_input else {}

        def forward(i: int) -> Tensor:
            return lk.patch_embed(inputs.videos[i], weight, bias, pos, cls_token=cls, backend=backend, **norm)

        return _with_backward(inputs, (weight, bias, pos, cls), forward)

    desc = registry.get_backend(backend).description
    return Contestant(f"ours:{backend}", "ours", f"lsvit_kernels.patch_embed(backend={backend!r}): {desc}", prepare)


def baseline_contestants(compile: bool = True, compile_skip_reason: str = "") -> list[Contestant]:
    conv = Contestant("conv", "baseline", "nn.Conv2d/Conv3d + flatten + transpose + pos add + cat", prepare_conv)
    linear = Contestant(
        "linear", "baseline", "reshape + F.linear + pos add + cat (vLLM/transformers/sglang)", prepare_linear
    )
    if compile:
        prepare = prepare_compile
    else:

        def prepare(inputs: CaseInputs) -> Prepared:
            raise ContestantSkipped(compile_skip_reason or "torch.compile disabled (--no-compile)")

    compiled = Contestant("compile", "compiled", "torch.compile(reshape + F.linear + pos add + cat)", prepare)
    floor = Contestant(
        "gemm floor", "floor", "torch.mm of the same M x K x N on a pre-made patch matrix", prepare_gemm_floor
    )
    return [conv, linear, compiled, floor]


def default_contestants(device_type: str, compile: bool = True, compile_skip_reason: str = "") -> list[Contestant]:
    """The baselines plus one contestant per backend of ours that can run on ``device_type`` here."""
    ours = [make_ours(name) for name in lk.available_backends(device_type)]
    return baseline_contestants(compile, compile_skip_reason) + ours
