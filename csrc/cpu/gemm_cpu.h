// The one GEMM the CPU kernel calls: c = beta * c + a @ b on 2D strided views (row-major or transposed).
//
// Engines (docs/native.md, "CPU GEMM engine"):
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

enum class GemmEngine { kOneDnn, kAten };

// c = beta * c + a @ b with beta 0 or 1; c is contiguous, a and b row-major or transposed 2D views.
void gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, float beta);

// The engine gemm() would use for this dtype now.
GemmEngine gemm_engine(at::ScalarType dtype);

// Process-wide preference, "onednn" (default) or "aten"; returns the previous one. For tests and benchmarks
// that compare both paths in one process (torch.ops.lsvit_cpu.set_gemm_engine).
std::string set_gemm_engine(const std::string& name);

}  // namespace lsvit::cpu
