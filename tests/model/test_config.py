"""ModelConfig: code and environment settings, validation at construction and on assignment, checkpoints."""

import pytest
from pydantic import ValidationError

from lsvit.config import ModelConfig

# A non-default value for every field, as the environment spells it, and the value it must parse to.
ENV_VALUES = {
    "image_size": ("112", 112),
    "patch_size": ("8", 8),
    "in_channels": ("1", 1),
    "num_frames": ("12", 12),
    "embed_dim": ("96", 96),
    "depth": ("3", 3),
    "num_heads": ("6", 6),
    "mlp_ratio": ("2.5", 2.5),
    "qkv_bias": ("false", False),
    "dropout": ("0.25", 0.25),
    "attention_dropout": ("0.125", 0.125),
    "drop_path_rate": ("0.2", 0.2),
    "num_classes": ("7", 7),
    "smif_window": ("3", 3),
    "lmi_reduction": ("8", 8),
    "temporal_embed": ("false", False),
    "motion_channels": ("false", False),
    "lmi_position": ("end", "end"),
    "use_3d_patch_embed": ("true", True),
    "tubelet_size": ("4", 4),
    "kernel_backend": ("reference", "reference"),
}


def test_every_field_has_an_environment_case():
    assert set(ENV_VALUES) == set(ModelConfig.model_fields)


def test_defaults_are_vit_b16_2d():
    config = ModelConfig()
    assert (config.image_size, config.patch_size, config.embed_dim, config.depth, config.num_heads) == (
        224,
        16,
        768,
        12,
        12,
    )
    assert config.use_3d_patch_embed is False
    assert config.kernel_backend is None


def test_every_field_from_environment(monkeypatch):
    for name, (text, _) in ENV_VALUES.items():
        monkeypatch.setenv(f"APPCONFIG__{name.upper()}", text)
    config = ModelConfig()
    for name, (_, value) in ENV_VALUES.items():
        assert getattr(config, name) == value, name


@pytest.mark.parametrize("name", sorted(ENV_VALUES))
def test_each_field_from_environment_alone(monkeypatch, name):
    text, value = ENV_VALUES[name]
    if name in ("embed_dim", "num_heads"):  # keep heads | embed_dim with the other default
        monkeypatch.setenv("APPCONFIG__EMBED_DIM", "96")
        monkeypatch.setenv("APPCONFIG__NUM_HEADS", "6")
    if name in ("image_size", "patch_size"):
        monkeypatch.setenv("APPCONFIG__IMAGE_SIZE", "112")
        monkeypatch.setenv("APPCONFIG__PATCH_SIZE", "8")
    monkeypatch.setenv(f"APPCONFIG__{name.upper()}", text)
    assert getattr(ModelConfig(), name) == value


def test_code_overrides_environment(monkeypatch):
    monkeypatch.setenv("APPCONFIG__TUBELET_SIZE", "4")
    assert ModelConfig(tubelet_size=2).tubelet_size == 2


def test_every_field_settable_in_code():
    config = ModelConfig()
    config.use_3d_patch_embed = True
    config.tubelet_size = 4
    config.image_size = 112
    config.patch_size = 8
    config.embed_dim = 96
    config.num_heads = 6
    config.kernel_backend = "reference"
    assert (config.use_3d_patch_embed, config.tubelet_size, config.grid_size, config.kernel_backend) == (
        True,
        4,
        14,
        "reference",
    )


INVALID = [
    ({"tubelet_size": 0}, "tubelet_size"),
    ({"image_size": 100}, "image_size=100 is not divisible by patch_size=16"),
    ({"patch_size": 15}, "patch_size=15"),
    ({"num_heads": 5}, "num_heads=5 does not divide embed_dim=768"),
    ({"dropout": -0.1}, "dropout"),
    ({"attention_dropout": -0.5}, "attention_dropout"),
    ({"drop_path_rate": -0.01}, "drop_path_rate"),
    ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ({"smif_window": 4}, "smif_window=4 must be odd"),
    ({"smif_window": 0}, "smif_window"),
    ({"kernel_backend": "no_such_backend"}, "kernel_backend='no_such_backend' is not a registered backend"),
    ({"depth": 0}, "depth"),
    ({"num_frames": 0}, "num_frames"),
    ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ({"mlp_ratio": float("inf")}, "mlp_ratio=inf must be a finite number > 0"),
    ({"mlp_ratio": float("nan")}, "mlp_ratio=nan must be a finite number > 0"),
    ({"mlp_ratio": 1e-9}, "mlp_ratio=1e-09 gives an MLP of width"),
    ({"mlp_ratio": 1e20}, "the MLP weight embed_dim x width would hold 5.9e.25 elements, more than a tensor can"),
    ({"image_size": 16 * 10**12}, "the positional table .* would hold 7.68e.26 elements, more than a tensor can"),
    ({"lmi_reduction": 1000}, "lmi_reduction"),
]


