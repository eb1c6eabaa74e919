"""Positional embedding at another resolution: bicubic resampling, cached in eval, in the graph in training."""

import pytest
import torch
import torch.nn.functional as F

from lsvit import LSViTForAction
from lsvit.pos_embed import ResampledPosCache, resample_grid, resample_steps


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


# ---- temporal embedding -------------------------------------------------------------------------------------


def test_resample_steps_is_linear_interpolation_over_time():
    table = torch.randn(4, 6, dtype=torch.float64)
    assert resample_steps(table, 4) is table
    out = resample_steps(table, 7)
    expected = F.interpolate(table.T[None].float(), size=7, mode="linear", align_corners=False)[0].T
    assert out.shape == (7, 6) and out.dtype == torch.float64
    torch.testing.assert_close(out.float(), expected)
    # a linear ramp over segment centres (s + 0.5) / T' is read at the same relative times for any T'
    ramp = (torch.arange(4, dtype=torch.float64) + 0.5) / 4
    inner = resample_steps(ramp[:, None], 8)[2:6, 0]  # away from the clamped ends
    torch.testing.assert_close(inner, (torch.arange(2, 6, dtype=torch.float64) + 0.5) / 8)
    torch.testing.assert_close(resample_steps(torch.full((4, 3), 0.5), 1), torch.full((1, 3), 0.5))


def _with_random_temporal(model):
    with torch.no_grad():
        model.temporal_pos_embed.normal_()
    return model


def _spy_patch_embed(monkeypatch):
    """Record the positional table each fused-op call of the patch-embedding module receives."""
    from lsvit_kernels import modules

    seen, original = [], modules.patch_embed

    def spy(video, weight, bias=None, pos_embed=None, **kwargs):
        seen.append(pos_embed.detach().clone())
        return original(video, weight, bias, pos_embed, **kwargs)

    monkeypatch.setattr(modules, "patch_embed", spy)
    return seen


@pytest.mark.parametrize("use_3d,frames,steps", [(False, 4, 4), (False, 6, 6), (False, 1, 1), (True, 8, 4)])
def test_temporal_embedding_goes_through_the_op_per_token(tiny, monkeypatch, use_3d, frames, steps):
    """One fused call with a (T' (1 + N), E) table: spatial row + temporal row of the step (resampled to T')."""
    model = _with_random_temporal(LSViTForAction(tiny(use_3d_patch_embed=use_3d, tubelet_size=2)).eval())
    model.fused_input_stage = False  # the spy sits on the patch op; the fused stage equals this one (fused tests)
    trained_steps = 2 if use_3d else 4
    assert model.temporal_pos_embed.shape == (trained_steps, 16)
    seen = _spy_patch_embed(monkeypatch)
    video = torch.randn(1, frames, 3, 24, 24)
    with torch.no_grad():
        tokens = model.tokens(video)
    assert len(seen) == 1 and seen[0].shape == (steps * 10, 16)
    temporal = resample_steps(model.temporal_pos_embed.detach(), steps)
    expected = (temporal[:, None] + model.pos_embed.detach()[0][None]).reshape(-1, 16)
    torch.testing.assert_close(seen[0], expected)
    with torch.no_grad():
        plain = model.patch_embed(model.smif(video), model.pos_embed[0], model.cls_token)
    torch.testing.assert_close(tokens - plain, temporal[None, :, None].expand_as(tokens), atol=1e-5, rtol=1e-5)


def test_zero_initialized_temporal_embedding_changes_nothing(tiny):
    """At init the model equals the same weights without a temporal embedding (ImageNet loading stays exact)."""
    torch.manual_seed(0)
    with_time = LSViTForAction(tiny()).eval()
    without = LSViTForAction(tiny(temporal_embed=False)).eval()
    assert without.temporal_pos_embed is None and "temporal_pos_embed" not in without.state_dict()
    state = with_time.state_dict()
    assert state["temporal_pos_embed"].abs().max() == 0
    without.load_state_dict({k: v for k, v in state.items() if k != "temporal_pos_embed"})
    video = torch.randn(2, 5, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(with_time(video), without(video), rtol=0, atol=0)


def test_temporal_table_needs_a_frame_count(tiny):
    model = LSViTForAction(tiny(num_frames=None))  # 2D without a clip length: no table to size
    assert model.temporal_pos_embed is None
    assert model(torch.randn(1, 3, 3, 24, 24)).shape == (1, 5)
    assert LSViTForAction(tiny(num_frames=None), num_frames=6).temporal_pos_embed.shape == (6, 16)


def test_temporal_cache_in_eval_and_graph_in_training(tiny):
    model = _with_random_temporal(LSViTForAction(tiny()))
    model.eval()
    with torch.no_grad():
        first = model.position_embedding(24, 24, 6)
        assert model.position_embedding(24, 24, 6).shape == (60, 16) and len(model._time_cache) == 1
        assert model._time_cache(model.temporal_pos_embed, 4) is model.temporal_pos_embed  # trained: no copy
        model.temporal_pos_embed.add_(1.0)  # in place (an optimizer step): the cache must not go stale
        torch.testing.assert_close(model.position_embedding(24, 24, 6), first + 1.0)
    model.train()
    model._time_cache._entries.clear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):  # a cached table with a freed graph would fail on the second backward
        optimizer.zero_grad()
        model(torch.randn(2, 6, 3, 24, 24)).sum().backward()
        assert model.temporal_pos_embed.grad.abs().min() > 0  # every step's row is read
        optimizer.step()
    assert len(model._time_cache) == 0


def test_temporal_embedding_makes_frame_order_visible(tiny):
    """Without the table a 2D model with closed motion gates is blind to frame order; with it, it is not."""
    model = _with_random_temporal(LSViTForAction(tiny())).eval()
    video = torch.randn(1, 4, 3, 24, 24)
    reverse = video.flip(1)
    with torch.no_grad():
        model.smif.gate.zero_()
        for block in model.blocks:
            block.lmi.gate.zero_()
        ordered = (model.forward_features(video) - model.forward_features(reverse)).abs().max()
        model.temporal_pos_embed.zero_()
        blind = (model.forward_features(video) - model.forward_features(reverse)).abs().max()
    assert blind < 1e-6 and ordered > 1e-4, (blind, ordered)
