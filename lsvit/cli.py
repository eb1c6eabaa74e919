"""``lsvit``: one command for the whole workflow.

    lsvit data synth --out data/synth          make the embedded synthetic motion dataset (no download)
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
    from lsvit import compare, infer, synth, train
    from lsvit.options import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="lsvit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = HelpFormatter

    data = commands.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    synth_parser = data_commands.add_parser(
        "synth", help="write the synthetic motion dataset", description=synth.__doc__, formatter_class=formatter
    )
    synth.add_arguments(synth_parser)
    synth_parser.set_defaults(handler=synth.run)

    train_parser = commands.add_parser(
        "train", help="train a model", description=train.__doc__, formatter_class=formatter
    )
    train.add_train_arguments(train_parser)
    train_parser.set_defaults(handler=train.train)

    infer_parser = commands.add_parser(
        "infer", help="score a checkpoint on videos", description=infer.__doc__, formatter_class=formatter
    )
    infer.add_infer_arguments(infer_parser)
    infer_parser.set_defaults(handler=infer.infer)

    compare_parser = commands.add_parser(
        "compare", help="2D vs 3D patch embedding table", description=compare.__doc__, formatter_class=formatter
    )
    compare.add_compare_arguments(compare_parser)
    compare_parser.set_defaults(handler=compare.compare)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
