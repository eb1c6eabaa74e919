"""LSViT's input stage as one op: the model runs smif_patch_embed by default, computes what SMIF's PyTorch passes
+ cat + the patch op compute (forward and every gradient), loads the same state_dict, and takes uint8 clips."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from lsvit import LSViTForAction
from lsvit_kernels import smif_embed

MEAN, STD = (0.45, 0.5, 0.55), (0.2, 0.25, 0.3)
CONFIGS = {
    "2d": dict(),
    "3d": dict(use_3d_patch_embed=True, tubelet_size=2),
    "2d-no-motion": dict(motion_channels=False, smif_window=5),
}


def model_pair(tiny, name, dtype=torch.float32):
    """The default (fused) model and an unfused copy with the same parameters, all far from their init."""
    fused = LSViTForAction(tiny(**CONFIGS[name])).to(dtype)
    with torch.no_grad():
        for param in fused.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    unfused = LSViTForAction(tiny(**CONFIGS[name])).to(dtype)
    unfused.load_state_dict(fused.state_dict())  # the same keys: old checkpoints load into the fused model
    unfused.fused_input_stage = False
    return fused, unfused


def test_the_model_runs_the_fused_op_by_default(tiny):
    model = LSViTForAction(tiny())
    assert model.fused_input_stage
    with mock.patch.object(smif_embed, "smif_patch_embed", wraps=smif_embed.smif_patch_embed) as op:
        model(torch.randn(1, 4, 3, 24, 24))
    assert op.call_count == 1


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_equals_unfused_forward_and_gradients_float64(tiny, name):
    fused, unfused = model_pair(tiny, name, torch.float64)
    video = torch.randn(2, 4, 3, 24, 16, dtype=torch.float64)
    out_f, out_u = fused(video), unfused(video)
    torch.testing.assert_close(out_f, out_u, rtol=1e-10, atol=1e-10)
    upstream = torch.randn_like(out_f)
    grads_f = torch.autograd.grad(out_f, list(fused.parameters()), upstream, allow_unused=True)
    grads_u = torch.autograd.grad(out_u, list(unfused.parameters()), upstream, allow_unused=True)
    for (param_name, _), g_f, g_u in zip(fused.named_parameters(), grads_f, grads_u):
        if g_u is None:
            assert g_f is None, param_name
        else:
            torch.testing.assert_close(g_f, g_u, rtol=1e-8, atol=1e-10, msg=param_name)


def test_state_dict_layout_is_unchanged(tiny):
    """The fused op reads the same parameters under the same names: no new or renamed keys."""
    keys = set(LSViTForAction(tiny()).state_dict())
    expected_input_stage = {"smif.threshold_logit", "smif.fuse.weight", "smif.fuse.bias", "smif.gate"}
    expected_input_stage |= {"patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.motion_weight"}
    assert expected_input_stage <= keys
    assert not any("smif" in k for k in keys - expected_input_stage)


@pytest.mark.parametrize("fused_stage", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("name", ["2d", "3d"])
def test_uint8_clip_with_mean_std_equals_normalized_float(tiny, name, fused_stage):
    from lsvit.data import to_model_input

    fused, _ = model_pair(tiny, name)
    fused.fused_input_stage = fused_stage
    pixels = torch.randint(0, 256, (2, 4, 3, 24, 24), dtype=torch.uint8)
    expected = fused(to_model_input(pixels, torch.device("cpu"), MEAN, STD))
    got = fused(pixels, mean=MEAN, std=STD)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), fused.smif.threshold_logit)
    assert torch.isfinite(grads[0]).all()


def test_compiled_fused_model_matches_eager(tiny):
    model, _ = model_pair(tiny, "3d")
    video = torch.randn(1, 4, 3, 24, 24)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(video), model(video))
