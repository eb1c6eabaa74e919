"""SMIF and LMI: the equations of docs/model.md against direct loops, and their near-identity start."""

import pytest
import torch

from lsvit.lmi import LMI
from lsvit.smif import SMIF, neighbour_differences


def loop_differences(video: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """D_t = mean over existing neighbours j (1 <= |j - t| <= radius) of |X_j - X_t|, and
    S_t = the same mean of sign(j - t) (X_j - X_t), one frame at a time."""
    frames = video.shape[1]
    absolute, signed = torch.zeros_like(video), torch.zeros_like(video)
    for t in range(frames):
        neighbours = [j for j in range(t - radius, t + radius + 1) if j != t and 0 <= j < frames]
        for j in neighbours:
            absolute[:, t] += (video[:, j] - video[:, t]).abs() / len(neighbours)
            signed[:, t] += (1 if j > t else -1) * (video[:, j] - video[:, t]) / len(neighbours)
    return absolute, signed


@pytest.mark.parametrize("frames,radius", [(5, 1), (5, 2), (3, 4), (1, 2), (6, 0)])
def test_neighbour_differences_match_loop(frames, radius):
    video = torch.randn(2, frames, 3, 5, 7, dtype=torch.float64)
    absolute, signed = loop_differences(video, radius)
    torch.testing.assert_close(neighbour_differences(video, radius), absolute)
    both = neighbour_differences(video, radius, signed=True)
    torch.testing.assert_close(both[0], absolute)
    torch.testing.assert_close(both[1], signed)


def test_static_clip_has_no_motion():
    smif = SMIF(3, window=5)
    frame = torch.randn(1, 1, 3, 8, 8)
    for part in smif.motion(frame.expand(2, 6, -1, -1, -1)):
        assert part.abs().max() == 0


def test_threshold_suppresses_small_differences():
    smif = SMIF(1, window=3, threshold_init=0.5)
    video = torch.zeros(1, 3, 1, 2, 2)
    video[0, 1, 0, 0, 0] = 0.2  # below the threshold
    video[0, 1, 0, 1, 1] = 3.0  # above it
    magnitude, signed = smif.motion(video)
    assert torch.allclose(smif.threshold, torch.tensor([0.5]))
    assert magnitude[..., 0, 0].abs().max() == 0 and signed[..., 0, 0].abs().max() == 0
    assert torch.allclose(magnitude[0, 1, 0, 1, 1], torch.tensor(3.0 - 0.5))
    # the pixel lights up at frame 1 and goes dark at frame 2: +3 entering (frame 0), -3 leaving (frame 2),
    # symmetric around frame 1 (derivative 0); soft-thresholded by the same tau
    torch.testing.assert_close(signed[0, :, 0, 1, 1], torch.tensor([3.0 - 0.5, 0.0, -(3.0 - 0.5)]))


def test_signed_motion_tells_direction():
    """A bar moving right and the same bar moving left have the same magnitude map but opposite signed maps."""
    smif = SMIF(1, window=3, threshold_init=0.01)
    right = torch.zeros(1, 4, 1, 1, 8)
    for t in range(4):
        right[0, t, 0, 0, 2 + t] = 1.0
    left = right.flip(-1)
    magnitude_r, signed_r = smif.motion(right)
    magnitude_l, signed_l = smif.motion(left)
    torch.testing.assert_close(magnitude_l, magnitude_r.flip(-1))
    torch.testing.assert_close(signed_l, signed_r.flip(-1))
    # at frame 1 the bar is at x=3: it arrives from x=2 (trailing side loses, S < 0) and heads to x=4 (gains)
    assert signed_r[0, 1, 0, 0, 4] > 0 > signed_r[0, 1, 0, 0, 2]
    assert signed_l[0, 1, 0, 0, 3] > 0 > signed_l[0, 1, 0, 0, 5]


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
    out = lmi(tokens, steps=3)
    assert 0 < (out - tokens).abs().max() < 1e-2
    single = torch.randn(2, 5, 16)
    torch.testing.assert_close(lmi(single, steps=1), single)  # no neighbour step: no difference, no gate


def test_lmi_matches_equations():
    lmi = LMI(8, reduction=2, gate_init=0.7)
    torch.nn.init.normal_(lmi.expand.bias)
    b, steps, length, dim = 2, 4, 3, 8
    tokens = torch.randn(b * steps, length, dim, dtype=torch.float64)
    lmi = lmi.double()
    z = tokens.view(b, steps, length, dim)
    expected = torch.empty_like(z)
    for s in range(steps):
        reduced_s = lmi.reduce(lmi.norm(z[:, s]))
        difference = lmi.reduce(lmi.norm(z[:, s + 1])) - reduced_s if s + 1 < steps else torch.zeros_like(reduced_s)
        excitation = torch.tanh(lmi.expand(difference))  # (B, L, E): per token
        expected[:, s] = z[:, s] + lmi.gate * z[:, s] * excitation
    torch.testing.assert_close(lmi(tokens, steps), expected.view(b * steps, length, dim))


def test_lmi_mixes_time_steps():
    lmi = LMI(8, reduction=2, gate_init=1.0)
    tokens = torch.randn(4, 3, 8)
    changed = tokens.clone()
    changed[1] += torch.randn(3, 8)  # step 1 of clip 0 (a random change: LayerNorm ignores a constant shift)
    delta = (lmi(changed, 2) - lmi(tokens, 2)).abs()
    assert delta[0].max() > 0  # step 0 sees step 1 through D_0 = R_1 - R_0
    assert delta[2:].max() == 0  # the other clip is untouched


def test_lmi_keeps_where_the_change_is():
    """Token l of step s is gated by its own change to step s + 1: a change at one token stays at that token."""
    lmi = LMI(8, reduction=2, gate_init=1.0)
    tokens = torch.randn(2, 5, 8)  # one clip, 2 steps, 5 tokens
    changed = tokens.clone()
    changed[1, 3] += torch.randn(8)  # token 3 of step 1
    delta = (lmi(changed, 2) - lmi(tokens, 2)).abs().amax(dim=-1)  # (steps, L)
    assert delta[0, 3] > 0
    assert delta[0, [0, 1, 2, 4]].max() == 0


def test_neighbour_differences_gradient():
    video = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: neighbour_differences(x, 2), (video,))
    assert torch.autograd.gradcheck(lambda x: neighbour_differences(x, 2, signed=True), (video,))
