// Invariant checks and backward reductions shared by both devices (see common.h).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include "common.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

namespace lsvit {
namespace {

// The arguments were validated by lsvit_kernels/geometry.py before the op ran; these checks only keep a direct
// call of the kernel-level op from reading out of bounds, with terse messages (the user-facing ones live in
// Python alone).
void check_like_weight(const at::Tensor& t, const at::Tensor& weight) {
  TORCH_CHECK(t.device() == weight.device() && t.scalar_type() == weight.scalar_type(),
              "lsvit kernel: operand device/dtype differs from the weight's");
}

CallPlan describe(const at::Tensor& video, const at::Tensor& weight, bool has_cls,
                  c10::ArrayRef<at::ScalarType> allowed) {
  TORCH_CHECK(video.dim() == 5 && (weight.dim() == 4 || weight.dim() == 5), "lsvit kernel: video/weight rank");
  TORCH_CHECK(std::find(allowed.begin(), allowed.end(), weight.scalar_type()) != allowed.end(),
              "lsvit kernel: weight dtype ", weight.scalar_type(), " not supported on ", weight.device().type());
  TORCH_CHECK(video.device() == weight.device(), "lsvit kernel: video and weight on different devices");
  TORCH_CHECK(video.scalar_type() == weight.scalar_type() || video.scalar_type() == at::kByte,
              "lsvit kernel: video dtype must be the weight's or uint8");

  // (E, C, t, ph, pw); a Conv2d weight (E, C, ph, pw) has t = 1.
  const bool is_2d = weight.dim() == 4;
  const int64_t e = weight.size(0), wc = weight.size(1), tubelet = is_2d ? 1 : weight.size(2);
  const int64_t ph = weight.size(is_2d ? 2 : 3), pw = weight.size(is_2d ? 3 : 4);
  const int64_t b = video.size(0), t = video.size(1), c = video.size(2), h = video.size(3), wd = video.size(4);
  TORCH_CHECK(e >= 1 && tubelet >= 1 && ph >= 1 && pw >= 1 && c == wc, "lsvit kernel: weight shape");
  TORCH_CHECK(t > 0 && h > 0 && wd > 0 && t % tubelet == 0 && h % ph == 0 && wd % pw == 0,
              "lsvit kernel: video not divisible into tubelets");

  CallPlan plan;
  plan.geometry = make_geometry(b, t, c, h, wd, e, tubelet, ph, pw, has_cls ? 1 : 0);
  plan.video_strides =
      VideoStrides{video.stride(0), video.stride(1), video.stride(2), video.stride(3), video.stride(4)};
  return plan;
}

void check_pos_rows(int64_t pos_rows, CallPlan& plan) {
  const auto& g = plan.geometry;
  const int64_t per_slot = g.tokens_per_step, per_token = g.steps * g.tokens_per_step;
  TORCH_CHECK(pos_rows == per_slot || pos_rows == per_token, "lsvit kernel: pos_embed rows");
  plan.pos_per_token = pos_rows != per_slot;
}

// sum over dim 0 of a contiguous CPU tensor (n, ...) into acc_dtype (the opmath type of its dtype).
at::Tensor sum_leading_cpu(const at::Tensor& slices, at::ScalarType acc_dtype) {
  const int64_t n = slices.size(0), inner = slices.numel() / std::max<int64_t>(n, 1);
  const at::Tensor src = slices.contiguous();
  std::vector<int64_t> shape(slices.sizes().begin() + 1, slices.sizes().end());
  at::Tensor acc = at::empty(shape, slices.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "lsvit_sum_leading_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_INTERNAL_ASSERT(c10::CppTypeToScalarType<acc_t>::value == acc_dtype);
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    acc_t* out = acc.mutable_data_ptr<acc_t>();
    // One range (serial, as every region of this library except the bf16 micro-kernel's): measured as a
    // thread-team region it was not faster on the shared 2-core machine (docs/native.md, "Threads").
    at::parallel_for(0, inner, std::max<int64_t>(inner, 1), [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) out[j] = n > 0 ? static_cast<acc_t>(in[j]) : acc_t(0);
      for (int64_t i = 1; i < n; ++i) {
        const scalar_t* row = in + i * inner;
        for (int64_t j = j0; j < j1; ++j) out[j] += static_cast<acc_t>(row[j]);
      }
    });
  });
  return acc;
}

}  // namespace

at::Tensor weight_5d(const at::Tensor& weight) {
  return (weight.dim() == 4 ? weight.unsqueeze(2) : weight).contiguous();
}

