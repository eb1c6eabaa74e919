"""--recipe presets: one TOML file per recipe, read with pydantic-settings; command-line flags win."""

from __future__ import annotations

import pytest
import torch

from lsvit import cli, train
from lsvit.config import ModelConfig
from lsvit.recipes import Recipe, load_recipe, recipe_names

from .conftest import TINY_MODEL


def test_every_recipe_is_valid_and_sets_real_flags():
    assert recipe_names() == [
        "hmdb51_imagenet_vit_b16",
        "kinetics400_videomae_vit_b",
        "ssv2_videomae_vit_b",
        "ucf101_imagenet_vit_b16",
    ]
    destinations = {action.dest for action in train.build_parser()._actions}
    for name in recipe_names():
        recipe = load_recipe(name)
        assert isinstance(recipe, Recipe) and recipe.sources and recipe.global_batch > 0
        assert set(recipe.defaults()) <= destinations, name
        ModelConfig(**recipe.model)  # the architecture is a valid config
        batch = recipe.train.batch_size
        assert recipe.global_batch % batch == 0, f"{name}: global batch is a whole number of processes"


def test_recipe_values_are_defaults_and_flags_win(synth_root):
    args = train.parse(["--data_root", str(synth_root), "--recipe", "ssv2_videomae_vit_b", "--epochs", "2",
                        "--image_size", "32", "--mixup", "0"])  # fmt: skip
    assert (args.epochs, args.image_size, args.mixup) == (2, 32, 0.0)  # typed on the command line
    assert (args.layer_decay, args.cutmix, args.horizontal_flip) == (0.75, 1.0, "off")  # from the recipe
    assert args.randaugment == [4, 7] and args.rrc_scale == [0.08, 1.0] and args.num_frames == 16
    assert args.use_3d_patch_embed is True and args.tubelet_size == 2


def test_a_recipe_file_of_ones_own(tmp_path, synth_root):
    path = tmp_path / "mine.toml"
    path.write_text('description = "x"\nsources = ["y"]\nglobal_batch = 8\n[train]\nlayer_decay = 0.6\n')
    args = train.parse(["--data_root", str(synth_root), "--recipe", str(path)])
    assert args.layer_decay == 0.6 and args.lr == 5e-4  # unset values keep the flags' defaults


@pytest.mark.parametrize(
    "body, message",
    [
        ("[train]\nlayer_dekay = 0.6\n", "train.layer_dekay: Extra inputs are not permitted"),
        ("[train]\nrandaugment = [4]\n", "train.randaugment"),
        ("[model]\nnum_heads = 5\n", "num_heads=5 does not divide embed_dim=768"),
    ],
)
def test_a_bad_recipe_is_one_line(tmp_path, synth_root, capsys, body, message):
    path = tmp_path / "bad.toml"
    path.write_text('description = "x"\nsources = ["y"]\nglobal_batch = 8\n' + body)
    with pytest.raises(SystemExit):
        cli.main(["train", "--data_root", str(synth_root), "--recipe", str(path)])
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_training_with_a_recipe(synth_root, small_list, tmp_path, capsys):
    """The UCF101 recipe's regularization and augmentation on the tiny model: one epoch runs and logs it."""
    threads = torch.get_num_threads()
    try:
        summary = train.run(
            ["--data_root", str(synth_root), "--train_list", str(small_list), "--output_dir", str(tmp_path),
             "--recipe", "ucf101_imagenet_vit_b16", *TINY_MODEL, "--num_frames", "4", "--epochs", "1",
             "--batch_size", "8", "--num_workers", "0", "--threads", "1", "--no_progress"]
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    logged = capsys.readouterr().out
    assert "recipe ucf101_imagenet_vit_b16: UCF101" in logged
    assert "is for a global batch of 128; this run's is 8" in logged
    assert "lsvit infer --num_clips 5 --num_crops 3" in logged
    assert len(summary["history"]) == 1
