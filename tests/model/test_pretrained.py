"""ImageNet ViT checkpoints (timm and Hugging Face layouts, written here) load into LSViT; 3D inflation."""

import pytest
import torch
import torch.nn.functional as F

from lsvit import LSViTForAction
from lsvit.pretrained import detect_layout, inflate_patch_weight, load_pretrained

# What an image ViT does not have (and blocks.N.lmi.*)
NEW_PREFIXES = ("smif.", "head.", "temporal_pos_embed", "patch_embed.motion_weight")


def is_new(key: str) -> bool:
    return key.startswith(NEW_PREFIXES) or ".lmi." in key


def timm_checkpoint(model: LSViTForAction, grid: int = 4, extra_block: bool = True) -> dict:
    """A random timm ViT state dict with this model's shapes: ImageNet head, a larger pos grid, some extras."""
    checkpoint = {}
    for key, value in model.state_dict().items():
        if is_new(key):
            continue
        if key == "patch_embed.proj.weight" and value.dim() == 5:
            value = value[:, :, 0]  # timm's Conv2d kernel
        checkpoint[key] = torch.randn_like(value)
    e = model.config.embed_dim
    checkpoint["pos_embed"] = torch.randn(1, 1 + grid * grid, e)
    checkpoint["head.weight"] = torch.randn(1000, e)
    checkpoint["head.bias"] = torch.randn(1000)
    checkpoint["blocks.0.ls1.gamma"] = torch.randn(e)  # a LayerScale ViT's tensor: no place here
    if extra_block:  # a deeper checkpoint: its extra block is reported, not loaded
        for key in [k for k in checkpoint if k.startswith("blocks.0.")]:
            checkpoint[key.replace("blocks.0.", f"blocks.{model.config.depth}.")] = torch.randn_like(checkpoint[key])
    return checkpoint


HF_PARTS = {
    "attn.proj": "attention.output.dense",
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def hf_checkpoint(timm: dict, prefix: str = "vit.") -> dict:
    """The same weights in Hugging Face ViTForImageClassification layout (separate q, k, v)."""
    hf = {
        f"{prefix}embeddings.cls_token": timm["cls_token"],
        f"{prefix}embeddings.position_embeddings": timm["pos_embed"],
        f"{prefix}embeddings.patch_embeddings.projection.weight": timm["patch_embed.proj.weight"],
        f"{prefix}embeddings.patch_embeddings.projection.bias": timm["patch_embed.proj.bias"],
        f"{prefix}layernorm.weight": timm["norm.weight"],
        f"{prefix}layernorm.bias": timm["norm.bias"],
        "classifier.weight": timm["head.weight"],
        "classifier.bias": timm["head.bias"],
        f"{prefix}pooler.dense.weight": torch.randn(4, 4),
    }
    depth = 1 + max(int(k.split(".")[1]) for k in timm if k.startswith("blocks."))
    for i in range(depth):
        layer = f"{prefix}encoder.layer.{i}."
        for kind in ("weight", "bias"):
            q, k, v = timm[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)
            hf[layer + f"attention.attention.query.{kind}"] = q
            hf[layer + f"attention.attention.key.{kind}"] = k
            hf[layer + f"attention.attention.value.{kind}"] = v
            for ours, theirs in HF_PARTS.items():
                hf[layer + f"{theirs}.{kind}"] = timm[f"blocks.{i}.{ours}.{kind}"]
    return hf


def check_loaded(model: LSViTForAction, timm: dict, before: dict, grid: int) -> None:
    state = model.state_dict()
    for key, value in state.items():
        if is_new(key):
            torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=f"{key} must stay at init")
        elif key == "pos_embed":
            torch.testing.assert_close(value[:, 0], timm[key][:, 0])
            e, g = value.shape[-1], model.config.grid_size
            image = timm[key][0, 1:].T.reshape(1, e, grid, grid)
            expected = F.interpolate(image, size=(g, g), mode="bicubic", align_corners=False)
            torch.testing.assert_close(value[0, 1:].T.reshape(1, e, g, g), expected)
        elif key == "patch_embed.proj.weight" and value.dim() == 5:
            continue  # inflation: checked by its own tests
        else:
            torch.testing.assert_close(value, timm[key], rtol=0, atol=0, msg=key)