@pytest.mark.parametrize("values,message", INVALID)
def test_invalid_at_construction(values, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ModelConfig(**values)


@pytest.mark.parametrize("values,message", INVALID)
def test_invalid_at_assignment_leaves_config_unchanged(values, message):
    config = ModelConfig()
    before = config.model_dump()
    ((name, value),) = values.items()
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace("[", r"\[")):
        setattr(config, name, value)
    assert config.model_dump() == before


def test_invalid_from_environment_names_the_field(monkeypatch):
    monkeypatch.setenv("APPCONFIG__SMIF_WINDOW", "6")
    with pytest.raises(ValidationError, match="smif_window=6"):
        ModelConfig()


def test_unknown_field_rejected():
    with pytest.raises(ValidationError, match="tubelet"):
        ModelConfig(tubelet=2)


def test_auto_backend_means_automatic():
    assert ModelConfig(kernel_backend="auto").kernel_backend is None


def test_checkpoint_round_trip_ignores_environment(monkeypatch):
    saved = ModelConfig(embed_dim=96, num_heads=6, use_3d_patch_embed=True, tubelet_size=4).model_dump()
    monkeypatch.setenv("APPCONFIG__TUBELET_SIZE", "2")
    monkeypatch.setenv("APPCONFIG__DEPTH", "3")
    restored = ModelConfig.from_checkpoint_dict(saved)
    assert restored.model_dump() == saved
    assert ModelConfig(**saved).tubelet_size == 4  # explicit values win over the environment as well


def test_checkpoint_from_before_a_field_gets_the_older_model():
    saved = ModelConfig(embed_dim=96, num_heads=6).model_dump()
    for field in ("temporal_embed", "motion_channels"):
        assert saved[field] is True
    assert saved["lmi_position"] == "start"
    older = {k: v for k, v in saved.items() if k not in ("temporal_embed", "motion_channels", "lmi_position")}
    restored = ModelConfig.from_checkpoint_dict(older)
    assert restored.temporal_embed is False and restored.motion_channels is False
    assert restored.lmi_position == "end"
    assert ModelConfig.from_checkpoint_dict(saved) == ModelConfig(**saved)


GUIDE_COUNTS = [(False, 2, 3136), (True, 1, 3136), (True, 2, 1568), (True, 4, 784)]


@pytest.mark.parametrize("use_3d,tubelet,expected", GUIDE_COUNTS)
def test_token_counts(use_3d, tubelet, expected):
    config = ModelConfig(use_3d_patch_embed=use_3d, tubelet_size=tubelet)
    assert config.num_patch_tokens(16) == expected
    assert config.tokens_per_step == 197
    assert config.num_steps(16) == 16 // (tubelet if use_3d else 1)


def test_num_steps_rejects_indivisible_frames():
    config = ModelConfig(use_3d_patch_embed=True, tubelet_size=4)
    with pytest.raises(ValueError, match="num_frames=10 is not divisible by tubelet_size=4; use 8 or 12"):
        config.num_steps(10)


def test_misspelt_environment_variable_names_the_close_fields(monkeypatch):
    monkeypatch.setenv("APPCONFIG__NUM_FRAMES", "8")
    monkeypatch.setenv("APPCONFIG__IMAGESIZE", "112")
    with pytest.raises(
        ValueError, match=r"APPCONFIG__IMAGESIZE \(did you mean APPCONFIG__IMAGE_SIZE\?\): not a model setting"
    ):
        ModelConfig()
    monkeypatch.delenv("APPCONFIG__IMAGESIZE")
    monkeypatch.setenv("APPCONFIG__XYZ", "1")  # nothing close: every valid name is listed
    with pytest.raises(ValueError, match=r"APPCONFIG__XYZ \(valid names: APPCONFIG__ATTENTION_DROPOUT, .*USE_3D"):
        ModelConfig()
    with pytest.raises(ValueError, match="APPCONFIG__XYZ"):  # wherever a config is built
        ModelConfig.from_checkpoint_dict(ModelConfig.model_construct().model_dump())
    monkeypatch.delenv("APPCONFIG__XYZ")
    monkeypatch.setenv("APPCONFIG__tubelet_size", "4")  # names match case-insensitively, as pydantic-settings reads
    assert (ModelConfig().num_frames, ModelConfig().tubelet_size) == (8, 4)


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("APPCONFIG__MLP_RATIO", "inf", "mlp_ratio=inf must be a finite number"),
        ("APPCONFIG__MLP_RATIO", "1e-9", "gives an MLP of width"),
        ("APPCONFIG__IMAGE_SIZE", str(2**64), "more than a tensor can index"),
    ],
)
def test_bad_sizes_from_the_environment_fail_before_the_model_is_built(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        ModelConfig()
