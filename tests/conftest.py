"""Test-wide setup: Triton runs in its CPU interpreter when there is no GPU (set before triton is imported)."""

import os
import zlib

import pytest
import torch
from hypothesis import settings

# Wall-clock deadlines make property tests flaky on a loaded 2-core machine; bound examples instead.
settings.register_profile("lsvit", deadline=None, max_examples=40)
settings.load_profile("lsvit")

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs per test, reproducible from the test id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
