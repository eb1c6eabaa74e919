"""Side-by-side CPU timings of the compiled kernel on the benchmark shape (the numbers in docs/native.md).

fp32 video (2, 16, 3, 224, 224), tubelet 2 x 16 x 16, E = 768, with bias and pos_embed. Each case: 2 warm-up
calls, then --reps timed calls, the cases taking turns (one call of each per round, so a load change hits all of
them alike); the median wall time and the minimum process CPU time (all threads). ``--engines bf16kernel,onednn,aten``
runs the fused kernel once per GEMM engine (csrc/cpu/gemm_cpu.h), ``--schedules blocks,gemm`` once per
schedule, side by side in this one process. ``--backward`` times forward + backward (grad of weight, bias and
pos). Peak memory: the ru_maxrss increase of one call in a fresh subprocess per backend, run first.

    python csrc/bench_cpu.py [--threads 2] [--reps 10] [--dtype bfloat16] [--engines onednn,aten]
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
    parser.add_argument(
        "--engines", default="auto", help="GEMM engines of the fused kernel: auto, bf16kernel, onednn, aten"
    )
    parser.add_argument("--schedules", default="auto", help="schedules of the fused kernel: auto, blocks, gemm")
    parser.add_argument("--backward", action="store_true", help="forward + backward instead of forward")
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
    a, w2 = torch.randn(m, k, dtype=dtype), weight.reshape(E, k).clone()

    params = [weight, bias, pos]
    if args.backward:
        for p in params:
            p.requires_grad_()
    grad_out = torch.randn(B, T // TUBELET, (H // PATCH) * (W // PATCH), E, dtype=dtype)

    def run(fn):
        def step():
            if not args.backward:
                with torch.no_grad():
                    return fn()
            return torch.autograd.grad(fn(), params, grad_out)

        return step

    def conv_path():
        y = F.conv3d(video.permute(0, 2, 1, 3, 4), weight, bias, stride=(TUBELET, PATCH, PATCH))
        return y.flatten(3).permute(0, 2, 3, 1) + pos  # (B, T', N, E)

    def linear_path():
        return F.linear(reference.patches(video, grid), weight.reshape(E, k), bias) + pos

    def fused(engine: str, schedule: str):
        def call():
            torch.ops.lsvit_cpu.set_gemm_engine(engine)
            torch.ops.lsvit_cpu.set_schedule(schedule)
            return lk.patch_embed(video, weight, bias, pos, backend="cpu")

        return call

    def floor():
        with torch.no_grad():
            out = torch.mm(a, w2.t())
            return (out, torch.mm(out.t(), a)) if args.backward else out

    cases = {f"torch.mm {m}x{k}x{E} (GEMM only{' + grad_weight' if args.backward else ''})": floor}
    lk.patch_embed(video[:, :TUBELET, :, :PATCH, :PATCH], weight, bias, pos[:1], backend="cpu")  # loads the library
    for engine in args.engines.split(","):
        for schedule in args.schedules.split(","):
            cases[f"lsvit cpu backend, {engine} GEMM, {schedule}"] = run(fused(engine, schedule))
    cases["lsvit reference backend (baddbmm)"] = run(
        lambda: lk.patch_embed(video, weight, bias, pos, backend="reference")
    )
    cases["F.conv3d + flatten + transpose + add"] = run(conv_path)
    cases["reshape + F.linear + add"] = run(linear_path)
    mode = "forward + backward" if args.backward else "forward"
    print(f"{args.dtype} {mode}, threads={args.threads}, reps={args.reps}, {grid.flops() / 1e9:.1f} GFLOP per GEMM")
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()
        fn()
    for _ in range(args.reps):
        for name, fn in cases.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            walls[name].append((time.perf_counter() - w0) * 1e3)
            cpus[name].append((time.process_time() - c0) * 1e3)
    base = statistics.median(walls[next(iter(cases))])
    for name in cases:
        wall, cpu = statistics.median(walls[name]), min(cpus[name])
        print(f"  {name:<44} wall {wall:7.1f} ms  cpu {cpu:7.1f} ms  ({wall / base:.2f}x the GEMM)")
    torch.ops.lsvit_cpu.set_gemm_engine("auto")
    torch.ops.lsvit_cpu.set_schedule("auto")


if __name__ == "__main__":
    main()
