"""replace_patch_embeddings: third-party model structures (built here, no downloads) run on the fused op with the
conv's outputs, gradients, dtypes, checkpoints and free ``.flatten(2).transpose(1, 2)``."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lsvit_kernels
from lsvit_kernels import modules as fused_modules
from lsvit_kernels.replace import (
    FusedPatchConv2d,
    FusedPatchConv3d,
    ReplacementReport,
    replace_patch_embeddings,
    restore_patch_embeddings,
)

# error vs the float64 reference <= 2 x plain PyTorch's error in the same dtype + EPS x scale
EPS = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2e-3}


# ---- model structures as the libraries define them (module names match their checkpoints) ----


class TimmPatchEmbed(nn.Module):
    """timm.layers.PatchEmbed: ``proj`` conv, then NCHW -> NLC."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class TimmStyleViT(nn.Module):
    """timm VisionTransformer names: patch_embed.proj, cls_token, pos_embed, blocks, norm, head."""

    def __init__(self, img_size=(20, 28), patch_size=4, in_chans=3, embed_dim=24, num_classes=5) -> None:
        super().__init__()
        num_patches = (img_size[0] // patch_size) * (img_size[1] // patch_size)
        self.patch_embed = TimmPatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.1)
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.1)
        self.blocks = nn.Sequential(
            nn.TransformerEncoderLayer(embed_dim, 4, 2 * embed_dim, dropout=0.0, batch_first=True, norm_first=True)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x):  # (B, C, H, W)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class VideoMAEPatchEmbeddings(nn.Module):
    """transformers VideoMAEPatchEmbeddings / VivitTubeletEmbeddings: (B, T, C, H, W) permuted to BCTHW."""

    def __init__(self, in_chans: int, embed_dim: int, tubelet_size: int, patch_size: int) -> None:
        super().__init__()
        kernel = (tubelet_size, patch_size, patch_size)
        self.projection = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, pixel_values):
        pixel_values = pixel_values.permute(0, 2, 1, 3, 4)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class VideoMAEStyle(nn.Module):
    """VideoMAE for classification: embeddings.patch_embeddings.projection, fixed position table, mean pool."""

    def __init__(self, frames=6, img_size=(12, 20), tubelet_size=2, patch_size=4, in_chans=3, embed_dim=24):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.patch_embeddings = VideoMAEPatchEmbeddings(in_chans, embed_dim, tubelet_size, patch_size)
        tokens = (frames // tubelet_size) * (img_size[0] // patch_size) * (img_size[1] // patch_size)
        self.embeddings.register_buffer("position_embeddings", torch.randn(1, tokens, embed_dim) * 0.1)
        self.encoder = nn.TransformerEncoderLayer(embed_dim, 4, 2 * embed_dim, dropout=0.0, batch_first=True)
        self.fc_norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, 7)

    def forward(self, pixel_values):  # (B, T, C, H, W)
        x = self.embeddings.patch_embeddings(pixel_values) + self.embeddings.position_embeddings
        return self.classifier(self.fc_norm(self.encoder(x).mean(1)))


class Qwen2VLPatchEmbed(nn.Module):
    """transformers Qwen2-VL PatchEmbed: flat patches reshaped to (-1, C, t, P, P), one tubelet per sample."""

    def __init__(self, patch_size=14, temporal_patch_size=2, in_channels=3, embed_dim=32) -> None:
        super().__init__()
        self.patch_size, self.temporal_patch_size = patch_size, temporal_patch_size
        self.in_channels, self.embed_dim = in_channels, embed_dim
        kernel = [temporal_patch_size, patch_size, patch_size]
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=kernel, stride=kernel, bias=False)

    def forward(self, hidden_states):
        target_dtype = self.proj.weight.dtype
        hidden_states = hidden_states.view(
            -1, self.in_channels, self.temporal_patch_size, self.patch_size, self.patch_size
        )
        return self.proj(hidden_states.to(dtype=target_dtype)).view(-1, self.embed_dim)