CallPlan check_forward_args(const at::Tensor& video, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& pos_embed, const c10::optional<at::Tensor>& cls_token,
                            c10::ArrayRef<at::ScalarType> allowed) {
  const bool has_cls = cls_token.has_value() && cls_token->defined();
  CallPlan plan = describe(video, weight, has_cls, allowed);
  const int64_t e = plan.geometry.embed_dim;
  if (bias.has_value() && bias->defined()) {
    check_like_weight(*bias, weight);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == e, "lsvit kernel: bias shape");
  }
  if (has_cls) {
    check_like_weight(*cls_token, weight);
    TORCH_CHECK(cls_token->numel() == e, "lsvit kernel: cls_token size");
  }
  if (pos_embed.has_value() && pos_embed->defined()) {
    check_like_weight(*pos_embed, weight);
    TORCH_CHECK(pos_embed->dim() == 2 && pos_embed->size(1) == e, "lsvit kernel: pos_embed shape");
    check_pos_rows(pos_embed->size(0), plan);
  }
  return plan;
}

CallPlan check_backward_args(const at::Tensor& grad_tokens, const at::Tensor& video, const at::Tensor& weight,
                             int64_t pos_rows, bool has_bias, bool has_cls, std::array<bool, 5>& mask,
                             c10::ArrayRef<at::ScalarType> allowed) {
  CallPlan plan = describe(video, weight, has_cls, allowed);
  mask[2] = mask[2] && has_bias;
  mask[3] = mask[3] && pos_rows > 0;
  mask[4] = mask[4] && has_cls;
  TORCH_CHECK(!mask[0] || video.scalar_type() != at::kByte, "lsvit kernel: no gradient for a uint8 video");
  const auto& g = plan.geometry;
  if (pos_rows > 0) check_pos_rows(pos_rows, plan);
  check_like_weight(grad_tokens, weight);
  TORCH_CHECK(grad_tokens.sizes() == at::IntArrayRef({g.batch, g.steps, g.tokens_per_step, g.embed_dim}),
              "lsvit kernel: grad_tokens shape");
  return plan;
}

void token_reduction_grads(const at::Tensor& grad_tokens, const CallPlan& plan, int64_t pos_rows,
                           const std::array<bool, 5>& mask, Grads& grads) {
  if (!mask[2] && !mask[3] && !mask[4]) return;
  const auto& g = plan.geometry;
  const auto dtype = grad_tokens.scalar_type();
  const auto acc_dtype = dtype == at::kDouble ? at::kDouble : at::kFloat;
  // Sums of grad_tokens in fp32 (fp64 for fp64), never an fp32 copy of the whole grad_tokens (at::sum(...,
  // dtype) casts its whole input first: 19 MiB on the 2D bf16 benchmark shape). On CPU one parallel loop over
  // the accumulator (sum_leading_cpu: one thread-team region, where a loop of ATen adds would be one per
  // slice); on a GPU one reduction. per_step (T', S + N, E): summed over the batch, only for a per-token
  // pos_embed. per_slot (S + N, E): summed over batch and time steps; bias and cls reduce this small table
  // over its outer dimension (reducing per_step over two dimensions of a narrowed view took 2-4 ms on the CPU
  // benchmark shape, against 0.1 ms for this).
  auto sum_slices = [&](const at::Tensor& slices) {  // (n, ...) -> sum over dim 0, in acc_dtype
    return slices.is_cpu() ? sum_leading_cpu(slices, acc_dtype) : at::sum(slices, {0}, false, acc_dtype);
  };
  const bool need_step = mask[3] && plan.pos_per_token;
  const bool need_slot = mask[2] || mask[4] || (mask[3] && !plan.pos_per_token);
  const at::Tensor per_step = need_step ? sum_slices(grad_tokens) : at::Tensor();
  const at::Tensor per_slot =
      !need_slot  ? at::Tensor()
      : need_step ? at::sum(per_step, {0})
                  : sum_slices(grad_tokens.reshape({g.batch * g.steps, g.tokens_per_step, g.embed_dim}));
  if (mask[2]) std::get<2>(grads) = at::sum(per_slot.narrow(0, g.cls_slots, g.num_spatial), {0}).to(dtype);
  if (mask[3]) {
    std::get<3>(grads) =
        (plan.pos_per_token ? per_step.reshape({pos_rows, g.embed_dim}) : per_slot).to(dtype).contiguous();
  }
  if (mask[4]) std::get<4>(grads) = per_slot.select(0, 0).to(dtype, false, /*copy=*/true);  // not a view of pos
}

}  // namespace lsvit
