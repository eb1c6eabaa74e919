"""Export paths of swapped third-party models: ONNX (dynamo and TorchScript exporters, run by onnxruntime),
TorchScript, torch.fx and the feature extractors built on it, torch.export and AOTInductor packaging.

Models: timm's and torchvision's VisionTransformer at tiny sizes (no downloads) and the VideoMAE-style stand-in
of test_replace.py, each after ``replace_patch_embeddings``; every result is compared with the eager model.
"""

from __future__ import annotations

import io

import pytest
import torch

import lsvit_kernels as lk
from lsvit_kernels import registry
from lsvit_kernels.replace import FusedPatchConv2d, FusedPatchConv3d, fused_patch_conv

from .test_replace import VideoMAEStyle


def timm_vit():
    timm = pytest.importorskip("timm")
    return timm.models.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2, mlp_ratio=2.0, num_classes=5
    )


def torchvision_vit():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=24, mlp_dim=48, num_classes=5
    )


# name: (model, input maker, fused module class). Inputs have batch 2; dynamic-batch checks use batch 3.
MODELS = {
    "timm-vit": (timm_vit, lambda b: torch.randn(b, 3, 32, 32), FusedPatchConv2d),
    "torchvision-vit": (torchvision_vit, lambda b: torch.randn(b, 3, 32, 32), FusedPatchConv2d),
    "videomae": (VideoMAEStyle, lambda b: torch.randn(b, 6, 3, 12, 20), FusedPatchConv3d),
}


def swapped(name):
    make_model, make_input, fused_class = MODELS[name]
    model = make_model().eval()
    report = lk.replace_patch_embeddings(model)
    assert len(report.replaced) == 1 and isinstance(model.get_submodule(report.replaced_names[0]), fused_class)
    return model, make_input


def assert_matches(got, model, x):
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.as_tensor(got), expected, rtol=1e-4, atol=1e-5)


def op_runs(fn):
    """Run ``fn`` and return whether the fused op computed something in it."""
    registry.mark_ran(None)
    fn()
    return registry.last_backend() is not None


# ---- ONNX ----


def run_onnx(model_bytes: bytes, x: torch.Tensor):
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def assert_standard_onnx(model_bytes: bytes):
    """Only standard operators (a Conv does the patches); no custom domain an ONNX runtime would not know."""
    onnx = pytest.importorskip("onnx")
    graph = onnx.load_from_string(model_bytes).graph
    ops = {(node.domain or "ai.onnx", node.op_type) for node in graph.node}
    assert ("ai.onnx", "Conv") in ops
    assert all(domain in ("ai.onnx", "") for domain, _ in ops), ops


@pytest.mark.parametrize("name", ["timm-vit", "videomae"])
def test_onnx_dynamo_exporter_matches_eager(name):
    model, make_input = swapped(name)
    x = make_input(2)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False, dynamic_shapes=({0: "batch"},))
    buffer = io.BytesIO()
    program.save(buffer)
    assert_standard_onnx(buffer.getvalue())
    for batch in (2, 3):
        x = make_input(batch)
        assert_matches(run_onnx(buffer.getvalue(), x), model, x)


@pytest.mark.parametrize("name", ["timm-vit", "videomae"])
def test_onnx_torchscript_exporter_matches_eager(name):
    model, make_input = swapped(name)
    buffer = io.BytesIO()
    export = lambda: torch.onnx.export(  # noqa: E731
        model, (make_input(2),), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}}
    )
    assert op_runs(export), "the TorchScript exporter traces the op itself (its symbolic writes the operators)"
    assert_standard_onnx(buffer.getvalue())
    for batch in (2, 3):
        x = make_input(batch)
        assert_matches(run_onnx(buffer.getvalue(), x), model, x)


class EmbedWithTables(torch.nn.Module):
    """A fused patch embedding with its positional table and CLS token as parameters: video in, tokens out."""

    def __init__(self, embed, pos_embed, cls_token):
        super().__init__()
        self.embed = embed
        self.pos_embed = None if pos_embed is None else torch.nn.Parameter(pos_embed)
        self.cls_token = None if cls_token is None else torch.nn.Parameter(cls_token)

    def forward(self, video):
        return self.embed(video, self.pos_embed, self.cls_token)


