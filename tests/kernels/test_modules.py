"""Drop-in modules: state_dict identical to nn.Conv2d / nn.Conv3d, from_conv, checkpoints load either way."""

import pytest
import torch
from torch import nn

import lsvit_kernels as lk

from .conv_oracle import assert_close_to_oracle, conv_tokens


def test_state_dict_matches_conv3d():
    conv = nn.Conv3d(3, 24, (2, 8, 8), stride=(2, 8, 8))
    module = lk.PatchEmbed3d(3, 24, patch_size=8, tubelet_size=2)
    sd = module.state_dict()
    assert list(sd) == list(conv.state_dict()) == ["weight", "bias"]
    assert all(sd[k].shape == v.shape for k, v in conv.state_dict().items())
    module.load_state_dict(conv.state_dict())  # a conv checkpoint just loads
    conv.load_state_dict(module.state_dict())  # and back


def test_state_dict_matches_conv2d_without_bias():
    conv = nn.Conv2d(3, 16, 4, stride=4, bias=False)
    module = lk.PatchEmbed2d(3, 16, patch_size=4, bias=False, mean=[0.5] * 3, std=[0.25] * 3)
    assert list(module.state_dict()) == list(conv.state_dict()) == ["weight"]
    module.load_state_dict(conv.state_dict())


def test_from_conv3d_shares_parameters_and_matches():
    conv = nn.Conv3d(3, 20, (2, 4, 4), stride=(2, 4, 4))
    module = lk.PatchEmbed3d.from_conv(conv)
    assert module.weight is conv.weight and module.bias is conv.bias
    video = torch.randn(2, 3, 4, 8, 12)  # (B, C, T, H, W), the conv's layout
    expected = conv(video).flatten(3).permute(0, 2, 3, 1)
    assert_close_to_oracle(module(video), expected.detach().double())


def test_from_conv2d_on_images_and_videos():
    conv = nn.Conv2d(3, 10, 4, stride=4)
    module = lk.PatchEmbed2d.from_conv(conv, layout="BTCHW")
    image = torch.randn(2, 3, 8, 12)
    expected = conv(image).flatten(2).transpose(1, 2)
    assert_close_to_oracle(module(image), expected.detach().double())
    video = torch.randn(2, 5, 3, 8, 12)
    assert module(video).shape == (2, 5, 6, 10)


def test_from_conv_rejects_overlapping_conv():
    with pytest.raises(ValueError, match=r"kernel_size \(3, 3\) != stride \(1, 1\)"):
        lk.PatchEmbed2d.from_conv(nn.Conv2d(3, 8, 3))
    with pytest.raises(TypeError, match="expects nn.Conv3d"):
        lk.PatchEmbed3d.from_conv(nn.Conv2d(3, 8, 4, stride=4))


def test_module_with_pos_cls_and_uint8_normalization():
    module = lk.PatchEmbed3d(
        3, 8, patch_size=4, tubelet_size=2, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], dtype=torch.float64
    )
    video = torch.randint(0, 256, (1, 4, 3, 8, 8), dtype=torch.uint8)
    pos = torch.randn(5, 8, dtype=torch.float64)
    cls = torch.randn(1, 1, 8, dtype=torch.float64)
    out = module(video, pos, cls)
    m = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64).view(1, 1, 3, 1, 1)
    s = torch.tensor([0.2, 0.25, 0.3], dtype=torch.float64).view(1, 1, 3, 1, 1)
    expected = conv_tokens((video.double() / 255 - m) / s, module.weight.detach(), module.bias.detach(), pos, cls)
    assert_close_to_oracle(out, expected)


def test_fresh_module_is_initialized_like_a_conv():
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 32, (2, 8, 8), stride=(2, 8, 8))
    torch.manual_seed(0)
    module = lk.PatchEmbed3d(3, 32, patch_size=8, tubelet_size=2)
    torch.testing.assert_close(module.weight, conv.weight)
    torch.testing.assert_close(module.bias, conv.bias)


def test_valid_padding_is_a_patch_embedding():
    conv = nn.Conv2d(3, 8, 4, stride=4, padding="valid")
    module = lk.PatchEmbed2d.from_conv(conv)
    image = torch.randn(1, 3, 8, 8)
    assert_close_to_oracle(module(image), conv(image).flatten(2).transpose(1, 2).detach().double())
    assert "padding" in lk.modules.patch_conv_problem(nn.Conv2d(3, 8, 4, stride=4, padding=1))
