"""The shape-keyed config heuristic and the split counts (plain Python: no GPU, no Triton launch)."""

from __future__ import annotations

import torch

import lsvit_kernels as lk
from lsvit_kernels.backends import triton_tuning as tuning

H100 = ((9, 0), 132, 227 * 1024)
A100 = ((8, 0), 108, 163 * 1024)
RTX_4090 = ((8, 9), 128, 99 * 1024)  # Ada: the sm_80 tables, 99 KiB of shared memory per block


def _grid(batch, frames=16, size=224):
    return lk.patch_grid((batch, frames, 3, size, size), (768, 3, 2, 16, 16), has_cls=True)


def test_big_shapes_get_the_largest_tile_small_ones_a_smaller_tile():
    big = tuning.pick_config("forward", _grid(32), torch.bfloat16, torch.bfloat16, *H100)
    assert big == tuning.candidate_configs("forward", 90, "16bit")[0]
    # 1 clip of 2 frames at 64x64: 16 tokens -> one 128-row tile per E tile: too few programs for 132 SMs
    small = tuning.pick_config("forward", _grid(1, 2, 64), torch.bfloat16, torch.bfloat16, *H100)
    assert small == tuning.candidate_configs("forward", 90, "16bit")[-1]


def test_every_pick_fits_the_device_shared_memory():
    for device in (H100, A100, RTX_4090):
        arch = tuning.arch_of(device[0])
        for dtype, precision in ((torch.bfloat16, "ieee"), (torch.float32, "tf32"), (torch.float32, "ieee")):
            kind = tuning.operand_kind(dtype, precision)
            for kernel in ("forward", "grad_weight", "grad_video"):
                cfg = tuning.pick_config(kernel, _grid(4), dtype, dtype, *device, precision)
                assert cfg in tuning.candidate_configs(kernel, arch, kind)
                assert tuning.smem_bytes(kernel, cfg, dtype.itemsize) <= device[2]


def test_tf32_and_exact_float32_use_their_own_tables():
    exact = tuning.pick_config("forward", _grid(8), torch.float32, torch.float32, *A100, "ieee")
    tf32 = tuning.pick_config("forward", _grid(8), torch.float32, torch.float32, *A100, "tf32")
    assert exact in tuning.candidate_configs("forward", 80, "ieee")
    assert tf32 in tuning.candidate_configs("forward", 80, "tf32")


def test_splits_reach_two_waves_and_keep_enough_work_per_split():
    assert tuning.splits_for(programs=72, reduction_steps=196, sm_count=132) == 4  # 288 programs >= 264
    assert tuning.splits_for(programs=500, reduction_steps=196, sm_count=132) == 1
    assert tuning.splits_for(programs=1, reduction_steps=16, sm_count=132) == 2  # >= 8 steps per split
    assert tuning.splits_for(programs=1, reduction_steps=3, sm_count=132) == 1
