"""The compiled library as built: which kernels it registers, their resource usage, and the build description."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lsvit.bench import cuda_audit, sass
from lsvit_kernels.backends import native

ROOT = Path(__file__).resolve().parents[2]
OPS = ("lsvit::native_patch_embed_forward", "lsvit::native_patch_embed_backward")
KERNELS = (
    "patch_embed_mma_kernel",
    "patch_embed_fma_kernel",
    "k_offset_table_kernel",
    "cls_rows_kernel",
    "gather_patches_kernel",
    "scatter_patches_kernel",
)
ARCHES = ("sm_80", "sm_90")

needs_ext = pytest.mark.skipif(not native._has_ext(), reason=f"the compiled library is not built: {native._load_error}")


def _cuda_built() -> bool:
    return native._has_cuda_kernels()


needs_cuda_build = pytest.mark.skipif(
    not _cuda_built(), reason="the compiled library was built without its CUDA part (no nvcc or LSVIT_SKIP_CUDA=1)"
)


@needs_ext
def test_cpu_kernels_are_registered():
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op


@needs_ext
@needs_cuda_build
def test_cuda_kernels_are_registered():
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


@pytest.fixture(scope="module")
def kernels() -> list[sass.KernelCode]:
    """Every kernel of the built library, per architecture (lsvit/bench/sass.py)."""
    path, why = cuda_audit.library()
    if path is None:
        pytest.skip(why)
    try:
        return sass.read_library(path)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def _mma_kernels(kernels, arch):
    """(weight dtype, "16-bit" or "uint8" video, elements per video copy, kernel) of every mma instantiation."""
    found = []
    for kernel in kernels:
        family, dtype, video, vec = cuda_audit.instantiation(kernel)
        if family == "mma" and kernel.arch == arch:
            found.append((dtype, cuda_audit.video_class(video), vec, kernel))
    return found


def test_cuda_kernels_do_not_spill(kernels):
    names = " ".join(k.name for k in kernels)
    for kernel in KERNELS:
        assert kernel in names, f"{kernel} missing from the fatbinary"
    assert {k.arch for k in kernels} >= set(ARCHES)
    for k in kernels:
        label = f"{k.arch} {cuda_audit.short_name(k)}"
        assert k.stack_bytes == 0 and k.local_bytes == 0, f"{label} spills: {k.stack_bytes=} {k.local_bytes=}"


@pytest.mark.parametrize("arch", ARCHES)
def test_mma_kernel_main_loop(kernels, arch):
    """Every instantiation: cp.async (16-byte for the weight and the aligned 16-bit video), ldmatrix, mma.sync,
    one barrier, no local memory or calls, and the instruction count per HMMA under its bound."""
    found = _mma_kernels(kernels, arch)
    # {fp16, bf16} x {16-bit, uint8 video} x {8, 2, 1} elements per copy
    assert len(found) == 12, [cuda_audit.short_name(k) for *_, k in found]
    for _, video, vec, kernel in found:
        loop = sass.main_loop(kernel.instructions)
        label = f"{arch} {cuda_audit.short_name(kernel)}"
        assert loop is not None and loop.mma_opcode.startswith("HMMA"), label
        wide = loop.widths("LDGSTS").get(128, 0)
        assert loop.count("HMMA") == cuda_audit.MMA_PER_STEP, (label, loop.opcodes)
        assert loop.count("LDSM") == cuda_audit.LDSM_PER_STEP, (label, loop.opcodes)
        assert loop.count("BAR") == 1, (label, loop.opcodes)
        assert loop.local == 0 and loop.calls == 0, (label, loop.opcodes)
        async_video = video == "16-bit" and vec >= 2
        # 2 weight rows per thread, 16 bytes each; video: 2 rows x (8 / vec) chunks, 16 bytes when vec = 8
        assert wide == (4 if async_video and vec == 8 else 2), (label, loop.opcodes)
        assert loop.count("LDGSTS") == 2 + (2 * 8 // vec if async_video else 0), (label, loop.opcodes)
        if not async_video:  # staged through registers: loads before the MMAs, shared stores after them
            assert loop.count("LDG") >= 2 * 8 // vec and loop.count("STS") >= 2, (label, loop.opcodes)
            if video == "uint8" and vec >= 2:  # bytes converted with PRMT + FADD / HADD2, not quarter-rate I2F
                assert loop.count("I2F") == 0 and loop.count("PRMT") > 0, (label, loop.opcodes)
            stores = [i for i, ins in enumerate(loop.body) if ins.base == "STS"]
            mmas = [i for i, ins in enumerate(loop.body) if ins.base == "HMMA"]
            assert min(stores) > min(mmas), label
        assert loop.per_mma <= cuda_audit.LOOP_BOUND[(video, vec)], (label, loop.per_mma)


@pytest.mark.parametrize("arch", ARCHES)
def test_mma_kernel_blocks_per_sm(kernels, arch):
    """Two blocks of 8 warps per SM from registers and 60 KiB of shared memory; one for the byte-wise uint8 fallback."""
    threads, dynamic_shared = cuda_audit.LAUNCH["patch_embed_mma_kernel"]
    assert (threads, dynamic_shared) == (256, 61440)  # the design in docs/native.md
    for _, video, vec, kernel in _mma_kernels(kernels, arch):
        shared = kernel.launch_shared(dynamic_shared)
        ctas = sass.ctas_per_sm(kernel.registers, shared, threads // 32, kernel.sm)["ctas"]
        if (video, vec) == ("uint8", 1):  # launch-bounded to one block: its registers may land anywhere up to 255
            assert ctas >= 1, (kernel.name, kernel.registers)
        else:
            assert ctas == 2, (kernel.name, kernel.registers)


@pytest.mark.parametrize("arch", ARCHES)
def test_fma_kernel_main_loop(kernels, arch):
    """fp32: per 16-deep step 16 x 16 FFMA per thread, at most 3 instructions per FFMA (2.41 on sm_80, 2.75 on
    sm_90), no calls or local memory; 5-6 blocks of 256 threads per SM."""
    found = [k for k in kernels if k.arch == arch and "patch_embed_fma_kernel" in k.name]
    assert len(found) == 2  # fp32 and uint8 video
    threads, dynamic_shared = cuda_audit.LAUNCH["patch_embed_fma_kernel"]
    for kernel in found:
        loop = sass.main_loop(kernel.instructions)
        label = cuda_audit.short_name(kernel)
        assert loop is not None and loop.count("FFMA") == loop.mma == cuda_audit.FMA_PER_STEP, label
        assert loop.calls == 0 and loop.local == 0, loop.opcodes
        assert loop.per_mma <= cuda_audit.FMA_BOUND, (label, loop.instructions)
        shared = kernel.launch_shared(dynamic_shared)
        assert sass.ctas_per_sm(kernel.registers, shared, threads // 32, kernel.sm)["ctas"] >= 4, kernel.registers


@pytest.mark.parametrize("arch", ARCHES)
def test_index_kernels_have_no_slow_paths(kernels, arch):
    """No 64-bit division (a CALL into a slow path) or local memory in any loop of any kernel."""
    for kernel in kernels:
        if kernel.arch != arch:
            continue
        for loop in sass.all_loops(kernel.instructions):
            assert loop.calls == 0, (cuda_audit.short_name(kernel), [i.opcode for i in loop.body])
            assert loop.local == 0, cuda_audit.short_name(kernel)


def test_every_cuda_kernel_passes_the_audit(kernels):
    """The rows `python -m lsvit.bench.gpu_audit` prints for the library: one per kernel and architecture, each
    passing its rules, and the main loop built as designed (LDGSTS.128 loads, LDSM, no calls in loops)."""
    rows = [cuda_audit.audit_kernel(k) for k in kernels]
    assert len(rows) == len(kernels) and {r["arch"] for r in rows} >= set(ARCHES)
    failing = {f"{r['arch']} {r['kernel']}": cuda_audit.check(r) for r in rows if cuda_audit.check(r)}
    assert not failing, failing
    row = next(r for r in rows if r["arch"] == "sm_90" and r["kernel"] == "patch_embed_mma_kernel<bf16, bf16, 8>")
    assert row["ctas_per_sm"] == 2 and row["loads"]["LDGSTS"] == {128: 4} and row["ldsm"] == 12
    table = cuda_audit.render(rows, "lib.so")
    assert table.count("\n| sm_") == len(rows) and "| LDGSTS 128x4, LDG 32x1 | 128 | 0 | 0 | - | ok |" in table


def test_cuda_audit_rules_flag_each_problem():
    good = {
        "family": "mma",
        "dtype": "bf16",
        "video_dtype": "bf16",
        "vec": 8,
        "stack_bytes": 0,
        "local_bytes": 0,
        "loops_local": 0,
        "loops_calls": 0,
        "ctas_per_sm": 2,
        "ctas_documented": 2,
        "loop_mma": 32,
        "mma_opcode": "HMMA.16816.F32.BF16",
        "per_mma": 3.3,
        "bound": 3.6,
        "ldsm": 12,
        "barriers": 1,
        "loads": {"LDGSTS": {128: 4}, "LDG": {32: 1}},
        "i2f": 0,
    }
    assert cuda_audit.check(good) == []
    for change in (
        {"local_bytes": 8},
        {"loops_local": 1},
        {"loops_calls": 5},
        {"ctas_per_sm": 1},
        {"loop_mma": 16},
        {"per_mma": 3.7},
        {"ldsm": 0},
        {"barriers": 3},
        {"loads": {"LDGSTS": {128: 2, 32: 8}}},
    ):
        assert cuda_audit.check({**good, **change}), change
    assert cuda_audit.check({**good, "video_dtype": "u8", "loads": {"LDGSTS": {128: 2}}}) == []
    assert cuda_audit.check({**good, "video_dtype": "u8", "loads": {"LDGSTS": {128: 2}}, "i2f": 16})


def test_gpu_audit_says_in_one_line_when_the_library_has_no_cuda_kernels(monkeypatch, capsys):
    from lsvit.bench import gpu_audit

    monkeypatch.setattr(native, "_has_cuda_kernels", lambda: False)
    monkeypatch.setattr(native, "_has_ext", lambda: True)
    assert gpu_audit.main(["--part", "cuda"]) == 2  # nothing audited
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "built without its CUDA part" in out


def _spec(monkeypatch, **env):
    """Run csrc_build.extension_spec with `env`; monkeypatch undoes what it sets (os.environ, CUDA_HOME)."""
    from torch.utils import cpp_extension

    for key in ("LSVIT_SKIP_CUDA", "LSVIT_FORCE_CUDA", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(key, raising=False)
    if "CUDA_HOME" in os.environ:
        monkeypatch.setenv("CUDA_HOME", os.environ["CUDA_HOME"])
    else:
        monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cpp_extension.CUDA_HOME)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(ROOT / "csrc"))
    sys.modules.pop("csrc_build", None)
    import csrc_build

    messages: list[str] = []
    ext_modules, cmdclass = csrc_build.extension_spec(ROOT, messages.append)
    return ext_modules, cmdclass, messages


def test_build_spec_cpu_only(monkeypatch):
    ext_modules, cmdclass, messages = _spec(monkeypatch, LSVIT_SKIP_CUDA="1")
    (ext,) = ext_modules
    assert ext.name == "lsvit_kernels._C"
    assert not any(s.endswith(".cu") for s in ext.sources)
    assert "build_ext" in cmdclass
    assert any("CPU kernel only" in m and "LSVIT_SKIP_CUDA=1" in m for m in messages), messages


def test_build_spec_with_cuda_toolchain(monkeypatch):
    if not torch.version.cuda:
        pytest.skip("torch is not a CUDA build")
    ext_modules, _, messages = _spec(monkeypatch)
    if any("CUDA part skipped" in m for m in messages):
        pytest.skip(f"no CUDA toolchain here: {messages}")
    (ext,) = ext_modules
    assert any(s.endswith("patch_embed_cuda.cu") for s in ext.sources)
    assert ("LSVIT_WITH_CUDA", None) in ext.define_macros
    if not torch.cuda.is_available():
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0+PTX"


def test_force_cuda_without_toolchain_is_fatal(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match="LSVIT_FORCE_CUDA=1 but the CUDA part cannot be built"):
        _spec(monkeypatch, LSVIT_FORCE_CUDA="1")


INDEX_CHECK = r"""
#include "patch_embed.h"
#include <cstdio>
#include <cstdlib>
#include <vector>
using namespace lsvit;
// The 32-bit index forms the CUDA kernels use against the int64 ones the CPU kernel uses, on random geometries
// (odd sizes, a CLS slot or none) and strides (W stride 1 to 4).
int main() {
  srand(7);
  long bad = 0;
  for (int it = 0; it < 500; ++it) {
    const int64_t t = 1 + rand() % 3, ph = 1 + rand() % 5, pw = 1 + rand() % 6;
    const PatchGeometry g = make_geometry(1 + rand() % 3, t * (1 + rand() % 3), 1 + rand() % 3, ph * (1 + rand() % 4),
                                          pw * (1 + rand() % 4), 8, t, ph, pw, rand() % 2);
    const VideoStrides s{rand() % 100000, rand() % 1000, rand() % 1000, rand() % 100, 1 + rand() % 4};
    for (int64_t m = 0; m < g.num_tokens; ++m) {
      const TokenCoords c = token_coords32(static_cast<int32_t>(m), g);
      bad += tubelet_origin_offset(c, g, s) != tubelet_origin_offset(m, g, s);
      bad += output_row(c, g) != output_row(m, g);
      bad += pos_row(c, g, true) != pos_row(m, g, true) || pos_row(c, g, false) != pos_row(m, g, false);
    }
    int64_t largest = 0;
    for (int64_t k = 0; k < g.patch_dim; ++k) {
      bad += k_offset32(static_cast<int32_t>(k), g, s) != k_offset(k, g, s);
      largest = k_offset(k, g, s) > largest ? k_offset(k, g, s) : largest;
    }
    bad += largest != max_k_offset(g, s);
    // (dt, dh, dw, c) order: a bijection onto the weight's k, equal to permuting the weight to (E, t, ph, pw, C)
    std::vector<int> seen(g.patch_dim, 0);
    for (int64_t c = 0; c < g.channels; ++c)
      for (int64_t dt = 0; dt < g.tubelet; ++dt)
        for (int64_t dh = 0; dh < g.patch_h; ++dh)
          for (int64_t dw = 0; dw < g.patch_w; ++dw) {
            const int64_t permuted = ((dt * g.patch_h + dh) * g.patch_w + dw) * g.channels + c;
            const int32_t weight_k = weight_k_of_channels_last32(static_cast<int32_t>(permuted), g);
            bad += weight_k != ((c * g.tubelet + dt) * g.patch_h + dh) * g.patch_w + dw;
            seen[weight_k] += 1;
          }
    for (int count : seen) bad += count != 1;
  }
  // The read plan: every chunk of every token lies in one run of consecutive memory and starts aligned.
  for (int it = 0; it < 400; ++it) {
    const int64_t t = 1 + rand() % 2, ph = 1 + rand() % 4, pw = 1 + rand() % 16;
    const PatchGeometry g = make_geometry(1 + rand() % 2, t * (1 + rand() % 2), 1 + rand() % 4, ph * (1 + rand() % 3),
                                          pw * (1 + rand() % 3), 8, t, ph, pw, 0);
    const int64_t B = g.batch, T = g.frames, C = g.channels, H = g.height, W = g.width, gap = 1 + rand() % 2;
    const VideoStrides layouts[] = {
        {T * C * H * W * gap, C * H * W * gap, H * W * gap, W * gap, gap},   // (B, T, C, H, W), W stride 1 or 2
        {T * H * W * C * gap, H * W * C * gap, 1, W * C * gap, C * gap},     // channels-last, packed or not
        {rand() % 64 * 8, rand() % 64 * 2, rand() % 16, rand() % 32 * 2, 1},  // arbitrary
    };
    for (const VideoStrides& s : layouts) {
      const int64_t element_size = 1 + rand() % 2;
      const uintptr_t address = 4096 + element_size * (rand() % 3 == 0 ? rand() % 8 : 0);
      const VideoReadPlan plan = video_read_plan(address, element_size, g, s);
      auto offset = [&](int64_t k) {
        const int64_t weight_k = plan.channels_last_order ? weight_k_of_channels_last32(static_cast<int32_t>(k), g) : k;
        return k_offset(weight_k, g, s);
      };
      for (int64_t m = 0; m < g.num_tokens; ++m) {
        const int64_t origin = tubelet_origin_offset(m, g, s);
        for (int64_t k0 = 0; k0 < g.patch_dim; k0 += plan.vec) {
          bad += (address + (origin + offset(k0)) * element_size) % (plan.vec * element_size) != 0;
          for (int q = 1; q < plan.vec; ++q) bad += k0 + q >= g.patch_dim || offset(k0 + q) != offset(k0) + q;
        }
      }
    }
    (void)B;
  }
  // The plans the docs promise for the benchmark geometry (bf16, aligned): 8-element chunks contiguous or
  // channels-last at P = 16, 2-element ones at P = 14.
  for (const int64_t p : {16, 14}) {
    const PatchGeometry g = make_geometry(2, 16, 3, 224, 224, 768, 2, p, p, 1);
    const VideoStrides contiguous = contiguous_strides(g);
    const VideoStrides channels_last{16 * 224 * 224 * 3, 224 * 224 * 3, 1, 224 * 3, 3};
    const int want = p == 16 ? 8 : 2;
    const VideoReadPlan a = video_read_plan(4096, 2, g, contiguous), b = video_read_plan(4096, 2, g, channels_last);
    bad += a.vec != want || a.channels_last_order || b.vec != want || !b.channels_last_order;
  }
  std::printf("mismatches %ld\n", bad);
  return bad != 0;
}
"""


def test_32bit_index_math_matches_int64(tmp_path):
    """csrc/patch_embed.h: token_coords32 / k_offset32 / max_k_offset (CUDA kernels) == the int64 forms (CPU); the
    channels-last k order is the weight permuted to (E, t, ph, pw, C); video_read_plan's chunks are contiguous and
    aligned for every token (what 16-byte cp.async needs), and as wide as the docs say at P = 16 and 14."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    source, binary = tmp_path / "index_check.cpp", tmp_path / "index_check"
    source.write_text(INDEX_CHECK)
    subprocess.run([compiler, "-O1", "-std=c++17", f"-I{ROOT / 'csrc'}", str(source), "-o", str(binary)], check=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "mismatches 0" in result.stdout, result.stdout + result.stderr
