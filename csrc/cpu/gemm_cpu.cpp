// See gemm_cpu.h.
#include "gemm_cpu.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <atomic>
#include <mutex>

#include "bf16_gemm.h"

// Exported by libtorch_cpu (TORCH_API in ATen/native/mkldnn/Matmul.h, a header torch does not ship):
// result = beta * result + alpha * mat1 @ mat2, all three of one dtype (fp32, bf16 or fp16). Weak, so that a
// libtorch without it leaves the address null instead of failing to load.
namespace at::native {
TORCH_API void mkldnn_matmul(const at::Tensor& mat1, const at::Tensor& mat2, const at::Tensor& result, float beta,
                             float alpha) __attribute__((weak));
}  // namespace at::native

namespace lsvit::cpu {
namespace {

enum class Preference { kAuto, kBf16Kernel, kOneDnn, kAten };
constexpr const char* kPreferenceNames[] = {"auto", "bf16kernel", "onednn", "aten"};
std::atomic<Preference> preference{Preference::kAuto};

// One tiny call per dtype, the first time it is needed: oneDNN checks the CPU (AVX-512BW/VL/DQ or AVX-NE-
// CONVERT for fp32 and bf16) and throws where it cannot run, and the result is exact on these inputs.
bool onednn_runs(at::ScalarType dtype) {
  auto probe = [](at::ScalarType t) {
    if (&at::native::mkldnn_matmul == nullptr) return false;
    try {
      const auto options = at::TensorOptions().dtype(t);
      at::Tensor a = at::empty({2, 3}, options).fill_(1), b = at::empty({3, 2}, options).fill_(2);
      at::Tensor c = at::empty({2, 2}, options).fill_(1);
      at::native::mkldnn_matmul(a, b, c, 1.0f, 1.0f);
      return c.eq(7).all().item<bool>();
    } catch (const std::exception&) {
      return false;
    }
  };
  static const bool fp32 = probe(at::kFloat);
  static const bool bf16 = probe(at::kBFloat16);
  return dtype == at::kFloat ? fp32 : dtype == at::kBFloat16 ? bf16 : false;
}

// The engine of a plain GEMM call: oneDNN unless switched to ATen or unable to run.
GemmEngine library_engine(Preference pref, at::ScalarType dtype) {
  const bool supported = dtype == at::kFloat || dtype == at::kBFloat16;
  const bool onednn =
      pref != Preference::kAten && supported && at::globalContext().userEnabledMkldnn() && onednn_runs(dtype);
  return onednn ? GemmEngine::kOneDnn : GemmEngine::kAten;
}

}  // namespace

GemmEngine gemm_engine(at::ScalarType dtype) {
  const Preference pref = preference.load(std::memory_order_relaxed);
  const bool kernel = pref == Preference::kAuto || pref == Preference::kBf16Kernel;
  if (kernel && dtype == at::kBFloat16 && bf16_gemm::available()) return GemmEngine::kBf16Kernel;
  return library_engine(pref, dtype);
}

bool use_bf16_kernel(int64_t tokens, bool weight_grad) {
  if (gemm_engine(at::kBFloat16) != GemmEngine::kBf16Kernel) return false;
  if (preference.load(std::memory_order_relaxed) == Preference::kBf16Kernel) return true;
#ifdef _OPENMP
  const bool threaded_weight_grad = weight_grad && at::get_num_threads() > 1;
  return tokens >= (threaded_weight_grad ? kBf16KernelMinTokensThreadedWeightGrad : kBf16KernelMinTokens);
#else
  (void)weight_grad;
  return tokens >= kBf16KernelMinTokens && at::get_num_threads() == 1;  // its workers would run one after another
#endif
}

void gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, float beta) {
  TORCH_INTERNAL_ASSERT(beta == 0.0f || beta == 1.0f);
  if (library_engine(preference.load(std::memory_order_relaxed), c.scalar_type()) == GemmEngine::kOneDnn) {
    at::native::mkldnn_matmul(a, b, c, beta, 1.0f);
    return;
  }
  at::Tensor out = c;
  if (beta == 0.0f) {
    at::mm_out(out, a, b);
  } else {
    at::addmm_out(out, c, a, b);
  }
}

std::string set_gemm_engine(const std::string& name) {
  for (const auto i : c10::irange(std::size(kPreferenceNames))) {
    if (name == kPreferenceNames[i]) return kPreferenceNames[static_cast<int>(preference.exchange(Preference(i)))];
  }
  TORCH_CHECK_VALUE(false, "GEMM engine must be 'auto', 'bf16kernel', 'onednn' or 'aten'; got '", name, "'");
}

TORCH_LIBRARY_FRAGMENT(lsvit_cpu, m) {
  m.def("set_gemm_engine(str name) -> str", &set_gemm_engine);
  m.def("uses_bf16_kernel(int tokens, bool weight_grad=False) -> bool", &use_bf16_kernel);
  // The engine a fused call of this dtype over this many patch tokens runs now (threads included) for its
  // forward, or for its grad_weight.
  m.def("fused_engine(ScalarType dtype, int tokens, bool weight_grad=False) -> str",
        [](at::ScalarType dtype, int64_t tokens, bool weight_grad) -> std::string {
          if (dtype == at::kBFloat16 && use_bf16_kernel(tokens, weight_grad)) return "bf16kernel";
          return library_engine(preference.load(std::memory_order_relaxed), dtype) == GemmEngine::kAten ? "aten"
                                                                                                        : "onednn";
        });
  m.def("gemm_engine(ScalarType dtype) -> str", [](at::ScalarType dtype) -> std::string {
    const GemmEngine e = gemm_engine(dtype);
    return e == GemmEngine::kBf16Kernel ? "bf16kernel" : e == GemmEngine::kOneDnn ? "onednn" : "aten";
  });
}

}  // namespace lsvit::cpu