def test_timm_layout(tiny, tmp_path):
    model = LSViTForAction(tiny())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    timm = timm_checkpoint(model)
    path = tmp_path / "vit_timm.pth"
    torch.save({"model": timm}, path)  # timm's training scripts wrap the state dict

    report = load_pretrained(model, path)
    assert report.layout == "timm"
    check_loaded(model, timm, before, grid=4)
    assert report.pos_grid == ((4, 4), (3, 3))
    assert report.missing == sorted(k for k in before if is_new(k))
    assert "temporal_pos_embed" in report.missing and model.temporal_pos_embed.abs().max() == 0
    assert sorted(report.skipped) == ["head.bias", "head.weight"]
    assert "blocks.0.ls1.gamma" in report.unexpected
    assert f"blocks.{model.config.depth}.attn.qkv.weight" in report.unexpected
    assert "pos_embed resampled" in report.summary()


@pytest.mark.parametrize("prefix", ["vit.", ""])
def test_huggingface_layout(tiny, tmp_path, prefix):
    model = LSViTForAction(tiny())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    timm = timm_checkpoint(model, extra_block=False)
    hf = hf_checkpoint(timm, prefix)
    assert detect_layout(hf) == "huggingface"
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf, path)

    report = load_pretrained(model, path)
    assert report.layout == "huggingface"
    check_loaded(model, timm, before, grid=4)
    e = model.config.embed_dim
    qkv = model.blocks[1].attn.qkv.weight
    torch.testing.assert_close(qkv[e : 2 * e], hf[f"{prefix}encoder.layer.1.attention.attention.key.weight"])
    assert f"{prefix}pooler.dense.weight" in report.unexpected
    assert sorted(report.skipped) == ["head.bias", "head.weight"]


def test_inflate_patch_weight_values():
    weight = torch.randn(6, 3, 4, 4)
    central = inflate_patch_weight(weight, 3, "central")
    assert central.shape == (6, 3, 3, 4, 4)
    torch.testing.assert_close(central[:, :, 1], weight)
    assert central[:, :, 0].abs().max() == 0 and central[:, :, 2].abs().max() == 0
    average = inflate_patch_weight(weight, 4, "average")
    for dt in range(4):
        torch.testing.assert_close(average[:, :, dt], weight / 4)
    for method in ("central", "average"):
        torch.testing.assert_close(inflate_patch_weight(weight, 1, method), weight.unsqueeze(2))
    with pytest.raises(ValueError, match="inflation='nearest'"):
        inflate_patch_weight(weight, 2, "nearest")


