"""The module family: FusedPatchConv2d / FusedPatchConv3d are nn.Conv2d / nn.Conv3d (constructor, state_dict,
init, call); tokens() is the op's full form on the same parameters; the older PatchEmbed2d / PatchEmbed3d names
warn and keep their behaviour."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lsvit_kernels as lk

from .conv_oracle import assert_close_to_oracle, conv_tokens


@pytest.mark.parametrize("dims", [2, 3])
def test_constructor_state_dict_and_init_are_the_convs(dims):
    kernel = (4, 3) if dims == 2 else (2, 4, 3)
    conv_class, fused_class = (nn.Conv2d, lk.FusedPatchConv2d) if dims == 2 else (nn.Conv3d, lk.FusedPatchConv3d)
    torch.manual_seed(0)
    conv = conv_class(3, 10, kernel, stride=kernel)
    torch.manual_seed(0)
    fused = fused_class(3, 10, kernel)  # stride defaults to the kernel
    assert isinstance(fused, conv_class) and fused.stride == conv.stride
    assert list(fused.state_dict()) == list(conv.state_dict()) == ["weight", "bias"]
    torch.testing.assert_close(fused.state_dict(), conv.state_dict(), rtol=0, atol=0)
    assert (fused.embed_dim, fused.patch_size, fused.tubelet_size) == (10, (4, 3), 1 if dims == 2 else 2)
    no_bias = fused_class(3, 10, kernel, bias=False)
    assert list(no_bias.state_dict()) == ["weight"]
    no_bias.load_state_dict(conv_class(3, 10, kernel, stride=kernel, bias=False).state_dict())


def test_from_conv_converts_the_conv_itself():
    conv = nn.Conv3d(3, 20, (2, 4, 4), stride=(2, 4, 4))
    plain = copy.deepcopy(conv)
    weight = conv.weight
    fused = lk.FusedPatchConv3d.from_conv(conv, backend="reference")
    assert fused is conv and fused.weight is weight and type(conv) is lk.FusedPatchConv3d
    video = torch.randn(2, 3, 5, 8, 13)  # (B, C, T, H, W); remainders cropped like the conv
    torch.testing.assert_close(fused(video), plain(video))
    assert fused.to_conv() is conv and type(conv) is nn.Conv3d


def test_from_conv_rejects_what_is_not_a_patch_conv():
    with pytest.raises(ValueError, match=r"kernel_size \(3, 3\) != stride \(1, 1\)"):
        lk.FusedPatchConv2d.from_conv(nn.Conv2d(3, 8, 3))
    with pytest.raises(TypeError, match="expects an nn.Conv3d"):
        lk.FusedPatchConv3d.from_conv(nn.Conv2d(3, 8, 4, stride=4))
    assert "padding" in lk.modules.patch_conv_problem(nn.Conv2d(3, 8, 4, stride=4, padding=1))
    assert lk.modules.patch_conv_problem(nn.Conv2d(3, 8, 4, stride=4, padding="valid")) is None


@pytest.mark.parametrize("layout", ["BCTHW", "BTCHW"])
def test_tokens_of_a_3d_conv_with_pos_and_cls(layout):
    fused = lk.FusedPatchConv3d(3, 8, (2, 3, 4), dtype=torch.float64)
    video = torch.randn(2, 3, 4, 6, 8, dtype=torch.float64)  # (B, C, T, H, W)
    if layout == "BTCHW":
        video = video.transpose(1, 2)
    pos = torch.randn(2 * 5, 8, dtype=torch.float64)  # one row per token: T' = 2 steps of CLS + 4 patches
    cls = torch.randn(8, dtype=torch.float64)
    out = fused.tokens(video, pos, cls, layout=layout)
    expected = conv_tokens(video, fused.weight.detach(), fused.bias.detach(), pos, cls, layout=layout)
    assert_close_to_oracle(out, expected)


def test_tokens_of_a_2d_conv_on_images_and_every_frame():
    fused = lk.FusedPatchConv2d(3, 10, 4, dtype=torch.float64)
    image = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    expected = F.conv2d(image, fused.weight, fused.bias, stride=4).flatten(2).transpose(1, 2)
    assert_close_to_oracle(fused.tokens(image), expected.detach())
    video = torch.randn(2, 5, 3, 8, 12, dtype=torch.float64)  # (B, T, C, H, W): every frame embedded
    expected = conv_tokens(video, fused.weight.detach(), fused.bias.detach(), layout="BTCHW")
    assert_close_to_oracle(fused.tokens(video, layout="BTCHW"), expected)


def test_tokens_of_uint8_pixels_with_mean_and_std():
    fused = lk.FusedPatchConv3d(3, 8, (2, 4, 4), dtype=torch.float64)
    video = torch.randint(0, 256, (1, 4, 3, 8, 8), dtype=torch.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    out = fused.tokens(video, layout="BTCHW", mean=mean, std=std)
    m = torch.tensor(mean, dtype=torch.float64).view(1, 1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 1, 3, 1, 1)
    expected = conv_tokens((video.double() / 255 - m) / s, fused.weight.detach(), fused.bias.detach())
    assert_close_to_oracle(out, expected)


@pytest.mark.parametrize("layout", ["BCTHW", "BTCHW"])
def test_extra_channels_are_projected_by_their_own_weight(layout):
    fused = lk.FusedPatchConv3d(3, 6, (2, 4, 4), dtype=torch.float64)
    extra_weight = torch.randn(6, 2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    video = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64)  # (B, C, T, H, W)
    extra = torch.randn(2, 2, 4, 8, 8, dtype=torch.float64)  # two more channels
    if layout == "BTCHW":
        video, extra = video.transpose(1, 2), extra.transpose(1, 2)
    out = fused.tokens(video, layout=layout, extra_channels=extra, extra_weight=extra_weight)
    channel_dim = 1 if layout == "BCTHW" else 2
    joined = torch.cat([fused.weight, extra_weight], dim=1).detach()
    expected = conv_tokens(torch.cat([video, extra], channel_dim), joined, fused.bias.detach(), layout=layout)
    assert_close_to_oracle(out, expected)
    out.sum().backward()
    assert extra_weight.grad is not None and fused.weight.grad is not None


def test_extra_channels_errors_name_the_problem():
    fused = lk.FusedPatchConv2d(3, 6, 4)
    image = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="give both extra_channels and extra_weight"):
        fused.tokens(image, extra_channels=torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"extra_channels \[1, 2, 8, 4\] must match the video"):
        fused.tokens(image, extra_channels=torch.randn(1, 2, 8, 4), extra_weight=torch.randn(6, 2, 4, 4))
    with pytest.raises(ValueError, match=r"extra_weight must be \[6, 2, 4, 4\]"):
        fused.tokens(image, extra_channels=torch.randn(1, 2, 8, 8), extra_weight=torch.randn(6, 3, 4, 4))


# ---- the older names ----


def test_older_names_warn_and_keep_their_forward():
    with pytest.warns(DeprecationWarning, match="PatchEmbed3d is deprecated; use lsvit_kernels.FusedPatchConv3d"):
        old = lk.PatchEmbed3d(3, 8, patch_size=4, tubelet_size=2, dtype=torch.float64)
    assert isinstance(old, lk.FusedPatchConv3d) and list(old.state_dict()) == ["weight", "bias"]
    video = torch.randn(1, 4, 3, 8, 8, dtype=torch.float64)  # its default layout: (B, T, C, H, W)
    pos, cls = torch.randn(5, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(old(video, pos, cls), old.tokens(video, pos, cls, layout="BTCHW"))
    with pytest.warns(DeprecationWarning, match="PatchEmbed2d is deprecated"):
        old2d = lk.PatchEmbed2d(3, 16, patch_size=4, bias=False, mean=[0.5] * 3, std=[0.25] * 3)
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(old2d(pixels), old2d.tokens(pixels, mean=[0.5] * 3, std=[0.25] * 3))


def test_older_from_conv_still_wraps_and_shares_parameters():
    conv = nn.Conv3d(3, 20, (2, 4, 4), stride=(2, 4, 4))
    with pytest.warns(DeprecationWarning):
        old = lk.PatchEmbed3d.from_conv(conv)
    assert type(conv) is nn.Conv3d and old.weight is conv.weight and old.bias is conv.bias
    video = torch.randn(2, 3, 4, 8, 12)  # its from_conv layout: the conv's (B, C, T, H, W)
    expected = conv(video).flatten(3).permute(0, 2, 3, 1)
    assert_close_to_oracle(old(video), expected.detach().double())
    with pytest.raises(TypeError, match="expects nn.Conv3d"):
        lk.PatchEmbed3d.from_conv(nn.Conv2d(3, 8, 4, stride=4))
