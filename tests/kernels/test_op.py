"""The op itself: opcheck, torch.compile, batch 0, and every bad-input error (raised before any work)."""

import pytest
import torch

import lsvit_kernels as lk

from .conv_oracle import assert_close_to_oracle, conv_tokens
from .strategies import make_problem


def op_args(p):
    video = p.video if p.layout == "BTCHW" else p.video.permute(0, 2, 1, 3, 4)
    return (video, p.weight, p.bias, p.pos_embed, p.cls_token, "reference")


@pytest.mark.parametrize("cls, pos", [(True, "slot"), (False, "token"), (False, None)])
def test_opcheck(cls, pos):
    p = make_problem(
        b=2, steps=2, t=2, c=2, gh=2, gw=2, ph=2, pw=2, e=5, cls=cls, pos=pos, contiguous=False, layout="BCTHW"
    )
    args = [x.requires_grad_() if isinstance(x, torch.Tensor) else x for x in op_args(p)]
    torch.library.opcheck(torch.ops.lsvit.patch_embed.default, args)


def test_compile_fullgraph_forward_and_backward():
    p = make_problem(b=2, steps=2, t=2, c=3, gh=2, gw=3, ph=4, pw=4, e=8, layout="BCTHW", contiguous=False)
    leaves = [x.detach().requires_grad_() for x in (p.weight, p.bias, p.pos_embed, p.cls_token)]

    def step(video, weight, bias, pos, cls):
        return lk.patch_embed(video, weight, bias, pos, cls_token=cls, layout="BCTHW").square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(p.video, *leaves)
    grads = torch.autograd.grad(loss, leaves)
    eager_leaves = [x.detach().requires_grad_() for x in leaves]
    eager_loss = step(p.video, *eager_leaves)
    eager_grads = torch.autograd.grad(eager_loss, eager_leaves)
    torch.testing.assert_close(loss, eager_loss)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)


