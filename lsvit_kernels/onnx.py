"""ONNX export of ``lsvit::patch_embed``: the same tokens as standard ONNX operators, for both PyTorch exporters.

ONNX has no fused patch embedding, but the op is exactly a strided convolution followed by a reshape, a CLS
concatenation and a positional add, all standard ONNX operators that every runtime implements:

    tokens = Conv(video as (B, C, T, H, W), weight, bias, strides = kernel)      (B, E, T', H', W')
             -> (B, T', N, E) -> Concat(CLS row per step, tokens) -> + pos_embed viewed as (R / (S + N), S + N, E)

- ``torch.onnx.export(..., dynamo=True)``: ``lsvit_kernels.patch_embed`` computes ``decomposition`` (ATen
  operators the exporter translates) instead of the custom op while the exporter traces the model, so no
  translation has to be passed to the exporter.
- A program exported earlier with ``torch.export`` keeps the op; ``decompose(program)`` replaces it by the same
  decomposition (``ExportedProgram.run_decompositions``) before ``torch.onnx.export(program)`` or any other
  consumer that does not know the op.
- ``torch.onnx.export(..., dynamo=False)`` (TorchScript-based): the op stays in the traced graph and ``symbolic``
  (registered for opset 9 and later at import) writes the operators above.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

OPSET = 9  # Conv, Reshape with a shape input, Expand, Gather, Concat: all present since opset 9


def exporting_with_dynamo() -> bool:
    """True while ``torch.onnx.export(..., dynamo=True)`` traces the model (the TorchScript exporter traces with
    ``torch.jit`` and keeps the op, which ``symbolic`` translates)."""
    return torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()


def decomposition(
    video: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    pos_embed: Optional[Tensor],
    cls_token: Optional[Tensor],
) -> Tensor:
    """``lsvit::patch_embed`` in ATen operators that ONNX translates one to one (arguments as the op's)."""
    x = video.transpose(1, 2).to(weight.dtype)  # logical (B, T, C, H, W) -> (B, C, T, H, W); uint8 -> float
    tokens = F.conv3d(x, weight, bias, stride=weight.shape[2:])  # (B, E, T', H', W')
    tokens = tokens.flatten(3).permute(0, 2, 3, 1)  # (B, T', N, E)
    if cls_token is not None:
        cls_rows = cls_token.view(1, 1, 1, -1).expand(tokens.shape[0], tokens.shape[1], 1, -1)
        tokens = torch.cat([cls_rows, tokens], dim=2)
    if pos_embed is not None:  # (S + N, E) broadcast over steps, or (T' (S + N), E) one row per token
        tokens = tokens + pos_embed.view(-1, tokens.shape[2], tokens.shape[3])
    return tokens.contiguous()


def decompose(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with every ``lsvit::patch_embed`` call replaced by ``decomposition`` (other ops untouched)."""

    def call(video, weight, bias, pos_embed, cls_token, backend):
        return decomposition(video, weight, bias, pos_embed, cls_token)

    return program.run_decompositions({torch.ops.lsvit.patch_embed.default: call})


def symbolic(g, video, weight, bias, pos_embed, cls_token, backend):
    """TorchScript-exporter symbolic of ``lsvit::patch_embed``: the operators of ``decomposition``."""
    from torch.onnx import JitScalarType, symbolic_helper

    def const(values):
        return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    kernel = symbolic_helper._get_tensor_sizes(weight)[2:]
    x = g.op("Transpose", video, perm_i=[0, 2, 1, 3, 4])
    weight_type = JitScalarType.from_value(weight)
    if JitScalarType.from_value(video) != weight_type:  # uint8 pixels: the weight already holds the 1/255
        x = g.op("Cast", x, to_i=weight_type.onnx_type())
    conv_inputs = [x, weight] + ([] if symbolic_helper._is_none(bias) else [bias])
    tokens = g.op("Conv", *conv_inputs, kernel_shape_i=kernel, strides_i=kernel)  # (B, E, T', H', W')
    tokens = g.op("Reshape", tokens, const([0, 0, 0, -1]))  # (B, E, T', N)
    tokens = g.op("Transpose", tokens, perm_i=[0, 2, 3, 1])  # (B, T', N, E)
    if not symbolic_helper._is_none(cls_token):
        steps = g.op("Add", g.op("Mul", g.op("Shape", tokens), const([1, 1, 0, 0])), const([0, 0, 1, 1]))
        cls_rows = g.op("Expand", g.op("Reshape", cls_token, const([1, 1, 1, -1])), steps)  # (B, T', 1, E)
        tokens = g.op("Concat", cls_rows, tokens, axis_i=2)
    if not symbolic_helper._is_none(pos_embed):
        slots = g.op("Gather", g.op("Shape", tokens), const([2, 3]), axis_i=0)  # (S + N, E)
        pos = g.op("Reshape", pos_embed, g.op("Concat", const([-1]), slots, axis_i=0))
        tokens = g.op("Add", tokens, pos)
    return tokens


torch.onnx.register_custom_op_symbolic("lsvit::patch_embed", symbolic, OPSET)
