"""LSViTForAction: shapes, token counts, gradients, errors, 2D == 3D at tubelet 1, backend dispatch."""

import pytest
import torch

import lsvit_kernels
from lsvit import LSViTForAction, ModelConfig
from lsvit_kernels import registry
from lsvit_kernels.backends import reference


def clip(b=2, t=4, c=3, h=24, w=24):
    return torch.randn(b, t, c, h, w)


@pytest.mark.parametrize("use_3d,tubelet", [(False, 1), (True, 1), (True, 2), (True, 4)])
def test_shapes(tiny, use_3d, tubelet):
    model = LSViTForAction(tiny(use_3d_patch_embed=use_3d, tubelet_size=tubelet)).eval()
    video = clip()
    steps = 4 // (tubelet if use_3d else 1)
    assert model.tokens(video).shape == (2, steps, 1 + 9, 16)
    assert model.forward_features(video).shape == (2, 16)
    logits = model(video)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


GUIDE_COUNTS = [(False, 1, 3136), (True, 1, 3136), (True, 2, 1568), (True, 4, 784)]


@pytest.mark.parametrize("use_3d,tubelet,expected", GUIDE_COUNTS)
def test_guide_token_counts_at_224x224x16(tiny, use_3d, tubelet, expected):
    config = tiny(image_size=224, patch_size=16, num_frames=16, embed_dim=4, depth=1, num_heads=1)
    config.use_3d_patch_embed, config.tubelet_size = use_3d, tubelet
    model = LSViTForAction(config)
    video = torch.randn(1, 16, 3, 224, 224)
    with torch.no_grad():
        tokens = model.patch_embed(video, model.position_embedding(224, 224), model.cls_token)
    steps, slots = tokens.shape[1], tokens.shape[2]
    assert tokens.shape == (1, 16 // tubelet, 197, 4)
    assert steps * (slots - 1) == expected == config.num_patch_tokens(16)


@pytest.mark.parametrize("use_3d", [False, True])
def test_gradients_reach_every_parameter(tiny, use_3d):
    model = LSViTForAction(tiny(use_3d_patch_embed=use_3d)).train()
    model(clip()).logsumexp(dim=1).sum().backward()
    for name, param in model.named_parameters():  # LMI first in each block: even the last one's reach the head
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_3d_needs_num_frames(tiny):
    with pytest.raises(ValueError, match="num_frames must be specified when using 3D patch embedding"):
        LSViTForAction(tiny(use_3d_patch_embed=True, num_frames=None))
    assert LSViTForAction(tiny(use_3d_patch_embed=True, num_frames=None), num_frames=4).num_frames == 4
    assert LSViTForAction(tiny(num_frames=None)).num_frames is None  # 2D needs no clip length


def test_num_frames_not_divisible(tiny):
    with pytest.raises(ValueError, match=r"num_frames=15 is not divisible by tubelet_size=2; use 14 or 16"):
        LSViTForAction(tiny(use_3d_patch_embed=True, tubelet_size=2), num_frames=15)
    with pytest.raises(ValueError, match=r"num_frames=6 is not divisible by tubelet_size=4; use 4 or 8"):
        LSViTForAction(tiny(use_3d_patch_embed=True, tubelet_size=4, num_frames=6))
    model = LSViTForAction(tiny(use_3d_patch_embed=True, tubelet_size=2))
    with pytest.raises(ValueError, match=r"num_frames=5 is not divisible by tubelet_size=2; use 4 or 6"):
        model(clip(t=5))


def test_bad_video_shapes(tiny):
    model = LSViTForAction(tiny())
    with pytest.raises(ValueError, match="video height=20 is not divisible by patch_size=8"):
        model(clip(h=20))
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        model(torch.randn(2, 3, 24, 24))
    with pytest.raises(ValueError, match="a uint8 video needs mean= and std="):
        model(torch.zeros(1, 2, 3, 24, 24, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 pixels or a normalized float tensor; got torch.int64"):
        model(torch.zeros(1, 2, 3, 24, 24, dtype=torch.int64))
    with pytest.raises(ValueError, match="C=1 channels but the model expects C=3"):
        model(clip(c=1))


def test_2d_any_frame_count_3d_any_multiple(tiny):
    model_2d = LSViTForAction(tiny()).eval()
    model_3d = LSViTForAction(tiny(use_3d_patch_embed=True, tubelet_size=2)).eval()
    with torch.no_grad():
        for frames in (1, 3, 7):
            assert model_2d(clip(t=frames)).shape == (2, 5)
        for frames in (2, 6):
            assert model_3d.tokens(clip(t=frames)).shape[1] == frames // 2
            assert model_3d(clip(t=frames)).shape == (2, 5)


def test_tubelet_1_equals_2d(tiny):
    model_2d = LSViTForAction(tiny()).eval()
    model_3d = LSViTForAction(tiny(use_3d_patch_embed=True, tubelet_size=1)).eval()
    with torch.no_grad():
        model_2d.patch_embed.motion_weight.normal_(std=0.02)  # zero at init: make the motion channels count
    state = model_2d.state_dict()
    for key in ("patch_embed.proj.weight", "patch_embed.motion_weight"):
        assert state[key].dim() == 4
        state[key] = state[key].unsqueeze(2)  # (E, C, 1, P, P)
    model_3d.load_state_dict(state)
    video = clip(t=5)
    with torch.no_grad():
        torch.testing.assert_close(model_3d.tokens(video), model_2d.tokens(video), rtol=0, atol=0)
        torch.testing.assert_close(model_3d(video), model_2d(video), rtol=0, atol=0)


def test_tokens_are_the_fused_op_on_smif_output(tiny):
    """CLS slot and positional embedding are written by the op: compare with an independent conv-based build."""
    model = LSViTForAction(tiny(use_3d_patch_embed=True, tubelet_size=2)).eval()
    video = clip(b=1)
    with torch.no_grad():
        model.patch_embed.motion_weight.normal_(std=0.02)  # zero at init: make the motion channels count
        tokens = model.tokens(video).double()
        fused = model.smif(video).double()  # (B, T, C, H, W)
        motion = model.smif.signed_motion(video).double()
        conv = torch.nn.functional.conv3d(
            torch.cat([fused, motion], dim=2).transpose(1, 2),
            torch.cat([model.patch_embed.proj.weight, model.patch_embed.motion_weight], dim=1).double(),
            model.patch_embed.proj.bias.double(),
            stride=(2, 8, 8),
        )  # (B, E, T', gh, gw)
        patches = conv.flatten(3).permute(0, 2, 3, 1)  # (B, T', N, E)
        pos = model.pos_embed[0].double()
        assert torch.allclose(tokens[:, :, 1:], patches + pos[1:], atol=1e-5)
        assert torch.allclose(tokens[:, :, 0], (model.cls_token[0, 0].double() + pos[0]).expand(1, 2, -1), atol=1e-6)


def test_config_is_copied_and_rebuilds_the_model(tiny):
    config = tiny(use_3d_patch_embed=True, tubelet_size=2, num_frames=None)
    model = LSViTForAction(config, num_frames=6)
    config.num_classes = 9
    assert model.config.num_classes == 5
    saved = model.config.model_dump()
    assert saved["num_frames"] == 6
    rebuilt = LSViTForAction(ModelConfig.from_checkpoint_dict(saved))
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.num_frames == 6


def test_config_backend_is_used(tiny):
    calls = []

    def spy_forward(*args):
        calls.append("forward")
        return reference.forward(*args)

    def spy_backward(*args):
        calls.append("backward")
        return reference.backward(*args)

    registry.register_backend(
        registry.Backend("spy_for_tests", ("cpu",), spy_forward, spy_backward, lambda device: None)
    )
    try:
        model = LSViTForAction(tiny(kernel_backend="spy_for_tests"))
        model(clip()).sum().backward()
        # the fused input stage's backward runs the projection's backward per input: X' with W, S with W_m
        assert calls == ["forward", "backward", "backward"]
        assert model.patch_embed_backend == lsvit_kernels.last_backend() == "spy_for_tests"
    finally:
        registry._BACKENDS.pop("spy_for_tests")


def test_environment_backend_override(tiny, monkeypatch):
    model = LSViTForAction(tiny())
    with torch.no_grad():
        model(clip())
    assert model.patch_embed_backend == registry.resolve("cpu").name  # the op's automatic choice
    monkeypatch.setattr(registry, "ENV_BACKEND", "reference")  # what LSVIT_BACKEND=reference sets at import
    with torch.no_grad():
        model(clip())
    assert model.patch_embed_backend == "reference"
    monkeypatch.setattr(registry, "ENV_BACKEND", "no_such_backend")
    with pytest.raises(ValueError, match="unknown backend 'no_such_backend'"):
        model(clip())


@pytest.mark.parametrize("use_3d", [False, True], ids=["2d", "3d"])
def test_autocast_runs_the_op_in_the_autocast_dtype(tiny, use_3d):
    model = LSViTForAction(tiny(use_3d_patch_embed=use_3d)).eval()
    video = clip()
    with torch.no_grad():
        model.patch_embed.motion_weight.normal_(std=0.02)  # zero at init: make the motion channels count
        expected = model(video)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tokens = model.tokens(video)
            logits = model(video)
    assert tokens.dtype == torch.bfloat16
    assert torch.allclose(logits.float(), expected, atol=0.1, rtol=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.tokens(video).float().square().sum().backward()
    embed = model.patch_embed
    for param in (embed.proj.weight, embed.proj.bias, embed.motion_weight, model.pos_embed, model.cls_token):
        assert param.grad is not None and param.grad.dtype == torch.float32


def test_drop_path_drops_whole_samples():
    from lsvit.model import DropPath

    drop = DropPath(0.5).train()
    x = torch.randn(64, 3, 4) + 5
    out = drop(x)
    kept = (out != 0).flatten(1).all(dim=1)
    dropped = (out == 0).flatten(1).all(dim=1)
    assert (kept | dropped).all() and kept.any() and dropped.any()
    torch.testing.assert_close(out[kept], x[kept] * 2)
    assert drop.eval()(x) is x


def test_zero_initialized_motion_weights_change_nothing(tiny):
    """At init the motion channels add exactly nothing: the same weights without them give the same logits."""
    torch.manual_seed(0)
    with_motion = LSViTForAction(tiny()).eval()
    without = LSViTForAction(tiny(motion_channels=False)).eval()
    assert without.patch_embed.motion_weight is None
    state = with_motion.state_dict()
    assert state["patch_embed.motion_weight"].abs().max() == 0
    without.load_state_dict({k: v for k, v in state.items() if k != "patch_embed.motion_weight"})
    video = clip(t=5)
    with torch.no_grad():
        torch.testing.assert_close(with_motion(video), without(video), rtol=0, atol=0)
    with pytest.raises(ValueError, match="motion_channels=False"):
        without.patch_embed(video, without.position_embedding(24, 24), without.cls_token, motion=video)


def test_motion_channels_make_direction_visible(tiny):
    """With SMIF and LMI gates closed and no temporal table a 2D model cannot tell a clip from its reverse;
    the motion channels alone let it (reversing negates the signed difference)."""
    model = LSViTForAction(tiny()).eval()
    video = clip(b=1, t=4)
    with torch.no_grad():
        model.smif.gate.zero_()
        for block in model.blocks:
            block.lmi.gate.zero_()
        blind = (model.forward_features(video) - model.forward_features(video.flip(1))).abs().max()
        model.patch_embed.motion_weight.normal_(std=0.02)
        seeing = (model.forward_features(video) - model.forward_features(video.flip(1))).abs().max()
    assert blind < 1e-6 and seeing > 1e-4, (blind, seeing)


@pytest.mark.parametrize("position", ["start", "end"])
def test_lmi_position_orders_the_block(tiny, position):
    """``start`` (default): LMI, attention, MLP. ``end`` (models trained before the move): attention, MLP, LMI."""
    model = LSViTForAction(tiny(lmi_position=position)).eval()
    block = model.blocks[0]
    with torch.no_grad():
        block.lmi.gate.fill_(0.5)  # make the order matter
        x = model.tokens(clip()).flatten(0, 1)  # (B T', 1 + N, E)
        steps, grid = 4, (3, 3)

        def vit(z):
            z = z + block.attn(block.norm1(z))
            return z + block.mlp(block.norm2(z))

        expected = vit(block.lmi(x, steps, grid)) if position == "start" else block.lmi(vit(x), steps, grid)
        other = block.lmi(vit(x), steps, grid) if position == "start" else vit(block.lmi(x, steps, grid))
        got = block(x, steps, grid)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got - other).abs().max() > 1e-4


@pytest.mark.parametrize("use_3d", [False, True], ids=["2d", "3d"])
def test_patch_embedding_is_the_fused_conv_module(tiny, use_3d):
    model = LSViTForAction(tiny(use_3d_patch_embed=use_3d))
    proj = model.patch_embed.proj
    assert type(proj) is (lsvit_kernels.FusedPatchConv3d if use_3d else lsvit_kernels.FusedPatchConv2d)
    assert set(vars(model.patch_embed)) & {"patch_size", "tubelet_size", "backend"} == set()
    frames = torch.randn(2, 3, 4, 16, 16) if use_3d else torch.randn(2, 3, 16, 16)
    conv = torch.nn.functional.conv3d if use_3d else torch.nn.functional.conv2d
    with torch.no_grad():  # the module is the conv: its call is the conv's
        torch.testing.assert_close(proj(frames), conv(frames, proj.weight, proj.bias, stride=proj.kernel_size))
