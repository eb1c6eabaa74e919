"""``lsvit train`` flags: data, model (every ModelConfig field), optimization, fine-tuning and regularization, run."""

from __future__ import annotations

import argparse

from lsvit import formats
from lsvit.options import add_dashed, add_model_arguments


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    add_dashed(
        data,
        "data_root",
        default=None,
        help="dataset folder (or --train_shards): <root>/train.txt + <root>/val.txt annotation lists, or "
        "<root>/train/<class>/ and <root>/val/<class>/ folders, or class folders directly under <root> (then no "
        "validation split), or any --data_format below (UCF101/HMDB51 splits, Kinetics CSV, SSv2 JSON, mmaction2 "
        "lists)",
    )
    add_dashed(data, "train_list", default=None, help="training annotation list or class-folder root (overrides)")
    add_dashed(data, "val_list", default=None, help="validation annotation list or class-folder root (overrides)")
    add_dashed(data, "resize_size", type=int, default=None, help="shorter side before cropping (default 256/224 x)")
    add_dashed(
        data,
        "horizontal_flip",
        choices=("auto", "on", "off"),
        default="auto",
        help="random horizontal flip for training; auto = off when <root>/dataset.json says direction_sensitive "
        "(left/right classes), else on",
    )
    add_dashed(data, "num_workers", type=int, default=2, help="DataLoader worker processes per rank")
    add_dashed(
        data,
        "train_shards",
        default=None,
        metavar="SHARDS",
        help="stream training clips from tar shards written by lsvit data shard instead of --data_root: a "
        "manifest.json, its folder, or a shard pattern (dir/shard-{000000..000099}.tar), local or any fsspec URL "
        "(docs/data.md)",
    )
    add_dashed(data, "val_shards", default=None, metavar="SHARDS", help="validation shards (as --train_shards)")
    add_dashed(
        data,
        "shuffle_buffer",
        type=int,
        default=128,
        help="with --train_shards: encoded videos each DataLoader worker holds to shuffle the stream (0 = off)",
    )
    formats.add_data_arguments(data, training=True)

    model = parser.add_argument_group("model (ModelConfig; flags override APPCONFIG__* env, which overrides code)")
    add_model_arguments(model)

    from lsvit.recipes import add_recipe_argument

    add_recipe_argument(parser)
    add_optimization_arguments(parser)
    add_finetune_arguments(parser)
    add_run_arguments(parser)