# (module, video, pos rows per step or per token or none, CLS): every branch of the decomposition and symbolic
OP_CASES = {
    "3d-uint8-normalized-tokenpos-cls": (
        lambda: lk.PatchEmbed3d(3, 10, (4, 3), 2, layout="BCTHW", mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25]),
        lambda b: torch.randint(0, 256, (b, 3, 4, 8, 9), dtype=torch.uint8),
        "token",
        True,
    ),
    "3d-nobias-slotpos": (
        lambda: lk.PatchEmbed3d(2, 6, 3, 1, bias=False),
        lambda b: torch.randn(b, 3, 2, 6, 9),
        "slot",
        False,
    ),
    "2d-image-cls-only": (lambda: lk.PatchEmbed2d(3, 8, (2, 5)), lambda b: torch.randn(b, 3, 6, 10), None, True),
}


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("case", list(OP_CASES))
def test_onnx_export_of_the_op_with_cls_pos_and_uint8(case, dynamo):
    make_embed, make_video, pos, cls = OP_CASES[case]
    embed = make_embed()
    video = make_video(2)
    tokens = embed(video, cls_token=torch.zeros(embed.embed_dim) if cls else None)
    slots, steps = tokens.shape[-2], (tokens.shape[1] if tokens.dim() == 4 else 1)
    rows = {"slot": slots, "token": steps * slots, None: 0}[pos]
    model = EmbedWithTables(
        embed, torch.randn(rows, embed.embed_dim) if pos else None, torch.randn(embed.embed_dim) if cls else None
    ).eval()
    buffer = io.BytesIO()
    if dynamo:
        torch.onnx.export(model, (video,), dynamo=True, verbose=False).save(buffer)
    else:
        torch.onnx.export(model, (video,), buffer, dynamo=False)
    assert_standard_onnx(buffer.getvalue())
    assert_matches(run_onnx(buffer.getvalue(), video), model, video)


def test_onnx_export_of_a_program_exported_earlier():
    model, make_input = swapped("timm-vit")
    program = torch.export.export(model, (make_input(2),))
    decomposed = lk.onnx.decompose(program)
    targets = {n.target for n in decomposed.graph.nodes if n.op == "call_function"}
    assert torch.ops.lsvit.patch_embed.default not in targets and torch.ops.aten.conv3d.default in targets
    buffer = io.BytesIO()
    torch.onnx.export(decomposed, dynamo=True, verbose=False).save(buffer)
    x = make_input(2)
    assert_matches(run_onnx(buffer.getvalue(), x), model, x)


# ---- TorchScript ----


@pytest.mark.parametrize("name", list(MODELS))
def test_torchscript_runs_the_fused_op_and_survives_save_and_load(name):
    model, make_input = swapped(name)
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = make_input(2)
    for module in (scripted, loaded):
        with torch.no_grad():
            assert op_runs(lambda m=module: m(x)), "the scripted module must call the fused op"
            assert_matches(module(x), model, x)


def test_torchscript_keeps_the_conv_fallback_and_unbatched_input():
    conv = torch.nn.Conv2d(3, 6, (4, 3), stride=(4, 3))
    fused = FusedPatchConv2d.from_conv(torch.nn.Conv2d(3, 6, (4, 3), stride=(4, 3)))
    fused.load_state_dict(conv.state_dict())
    scripted = torch.jit.script(fused)
    for x in (torch.randn(3, 9, 8), torch.randn(2, 3, 13, 10)):  # unbatched; remainders cropped
        torch.testing.assert_close(scripted(x), conv(x))
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64)  # a dtype other than the weight's: the conv's own error
    with pytest.raises(Exception) as conv_error:
        conv(x)
    with pytest.raises(Exception, match="double"):
        scripted(x)
    assert "double" in str(conv_error.value)


# ---- torch.fx and the feature extractors ----


@pytest.mark.parametrize("name", ["timm-vit", "torchvision-vit", "videomae"])
def test_fx_symbolic_trace_keeps_the_fused_call_as_one_node(name):
    model, make_input = swapped(name)
    traced = torch.fx.symbolic_trace(model)
    fused_nodes = [n for n in traced.graph.nodes if n.target is fused_patch_conv]
    assert len(fused_nodes) == 1
    x = make_input(2)
    with torch.no_grad():
        assert op_runs(lambda: traced(x))
        assert_matches(traced(x), model, x)


def test_torchvision_feature_extractor_on_swapped_vits():
    feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")

    for name, node in (("torchvision-vit", "conv_proj"), ("timm-vit", "patch_embed.proj")):
        model, make_input = swapped(name)
        x = make_input(2)
        extractor = feature_extraction.create_feature_extractor(model, {node: "patches"})
        with torch.no_grad():
            features = extractor(x)["patches"]
            expected = model.get_submodule(node)(x)
        torch.testing.assert_close(features, expected)


def test_timm_feature_extractor_on_a_swapped_vit():
    timm_models = pytest.importorskip("timm.models")
    model, make_input = swapped("timm-vit")
    x = make_input(2)
    extractor = timm_models.create_feature_extractor(model, {"patch_embed": "tokens", "norm": "features"})
    with torch.no_grad():
        got = extractor(x)
        tokens = model.patch_embed(x)
        features = model.forward_features(x)
    torch.testing.assert_close(got["tokens"], tokens)
    torch.testing.assert_close(got["features"], features)


# ---- torch.export and AOTInductor ----


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_export_keeps_the_op(name):
    model, make_input = swapped(name)
    program = torch.export.export(model, (make_input(2),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.lsvit.patch_embed.default in targets
    x = make_input(3)
    with torch.no_grad():
        assert_matches(program.module()(x), model, x)


def test_aoti_package_of_a_swapped_vit(tmp_path):
    model, make_input = swapped("timm-vit")
    program = torch.export.export(model, (make_input(2),))
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "vit.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    x = make_input(2)
    assert op_runs(lambda: loaded(x)), "the package calls the fused op"
    assert_matches(loaded(x), model, x)
