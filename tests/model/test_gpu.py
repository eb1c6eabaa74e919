"""The model on a CUDA device: the op's automatic GPU backend, fp32 against the CPU model, a bf16 autocast step.

Skipped without CUDA (conftest); nothing here touches CUDA at import or collection.
"""

import copy

import pytest
import torch

from lsvit import LSViTForAction
from lsvit_kernels import registry


@pytest.mark.gpu
@pytest.mark.parametrize("use_3d", [False, True])
def test_cuda_matches_cpu_and_trains_under_autocast(tiny, use_3d):
    model = LSViTForAction(tiny(use_3d_patch_embed=use_3d, tubelet_size=2)).eval()
    video = torch.randn(2, 4, 3, 24, 24)
    with torch.no_grad():
        expected = model(video)
    model_cuda = copy.deepcopy(model).cuda()
    with torch.no_grad():
        got = model_cuda(video.cuda())
    assert model_cuda.patch_embed_backend == registry.resolve("cuda", dtype=torch.float32).name
    # fp32 on the GPU may use TF32 dots (Triton's default): about 1e-3 relative per product
    torch.testing.assert_close(got.cpu(), expected, atol=1e-2, rtol=1e-2)

    model_cuda.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        tokens = model_cuda.tokens(video.cuda())
        logits = model_cuda(video.cuda())
    assert tokens.dtype == torch.bfloat16
    logits.float().logsumexp(dim=1).sum().backward()
    for name, param in model_cuda.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
