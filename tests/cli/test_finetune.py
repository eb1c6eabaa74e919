"""Fine-tuning flags on real clips: --pretrained, augmentation, mixup/cutmix, EMA, layer decay, grad checkpointing."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from lsvit import infer, train
from lsvit.augment import VideoAugment
from lsvit.checkpoint import load_checkpoint
from lsvit.data import decode_frames, frames_to_rgb, to_model_input
from lsvit.finetune import ClipMixup, enable_grad_checkpointing

from .conftest import QUICK_FLAGS, quick_train


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    """A real timm VisionTransformer's state dict (48 px, patch 8: a 6x6 grid; ImageNet head), saved to a file."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=48, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=1000)
    path = tmp_path_factory.mktemp("vit") / "vit_timm.pth"
    torch.save(vit.state_dict(), path)
    return path, vit.state_dict()


def _trainer(synth_root, small_list, out, *extra) -> train.Trainer:
    threads = torch.get_num_threads()
    try:
        argv = ["--data_root", str(synth_root), "--train_list", str(small_list), "--output_dir", str(out),
                *QUICK_FLAGS, *extra]  # fmt: skip
        return train.Trainer(train.parse(argv))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("inflate", ["central", "average"])
def test_pretrained_from_the_command_line(timm_vit, synth_root, small_list, tmp_path, caplog, inflate):
    path, weights = timm_vit
    caplog.set_level(logging.INFO, logger="lsvit.train")
    trainer = _trainer(synth_root, small_list, tmp_path, "--pretrained", str(path), "--inflate", inflate)
    state = trainer.model.state_dict()
    for key in ("blocks.1.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "norm.weight", "cls_token"):
        torch.testing.assert_close(state[key], weights[key], rtol=0, atol=0)
    kernel = state["patch_embed.proj.weight"]  # (E, C, 2, P, P) from timm's (E, C, P, P)
    expected = weights["patch_embed.proj.weight"]
    if inflate == "central":
        torch.testing.assert_close(kernel[:, :, 1], expected)
        assert kernel[:, :, 0].abs().max() == 0
    else:
        torch.testing.assert_close(kernel.sum(dim=2), expected)
    text = caplog.text
    assert "(timm layout): loaded 30 tensors" in text
    assert "resampled: pos_embed: 6x6 -> 4x4 grid" in text
    assert f"inflated: patch_embed.proj.weight: 2D -> tubelet 2 ({inflate})" in text
    assert "new (left at init): blocks.*.lmi" in text and "temporal_pos_embed" in text


def _clip(synth_root, frames: int = 8) -> np.ndarray:
    video = sorted((synth_root / "train").rglob("*.mp4"))[0]
    decoded = decode_frames(video)
    return frames_to_rgb(decoded[:frames])  # (T, H, W, 3) uint8


def test_augmentation_is_the_same_for_every_frame(synth_root):
    augment = VideoAugment(32, 37, horizontal_flip=True, rrc_scale=(0.2, 1.0), randaugment=(3, 15))
    frame = _clip(synth_root, 1)
    still = np.repeat(frame, 6, axis=0)  # six identical frames: one draw per clip keeps them identical
    out = augment(still, np.random.default_rng(3))
    assert out.shape == (6, 3, 32, 32)
    for t in range(1, 6):
        torch.testing.assert_close(out[t], out[0], rtol=0, atol=0)
    clip = _clip(synth_root)
    again = augment(clip, np.random.default_rng(3))
    torch.testing.assert_close(again, augment(clip, np.random.default_rng(3)), rtol=0, atol=0)  # reproducible
    assert not torch.equal(again, augment(clip, np.random.default_rng(4)))  # and random across draws
    plain = VideoAugment(32, 37, horizontal_flip=False)(clip, np.random.default_rng(3))
    assert not torch.equal(plain, again)
    shipped = augment.crop_clip(torch.from_numpy(clip), np.random.default_rng(3))  # what the loader ships
    assert shipped.dtype == torch.uint8 and shipped.shape == (8, 3, 32, 32)
    torch.testing.assert_close(to_model_input(shipped[None], torch.device("cpu"))[0], again)


def test_cutmix_box_is_shared_by_all_frames_and_targets_are_soft():
    class Flags:
        mixup, cutmix, mixup_prob, mixup_switch_prob, label_smoothing = 0.0, 1.0, 1.0, 0.5, 0.1

    np.random.seed(0)
    mixer = ClipMixup(Flags, num_classes=4)
    video = torch.arange(5.0)[:, None, None, None, None].expand(5, 3, 2, 16, 16).clone()  # clip i: value i
    labels = torch.tensor([0, 1, 2, 3, 1])
    mixed, targets = mixer(video, labels)
    assert targets.shape == (5, 4)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(5))
    torch.testing.assert_close(targets[4], torch.tensor([0.025, 0.925, 0.025, 0.025]))  # odd one out: smoothed
    torch.testing.assert_close(mixed[4], video[4])
    for clip in range(4):
        for t in range(1, 3):
            torch.testing.assert_close(mixed[clip, t], mixed[clip, 0], rtol=0, atol=0)  # same box every frame
    pasted = (mixed[0, 0, 0] != 0).float().mean()  # clip 0 got clip 3's pixels (timm flips the batch) in a box
    assert 0 < pasted < 1
    assert targets[0, 3] == pytest.approx(0.9 * float(pasted) + 0.025, abs=1e-6)


