"""Positional embedding at another resolution: bicubic resampling, cached in eval, in the graph in training."""

import torch
import torch.nn.functional as F

from lsvit import LSViTForAction
from lsvit.pos_embed import ResampledPosCache, resample_grid


def test_resample_keeps_cls_and_matches_bicubic():
    pos = torch.randn(1, 1 + 3 * 3, 4, dtype=torch.float64)
    out = resample_grid(pos, (5, 4), (3, 3))
    assert out.shape == (1, 1 + 20, 4)
    torch.testing.assert_close(out[:, 0], pos[:, 0])
    image = pos[0, 1:].T.reshape(1, 4, 3, 3)  # channel e of grid cell (gy, gx)
    expected = F.interpolate(image.float(), size=(5, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[0, 1:].T.reshape(1, 4, 5, 4).float(), expected)


def test_resample_same_grid_is_identity_and_constant_stays_constant():
    pos = torch.randn(1, 10, 6)
    assert resample_grid(pos, (3, 3)) is pos
    constant = torch.cat([torch.zeros(1, 1, 6), torch.full((1, 9, 6), 0.25)], dim=1)
    torch.testing.assert_close(resample_grid(constant, (7, 2))[:, 1:], torch.full((1, 14, 6), 0.25))


def test_other_resolution_runs_and_uses_resampled_table(tiny):
    model = LSViTForAction(tiny()).eval()
    video = torch.randn(1, 2, 3, 40, 32)  # 5 x 4 grid instead of 3 x 3
    with torch.no_grad():
        tokens = model.tokens(video)
        expected_pos = resample_grid(model.pos_embed, (5, 4), (3, 3))[0]
        plain = model.patch_embed(model.smif(video), torch.zeros_like(expected_pos), torch.zeros(1, 1, 16))
    assert tokens.shape == (1, 2, 21, 16)
    torch.testing.assert_close(tokens[:, :, 1:] - plain[:, :, 1:], expected_pos[1:].expand(1, 2, -1, -1))
    assert model(video).shape == (1, 5)


def test_cache_reused_and_invalidated_on_update(tiny):
    model = LSViTForAction(tiny()).eval()
    with torch.no_grad():
        first = model.position_embedding(40, 32)
        assert model.position_embedding(40, 32) is first  # cached
        assert len(model._pos_cache) == 1
        model.position_embedding(48, 48)
        assert len(model._pos_cache) == 2
        assert model.position_embedding(24, 24).data_ptr() == model.pos_embed.data_ptr()  # trained grid: no copy

        model.pos_embed.add_(1.0)  # an optimizer step: in place, bumps _version
        updated = model.position_embedding(40, 32)
        assert updated is not first
        torch.testing.assert_close(updated[1:], first[1:] + 1.0)

        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["pos_embed"].normal_()
        model.load_state_dict(state)
        loaded = model.position_embedding(40, 32)
        torch.testing.assert_close(loaded, resample_grid(state["pos_embed"], (5, 4), (3, 3))[0])


def test_cache_tracks_optimizer_steps(tiny):
    model = LSViTForAction(tiny()).eval()
    optimizer = torch.optim.SGD([model.pos_embed], lr=1.0)
    with torch.no_grad():
        before = model.position_embedding(40, 32)
    model.pos_embed.grad = torch.ones_like(model.pos_embed)
    optimizer.step()
    with torch.no_grad():
        after = model.position_embedding(40, 32)
    torch.testing.assert_close(after[1:], before[1:] - 1.0)


def test_training_at_other_resolution_backpropagates_every_step(tiny):
    model = LSViTForAction(tiny()).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    video = torch.randn(2, 2, 3, 40, 32)
    for _ in range(2):  # a cached table with a freed graph would fail on the second backward
        optimizer.zero_grad()
        model(video).sum().backward()
        assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0
        optimizer.step()
    assert len(model._pos_cache) == 0  # nothing cached while gradients flow


def test_cache_object_standalone():
    cache = ResampledPosCache((2, 2))
    pos = torch.randn(1, 5, 3)
    assert cache(pos, (2, 2)).data_ptr() == pos.data_ptr()
    out = cache(pos, (3, 3))
    assert out.shape == (10, 3) and len(cache) == 1