def test_compile_dynamic_shapes_compile_once():
    """Geometry keeps sizes symbolic: new resolutions, batch sizes and frame counts reuse one graph (forward and
    backward). Sizes avoid equal values and a single time step, which torch would specialize on anyway."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    weight = torch.randn(40, 3, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(40, dtype=torch.float64, requires_grad=True)

    @torch.compile(backend=counter, dynamic=True, fullgraph=True)
    def step(video, pos, cls):
        return lk.patch_embed(video, weight, bias, pos, cls_token=cls).square().sum()

    for b, t, h, w in [(4, 6, 48, 56), (5, 10, 72, 24), (7, 4, 16, 104)]:
        video = torch.randn(b, t, 3, h, w, dtype=torch.float64)
        pos = torch.randn(1 + (h // 8) * (w // 8), 40, dtype=torch.float64)
        cls = torch.randn(40, dtype=torch.float64)
        loss = step(video, pos, cls)
        grads = torch.autograd.grad(loss, (weight, bias))
        eager = lk.patch_embed(video, weight, bias, pos, cls_token=cls).square().sum()
        torch.testing.assert_close(loss, eager)
        for g, e in zip(grads, torch.autograd.grad(eager, (weight, bias))):
            torch.testing.assert_close(g, e)
    assert counter.frame_count == 1


def test_compile_inductor_matches_oracle():
    p = make_problem(b=1, steps=1, t=1, c=3, gh=3, gw=2, ph=4, pw=4, e=8)
    compiled = torch.compile(lambda *a: lk.patch_embed(*a, cls_token=p.cls_token), fullgraph=True)
    assert_close_to_oracle(compiled(*p.args()), conv_tokens(*p.args(), **p.kwargs()))


def test_batch_zero_returns_empty():
    p = make_problem(b=0, steps=2, t=2, cls=True, pos="slot", e=6, gh=2, gw=2)
    out = lk.patch_embed(*p.args(), **p.kwargs())
    assert out.shape == (0, 2, 5, 6)


def test_non_contiguous_video_is_not_copied_by_the_wrapper(monkeypatch):
    p = make_problem(layout="BCTHW", contiguous=False)
    seen = {}
    backend = lk.registry.get_backend("reference")
    original = backend.forward

    def spy(video, *rest):
        seen["ptr"], seen["strides"] = video.data_ptr(), video.stride()
        return original(video, *rest)

    monkeypatch.setattr(backend, "forward", spy)
    lk.patch_embed(*p.args(), **p.kwargs(), backend="reference")
    assert seen["ptr"] == p.video.data_ptr()
    assert seen["strides"] == p.video.permute(0, 2, 1, 3, 4).stride()


# --- every bad input named with its fix, raised before any work -----------------------------------------------


def _base():
    return make_problem(b=1, steps=2, t=2, c=3, gh=2, gw=2, ph=4, pw=4, e=6, cls=True, pos="slot")


def test_wrong_rank():
    p = _base()
    with pytest.raises(ValueError, match="video must be 5D BTCHW"):
        lk.patch_embed(p.video[0, 0, 0], p.weight)
    with pytest.raises(ValueError, match="weight must have nn.Conv3d layout"):
        lk.patch_embed(p.video, p.weight[0, 0])


def test_height_not_divisible():
    p = _base()
    with pytest.raises(ValueError, match="video height=7 is not divisible by patch height=4; use 4 or 8"):
        lk.patch_embed(p.video[..., :7, :], p.weight)


def test_frames_not_divisible_by_tubelet():
    p = _base()
    with pytest.raises(ValueError, match="num_frames=3 is not divisible by tubelet_size=2; use 2 or 4"):
        lk.patch_embed(p.video[:, :3], p.weight)


def test_channel_mismatch_hints_at_layout():
    p = _base()
    with pytest.raises(ValueError, match=r"C=4 channels but weight expects C=3.*layout"):
        lk.patch_embed(p.video.transpose(1, 2), p.weight)  # a BCTHW video passed as BTCHW


@pytest.mark.parametrize("which", ["video", "bias", "pos_embed", "cls_token"])
def test_dtype_mismatch(which):
    p = _base()
    kwargs = dict(video=p.video, weight=p.weight, bias=p.bias, pos_embed=p.pos_embed, cls_token=p.cls_token)
    kwargs[which] = kwargs[which].half()
    with pytest.raises(TypeError, match=f"{which} has dtype torch.float16 but weight has torch.float32"):
        lk.patch_embed(**kwargs)


def test_device_mismatch():
    p = _base()
    with pytest.raises(ValueError, match="video is on meta but weight is on cpu"):
        lk.patch_embed(p.video.to("meta"), p.weight)
    with pytest.raises(ValueError, match="bias is on meta but weight is on cpu"):
        lk.patch_embed(p.video, p.weight, p.bias.to("meta"))


def test_pos_embed_wrong_length():
    p = _base()
    with pytest.raises(ValueError, match="pos_embed has 4 rows .* give 5 rows .* or 10 rows"):
        lk.patch_embed(p.video, p.weight, p.bias, p.pos_embed[:4], cls_token=p.cls_token)


def test_bias_and_cls_wrong_size():
    p = _base()
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        lk.patch_embed(p.video, p.weight, p.bias[:5])
    with pytest.raises(ValueError, match="cls_token must have 6 elements"):
        lk.patch_embed(p.video, p.weight, cls_token=p.cls_token[:5])


def test_unknown_layout_and_bad_dtype():
    p = _base()
    with pytest.raises(ValueError, match="layout='NCHW' is not supported"):
        lk.patch_embed(p.video, p.weight, layout="NCHW")
    with pytest.raises(TypeError, match="weight must be float32, float16, bfloat16 or float64; got torch.int64"):
        lk.patch_embed(p.video.long(), p.weight.long())
    with pytest.raises(TypeError, match="video has dtype torch.int32"):
        lk.patch_embed(p.video.int(), p.weight)


def test_mean_without_std():
    p = _base()
    with pytest.raises(ValueError, match="give both mean and std"):
        lk.patch_embed(p.video, p.weight, mean=[0.5] * 3)
    with pytest.raises(ValueError, match="one value per channel"):
        lk.patch_embed(p.video, p.weight, mean=[0.5] * 2, std=[0.5] * 2)


@pytest.fixture
def no_op_call(monkeypatch):
    """The op itself must not run: every error below is raised before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the op ran although its input was invalid")

    monkeypatch.setattr(lk.ops, "_patch_embed", refuse)