class Qwen2VLStyle(nn.Module):
    """A vision tower as Qwen2-VL nests it: visual.patch_embed.proj, then blocks and a patch merger."""

    def __init__(self, embed_dim=32) -> None:
        super().__init__()
        self.visual = nn.Module()
        self.visual.patch_embed = Qwen2VLPatchEmbed(embed_dim=embed_dim)
        self.visual.blocks = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU())
        self.visual.merger = nn.Linear(embed_dim, 16)

    def forward(self, hidden_states):  # (num_patches, C * t * P * P)
        return self.visual.merger(self.visual.blocks(self.visual.patch_embed(hidden_states)))


class StdConv2d(nn.Conv2d):
    """timm-style weight-standardized conv: a subclass with its own forward must be left alone."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class HybridNet(nn.Module):
    """One patch conv among convs that are not patch embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.depthwise = nn.Conv2d(8, 8, 2, stride=2, groups=8)
        self.dilated = nn.Conv2d(8, 8, 2, stride=2, dilation=2)
        self.std_patch = StdConv2d(8, 8, 2, stride=2)
        self.patch = nn.Conv2d(8, 16, 4, stride=4)
        self.temporal = nn.Conv1d(16, 16, 2, stride=2)
        self.up = nn.ConvTranspose2d(16, 4, 2, stride=2)

    def forward(self, x):  # (B, 3, 24, 24)
        h = self.pointwise(self.stem(x))
        p = self.patch(h)
        outs = [self.down(h), self.depthwise(h), self.dilated(h), self.std_patch(h), p]
        outs += [self.temporal(p.flatten(2)), self.up(p)]
        return torch.cat([o.flatten(1) for o in outs], dim=1)


HYBRID_SKIPPED = {
    "stem": "kernel_size (3, 3) != stride (1, 1)",
    "down": "kernel_size (3, 3) != stride (2, 2)",
    "pointwise": "pointwise",
    "depthwise": "groups=8",
    "dilated": "dilation=(2, 2)",
    "std_patch": "subclasses nn.Conv2d",
    "temporal": "Conv1d is not nn.Conv2d or nn.Conv3d",
    "up": "ConvTranspose2d is not nn.Conv2d or nn.Conv3d",
}

# name -> (builder, input maker, qualified names of the patch convs)
MODELS = {
    "timm_vit": (TimmStyleViT, lambda dt: torch.randn(2, 3, 20, 28, dtype=dt), ["patch_embed.proj"]),
    "videomae": (
        VideoMAEStyle,
        lambda dt: torch.randn(2, 6, 3, 12, 20, dtype=dt),
        ["embeddings.patch_embeddings.projection"],
    ),
    "qwen2_vl": (Qwen2VLStyle, lambda dt: torch.randn(37, 3 * 2 * 14 * 14, dtype=dt), ["visual.patch_embed.proj"]),
    "hybrid": (HybridNet, lambda dt: torch.randn(2, 3, 24, 24, dtype=dt), ["patch"]),
}


@pytest.fixture
def op_calls(monkeypatch):
    """Records every call of the fused op from the swapped modules: (video passed, tokens returned)."""
    calls = []
    real = fused_modules.patch_embed

    def spy(video, *args, **kwargs):
        tokens = real(video, *args, **kwargs)
        calls.append((video, tokens))
        return tokens

    monkeypatch.setattr(fused_modules, "patch_embed", spy)
    return calls


def _err(x, ref):
    return (x.double() - ref.double()).abs().max().item()


def assert_close_to_reference(ours, plain, ref, dtype, what):
    """ours (fused, in dtype) vs ref (float64): at most 2x plain PyTorch's error in dtype, plus EPS x scale."""
    assert ours.dtype == plain.dtype, f"{what}: dtype {ours.dtype} != conv's {plain.dtype}"
    assert ours.shape == plain.shape, f"{what}: shape {tuple(ours.shape)} != conv's {tuple(plain.shape)}"
    assert torch.isfinite(ours).all(), f"{what}: non-finite values"
    scale = max(ref.abs().max().item(), 1e-30)
    err_ours, err_plain = _err(ours, ref), _err(plain, ref)
    assert err_ours <= 2 * err_plain + EPS[dtype] * scale, f"{what}: err {err_ours:.3g} vs conv's {err_plain:.3g}"


