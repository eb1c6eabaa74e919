"""The compare table and the command-line surface (every subcommand and flag documented)."""

from __future__ import annotations

import argparse
import json

import pytest

from lsvit import cli, compare
from lsvit.errors import EXIT_ERROR, UserError
from lsvit.options import build_config, model_overrides

from .conftest import run_module


def test_compare_rows_tokens_shapes_and_reductions(tmp_path, capsys):
    rows = compare.run(
        ["--image_size", "32", "--patch_size", "8", "--embed_dim", "32", "--depth", "1", "--num_heads", "2",
         "--num_frames", "8", "--num_classes", "5", "--repeats", "2", "--warmup", "1",
         "--json", str(tmp_path / "t.json")]
    )  # fmt: skip
    assert [row["variant"] for row in rows] == ["2D", "3D t=2", "3D t=4"]
    assert [row["tokens"] for row in rows] == [8 * 16, 4 * 16, 2 * 16]
    assert [row["token_reduction_pct"] for row in rows] == [0.0, 50.0, 75.0]
    assert [row["embed_shape"] for row in rows] == [[1, 8, 16, 32], [1, 4, 16, 32], [1, 2, 16, 32]]
    assert [row["embed_params"] for row in rows] == [32 * 3 * 64 + 32, 32 * 3 * 128 + 32, 32 * 3 * 256 + 32]
    assert all(row["model_shape"] == [1, 5] and row["model_ms"] > 0 and row["embed_ms"] > 0 for row in rows)
    printed = capsys.readouterr().out
    assert "3D t=4" in printed and "tokens -%" in printed and "75.0" in printed
    assert json.loads((tmp_path / "t.json").read_text())["rows"][2]["tokens"] == 32


def test_compare_prints_spread_and_warns_when_busy(monkeypatch, capsys):
    argv = ["--image_size", "32", "--patch_size", "8", "--embed_dim", "32", "--num_heads", "2", "--num_frames", "4",
            "--tubelets", "2", "--skip_model", "--repeats", "4", "--warmup", "1"]  # fmt: skip
    monkeypatch.setattr(compare, "load_average", lambda: 0.0)
    monkeypatch.setattr(compare, "busy_warning", lambda loads, spreads: None)
    rows = compare.run(argv)
    printed = capsys.readouterr().out
    assert "embed ms (IQR)" in printed and "warning" not in printed
    assert all(row["embed_iqr_ms"] >= 0 for row in rows)
    assert f"{rows[0]['embed_ms']:.2f} ({rows[0]['embed_iqr_ms']:.2f})" in printed

    monkeypatch.undo()
    monkeypatch.setattr(compare, "load_average", lambda: 1000.0)
    compare.run(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("warning: the machine is busy (load average 1000.0 on"), last


def test_compare_rejects_indivisible_frames():
    argv = ["--image_size", "32", "--patch_size", "8", "--num_frames", "6", "--skip_model", "--repeats", "1"]
    with pytest.raises(UserError, match="num_frames=6 is not divisible by tubelet 4"):
        compare.run(argv)


def test_compare_command_line_error_is_one_line_with_exit_status_2(capsys):
    argv = ["--image_size", "32", "--patch_size", "8", "--num_frames", "6", "--skip_model", "--repeats", "1"]
    for main, args in ((compare.main, argv), (cli.main, ["compare", *argv])):
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == EXIT_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: num_frames=6 is not divisible by tubelet 4"), err


def _all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_parsers(child)


def test_every_flag_of_every_subcommand_has_help():
    parsers = list(_all_parsers(cli.build_parser()))
    assert {p.prog for p in parsers} >= {"lsvit", "lsvit data synth", "lsvit train", "lsvit infer", "lsvit compare"}
    for parser in parsers:
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help, f"{parser.prog} {action.option_strings} has no help"


def test_guide_style_flags_reach_the_config():
    args = cli.build_parser().parse_args(
        ["train", "--data_root", "d", "--num_frames", "16", "--use_3d_patch_embed", "--tubelet-size", "4",
         "--kernel_backend", "none"]
    )  # fmt: skip
    assert (args.num_frames, args.use_3d_patch_embed, args.tubelet_size, args.kernel_backend) == (16, True, 4, None)
    assert args.embed_dim is None  # not given: the config (code, then APPCONFIG__ env) decides


def test_console_entry_points_run(tmp_path):
    result = run_module(
        "lsvit.cli",
        "data",
        "synth",
        "--out",
        str(tmp_path / "d"),
        "--classes",
        "left",
        "right",
        "--train_per_class",
        "1",
        "--val_per_class",
        "1",
        "--size",
        "16",
        "--frames",
        "4",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "d" / "dataset.json").read_text())["classes"] == ["left", "right"]
    help_run = run_module("lsvit.train", "--help")  # the module runs as a script (torchrun -m lsvit.train)
    assert help_run.returncode == 0 and "--resume" in help_run.stdout


def test_guide_token_counts_at_224():
    rows = compare.run(["--num_frames", "16", "--image_size", "224", "--embed_dim", "96", "--num_heads", "4",
                        "--skip_model", "--repeats", "1", "--warmup", "0"])  # fmt: skip
    assert [row["tokens"] for row in rows] == [3136, 1568, 784]
    assert [row["embed_shape"][1:3] for row in rows] == [[16, 196], [8, 196], [4, 196]]


def test_config_precedence_code_env_flag(monkeypatch):
    monkeypatch.setenv("APPCONFIG__DEPTH", "3")
    monkeypatch.setenv("APPCONFIG__EMBED_DIM", "48")
    args = cli.build_parser().parse_args(["train", "--data_root", "d", "--embed_dim", "32", "--num_heads", "4"])
    config = build_config(model_overrides(args))
    assert (config.depth, config.embed_dim, config.num_heads, config.patch_size) == (3, 32, 4, 16)