@pytest.mark.parametrize("method", ["central", "average"])
@pytest.mark.parametrize("tubelet", [1, 2, 4])
def test_inflated_3d_model_starts_as_the_image_model(tiny, method, tubelet):
    """On a clip whose tubelets hold repeated frames, inflated 3D tokens equal the 2D model's tokens."""
    model_2d = LSViTForAction(tiny())
    model_3d = LSViTForAction(tiny(use_3d_patch_embed=True, tubelet_size=tubelet))
    timm = timm_checkpoint(model_2d, extra_block=False)
    load_pretrained(model_2d, timm)
    report = load_pretrained(model_3d, timm, inflation=method)
    assert report.inflation == method
    frames = torch.randn(2, 8 // tubelet, 3, 24, 24)
    clip = frames.repeat_interleave(tubelet, dim=1)  # (B, 8, C, H, W): each tubelet holds one frame repeated
    with torch.no_grad():
        pos = model_2d.position_embedding(24, 24)
        tokens_2d = model_2d.patch_embed(clip, pos, model_2d.cls_token)  # bypass SMIF: it is not loaded
        tokens_3d = model_3d.patch_embed(clip, model_3d.position_embedding(24, 24), model_3d.cls_token)
    # same math, different fp32 summation order (K = 3 t P^2 vs 3 P^2): tolerance for fp32 sums of ~3k terms
    torch.testing.assert_close(tokens_3d, tokens_2d[:, ::tubelet], atol=1e-4, rtol=1e-4)


def test_mismatched_width_names_the_tensor(tiny):
    small = LSViTForAction(tiny())
    wide = LSViTForAction(tiny(embed_dim=32))
    with pytest.raises(ValueError, match="'cls_token' has shape \\[1, 1, 32\\] but the model expects \\[1, 1, 16\\]"):
        load_pretrained(small, timm_checkpoint(wide))


def test_unknown_layout_and_missing_file(tiny, tmp_path):
    model = LSViTForAction(tiny())
    with pytest.raises(ValueError, match="unrecognized checkpoint layout"):
        load_pretrained(model, {"conv1.weight": torch.randn(2)})
    with pytest.raises(FileNotFoundError, match="local files only"):
        load_pretrained(model, tmp_path / "nowhere.pth")


def test_pos_embed_without_cls_row(tiny):
    """timm's no_embed_class checkpoints keep only grid rows: the CLS slot gets a zero position."""
    model = LSViTForAction(tiny())
    timm = timm_checkpoint(model, extra_block=False)
    timm["pos_embed"] = torch.randn(1, 9, model.config.embed_dim)  # 3 x 3 grid, no CLS row
    report = load_pretrained(model, timm)
    assert model.pos_embed[0, 0].abs().max() == 0
    torch.testing.assert_close(model.pos_embed[0, 1:], timm["pos_embed"][0])
    assert any("no CLS row" in note for note in report.notes)


def reference_vit_cls(state: dict, video: torch.Tensor, patch: int, heads: int) -> torch.Tensor:
    """A plain ImageNet ViT per frame, from a timm state dict, built on nn.MultiheadAttention and F.conv2d:
    the CLS feature of each frame averaged over time (B, E)."""
    b, t = video.shape[:2]
    e = state["cls_token"].shape[-1]
    x = F.conv2d(video.flatten(0, 1), state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2)  # (B T, N, E)
    x = torch.cat([state["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + state["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        p = {k.removeprefix(f"blocks.{i}."): v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        attention = torch.nn.MultiheadAttention(e, heads, batch_first=True)
        attention.load_state_dict(
            {
                "in_proj_weight": p["attn.qkv.weight"],
                "in_proj_bias": p["attn.qkv.bias"],
                "out_proj.weight": p["attn.proj.weight"],
                "out_proj.bias": p["attn.proj.bias"],
            }
        )
        y = F.layer_norm(x, (e,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        x = x + attention(y, y, y, need_weights=False)[0]
        y = F.layer_norm(x, (e,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        x = x + F.linear(
            F.gelu(F.linear(y, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"]
        )
    x = F.layer_norm(x, (e,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    return x[:, 0].reshape(b, t, e).mean(dim=1)


@pytest.mark.parametrize("tubelet,method", [(None, None), (2, "central"), (2, "average")])
def test_loaded_model_with_closed_gates_is_the_image_vit(tiny, tubelet, method):
    """With the SMIF and LMI gates at 0, a loaded LSViT computes the plain ViT's time-averaged CLS feature."""
    use_3d = tubelet is not None
    model = LSViTForAction(tiny(use_3d_patch_embed=use_3d, tubelet_size=tubelet or 2)).eval()
    timm = timm_checkpoint(LSViTForAction(tiny()), grid=3, extra_block=False)
    timm["pos_embed"] = timm["pos_embed"] * 0.1  # ViT-like magnitudes keep the comparison well conditioned
    load_pretrained(model, timm, inflation=method or "central")
    with torch.no_grad():
        model.smif.gate.zero_()
        for block in model.blocks:
            block.lmi.gate.zero_()
        frames = torch.randn(2, 3, 3, 24, 24)
        clip = frames.repeat_interleave(tubelet, dim=1) if use_3d else frames
        expected = reference_vit_cls(timm, frames, patch=8, heads=model.config.num_heads)
        torch.testing.assert_close(model.forward_features(clip), expected, atol=1e-5, rtol=1e-5)


def videomae_checkpoint(timm: dict, tubelet: int, pretraining: bool) -> dict:
    """The original VideoMAE layout from timm-named weights: tubelet kernel, q_bias / v_bias (no key bias), no CLS
    token or positional table (fixed sinusoids), fc_norm instead of norm; pre-training files add a decoder."""
    out = {}
    for key, value in timm.items():
        if key in ("cls_token", "pos_embed") or key.startswith("head."):
            continue
        if key == "patch_embed.proj.weight":
            value = torch.randn(value.shape[0], value.shape[1], tubelet, *value.shape[2:])
        if key.endswith("attn.qkv.bias"):
            q, _, v = value.chunk(3)
            out[key.replace("qkv.bias", "q_bias")], out[key.replace("qkv.bias", "v_bias")] = q, v
            continue
        out[key.replace("norm.", "fc_norm.") if key.startswith("norm.") else key] = value
    if pretraining:
        out = {f"encoder.{k}": v for k, v in out.items()}
        out["decoder.blocks.0.mlp.fc1.weight"] = torch.randn(8, 8)
        out["mask_token"] = torch.randn(1, 1, 8)
    return out


@pytest.mark.parametrize("pretraining", [False, True])
@pytest.mark.parametrize("use_3d, tubelet", [(True, 2), (True, 4), (False, 2)])
def test_videomae_layout(tiny, use_3d, tubelet, pretraining):
    model = LSViTForAction(tiny(use_3d_patch_embed=use_3d, tubelet_size=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    timm = timm_checkpoint(LSViTForAction(tiny()), extra_block=False)
    videomae = videomae_checkpoint(timm, tubelet, pretraining)
    assert detect_layout(videomae) == "videomae"
    report = load_pretrained(model, {"module": videomae}["module"], inflation="average")
    state = model.state_dict()
    prefix = "encoder." if pretraining else ""
    kernel = videomae[f"{prefix}patch_embed.proj.weight"]
    if use_3d and tubelet == 2:
        torch.testing.assert_close(state["patch_embed.proj.weight"], kernel, rtol=0, atol=0)
        assert report.inflated == []
    elif use_3d:  # tubelet 4 -> 2: summed over time, then spread over the model's 2 frames
        torch.testing.assert_close(state["patch_embed.proj.weight"], (kernel.sum(2) / 2).unsqueeze(2).expand_as(
            state["patch_embed.proj.weight"]))  # fmt: skip
    else:
        torch.testing.assert_close(state["patch_embed.proj.weight"], kernel.sum(2))
        assert "summed over time -> 2D" in report.inflated[0]
    e = model.config.embed_dim
    bias = state["blocks.1.attn.qkv.bias"]
    torch.testing.assert_close(bias[:e], videomae[f"{prefix}blocks.1.attn.q_bias"])
    assert bias[e : 2 * e].abs().max() == 0
    torch.testing.assert_close(bias[2 * e :], videomae[f"{prefix}blocks.1.attn.v_bias"])
    torch.testing.assert_close(state["norm.weight"], timm["norm.weight"])  # fc_norm loaded as the final norm
    for key in ("cls_token", "pos_embed"):  # VideoMAE stores neither: they stay new
        torch.testing.assert_close(state[key], before[key], rtol=0, atol=0)
        assert key in report.missing
    assert ("decoder.blocks.0.mlp.fc1.weight" in report.unexpected) == pretraining


def test_vivit_layout_splits_the_space_time_table(tiny):
    """ViViT (Hugging Face): joint (1 + T' N) positions become spatial + temporal tables; q/k/v with biases."""
    model = LSViTForAction(tiny(use_3d_patch_embed=True, tubelet_size=2, num_frames=8))  # 4 steps, 3x3 grid
    timm = timm_checkpoint(LSViTForAction(tiny()), grid=3, extra_block=False)
    e = model.config.embed_dim
    spatial, temporal = torch.randn(9, e), torch.randn(4, e)
    temporal -= temporal.mean(dim=0)  # the split's convention: the temporal table has zero mean
    cls_row = torch.randn(1, e)
    joint = torch.cat([cls_row, (temporal[:, None] + spatial[None]).reshape(36, e)])[None]
    hf = {k.replace("vit.", "vivit."): v for k, v in hf_checkpoint(timm, "vit.").items()}
    hf["vivit.embeddings.position_embeddings"] = joint
    hf["vivit.embeddings.patch_embeddings.projection.weight"] = torch.randn(e, 3, 2, 8, 8)
    assert detect_layout(hf) == "vivit-huggingface"
    report = load_pretrained(model, hf)
    state = model.state_dict()
    torch.testing.assert_close(state["pos_embed"][0], torch.cat([cls_row, spatial]))
    torch.testing.assert_close(state["temporal_pos_embed"], temporal)
    torch.testing.assert_close(
        state["patch_embed.proj.weight"], hf["vivit.embeddings.patch_embeddings.projection.weight"]
    )
    torch.testing.assert_close(state["blocks.0.attn.qkv.weight"], timm["blocks.0.attn.qkv.weight"])
    assert any("split into 9 spatial + 4 temporal rows" in note for note in report.notes)
    assert "temporal_pos_embed" not in report.missing


def test_safetensors_file_and_model_folder(tiny, tmp_path):
    from safetensors.torch import save_file

    model = LSViTForAction(tiny())
    timm = timm_checkpoint(model, extra_block=False)
    folder = tmp_path / "vit-hf"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in hf_checkpoint(timm).items()}, str(folder / "model.safetensors"))
    report = load_pretrained(model, folder)  # a save_pretrained() folder: its model.safetensors
    assert report.layout == "huggingface"
    torch.testing.assert_close(model.state_dict()["blocks.1.mlp.fc1.weight"], timm["blocks.1.mlp.fc1.weight"])
    with pytest.raises(FileNotFoundError, match="holds none of"):
        load_pretrained(model, tmp_path)
