// Host-side pieces shared by the CPU and CUDA implementations: invariant checks (the arguments were validated
// by lsvit_kernels/geometry.py; these only keep a direct call in bounds), the geometry of a call, the cheap
// reductions of the backward pass, and the per-device entry points that register.cpp binds to the dispatcher.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

#include "patch_embed.h"

namespace lsvit {

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Everything a kernel needs to know about one call, after validation.
struct CallPlan {
  PatchGeometry geometry;
  VideoStrides video_strides;
  bool pos_per_token = false;
};

// Checks the forward arguments' invariants (terse RuntimeError) and describes the call.
// `weight` may be (E, C, t, ph, pw) or (E, C, ph, pw); `allowed` lists the float dtypes this device supports.
CallPlan check_forward_args(const at::Tensor& video, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& pos_embed, const c10::optional<at::Tensor>& cls_token,
                            c10::ArrayRef<at::ScalarType> allowed);

// The same for the backward; also clears the entries of `mask` (grad_video, grad_weight, grad_bias, grad_pos,
// grad_cls) that the call has nothing to compute for.
CallPlan check_backward_args(const at::Tensor& grad_tokens, const at::Tensor& video, const at::Tensor& weight,
                             int64_t pos_rows, bool has_bias, bool has_cls, std::array<bool, 5>& mask,
                             c10::ArrayRef<at::ScalarType> allowed);

// grad_bias, grad_pos, grad_cls from grad_tokens (B, T', S + N, E) with one fp32 pass over it (ATen ops);
// undefined where not asked for. Device-agnostic.
void token_reduction_grads(const at::Tensor& grad_tokens, const CallPlan& plan, int64_t pos_rows,
                           const std::array<bool, 5>& mask, Grads& grads);

// The weight as (E, C, t, ph, pw), contiguous.
at::Tensor weight_5d(const at::Tensor& weight);

namespace cpu {
at::Tensor forward(const at::Tensor& video, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& pos_embed, const c10::optional<at::Tensor>& cls_token);
Grads backward(const at::Tensor& grad_tokens, const at::Tensor& video, const at::Tensor& weight, int64_t pos_rows,
               bool has_bias, bool has_cls, std::array<bool, 5> output_mask);
}  // namespace cpu

#ifdef LSVIT_WITH_CUDA
namespace cuda {
at::Tensor forward(const at::Tensor& video, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& pos_embed, const c10::optional<at::Tensor>& cls_token);
Grads backward(const at::Tensor& grad_tokens, const at::Tensor& video, const at::Tensor& weight, int64_t pos_rows,
               bool has_bias, bool has_cls, std::array<bool, 5> output_mask);
}  // namespace cuda
#endif

}  // namespace lsvit
