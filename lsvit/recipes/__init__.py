"""Named fine-tuning recipes: one TOML file per recipe in this folder, read with pydantic-settings.

``lsvit train --recipe ucf101_imagenet_vit_b16 ...`` (a name from this folder, or a path to a TOML file) sets the
recipe's values as defaults; flags given on the command line still win. In Python::

    from lsvit.recipes import load_recipe
    recipe = load_recipe("kinetics400_videomae_vit_b")   # a Recipe: .train, .model, .sources, .global_batch

Each file holds ``description``, ``sources`` (where every value comes from), ``global_batch`` (the batch the lr is
given for: scale ``lr`` and ``min_lr`` linearly for another), a ``[model]`` table (ModelConfig fields) and a
``[train]`` table (``lsvit train`` flags). docs/training.md lists the values.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource

RECIPE_DIR = Path(__file__).parent
log = logging.getLogger("lsvit.train")


class TrainRecipe(BaseModel):
    """The ``lsvit train`` flags a recipe may set (names as the flags, without dashes)."""

    model_config = ConfigDict(extra="forbid")

    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    accum_steps: Optional[int] = None
    lr: Optional[float] = None
    min_lr: Optional[float] = None
    weight_decay: Optional[float] = None
    layer_decay: Optional[float] = None
    warmup_epochs: Optional[float] = None
    clip_grad: Optional[float] = None
    label_smoothing: Optional[float] = None
    inflate: Optional[Literal["central", "average"]] = None
    rrc_scale: Optional[tuple[float, float]] = None
    rrc_ratio: Optional[tuple[float, float]] = None
    randaugment: Optional[tuple[int, int]] = None
    mixup: Optional[float] = None
    cutmix: Optional[float] = None
    mixup_prob: Optional[float] = None
    mixup_switch_prob: Optional[float] = None
    model_ema: Optional[bool] = None
    model_ema_decay: Optional[float] = None
    grad_checkpointing: Optional[bool] = None
    val_num_clips: Optional[int] = None
    val_num_crops: Optional[Literal[1, 3]] = None
    horizontal_flip: Optional[Literal["auto", "on", "off"]] = None
    resize_size: Optional[int] = None


class Recipe(BaseSettings):
    """A fine-tuning recipe file (TOML), validated: unknown keys and wrong types are errors naming the key."""

    model_config = SettingsConfigDict(extra="forbid")

    description: str
    sources: list[str]
    global_batch: int
    test_views: tuple[int, int] = (1, 1)  # (clips, crops) for lsvit infer, as the source evaluates
    model: dict[str, Any] = {}
    train: TrainRecipe = TrainRecipe()

    @field_validator("model")
    @classmethod
    def _model_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        from lsvit.config import ModelConfig

        unknown = sorted(set(value) - set(ModelConfig.model_fields))
        if unknown:
            raise ValueError(f"[model] has keys {unknown} that are not ModelConfig fields")
        ModelConfig.model_validate({**ModelConfig().model_dump(), **value})  # values valid together
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):
        return (init_settings, TomlConfigSettingsSource(settings_cls))

    def defaults(self) -> dict[str, Any]:
        """argparse defaults: the [model] fields and the [train] values that are set."""
        values = dict(self.model)
        for key, value in self.train.model_dump(exclude_none=True).items():
            values[key] = list(value) if isinstance(value, tuple) else value
        return values


def recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPE_DIR.glob("*.toml"))


def recipe_path(name: str) -> Path:
    path = Path(name)
    if path.suffix == ".toml":
        if not path.is_file():
            raise FileNotFoundError(f"--recipe {name}: no such file")
        return path
    path = RECIPE_DIR / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"--recipe {name}: unknown recipe; choose one of {recipe_names()} or pass a .toml file")
    return path


def load_recipe(name: str) -> Recipe:
    path = recipe_path(name)

    class FromFile(Recipe):
        model_config = SettingsConfigDict(toml_file=path, extra="forbid")

    return Recipe.model_validate(FromFile().model_dump())


def add_recipe_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--recipe",
        default=None,
        metavar="NAME|FILE",
        help=f"preset values from a recipe ({', '.join(recipe_names())}, or a .toml file); flags given here still "
        f"win. docs/training.md lists each recipe's values and sources",
    )


def apply_recipe(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Optional[Recipe]:
    """Set ``parser``'s defaults from the ``--recipe`` in ``argv`` (if any), before it parses ``argv``."""
    name = None
    for index, word in enumerate(argv):
        if word == "--recipe" and index + 1 < len(argv):
            name = argv[index + 1]
        elif word.startswith("--recipe="):
            name = word.split("=", 1)[1]
    if name is None:
        return None
    recipe = load_recipe(name)
    parser.set_defaults(**recipe.defaults())
    return recipe


def describe_recipe(args: argparse.Namespace, world: int) -> None:
    """Log the recipe's description and whether this run's global batch is the one its lr is given for."""
    recipe = load_recipe(args.recipe)
    log.info("recipe %s: %s", args.recipe, recipe.description)
    log.info("recipe values (flags given on the command line override them): %s", recipe.defaults())
    batch = world * args.batch_size * args.accum_steps
    if batch != recipe.global_batch:
        log.warning(
            "recipe lr %g is for a global batch of %d; this run's is %d (processes x --batch_size x --accum_steps): "
            "the linear rule gives --lr %.3g --min_lr %.3g",
            recipe.train.lr or args.lr,
            recipe.global_batch,
            batch,
            args.lr * batch / recipe.global_batch,
            args.min_lr * batch / recipe.global_batch,
        )
    clips, crops = recipe.test_views
    log.info("the recipe's test protocol: lsvit infer --num_clips %d --num_crops %d", clips, crops)
