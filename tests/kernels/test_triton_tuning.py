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


def test_picks_have_the_lowest_modeled_time():
    """The heuristic is the cost model's argmin over the configs that fit."""
    for grid in (_grid(32), _grid(4), _grid(1, 2, 64)):
        for kernel in ("forward", "grad_video"):
            cfg = tuning.pick_config(kernel, grid, torch.bfloat16, torch.bfloat16, *H100)
            times = {
                c: tuning.estimate(kernel, grid, c, torch.bfloat16, None, tuning.H100).us
                for c in tuning.candidate_configs(kernel, 90, "16bit")
            }
            assert times[cfg] == min(times.values())
    # headline shape: 128 x 128 tiles at two CTAs per SM
    big = tuning.pick_config("forward", _grid(32), torch.bfloat16, torch.bfloat16, *H100)
    assert (big.block_m, big.block_n, big.ctas_per_sm) == (128, 128, 2)
    # 1 clip of 2 frames at 64x64: 16 tokens -> a 64-row tile wastes less of each program
    small = tuning.pick_config("forward", _grid(1, 2, 64), torch.bfloat16, torch.bfloat16, *H100)
    assert small.block_m == 64


def test_cost_model_terms():
    """Each term moves the estimate the way it should: waves quantize, CTAs hide the fixed cost, L2 traffic
    grows as tiles shrink, and the estimate never beats the roofline floor."""
    grid = _grid(32)
    c128, c256, c64 = tuning.candidate_configs("forward", 90, "16bit")
    e128, e256, e64 = (tuning.estimate("forward", grid, c, torch.bfloat16) for c in (c128, c256, c64))
    assert e64.l2_us > e128.l2_us > e256.l2_us  # bigger tiles reuse operands more
    assert e128.fixed_us < e256.fixed_us  # two resident CTAs hide half of each tile's fixed cost
    for c, e in ((c128, e128), (c256, e256), (c64, e64)):
        assert e.us >= e.floor_us and e.waves == -(-e.programs // (132 * c.ctas_per_sm))
    one_wave = tuning.estimate("forward", _grid(1, 2, 224), c128, torch.bfloat16)
    assert one_wave.waves == 1 and one_wave.us >= one_wave.floor_us


def test_grad_weight_stream_k_fills_the_resident_slots():
    """72 tiles of 128 x 128 on 132 SMs x 2 CTAs: the model picks a stream-K grid of an exact multiple of the 264
    resident slots (one wave of equal programs), faster than splitting the tokens (7 x 72 = 504 programs, 1.9
    waves) or a lone tail wave (4 x 72 = 288)."""
    grid = _grid(32)
    cfg = tuning.candidate_configs("grad_weight", 90, "16bit")[0]
    slots = 132 * cfg.ctas_per_sm
    programs = tuning.best_programs(grid, cfg, tuning.H100, torch.bfloat16)
    best = tuning.estimate("grad_weight", grid, cfg, torch.bfloat16, programs=programs)
    assert programs % slots == 0 and best.programs == programs and best.waves == programs // slots
    for old in (288, 504):  # one program per (tile, split): 4 and 7 splits
        assert best.us < tuning.estimate("grad_weight", grid, cfg, torch.bfloat16, programs=old).us


def test_stream_k_schedule_covers_every_step_once():
    """The schedule the kernel walks: runs of S // P or S // P + 1 steps; slots per tile and tiles per program
    from the same partition (checked by brute force)."""
    for tiles, tile_steps, programs in ((72, 784, 264), (78, 3, 50), (5, 7, 3), (4, 2, 100), (1, 9, 4)):
        plan = tuning.stream_k(tiles, tile_steps, programs)
        total = tiles * tile_steps
        assert plan.programs == min(programs, total)
        owner = []
        short, longer = divmod(total, plan.programs)
        for p in range(plan.programs):
            owner += [p] * (short + (p < longer))
        assert len(owner) == total and plan.steps_per_program == max(owner.count(p) for p in range(plan.programs))
        per_tile = [len(set(owner[t * tile_steps : (t + 1) * tile_steps])) for t in range(tiles)]
        per_program = [len({s // tile_steps for s, o in enumerate(owner) if o == p}) for p in range(plan.programs)]
        assert plan.pieces == max(per_tile) and plan.segments == max(per_program)


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


def test_uint8_video_tables():
    """Exact float32 with a uint8 video takes tiles holding >= 2 KB of video (16 bytes per thread of 4 warps); every
    other pick is the operands' table; grad_weight on tensor cores reads a uint8 video as int32 words."""
    for device, arch in ((H100, 90), (A100, 80)):
        for kernel in ("forward", "grad_weight"):
            exact = tuning.pick_config(kernel, _grid(8), torch.float32, torch.uint8, *device, "ieee")
            assert exact in tuning.candidate_configs(kernel, arch, "ieee", torch.uint8)
            assert exact not in tuning.candidate_configs(kernel, arch, "ieee")
            video_tile = exact.block_m * exact.block_k  # forward and grad_weight: tokens x K
            assert video_tile >= 16 * 32 * exact.num_warps
            for dtype, precision in ((torch.bfloat16, "ieee"), (torch.float32, "tf32")):
                kind = tuning.operand_kind(dtype, precision)
                assert tuning.candidate_configs(kernel, arch, kind, torch.uint8) == tuning.candidate_configs(
                    kernel, arch, kind
                )
    for (kernel, _arch, kind), configs in tuning._TABLE.items():
        assert all(c.video_words == (kernel == "grad_weight" and kind != "ieee") for c in configs)


def test_splits_reach_two_waves_and_keep_enough_work_per_split():
    assert tuning.splits_for(programs=72, reduction_steps=196, sm_count=132) == 4  # 288 programs >= 264
    assert tuning.splits_for(programs=500, reduction_steps=196, sm_count=132) == 1
    assert tuning.splits_for(programs=1, reduction_steps=16, sm_count=132) == 2  # >= 8 steps per split
    assert tuning.splits_for(programs=1, reduction_steps=3, sm_count=132) == 1
