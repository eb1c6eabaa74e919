"""torch.compile of the whole model (the fused op included, through its fake implementation) matches eager.

Inductor compiles the inference graph (C++ code generation: the slow part on CPU, so once); the training step
runs through AOT autograd with the ``aot_eager`` backend, which traces forward and backward exactly as inductor
would see them (the op's autograd formula and fake backward included) without generating code.
"""

import torch

from lsvit import LSViTForAction


def test_compiled_inference_matches_eager(tiny):
    """Inductor at a resolution and a step count other than the trained ones: both resamplings are traced,
    never cached."""
    torch._dynamo.reset()
    model = LSViTForAction(tiny(use_3d_patch_embed=True, tubelet_size=2, depth=1)).eval()
    with torch.no_grad():
        model.temporal_pos_embed.normal_()
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    video = torch.randn(2, 6, 3, 32, 40)  # 3 steps; the temporal table has 2
    with torch.no_grad():
        out = compiled(video)
        assert len(model._pos_cache) == 0 and len(model._time_cache) == 0  # the compiled call cached nothing
        torch.testing.assert_close(out, model(video), atol=1e-5, rtol=1e-5)
        assert len(model._pos_cache) == 1 and len(model._time_cache) == 1  # the eager call did
        model.pos_embed.add_(0.5)  # the compiled graph reads the parameters itself: no stale table
        model.temporal_pos_embed.add_(0.5)
        torch.testing.assert_close(compiled(video), model(video), atol=1e-5, rtol=1e-5)


def test_compiled_training_step_matches_eager(tiny):
    """Forward + backward through AOT autograd, at another resolution, every gradient compared."""
    torch._dynamo.reset()
    model = LSViTForAction(tiny(depth=1)).train()
    with torch.no_grad():
        model.temporal_pos_embed.normal_()  # 4 rows, resampled to the clip's 3 steps in the graph
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    video = torch.randn(2, 3, 3, 32, 40)

    out = compiled(video)
    out.square().sum().backward()
    compiled_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    expected = model(video)
    expected.square().sum().backward()

    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(compiled_grads[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_dynamic_shapes_trace_the_model_once(tiny):
    """``dynamic=True``: other batch sizes, frame counts and resolutions (both resamplings included) reuse one
    graph. The trained sizes take another branch (no resampling), and the first sizes avoid every parameter
    dimension, which torch's duck sizing would tie them to."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    model = LSViTForAction(tiny(embed_dim=40, num_heads=4)).eval()
    compiled = torch.compile(model, backend=counter, dynamic=True, fullgraph=True)
    with torch.no_grad():
        for b, t, h, w in [(11, 12, 56, 64), (5, 10, 72, 24), (7, 8, 16, 104)]:
            video = torch.randn(b, t, 3, h, w)
            torch.testing.assert_close(compiled(video), model(video), atol=1e-5, rtol=1e-5)
    assert counter.frame_count == 1