def _forward_backward(model, x, grad_out_seed):
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed), dtype=torch.float64)
    (out * weights.to(out.device, out.dtype)).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return out.detach(), x.grad, grads


# ---- outputs and gradients of whole models ----


# the hybrid CNN is about leaving convs alone: float32 is enough there
MODEL_DTYPES = [
    (name, dtype)
    for name in MODELS
    for dtype in (torch.float32, torch.bfloat16, torch.float64)
    if name != "hybrid" or dtype == torch.float32
]


@pytest.mark.parametrize("name, dtype", MODEL_DTYPES, ids=[f"{n}-{str(d)[6:]}" for n, d in MODEL_DTYPES])
def test_swapped_model_matches_original(name, dtype, op_calls):
    build, make_input, patch_convs = MODELS[name]
    plain = build().to(dtype)
    reference = copy.deepcopy(plain).double()  # same (dtype-rounded) weights, float64 compute
    report = replace_patch_embeddings(plain, inplace=False)
    fused = report.model
    assert report.replaced_names == patch_convs
    x = make_input(dtype)

    out, grad_x, grads = _forward_backward(fused, x, 1)
    assert len(op_calls) == len(patch_convs), "the fused op did not compute the patch embedding"
    plain_out, plain_grad_x, plain_grads = _forward_backward(plain, x, 1)
    ref_out, ref_grad_x, ref_grads = _forward_backward(reference, x.double(), 1)

    assert_close_to_reference(out, plain_out, ref_out, dtype, "output")
    assert_close_to_reference(grad_x, plain_grad_x, ref_grad_x, dtype, "input grad")
    assert grads.keys() == plain_grads.keys()
    for pname in grads:
        assert_close_to_reference(grads[pname], plain_grads[pname], ref_grads[pname], dtype, f"grad {pname}")


def test_videomae_and_qwen_inputs_reach_the_op_without_a_copy(op_calls):
    video = torch.randn(2, 6, 3, 12, 20)  # (B, T, C, H, W): VideoMAE permutes it to a BCTHW view
    videomae = VideoMAEStyle()
    replace_patch_embeddings(videomae)
    videomae(video)
    passed, _ = op_calls[-1]
    assert passed.data_ptr() == video.data_ptr() and passed.shape == (2, 3, 6, 12, 20)

    qwen = Qwen2VLStyle()
    replace_patch_embeddings(qwen)
    flat = torch.randn(37, 3 * 2 * 14 * 14)
    embedded = qwen.visual.patch_embed(flat)
    passed, tokens = op_calls[-1]
    # a video per patch with a 1x1x1 grid: B' = 37 patches, one token each
    assert passed.shape == (37, 3, 2, 14, 14) and passed.data_ptr() == flat.data_ptr()
    assert tokens.shape == (37, 1, 1, 32)
    assert embedded.shape == (37, 32) and embedded.data_ptr() == tokens.data_ptr()


# ---- the module: output layout, inputs the conv accepts, dtypes ----


def _conv_pair(dims, in_ch, embed, kernel, bias=True, dtype=torch.float32):
    conv_cls = nn.Conv2d if dims == 2 else nn.Conv3d
    conv = conv_cls(in_ch, embed, kernel, stride=kernel, bias=bias).to(dtype)
    fused_cls = FusedPatchConv2d if dims == 2 else FusedPatchConv3d
    return conv, fused_cls.from_conv(copy.deepcopy(conv))


