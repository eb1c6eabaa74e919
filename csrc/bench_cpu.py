"""Side-by-side CPU timings of the compiled kernel on the benchmark shape (the numbers in docs/native.md).

fp32 video (2, 16, 3, 224, 224), tubelet 2 x 16 x 16, E = 768, with bias and pos_embed. Each case: 2 warm-up
calls, then the median of --reps wall times and the minimum process CPU time (all threads). Peak memory: the
ru_maxrss increase of one call in a fresh subprocess per backend, run first.

    python csrc/bench_cpu.py [--threads 2] [--reps 10] [--dtype bfloat16]

LSVIT_CPU_SCHEDULE=blocks|gemm and LSVIT_CPU_BLOCK_ROWS select the kernel's schedule and block size.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

import lsvit_kernels as lk
from lsvit_kernels.backends import reference

B, T, C, H, W, E, TUBELET, PATCH = 2, 16, 3, 224, 224, 768, 2, 16


def inputs(dtype: torch.dtype):
    torch.manual_seed(0)
    video = torch.randn(B, T, C, H, W, dtype=dtype)
    conv = torch.nn.Conv3d(C, E, (TUBELET, PATCH, PATCH), (TUBELET, PATCH, PATCH), dtype=dtype)
    pos = torch.randn((H // PATCH) * (W // PATCH), E, dtype=dtype)
    return video, conv, pos


def timed(fn, reps: int) -> tuple[float, float]:
    for _ in range(2):
        fn()
    walls, cpus = [], []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls) * 1e3, min(cpus) * 1e3


def peak_memory(backend: str) -> float:
    """MiB of peak RSS added by one call, measured in a fresh process."""
    code = (
        "import resource, torch, lsvit_kernels as lk\n"
        f"torch.manual_seed(0); v = torch.randn({B}, {T}, {C}, {H}, {W}); w = torch.randn({E}, {C}, {TUBELET}, "
        f"{PATCH}, {PATCH}); bias = torch.randn({E}); pos = torch.randn({(H // PATCH) * (W // PATCH)}, {E})\n"
        "with torch.no_grad():\n"
        f"    lk.patch_embed(v[:, :2, :, :32, :32], w, bias, pos[:4], backend={backend!r})\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"    lk.patch_embed(v, w, bias, pos, backend={backend!r})\n"
        "    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch.set_num_threads")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per case")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_memory:  # first: a child forked from a big parent inherits its ru_maxrss
        for backend in ("cpu", "reference"):
            mib = peak_memory(backend)
            output_mib = B * (T // TUBELET) * (H // PATCH) * (W // PATCH) * E * 4 / 2**20
            print(f"  peak RSS increase, {backend:<9} {mib:6.1f} MiB (output {output_mib:.1f} MiB)")

    dtype = getattr(torch, args.dtype)
    video, conv, pos = inputs(dtype)
    weight, bias = conv.weight.detach(), conv.bias.detach()
    grid = lk.geometry.patch_grid(video.shape, weight.shape)
    m, k = grid.batch * grid.num_patches, grid.patch_dim
    a, w2 = torch.randn(m, k, dtype=dtype), weight.reshape(E, k)

    def conv_path():
        y = conv(video.permute(0, 2, 1, 3, 4))  # (B, E, T', gh, gw)
        return y.flatten(3).permute(0, 2, 3, 1) + pos

    def linear_path():
        return F.linear(reference.patches(video, grid), w2, bias) + pos

    cases = {
        f"torch.mm {m}x{k}x{E} (GEMM only)": lambda: torch.mm(a, w2.t()),
        "lsvit cpu backend (fused)": lambda: lk.patch_embed(video, weight, bias, pos, backend="cpu"),
        "lsvit reference backend (baddbmm)": lambda: lk.patch_embed(video, weight, bias, pos, backend="reference"),
        "nn.Conv3d + flatten + transpose + add": conv_path,
        "reshape + F.linear + add": linear_path,
    }
    print(f"{args.dtype}, threads={args.threads}, reps={args.reps}, {grid.flops() / 1e9:.1f} GFLOP per call")
    with torch.no_grad():
        base = None
        for name, fn in cases.items():
            wall, cpu = timed(fn, args.reps)
            base = base or wall
            print(f"  {name:<40} wall {wall:7.1f} ms  cpu {cpu:7.1f} ms  ({wall / base:.2f}x the GEMM)")


if __name__ == "__main__":
    main()