@pytest.mark.parametrize(
    "mean, std, error, match",
    [
        ([0.5] * 3, [0.2, float("nan"), 0.2], ValueError, r"std must be finite; got \[0.2, nan, 0.2\]"),
        ([0.5] * 3, [0.2, 0.0, 0.2], ValueError, r"std must be positive .*got \[0.2, 0.0, 0.2\]"),
        ([0.5] * 3, [0.2, -1.0, 0.2], ValueError, "std must be positive"),
        ([0.5, float("inf"), 0.5], [0.2] * 3, ValueError, "mean must be finite"),
        ("abc", [0.2] * 3, TypeError, "mean must be a sequence of numbers or a tensor; got 'abc'"),
        ([0.5, "x", 0.5], [0.2] * 3, TypeError, "mean must hold numbers; got 'x'"),
        ([0.5, None, 0.5], [0.2] * 3, TypeError, "mean must hold numbers; got None"),
        ([0.5] * 3, torch.tensor([True, True, True]), TypeError, "std must hold real numbers"),
        ([0.5] * 3, torch.tensor([0.2, float("nan"), 0.2]), ValueError, "std must be finite"),
    ],
)
def test_bad_normalization_is_refused_with_the_fix(mean, std, error, match, no_op_call):
    p = _base()
    with pytest.raises(error, match=match) as info:
        lk.patch_embed(p.video, p.weight, mean=mean, std=std)
    assert "pass 3 finite numbers, one per channel" in str(info.value)


def test_modules_refuse_bad_normalization_when_built():
    with pytest.raises(ValueError, match="std must be finite"):
        lk.PatchEmbed2d(3, 8, 4, mean=[0.5] * 3, std=[float("nan")] * 3)
    with pytest.raises(TypeError, match="mean must be a sequence of numbers"):
        lk.PatchEmbed3d(3, 8, 4, 2, mean="abc", std=[0.2] * 3)
    module = lk.PatchEmbed2d(3, 8, 4, mean=torch.tensor([0.25, 0.5, 0.75]), std=(1, 2, 3))
    assert module.mean == (0.25, 0.5, 0.75) and module.std == (1.0, 2.0, 3.0)


def test_float64_works_as_the_dtype_message_says():
    p = make_problem(b=1, steps=1, t=1, c=2, gh=2, gw=3, ph=2, pw=2, e=4, dtype=torch.float64)
    out = lk.patch_embed(p.video, p.weight, p.bias)
    assert out.dtype == torch.float64


def test_tokens_beyond_a_64_bit_index_are_refused(no_op_call):
    video = torch.empty(2**20, 2**10, 3, 2**10, 2**10, device="meta")  # a tensor, so its own count fits
    weight = torch.empty(2**20, 3, 1, 1, 1, device="meta")
    match = r"tokens of shape \[1048576, 1024, 1048576, 1048576\] hold \d+ elements, more than a 64-bit index"
    with pytest.raises(ValueError, match=match + ".*use a smaller batch"):
        lk.patch_embed(video, weight)


def test_video_shapes_beyond_a_64_bit_index_are_refused():
    with pytest.raises(ValueError, match=r"a video of shape \[1, 1, 3, 2147483648, 2147483648\] hold"):
        lk.patch_grid((1, 1, 3, 2**31, 2**31), (8, 3, 1, 1))