def test_grad_checkpointing_gives_the_same_gradients():
    from lsvit import LSViTForAction
    from lsvit.config import ModelConfig

    config = ModelConfig(image_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3,
                         num_frames=4, smif_window=3, drop_path_rate=0.2)  # fmt: skip
    torch.manual_seed(0)
    plain = LSViTForAction(config)
    checkpointed = LSViTForAction(config)
    checkpointed.load_state_dict(plain.state_dict())
    enable_grad_checkpointing(checkpointed)
    video = torch.randn(2, 4, 3, 16, 16)
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # drop path masks: recomputation replays the same ones
        model(video).square().sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    assert set(plain.state_dict()) == set(checkpointed.state_dict())


def test_layer_decay_and_no_weight_decay_groups(synth_root, small_list, tmp_path):
    trainer = _trainer(synth_root, small_list, tmp_path, "--layer_decay", "0.5", "--weight_decay", "0.05")
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    scale, decay = {}, {}
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            scale[names[id(param)]], decay[names[id(param)]] = group["lr_scale"], group["weight_decay"]
    assert len(scale) == len(names)
    # depth 2: stem = layer 0, blocks = 1 and 2 (timm groups the final norm with the last block), head = 3
    assert scale["pos_embed"] == scale["patch_embed.proj.weight"] == scale["smif.gate"] == 0.125
    assert scale["blocks.0.attn.qkv.weight"] == 0.25 and scale["blocks.1.mlp.fc1.weight"] == 0.5
    assert scale["norm.weight"] == 0.5 and scale["head.weight"] == 1.0
    for name in trainer.model.no_weight_decay():
        assert decay[name] == 0.0  # from the model's no_weight_decay()
    assert decay["blocks.0.attn.qkv.bias"] == 0.0 and decay["blocks.0.attn.qkv.weight"] == 0.05
    lr = {names[id(p)]: g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert lr["blocks.0.attn.qkv.weight"] == pytest.approx(0.25 * lr["head.weight"])


def test_ema_is_validated_checkpointed_resumed_and_usable_by_infer(synth_root, small_list, tmp_path, capsys):
    out = tmp_path / "ema"
    flags = ["--batch_size", "8", "--seed", "3", "--model_ema", "--model_ema_decay", "0.9", "--mixup", "0.8",
             "--cutmix", "1.0", "--rrc_scale", "0.5", "1", "--randaugment", "2", "9"]  # fmt: skip
    summary = quick_train(synth_root, small_list, out, "--epochs", "1", *flags)
    assert summary["history"][0]["val_ema_top1"] is not None
    checkpoint = load_checkpoint(out / "last.pt")
    ema, model = checkpoint["model_ema"], checkpoint["model"]
    assert set(ema) == set(model) and not torch.equal(
        ema["blocks.0.attn.qkv.weight"], model["blocks.0.attn.qkv.weight"]
    )
    logged = capsys.readouterr().out
    assert "loss: label smoothing 0.1, mixup 0.8 / cutmix 1" in logged and "EMA top-1" in logged
    resumed = _trainer(synth_root, small_list, out, "--epochs", "2", *flags, "--resume", "auto")
    torch.testing.assert_close(resumed.ema.module.state_dict(), ema, rtol=0, atol=0)
    metrics = infer.run(["--checkpoint", str(out / "last.pt"), "--data_root", str(synth_root), "--split", "val",
                         "--weights", "ema", "--output_dir", str(tmp_path / "infer"), "--num_workers", "0",
                         "--no_progress"])  # fmt: skip
    assert metrics["top1"] == pytest.approx(summary["history"][0]["val_ema_top1"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--layer_decay", "1.5"], "--layer_decay 1.5 must be in (0, 1]"),
        (["--rrc_scale", "0.9", "0.1"], "--rrc_scale 0.9 0.1 must be 0 < MIN <= MAX <= 1"),
        (["--randaugment", "2", "40"], "magnitude M in 0..30"),
        (["--model_ema_decay", "1.0"], "--model_ema_decay 1.0 must be in (0, 1)"),
    ],
)
def test_bad_fine_tuning_values_are_one_line(synth_root, capsys, flags, message):
    from lsvit import cli

    with pytest.raises(SystemExit):
        cli.main(["train", "--data_root", str(synth_root), *flags])
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
