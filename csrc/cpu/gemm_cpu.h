// The one GEMM the CPU kernel calls: c = beta * c + a @ b on 2D strided views (row-major or transposed).
//
// Engines (docs/native.md, "CPU GEMM engine"):
//   kBf16Kernel: the bf16 micro-kernel of bf16_gemm.h, for the fused bf16 forward only (its gather packs the
//            GEMM's panel; gemm() itself never runs it): where this CPU has avx512_bf16.
//   kOneDnn: oneDNN's matmul through ATen's exported at::native::mkldnn_matmul, for fp32 and bf16 operands.
//            On the AMD EPYC (AVX-512, no AMX) development machine its fp32 GEMM runs at 2x the rate of the
//            MKL sgemm that torch.mm uses (MKL takes its AVX2 path on AMD CPUs), and its bf16 GEMM matches
//            torch.mm's (which is oneDNN already).
//   kAten:   at::mm_out / at::addmm_out, whatever torch.mm uses (MKL, OpenBLAS, ...): every dtype.
// kOneDnn is used only where it can run: the symbol is present in this libtorch (declared weak, so a torch
// built without oneDNN still loads this library), torch.backends.mkldnn is enabled, and a one-time probe call
// succeeded (oneDNN's matmul refuses CPUs without AVX-512BW/VL/DQ). Otherwise the call takes kAten.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace lsvit::cpu {

enum class GemmEngine { kBf16Kernel, kOneDnn, kAten };

// c = beta * c + a @ b with beta 0 or 1; c is contiguous, a and b row-major or transposed 2D views. Runs
// kOneDnn or kAten (kOneDnn where gemm_engine says kBf16Kernel and oneDNN runs).
void gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, float beta);

// The engine the fused kernel uses for this dtype now: kBf16Kernel for bf16 under "auto" (or "bf16kernel")
// where the CPU runs it, else kOneDnn where it runs and is not switched off, else kAten.
GemmEngine gemm_engine(at::ScalarType dtype);

// Whether a bf16 call over this many patch tokens runs the bf16 micro-kernel, for its forward or its
// grad_weight: its engine is kBf16Kernel and either it was asked for by name ("bf16kernel") or, under "auto",
// the call has at least kBf16KernelMinTokens tokens (below, the per-call weight packing outweighs what the
// kernel saves: oneDNN measured as fast or faster), on any thread count (at 2 threads it measured faster than
// oneDNN's threaded GEMM too: docs/native.md, "Threads"); grad_weight on more than one thread from
// kBf16KernelMinTokensThreadedWeightGrad tokens (its per-worker fp32 accumulators and their sum cost a fixed
// ~E K x 8 bytes per worker: at 2 threads oneDNN's single bf16 block measured faster up to 1568 tokens, the
// kernel 1.5x faster at 3136). A build without OpenMP (-fopenmp, csrc_build.py) runs at::parallel_for's workers
// one after another, so there the rule adds: torch runs one thread.
constexpr int64_t kBf16KernelMinTokens = 512;
constexpr int64_t kBf16KernelMinTokensThreadedWeightGrad = 2048;
bool use_bf16_kernel(int64_t tokens, bool weight_grad);

// Process-wide preference: "auto" (default: the fastest engine that runs, as measured in docs/native.md),
// "bf16kernel", "onednn" or "aten"; returns the previous one. "bf16kernel" and "onednn" fall back like "auto"
// where they cannot run. For tests and benchmarks that compare the paths in one process
// (torch.ops.lsvit_cpu.set_gemm_engine).
std::string set_gemm_engine(const std::string& name);

}  // namespace lsvit::cpu