@pytest.mark.parametrize(
    "dims, kernel, shape",
    [
        (2, (4, 3), (2, 3, 12, 9)),
        (2, (4, 3), (1, 3, 13, 11)),  # H, W not multiples of the stride: the conv drops the rest
        (3, (2, 4, 3), (2, 3, 6, 8, 9)),
        (3, (2, 4, 3), (1, 3, 2, 8, 9)),  # one time step
        (3, (2, 4, 3), (2, 3, 7, 10, 9)),  # T and H not multiples
    ],
)
def test_output_is_a_token_major_view_and_flatten_transpose_is_free(dims, kernel, shape, op_calls):
    conv, fused = _conv_pair(dims, 3, 10, kernel)
    x = torch.randn(shape)
    out = fused(x)
    expected = conv(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    assert len(op_calls) == 1
    _, op_out = op_calls[0]
    assert (
        out.data_ptr() == op_out.data_ptr() and out.untyped_storage().data_ptr() == op_out.untyped_storage().data_ptr()
    )
    tokens = out.flatten(2).transpose(1, 2)  # what every ViT does next
    assert tokens.is_contiguous(), "flatten(2).transpose(1, 2) must give contiguous tokens"
    assert tokens.data_ptr() == op_out.data_ptr()
    assert torch.equal(tokens, op_out.reshape(tokens.shape))
    assert tokens._base is not None  # a view: nothing was copied
    memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
    assert out.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("dims", [2, 3])
def test_inputs_of_any_layout_the_conv_accepts(dims, op_calls):
    kernel = (3, 2) if dims == 2 else (2, 3, 2)
    conv, fused = _conv_pair(dims, 4, 6, kernel)
    spatial = (9, 8) if dims == 2 else (4, 9, 8)
    base = torch.randn(3, 4, *spatial)
    memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
    inputs = {
        "contiguous": base,
        "batch 1": base[:1],
        "unbatched": base[0],
        "channels last": base.contiguous(memory_format=memory_format),
        "strided slice": torch.randn(3, 8, *spatial)[:, ::2],
        "permuted view": base.movedim(1, -1).contiguous().movedim(-1, 1),
        "batch 0": base[:0],
    }
    for what, x in inputs.items():
        calls_before = len(op_calls)
        got, expected = fused(x), conv(x)
        assert got.shape == expected.shape, what
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=what)
        assert len(op_calls) == calls_before + 1, f"{what}: the fused op did not run"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("dims", [2, 3])
def test_every_dtype_matches_the_conv_with_gradients(dims, dtype, op_calls):
    kernel = (4, 3) if dims == 2 else (3, 4, 3)
    conv, fused = _conv_pair(dims, 3, 20, kernel, dtype=dtype)
    reference = copy.deepcopy(conv).double()
    x = torch.randn((2, 3, 13, 10) if dims == 2 else (1, 3, 7, 13, 10), dtype=dtype)
    out, grad_x, grads = _forward_backward(fused, x, 2)
    assert len(op_calls) == 1
    plain_out, plain_grad_x, plain_grads = _forward_backward(conv, x, 2)
    ref_out, ref_grad_x, ref_grads = _forward_backward(reference, x.double(), 2)
    eps_dtype = torch.bfloat16 if dtype == torch.float16 else dtype  # half: 16-bit epsilon as for bf16
    assert_close_to_reference(out, plain_out, ref_out, eps_dtype, "output")
    assert_close_to_reference(grad_x, plain_grad_x, ref_grad_x, eps_dtype, "input grad")
    assert_close_to_reference(grads["weight"], plain_grads["weight"], ref_grads["weight"], eps_dtype, "weight grad")
    assert_close_to_reference(grads["bias"], plain_grads["bias"], ref_grads["bias"], eps_dtype, "bias grad")


