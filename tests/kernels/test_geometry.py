import pytest
from hypothesis import given
from hypothesis import strategies as st

from lsvit_kernels import geometry
from lsvit_kernels.geometry import patch_grid, token_counts


@pytest.mark.parametrize("tubelet, expected", [(1, 3136), (2, 1568), (4, 784)])
def test_guide_token_counts(tubelet, expected):
    assert token_counts(16, 224, patch_size=16, tubelet_size=tubelet) == expected
    grid = patch_grid((1, 16, 3, 224, 224), (768, 3, tubelet, 16, 16))
    assert grid.num_patches == expected
    assert grid.patch_dim == 3 * tubelet * 256


@given(
    b=st.integers(1, 3),
    steps=st.integers(1, 3),
    t=st.integers(1, 3),
    gh=st.integers(1, 4),
    gw=st.integers(1, 4),
    ph=st.integers(1, 5),
    pw=st.integers(1, 5),
    c=st.integers(1, 3),
    cls=st.booleans(),
)
def test_grid_properties(b, steps, t, gh, gw, ph, pw, c, cls):
    grid = patch_grid((b, steps * t, c, gh * ph, gw * pw), (7, c, t, ph, pw), has_cls=cls)
    assert (grid.steps, grid.grid_h, grid.grid_w) == (steps, gh, gw)
    assert grid.output_shape == (b, steps, int(cls) + gh * gw, 7)
    assert grid.pos_rows_allowed() == (int(cls) + gh * gw, steps * (int(cls) + gh * gw))
    # tubelet_origin / k_offset enumerate every pixel of the video exactly once
    seen = set()
    for token in range(b * grid.num_patches):
        bb, f0, y0, x0 = geometry.tubelet_origin(token, grid)
        for k in range(grid.patch_dim):
            ch, dt, dh, dw = geometry.k_offset(k, grid)
            seen.add((bb, f0 + dt, ch, y0 + dh, x0 + dw))
    assert len(seen) == b * steps * t * c * gh * ph * gw * pw


def test_conv2d_weight_is_one_frame():
    assert geometry.normalize_weight_shape((8, 3, 16, 16)) == (8, 3, 1, 16, 16)


@pytest.mark.parametrize(
    "video, weight, match",
    [
        ((1, 15, 3, 32, 32), (8, 3, 2, 16, 16), r"num_frames=15 is not divisible by tubelet_size=2; use 14 or 16"),
        ((1, 2, 3, 30, 32), (8, 3, 1, 16, 16), r"video height=30 is not divisible by patch height=16; use 16 or 32"),
        ((1, 2, 3, 32, 40), (8, 3, 1, 16, 16), r"video width=40 is not divisible by patch width=16"),
        ((1, 2, 4, 32, 32), (8, 3, 1, 16, 16), r"video has C=4 channels but weight expects C=3"),
        ((1, 2, 3, 32, 32), (8, 3, 16), r"weight must have nn.Conv3d layout"),
    ],
)
def test_shape_errors_name_the_fix(video, weight, match):
    with pytest.raises(ValueError, match=match):
        patch_grid(video, weight)


def test_pos_rows_error_lists_both_choices():
    with pytest.raises(ValueError, match=r"give 5 rows .* or 10 rows"):
        patch_grid((1, 4, 3, 32, 32), (8, 3, 2, 16, 16), has_cls=True, pos_rows=4)


def test_tubelet_error_offers_tubelet_one():
    with pytest.raises(ValueError, match="or tubelet_size=1"):
        token_counts(15, 224, tubelet_size=2)