def add_optimization_arguments(parser: argparse.ArgumentParser) -> None:
    optim = parser.add_argument_group("optimization")
    add_dashed(optim, "epochs", type=int, default=30, help="training epochs")
    add_dashed(optim, "batch_size", type=int, default=8, help="clips per optimizer micro-step PER PROCESS")
    add_dashed(optim, "accum_steps", type=int, default=1, help="micro-batches accumulated per optimizer step")
    add_dashed(optim, "lr", type=float, default=5e-4, help="peak AdamW learning rate")
    add_dashed(optim, "min_lr", type=float, default=1e-6, help="learning rate at the end of the cosine decay")
    add_dashed(
        optim,
        "weight_decay",
        type=float,
        default=0.05,
        help="AdamW weight decay (not on biases, norms and the model's no_weight_decay() tables)",
    )
    add_dashed(
        optim,
        "layer_decay",
        type=float,
        default=1.0,
        help="layer-wise lr decay: block i trains at lr * layer_decay^(depth + 1 - i), the head at lr (1 = off; "
        "0.75 is BEiT/VideoMAE's ViT-B fine-tuning value)",
    )
    add_dashed(optim, "warmup_epochs", type=float, default=1.0, help="linear warmup length in epochs")
    add_dashed(optim, "clip_grad", type=float, default=1.0, help="max gradient norm (0 = no clipping)")
    add_dashed(optim, "label_smoothing", type=float, default=0.1, help="cross-entropy label smoothing")
    add_dashed(
        optim,
        "amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision autocast: auto = bf16 on GPU, off on CPU",
    )


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    tune = parser.add_argument_group(
        "fine-tuning, augmentation, regularization (all off by default; docs/training.md gives the field's recipes)"
    )
    add_dashed(
        tune,
        "pretrained",
        default=None,
        metavar="FILE",
        help="start from local backbone weights (a file, or a Hugging Face model folder): timm or Hugging Face "
        "ViT, VideoMAE, ViViT (.pth/.pt/.bin/"
        ".safetensors); the head, SMIF and LMI start new. Ignored on --resume",
    )
    add_dashed(
        tune,
        "inflate",
        choices=("central", "average"),
        default="central",
        help="how a 2D patch kernel becomes a 3D tubelet kernel: in the central frame, or averaged over frames",
    )
    add_dashed(
        tune,
        "rrc_scale",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="random-resized crop area range, the same box for every frame (0.08 1.0 is the common recipe); "
        "default: resize the shorter side and crop",
    )
    add_dashed(
        tune, "rrc_ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), metavar=("MIN", "MAX"), help="its aspect range"
    )
    add_dashed(
        tune,
        "randaugment",
        type=int,
        nargs=2,
        default=None,
        metavar=("N", "M"),
        help="RandAugment: N operations of magnitude M (0-30), the same for every frame (VideoMAE: 4 7; timm ViT: 2 9)",
    )
    add_dashed(tune, "mixup", type=float, default=0.0, help="mixup beta alpha (0 = off; 0.8 is the common value)")
    add_dashed(tune, "cutmix", type=float, default=0.0, help="cutmix beta alpha (0 = off; 1.0 is the common value)")
    add_dashed(tune, "mixup_prob", type=float, default=1.0, help="probability of mixing a batch")
    add_dashed(tune, "mixup_switch_prob", type=float, default=0.5, help="cutmix instead of mixup when both are on")
    add_dashed(tune, "model_ema", action="store_true", help="keep an EMA of the weights, validate and save it too")
    add_dashed(tune, "model_ema_decay", type=float, default=0.9999, help="EMA decay (timm's warmup applies)")
    add_dashed(
        tune,
        "val_num_clips",
        type=int,
        default=1,
        help="validation on N temporal clips per video, softmax averaged (as lsvit infer --num_clips)",
    )
    add_dashed(tune, "val_num_crops", type=int, choices=(1, 3), default=1, help="validation spatial crops (1 or 3)")
    add_dashed(
        tune,
        "grad_checkpointing",
        action="store_true",
        help="recompute block activations in the backward pass: less memory for long clips, about 20%% more "
        "time per step",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    run = parser.add_argument_group("run")
    add_dashed(run, "output_dir", default="runs/lsvit", help="checkpoints, CSV log and plot go here")
    add_dashed(run, "seed", type=int, default=0, help="seed for init, data order, augmentation and dropout")
    add_dashed(
        run,
        "resume",
        default=None,
        help="checkpoint to continue from, or 'auto': the newest of <output_dir>/last.pt, previous.pt, best.pt "
        "that verifies (none: a new run). Changed optimization and data flags are applied and printed; flags "
        "that cannot change mid-run stop with a message",
    )
    add_dashed(run, "save_every_steps", type=int, default=0, help="also save last.pt every N optimizer steps (0=off)")
    add_dashed(run, "device", default=None, help="cpu, cuda, cuda:1 ... (default: this rank's GPU, else cpu)")
    add_dashed(
        run,
        "fsdp",
        action="store_true",
        help="shard weights, gradients and optimizer state over the torchrun processes (FSDP2) instead of DDP, "
        "for backbones whose training state does not fit one device; checkpoints are sharded "
        "(torch.distributed.checkpoint) and lsvit infer reads them in one process",
    )
    add_dashed(
        run,
        "deterministic",
        action="store_true",
        help="torch.use_deterministic_algorithms + no cuDNN benchmark (CPU runs are deterministic anyway)",
    )
    add_dashed(
        run,
        "threads",
        type=int,
        default=0,
        help="torch CPU threads per process (0 = torch's default; 1 is fastest for small models on a busy CPU)",
    )
    add_dashed(run, "no_progress", action="store_true", help="no tqdm progress bars")
    add_dashed(
        run,
        "tensorboard",
        action="store_true",
        help="also write TensorBoard event files into --output_dir, next to log.csv (tensorboard --logdir DIR)",
    )


def check_train_arguments(args: argparse.Namespace) -> None:
    """Values no flag type can reject, checked before any work; each error names the flag and a value that works."""
    problems = []
    if not args.data_root and not getattr(args, "train_shards", None):
        problems.append("pass --data_root DIR (a dataset) or --train_shards SHARDS (from lsvit data shard)")
    if getattr(args, "shuffle_buffer", 0) < 0:
        problems.append(f"--shuffle_buffer {args.shuffle_buffer} must be >= 0 (0 = off)")
    if args.accum_steps < 1 or args.batch_size < 1 or args.epochs < 0:
        problems.append("--accum_steps and --batch_size must be >= 1 and --epochs >= 0")
    if not 0 < args.layer_decay <= 1:
        problems.append(f"--layer_decay {args.layer_decay} must be in (0, 1] (1 = off; 0.75 is common)")
    if args.rrc_scale is not None and not 0 < args.rrc_scale[0] <= args.rrc_scale[1] <= 1:
        low, high = args.rrc_scale
        problems.append(f"--rrc_scale {low} {high} must be 0 < MIN <= MAX <= 1 (e.g. 0.08 1)")
    if not 0 < args.rrc_ratio[0] <= args.rrc_ratio[1]:
        problems.append(f"--rrc_ratio {args.rrc_ratio[0]} {args.rrc_ratio[1]} must be 0 < MIN <= MAX (e.g. 0.75 1.333)")
    if args.randaugment is not None and not (args.randaugment[0] >= 0 and 0 <= args.randaugment[1] <= 30):
        problems.append(f"--randaugment {args.randaugment[0]} {args.randaugment[1]}: N >= 0 operations, magnitude M in "
                        f"0..30 (e.g. 4 7)")  # fmt: skip
    if args.mixup < 0 or args.cutmix < 0:
        problems.append("--mixup and --cutmix are beta-distribution alphas: >= 0 (0 = off)")
    if not (0 <= args.mixup_prob <= 1 and 0 <= args.mixup_switch_prob <= 1):
        problems.append("--mixup_prob and --mixup_switch_prob are probabilities in [0, 1]")
    if not 0 < args.model_ema_decay < 1:
        problems.append(f"--model_ema_decay {args.model_ema_decay} must be in (0, 1) (e.g. 0.9999)")
    if args.val_num_clips < 1:
        problems.append(f"--val_num_clips {args.val_num_clips} must be >= 1")
    if not 0 <= args.label_smoothing < 1:
        problems.append(f"--label_smoothing {args.label_smoothing} must be in [0, 1) (e.g. 0.1)")
    if problems:
        raise ValueError("; ".join(problems))
