"""Export paths of the LSViT model: ONNX with both PyTorch exporters (run by onnxruntime) and torch.export, each
compared with the eager model. The patch embedding is the fused op, so this is the op's export inside a model."""

from __future__ import annotations

import io

import pytest
import torch

import lsvit_kernels
from lsvit import LSViTForAction

CONFIGS = {
    "2d": dict(depth=1),
    "3d-motion-temporal": dict(depth=1, use_3d_patch_embed=True, tubelet_size=2, motion_channels=True),
}


def model_and_video(tiny, name):
    model = LSViTForAction(tiny(**CONFIGS[name])).eval()
    with torch.no_grad():  # parameters that start at zero would hide a wrong export of their paths
        for param in (model.temporal_pos_embed, model.patch_embed.motion_weight, model.patch_embed.proj.bias):
            if param is not None:
                param.normal_(std=0.5)
    return model, torch.randn(2, 4, 3, 24, 24)


def run_onnx(model_bytes: bytes, video: torch.Tensor):
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: video.numpy()})[0])


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_matches_eager(tiny, name, dynamo):
    pytest.importorskip("onnxscript" if dynamo else "onnx")
    model, video = model_and_video(tiny, name)
    buffer = io.BytesIO()
    if dynamo:
        torch.onnx.export(model, (video,), dynamo=True, verbose=False).save(buffer)
    else:
        torch.onnx.export(model, (video,), buffer, dynamo=False, opset_version=17)
    with torch.no_grad():
        expected = model(video)
    torch.testing.assert_close(run_onnx(buffer.getvalue(), video), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_export_runs_the_fused_op(tiny, name):
    model, video = model_and_video(tiny, name)
    program = torch.export.export(model, (video,))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.lsvit.patch_embed.default in targets
    lsvit_kernels.registry.mark_ran(None)
    with torch.no_grad():
        got = program.module()(video)
        assert lsvit_kernels.last_backend() is not None
        torch.testing.assert_close(got, model(video))