@pytest.mark.parametrize(
    "make_input",
    [
        lambda: torch.randn(2, 5, 8, 8),  # wrong channel count
        lambda: torch.randn(2, 4, 2, 8),  # smaller than the kernel
        lambda: torch.randn(2, 4, 8, 8, dtype=torch.float64),  # dtype differs from the weight
        lambda: torch.randn(4, 8),  # wrong rank
        lambda: torch.randint(0, 255, (2, 4, 8, 8), dtype=torch.uint8),  # the op would take uint8; the conv not
    ],
)
def test_what_the_conv_rejects_raises_the_conv_error(make_input, op_calls):
    conv, fused = _conv_pair(2, 4, 6, (4, 4))
    x = make_input()
    with pytest.raises(Exception) as conv_error:
        conv(x)
    with pytest.raises(type(conv_error.value), match=re.escape(str(conv_error.value))):
        fused(x)
    assert not op_calls


@pytest.mark.parametrize("dims", [2, 3])
def test_autocast_gives_the_conv_dtype_and_accuracy(dims, op_calls):
    kernel = (4, 4) if dims == 2 else (2, 4, 4)
    conv, fused = _conv_pair(dims, 3, 16, kernel)
    x = torch.randn((2, 3, 12, 8) if dims == 2 else (2, 3, 4, 12, 8))
    results = {}
    for what, module in (("conv", conv), ("fused", fused)):
        module.zero_grad()
        xg = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(xg)
        out.float().square().sum().backward()
        results[what] = (out, xg.grad, module.weight.grad, module.bias.grad)
    assert len(op_calls) == 1
    # float64 reference on the bf16-rounded operands (what autocast feeds the conv)
    ref_conv = copy.deepcopy(conv).double()
    with torch.no_grad():
        ref_conv.weight.copy_(conv.weight.bfloat16().double())
        ref_conv.bias.copy_(conv.bias.bfloat16().double())
    xr = x.bfloat16().double().requires_grad_(True)
    ref_out = ref_conv(xr)
    ref_out.square().sum().backward()
    reference = (ref_out, xr.grad, ref_conv.weight.grad, ref_conv.bias.grad)
    for i, what in enumerate(("output", "input grad", "weight grad", "bias grad")):
        ours, plain = results["fused"][i], results["conv"][i]
        assert_close_to_reference(ours, plain, reference[i], torch.bfloat16, what)
    assert results["fused"][0].dtype == torch.bfloat16 and fused.weight.grad.dtype == torch.float32


# ---- torch.compile ----


