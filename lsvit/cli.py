"""``lsvit``: one command for the whole workflow.

    lsvit data synth --out data/synth          make the embedded synthetic motion dataset (no download)
    lsvit data check --data_root data/ucf101   report unreadable / too short / duplicate videos, class counts
    lsvit data shard --data_root data/k700 --out shards/k700   pack videos into tar shards for streaming
    lsvit train --data_root data/synth ...     train (torchrun --nproc_per_node N -m lsvit.train ... for DDP)
    lsvit infer --checkpoint runs/x/best.pt --data_root data/synth --split val
    lsvit compare --num_frames 16 ...          2D vs 3D patch embedding: tokens, shapes, params, latency

``lsvit <command> --help`` documents every flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Optional


def build_parser() -> argparse.ArgumentParser:
    from lsvit import compare, data_check, infer, shards, synth, train
    from lsvit.errors import add_debug_argument
    from lsvit.options import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="lsvit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = HelpFormatter

    data = commands.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    # (sub-command group, name, help, module whose docstring describes it, its argument adder, its handler)
    entries = [
        (data_commands, "synth", "write the synthetic motion dataset", synth, synth.add_arguments, synth.run),
        (
            data_commands,
            "check",
            "report unreadable, short, duplicate videos",
            data_check,
            data_check.add_arguments,
            data_check.run,
        ),  # fmt: skip
        (data_commands, "shard", "pack a dataset into tar shards", shards, shards.add_arguments, shards.run),
        (commands, "train", "train a model", train, train.add_train_arguments, train.train),
        (commands, "infer", "score a checkpoint on videos", infer, infer.add_infer_arguments, infer.infer),
        (
            commands,
            "compare",
            "2D vs 3D patch embedding table",
            compare,
            compare.add_compare_arguments,
            compare.compare,
        ),
    ]
    parser.command_parsers = {}
    for group, name, help_text, module, add_arguments, handler in entries:
        sub = group.add_parser(name, help=help_text, description=module.__doc__, formatter_class=formatter)
        add_arguments(sub)
        add_debug_argument(sub)
        sub.set_defaults(handler=handler)
        parser.command_parsers[name] = sub
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run a sub-command; errors print one line (``--debug``: the traceback)."""
    import sys

    from lsvit.errors import run_guarded
    from lsvit.recipes import apply_recipe

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["train"]:
        run_guarded(lambda _: apply_recipe(parser.command_parsers["train"], argv), argparse.Namespace(
            debug="--debug" in argv))  # fmt: skip
    args = parser.parse_args(argv)
    args.command_line = ["lsvit", *argv]
    run_guarded(args.handler, args)


if __name__ == "__main__":
    main()
