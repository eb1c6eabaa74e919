"""SMIF and LMI: the equations of docs/model.md against direct loops, and their near-identity start."""

import pytest
import torch

from lsvit.lmi import LMI
from lsvit.smif import SMIF, neighbour_differences


def loop_differences(video: torch.Tensor, radius: int, signed: bool = False) -> torch.Tensor:
    """D_t = mean over existing neighbours j (1 <= |j - t| <= radius) of |X_j - X_t| (signed: of
    sign(j - t) (X_j - X_t)), one frame at a time."""
    frames = video.shape[1]
    out = torch.zeros_like(video)
    for t in range(frames):
        neighbours = [j for j in range(t - radius, t + radius + 1) if j != t and 0 <= j < frames]
        for j in neighbours:
            difference = (
                (j - t) / abs(j - t) * (video[:, j] - video[:, t]) if signed else (video[:, j] - video[:, t]).abs()
            )
            out[:, t] += difference / len(neighbours)
    return out


@pytest.mark.parametrize("frames,radius", [(5, 1), (5, 2), (3, 4), (1, 2), (6, 0)])
def test_neighbour_differences_match_loop(frames, radius):
    video = torch.randn(2, frames, 3, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(neighbour_differences(video, radius), loop_differences(video, radius))
    signed = neighbour_differences(video, radius, signed=True)
    torch.testing.assert_close(signed, loop_differences(video, radius, signed=True))


def test_signed_motion_is_the_direction():
    """Reversing the clip negates S (and leaves |S| and the magnitude D alone); a static clip has none."""
    smif = SMIF(3, window=5)
    video = torch.randn(2, 6, 3, 8, 8, dtype=torch.float64)
    forward, backward = smif.signed_motion(video), smif.signed_motion(video.flip(1))
    torch.testing.assert_close(backward, -forward.flip(1))
    assert forward.abs().max() > 0
    ramp = torch.arange(6, dtype=torch.float64).view(1, 6, 1, 1, 1).expand(1, 6, 3, 2, 2)
    # brightening by 1 per frame: window 3 sees +1 everywhere, window 5 also +2 where the neighbour 2 away exists
    torch.testing.assert_close(SMIF(3, window=3).signed_motion(ramp), torch.ones_like(ramp))
    expected = torch.tensor([1.5, 4 / 3, 1.5, 1.5, 4 / 3, 1.5], dtype=torch.float64).view(1, 6, 1, 1, 1)
    torch.testing.assert_close(smif.signed_motion(ramp), expected.expand_as(ramp))
    assert smif.signed_motion(video[:, :1].expand(2, 6, -1, -1, -1)).abs().max() == 0


def test_static_clip_has_no_motion():
    smif = SMIF(3, window=5)
    frame = torch.randn(1, 1, 3, 8, 8)
    assert smif.motion(frame.expand(2, 6, -1, -1, -1)).abs().max() == 0


def test_threshold_suppresses_small_differences():
    smif = SMIF(1, window=3, threshold_init=0.5)
    video = torch.zeros(1, 3, 1, 2, 2)
    video[0, 1, 0, 0, 0] = 0.2  # below the threshold
    video[0, 1, 0, 1, 1] = 3.0  # above it
    motion = smif.motion(video)
    assert torch.allclose(smif.threshold, torch.tensor([0.5]))
    assert motion[..., 0, 0].abs().max() == 0
    assert torch.allclose(motion[0, 1, 0, 1, 1], torch.tensor(3.0 - 0.5))


def test_smif_starts_close_to_the_plain_frame_and_learns():
    smif = SMIF(3, window=3)
    video = torch.randn(2, 4, 3, 8, 8)
    out = smif(video)
    change = (out - video).abs().max()
    assert 0 < change < 1e-2
    out.square().sum().backward()
    for name, param in smif.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_smif_rejects_even_window():
    with pytest.raises(ValueError, match="smif_window=4"):
        SMIF(3, window=4)


def test_lmi_near_identity_and_exact_for_one_step():
    lmi = LMI(16, reduction=4)
    tokens = torch.randn(2 * 3, 5, 16)
    out = lmi(tokens, steps=3, grid=(2, 2))
    assert 0 < (out - tokens).abs().max() < 1e-2
    single = torch.randn(2, 5, 16)
    torch.testing.assert_close(lmi(single, steps=1), single)  # no neighbour step: no difference, no gate


@pytest.mark.parametrize("grid", [(2, 3), (1, 1)])
def test_lmi_matches_equations(grid):
    lmi = LMI(8, reduction=2, gate_init=0.7)
    torch.nn.init.normal_(lmi.expand.bias)
    torch.nn.init.normal_(lmi.shift.weight)  # a learned shift, not the identity it starts as
    b, steps, length, dim = 2, 4, 1 + grid[0] * grid[1], 8
    tokens = torch.randn(b * steps, length, dim, dtype=torch.float64)
    lmi = lmi.double()
    z = tokens.view(b, steps, length, dim)
    weight = lmi.shift.weight[:, 0]  # (E_r, 3, 3)

    def shifted(r):  # r (B, L, E_r): the 3x3 channel-wise transform over the grid, CLS unchanged, by hand
        out = r.clone()
        for y in range(grid[0]):
            for x in range(grid[1]):
                acc = torch.zeros_like(r[:, 0])
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        if 0 <= y + dy < grid[0] and 0 <= x + dx < grid[1]:
                            acc += weight[:, dy + 1, dx + 1] * r[:, 1 + (y + dy) * grid[1] + x + dx]
                out[:, 1 + y * grid[1] + x] = acc
        return out

    expected = torch.empty_like(z)
    for s in range(steps):
        reduced_s = lmi.reduce(lmi.norm(z[:, s]))
        if s + 1 < steps:
            difference = shifted(lmi.reduce(lmi.norm(z[:, s + 1]))) - reduced_s
        else:
            difference = torch.zeros_like(reduced_s)
        excitation = torch.tanh(lmi.expand(difference))  # (B, L, E): per token
        expected[:, s] = z[:, s] + lmi.gate * z[:, s] * excitation
    torch.testing.assert_close(lmi(tokens, steps, grid), expected.view(b * steps, length, dim))


def test_lmi_shift_starts_as_identity_and_checks_the_grid():
    lmi = LMI(8, reduction=2, gate_init=1.0)
    tokens = torch.randn(2 * 3, 1 + 6, 8)
    static = tokens.view(2, 3, 7, 8)[:, :1].expand(2, 3, 7, 8).reshape(6, 7, 8)
    torch.testing.assert_close(lmi(static, 3, (2, 3)), static)  # identity shift: no change, no gate
    with pytest.raises(ValueError, match="do not form the grid"):
        lmi(tokens, 3, (2, 2))
    with pytest.raises(ValueError, match="do not form the grid"):
        lmi(tokens, 3)  # 6 patch tokens are not a square grid


def test_lmi_mixes_time_steps():
    lmi = LMI(8, reduction=2, gate_init=1.0)
    tokens = torch.randn(4, 3, 8)
    changed = tokens.clone()
    changed[1] += torch.randn(3, 8)  # step 1 of clip 0 (a random change: LayerNorm ignores a constant shift)
    delta = (lmi(changed, 2, (1, 2)) - lmi(tokens, 2, (1, 2))).abs()
    assert delta[0].max() > 0  # step 0 sees step 1 through D_0 = R_1 - R_0
    assert delta[2:].max() == 0  # the other clip is untouched


def test_lmi_keeps_where_the_change_is():
    """Token l of step s is gated by its change to the 3x3 neighbourhood of l at step s + 1: a change at one
    token reaches that token and, through a learned shift, its grid neighbours only."""
    lmi = LMI(8, reduction=2, gate_init=1.0)
    tokens = torch.randn(2, 1 + 16, 8)  # one clip, 2 steps, CLS + a 4 x 4 grid
    changed = tokens.clone()
    changed[1, 1 + 0] += torch.randn(8)  # grid cell (0, 0) of step 1
    delta = (lmi(changed, 2, (4, 4)) - lmi(tokens, 2, (4, 4))).abs().amax(dim=-1)  # (steps, L)
    assert delta[0, 1] > 0 and delta[0, [0, *range(2, 17)]].max() == 0  # identity shift: that token only
    torch.nn.init.normal_(lmi.shift.weight)
    delta = (lmi(changed, 2, (4, 4)) - lmi(tokens, 2, (4, 4))).abs().amax(dim=-1).view(-1)[:17]
    near = [1 + 0, 1 + 1, 1 + 4, 1 + 5]  # (0, 0) and its neighbours (0, 1), (1, 0), (1, 1)
    assert delta[near].min() > 0
    assert delta[[i for i in range(17) if i not in near]].max() == 0  # CLS and the rest of the grid untouched


def test_neighbour_differences_gradient():
    video = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: neighbour_differences(x, 2), (video,))