# Dynamo + AOTAutograd (aot_eager) is where a custom op breaks a graph; Inductor (about 10 s here) once, on 3D.
@pytest.mark.parametrize("dims, compiler", [(2, "aot_eager"), (3, "aot_eager"), (3, "inductor")])
def test_compiles_fullgraph_with_the_same_values_and_gradients(dims, compiler):
    kernel = (4, 3) if dims == 2 else (2, 4, 3)
    _, fused = _conv_pair(dims, 3, 8, kernel)
    x = torch.randn((2, 3, 13, 9) if dims == 2 else (2, 3, 5, 13, 9))  # remainders: the crop is traced too
    compiled = torch.compile(fused, fullgraph=True, backend=compiler)

    def run(module):
        fused.zero_grad()
        xg = x.clone().requires_grad_(True)
        out = module(xg)
        tokens = out.flatten(2).transpose(1, 2)
        (tokens * torch.arange(tokens.numel()).view(tokens.shape).sin()).sum().backward()
        return out.detach(), xg.grad, fused.weight.grad.clone(), fused.bias.grad.clone()

    for got, expected in zip(run(compiled), run(fused), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    if compiler == "aot_eager":  # the autocast branch traces too (a recompile: autocast state is guarded)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, expected = compiled(x), fused(x)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, expected)


# ---- the report and the parameters ----


def test_report_lists_exactly_what_changed():
    model = HybridNet()
    originals = {name: type(m) for name, m in model.named_modules()}
    report = replace_patch_embeddings(model)
    assert isinstance(report, ReplacementReport) and report.model is model
    assert lsvit_kernels.replace_patch_embeddings is replace_patch_embeddings  # the public name
    assert report.replaced_names == ["patch"]
    assert "Conv2d(8, 16, kernel_size=(4, 4), stride=(4, 4)) -> FusedPatchConv2d" in report.replaced[0][1]
    assert sorted(report.skipped_names) == sorted(HYBRID_SKIPPED)
    for name, reason in report.skipped:
        assert HYBRID_SKIPPED[name] in reason, (name, reason)
    for name, module in model.named_modules():  # every other module keeps its class
        assert type(module) is (FusedPatchConv2d if name == "patch" else originals[name])
    text = str(report)
    assert "1 patch-embedding conv(s) replaced" in text and "8 conv(s) left alone" in text
    assert all(name in text for name in HYBRID_SKIPPED)


def test_same_parameters_state_dict_keys_and_module_identity():
    model = TimmStyleViT()
    proj = model.patch_embed.proj
    weight, bias = proj.weight, proj.bias
    keys = list(model.state_dict())
    calls = []
    proj.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    replace_patch_embeddings(model, backend="reference")

    assert model.patch_embed.proj is proj and type(proj) is FusedPatchConv2d
    assert isinstance(proj, nn.Conv2d)
    assert proj.weight is weight and proj.bias is bias
    assert list(model.state_dict()) == keys
    model(torch.randn(1, 3, 20, 28))
    assert calls == [(1, 24, 5, 7)], "forward hooks of the conv survive the swap"
    assert lsvit_kernels.last_backend() == "reference" and proj.backend == "reference"


@pytest.mark.parametrize("name", ["timm_vit", "videomae", "qwen2_vl"])
def test_state_dict_round_trip_both_directions(name):
    build, make_input, _ = MODELS[name]
    original = build()
    swapped = replace_patch_embeddings(build()).model  # different random init
    swapped.load_state_dict(original.state_dict(), strict=True)
    x = make_input(torch.float32)
    torch.testing.assert_close(swapped(x), original(x), rtol=1e-5, atol=1e-5)

    trained = replace_patch_embeddings(build()).model
    restored = build()
    restored.load_state_dict(trained.state_dict(), strict=True)
    torch.testing.assert_close(restored(x), trained(x), rtol=1e-5, atol=1e-5)


def test_include_exclude_inplace_and_idempotence():
    class TwoTowers(nn.Module):
        def __init__(self):
            super().__init__()
            self.image = TimmPatchEmbed(4, 3, 8)
            self.video = VideoMAEPatchEmbeddings(3, 8, 2, 4)

    model = TwoTowers()
    copy_report = replace_patch_embeddings(model, inplace=False, include="image.*")
    assert copy_report.replaced_names == ["image.proj"]
    assert copy_report.skipped == [("video.projection", "not matched by include=")]
    assert type(model.image.proj) is nn.Conv2d, "inplace=False must leave the model alone"
    assert copy_report.model is not model and copy_report.model.image.proj.weight is not model.image.proj.weight

    report = replace_patch_embeddings(model, exclude=lambda name, module: isinstance(module, nn.Conv2d))
    assert report.replaced_names == ["video.projection"]
    assert report.skipped == [("image.proj", "matched by exclude=")]

    again = replace_patch_embeddings(model)
    assert again.replaced_names == ["image.proj"]
    assert again.skipped == [("video.projection", "already a FusedPatchConv3d")]

    assert sorted(restore_patch_embeddings(model)) == ["image.proj", "video.projection"]
    assert type(model.image.proj) is nn.Conv2d and type(model.video.projection) is nn.Conv3d
    assert not hasattr(model.image.proj, "backend")


def test_shared_and_root_modules_and_pointwise_option():
    conv = nn.Conv2d(3, 8, 2, stride=2)
    model = nn.ModuleDict({"a": conv, "b": conv})  # one module under two names
    report = replace_patch_embeddings(model)
    assert report.replaced_names == ["a"] and type(model["b"]) is FusedPatchConv2d

    root = nn.Conv3d(3, 8, (1, 2, 2), stride=(1, 2, 2))
    assert replace_patch_embeddings(root).replaced_names == [""] and type(root) is FusedPatchConv3d
    assert "<root module>" in str(replace_patch_embeddings(nn.Conv2d(3, 4, 3)))

    pointwise = nn.Sequential(nn.Conv2d(3, 4, 1))
    assert replace_patch_embeddings(pointwise).replaced_names == []
    assert replace_patch_embeddings(pointwise, include_pointwise=True).replaced_names == ["0"]
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(pointwise(x), F.conv2d(x, pointwise[0].weight, pointwise[0].bias))


def test_bad_arguments_fail_early():
    model = TimmStyleViT()
    with pytest.raises(ValueError, match="unknown backend"):
        replace_patch_embeddings(model, backend="no-such-backend")
    assert type(model.patch_embed.proj) is nn.Conv2d
    with pytest.raises(TypeError, match="glob patterns"):
        replace_patch_embeddings(model, include=[3])
    with pytest.raises(TypeError, match="nn.Module"):
        replace_patch_embeddings(torch.randn(3))
    with pytest.raises(ValueError, match="must be a patch embedding: kernel_size"):
        FusedPatchConv2d(3, 8, 3, stride=1)
    with pytest.raises(ValueError, match="must be a patch embedding: padding"):
        FusedPatchConv2d(3, 8, 3, padding=1)
    with pytest.raises(TypeError, match="nn.Conv3d"):
        FusedPatchConv3d.from_conv(nn.Conv2d(3, 8, 2, stride=2))
    built = FusedPatchConv2d(3, 8, 4, stride=4, backend="reference")
    assert built(torch.randn(1, 3, 8, 8)).shape == (1, 8, 2, 2)
    assert FusedPatchConv2d(3, 8, 4).stride == (4, 4)  # the stride of a patch embedding is its kernel


# ---- CUDA: every backend available there, every 16-bit dtype, autocast ----


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_cuda_every_backend_matches_the_conv(dtype):
    backends = lsvit_kernels.available_backends("cuda")
    assert backends, "no backend runs on CUDA"
    plain = VideoMAEStyle().to("cuda", dtype)
    reference = copy.deepcopy(plain).double()
    x = torch.randn(2, 6, 3, 12, 20, device="cuda", dtype=dtype)
    plain_out, plain_grad_x, plain_grads = _forward_backward(plain, x, 3)
    ref_out, ref_grad_x, ref_grads = _forward_backward(reference, x.double(), 3)
    eps_dtype = torch.bfloat16 if dtype == torch.float16 else dtype
    for backend in backends:
        fused = replace_patch_embeddings(plain, backend=backend, inplace=False).model
        out, grad_x, grads = _forward_backward(fused, x, 3)
        assert lsvit_kernels.last_backend() == backend
        assert_close_to_reference(out, plain_out, ref_out, eps_dtype, f"{backend} output")
        assert_close_to_reference(grad_x, plain_grad_x, ref_grad_x, eps_dtype, f"{backend} input grad")
        for pname in grads:
            assert_close_to_reference(grads[pname], plain_grads[pname], ref_grads[pname], eps_dtype, pname)


@pytest.mark.gpu
def test_cuda_autocast_and_qwen_form():
    for backend in lsvit_kernels.available_backends("cuda"):
        qwen = Qwen2VLStyle().cuda()
        fused = replace_patch_embeddings(qwen, backend=backend, inplace=False).model
        flat = torch.randn(1031, 3 * 2 * 14 * 14, device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            expected, got = qwen.visual.patch_embed(flat), fused.visual.patch_embed(flat)
        assert got.dtype == expected.dtype == torch.bfloat16 and got.shape == (1031, 32)
        reference = F.linear(
            flat.bfloat16().double(), qwen.visual.patch_embed.proj.weight.bfloat16().double().flatten(1)
        )
        assert_close_to_reference(got, expected, reference, torch.bfloat16, f"{backend} autocast Qwen form")
