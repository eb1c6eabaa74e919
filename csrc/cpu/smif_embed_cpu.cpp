// LSViT's input stage on CPU in one pass: SMIF's short-term motion computed while gathering the patch panel.
//
// For each block of output rows (CLS rows included, so C is one contiguous run of output rows):
//   1. C rows = bias + pos (a small (rows of pos, E) table rounded once, as patch_embed_cpu.cpp),
//   2. per token, per (dt, dh) patch row: read the pixel row of frame f and of every frame within `radius` of f
//      (clipped at the clip's ends), normalize each value (x = v * scale_c + shift_c; uint8 input too), and
//      compute in acc_t registers
//        D = mean |x_j - x_f|, M = relu(D - tau), X' = x + gamma * (W_f [x; M] + b_f), S = mean sign(j-f)(x_j-x_f)
//      writing X' into the frame panel and S into the motion panel (rows, C t ph pw) each,
//   3. C += frame_panel @ W^T, then C += motion_panel @ W_m^T: two GEMMs on the weights as they are (gemm_cpu.h),
//      so neither a (B, T, 2C, H, W) tensor nor a concatenated [W, W_m] is ever built.
// CLS rows are written after the GEMMs (cls + pos row). Blocks run one after another with the gather parallel over
// rows and multi-threaded GEMMs (patch_embed_cpu.cpp's kGemm schedule, its measured default for >1 thread).
// Precision: SMIF in acc_t (fp32; fp64 for fp64), rounded once into the panel; bf16 panels and GEMM for bf16,
// fp32 panels and GEMM for fp16 (as the patch-embedding kernel).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../common.h"
#include "../patch_embed.h"
#include "gemm_cpu.h"

namespace lsvit::cpu {
namespace {

// SMIF's parameters in acc_t, prepared by lsvit_kernels/smif_embed.py.
template <typename acc_t>
struct SmifParams {
  const acc_t* threshold;    // (C,) softplus(theta)
  const acc_t* fuse_weight;  // (C, 2C): [W_x | W_m]
  const acc_t* fuse_bias;    // (C,)
  const acc_t* gate;         // (C,)
  const acc_t* scale;        // (C,) input map x = v * scale + shift
  const acc_t* shift;
  int64_t radius;
};

// Per-thread buffers for one image-row segment of every channel: x, M, S and the fused row; C * width values.
template <typename acc_t>
struct RowScratch {
  std::vector<acc_t> x, motion, signed_motion, fused;
  explicit RowScratch(int64_t n) : x(n), motion(n), signed_motion(n), fused(n) {}
};

#if defined(__GNUC__)
#define LSVIT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define LSVIT_ALWAYS_INLINE inline
#endif

// A run: `count` patch tokens m0, m0 + 1, ... side by side in one row of patches (same b, step, gy), whose panel
// rows are consecutive. For each tubelet row (dt, dh) SMIF runs over the run's whole image-row segment of
// count * pw pixels (long loops the compiler vectorizes; per 16-pixel patch row the loop overheads dominated), then
// each token's pw values go to its panel row at k = ((c t + dt) ph + dh) pw + dw.
template <bool kUnitW, typename video_t, typename gemm_t, typename acc_t>
LSVIT_ALWAYS_INLINE void smif_run(const video_t* video, const PatchGeometry& g, const VideoStrides& s,
                                  const SmifParams<acc_t>& p, int64_t m0, int64_t count, int64_t k, gemm_t* frame_panel,
                                  gemm_t* motion_panel, RowScratch<acc_t>& scratch) {
  const int64_t pw = g.patch_w, channels = g.channels, width = count * pw;
  const int64_t sw = kUnitW ? 1 : s.w;
  const video_t* origin = video + tubelet_origin_offset(m0, g, s);
  const int64_t step = (m0 / g.num_spatial) % g.steps;
  const int64_t plane = g.tubelet * g.patch_h * pw;  // k stride of one channel
  for (int64_t dt = 0; dt < g.tubelet; ++dt) {
    const int64_t frame = step * g.tubelet + dt;
    const int64_t first = std::max<int64_t>(frame - p.radius, 0);
    const int64_t last = std::min<int64_t>(frame + p.radius, g.frames - 1);
    const acc_t inv_count = acc_t(1) / static_cast<acc_t>(std::max<int64_t>(last - first, 1));
    for (int64_t dh = 0; dh < g.patch_h; ++dh) {
      const video_t* row_origin = origin + dt * s.t + dh * s.h;
      for (int64_t c = 0; c < channels; ++c) {
        const video_t* __restrict__ src = row_origin + c * s.c;
        const acc_t scale = p.scale[c], shift = p.shift[c];
        acc_t* __restrict__ x = scratch.x.data() + c * width;
        acc_t* __restrict__ d = scratch.motion.data() + c * width;
        acc_t* __restrict__ sm = scratch.signed_motion.data() + c * width;
        for (int64_t w = 0; w < width; ++w) {
          x[w] = static_cast<acc_t>(src[w * sw]) * scale + shift;
          d[w] = acc_t(0);
          sm[w] = acc_t(0);
        }
        for (int64_t j = first; j <= last; ++j) {
          if (j == frame) continue;
          const video_t* __restrict__ neighbour = src + (j - frame) * s.t;
          const acc_t direction = j > frame ? acc_t(1) : acc_t(-1);  // later minus earlier
          for (int64_t w = 0; w < width; ++w) {
            const acc_t diff = static_cast<acc_t>(neighbour[w * sw]) * scale + shift - x[w];
            d[w] += diff < acc_t(0) ? -diff : diff;
            sm[w] += direction * diff;
          }
        }
        const acc_t tau = p.threshold[c];
        for (int64_t w = 0; w < width; ++w) {
          const acc_t above = d[w] * inv_count - tau;
          d[w] = above > acc_t(0) ? above : acc_t(0);  // M
          sm[w] *= inv_count;                          // S
        }
      }
      const int64_t offset = (dt * g.patch_h + dh) * pw;
      for (int64_t o = 0; o < channels; ++o) {
        const acc_t* w_row = p.fuse_weight + o * 2 * channels;
        const acc_t bias = p.fuse_bias[o], gate = p.gate[o];
        acc_t* __restrict__ fused = scratch.fused.data();
        for (int64_t w = 0; w < width; ++w) fused[w] = bias;
        for (int64_t c = 0; c < channels; ++c) {
          const acc_t wx = w_row[c], wm = w_row[channels + c];
          const acc_t* __restrict__ x = scratch.x.data() + c * width;
          const acc_t* __restrict__ m = scratch.motion.data() + c * width;
          for (int64_t w = 0; w < width; ++w) fused[w] += wx * x[w] + wm * m[w];
        }
        const acc_t* __restrict__ x_o = scratch.x.data() + o * width;
        for (int64_t w = 0; w < width; ++w) fused[w] = x_o[w] + gate * fused[w];  // X'
        const acc_t* __restrict__ sm = scratch.signed_motion.data() + o * width;
        for (int64_t i = 0; i < count; ++i) {
          gemm_t* __restrict__ dst = frame_panel + i * k + o * plane + offset;
          for (int64_t dw = 0; dw < pw; ++dw) dst[dw] = static_cast<gemm_t>(fused[i * pw + dw]);
          if (motion_panel) {
            gemm_t* __restrict__ sdst = motion_panel + i * k + o * plane + offset;
            for (int64_t dw = 0; dw < pw; ++dw) sdst[dw] = static_cast<gemm_t>(sm[i * pw + dw]);
          }
        }
      }
    }
  }
}

template <typename video_t, typename gemm_t, typename acc_t>
LSVIT_ALWAYS_INLINE void smif_run_any_stride(const video_t* video, const PatchGeometry& g, const VideoStrides& s,
                                             const SmifParams<acc_t>& p, int64_t m0, int64_t count, int64_t k,
                                             gemm_t* frame_panel, gemm_t* motion_panel, RowScratch<acc_t>& scratch) {
  if (s.w == 1) {
    smif_run<true>(video, g, s, p, m0, count, k, frame_panel, motion_panel, scratch);
  } else {
    smif_run<false>(video, g, s, p, m0, count, k, frame_panel, motion_panel, scratch);
  }
}

// The same code compiled twice: for the build's baseline ISA and, on x86-64 with GCC or Clang, for AVX2 + FMA
// (8 floats per instruction instead of SSE2's 4), chosen at run time by what the CPU supports. The build flags
// stay portable (-O3 only) and the library still loads on any x86-64 CPU.
template <typename video_t, typename gemm_t, typename acc_t>
void smif_run_baseline(const video_t* video, const PatchGeometry& g, const VideoStrides& s, const SmifParams<acc_t>& p,
                       int64_t m0, int64_t count, int64_t k, gemm_t* frame_panel, gemm_t* motion_panel,
                       RowScratch<acc_t>& scratch) {
  smif_run_any_stride(video, g, s, p, m0, count, k, frame_panel, motion_panel, scratch);
}

#if defined(__GNUC__) && defined(__x86_64__)
#define LSVIT_SMIF_AVX2 1
template <typename video_t, typename gemm_t, typename acc_t>
__attribute__((target("avx2,fma"))) void smif_run_avx2(const video_t* video, const PatchGeometry& g,
                                                       const VideoStrides& s, const SmifParams<acc_t>& p, int64_t m0,
                                                       int64_t count, int64_t k, gemm_t* frame_panel,
                                                       gemm_t* motion_panel, RowScratch<acc_t>& scratch) {
  smif_run_any_stride(video, g, s, p, m0, count, k, frame_panel, motion_panel, scratch);
}
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <typename video_t, typename gemm_t, typename acc_t>
void smif_tokens(const video_t* video, const PatchGeometry& g, const VideoStrides& s, const SmifParams<acc_t>& p,
                 int64_t m0, int64_t count, int64_t k, gemm_t* frame_panel, gemm_t* motion_panel,
                 RowScratch<acc_t>& scratch) {
#ifdef LSVIT_SMIF_AVX2
  if (cpu_has_avx2()) return smif_run_avx2(video, g, s, p, m0, count, k, frame_panel, motion_panel, scratch);
#endif
  smif_run_baseline(video, g, s, p, m0, count, k, frame_panel, motion_panel, scratch);
}

// kGemm panels: as many rows as fit 4 MiB per panel pair, at least 256 per thread (patch_embed_cpu.cpp).
int64_t block_rows(int64_t threads, int64_t panel_row_bytes) {
  return std::max(threads * 256, (int64_t{4} << 20) / std::max<int64_t>(panel_row_bytes, 1));
}

template <typename scalar_t, typename video_t>
void forward_impl(const CallPlan& plan, const at::Tensor& video, const at::Tensor& weight2d,
                  const at::Tensor& motion_weight2d, const at::Tensor& table,
                  const SmifParams<at::opmath_type<scalar_t>>& p, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  using gemm_t = std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, scalar_t, acc_t>;
  constexpr bool kCIsOut = std::is_same_v<gemm_t, scalar_t>;
  const auto& g = plan.geometry;
  const bool with_motion = motion_weight2d.defined();
  const int64_t k = g.patch_dim, e = g.embed_dim;
  const auto gemm_dtype = c10::CppTypeToScalarType<gemm_t>::value;
  const at::Tensor weight_t = weight2d.to(gemm_dtype).t();  // (K, E) views; fp32 copies for fp16
  const at::Tensor motion_t = with_motion ? motion_weight2d.to(gemm_dtype).t() : at::Tensor();
  const int64_t total = g.batch * g.steps * g.tokens_per_step;
  const int64_t threads = at::get_num_threads();
  const int64_t target = block_rows(threads, (with_motion ? 2 : 1) * k * int64_t(sizeof(gemm_t)));
  const int64_t num_blocks = std::max<int64_t>(1, (total + target - 1) / target);
  const int64_t max_rows = (total + num_blocks - 1) / num_blocks;
  const auto gemm_options = weight2d.options().dtype(gemm_dtype);
  at::Tensor frame_panel = at::empty({max_rows, k}, gemm_options);
  at::Tensor motion_panel = with_motion ? at::empty({max_rows, k}, gemm_options) : at::Tensor();
  at::Tensor c_buffer = kCIsOut ? at::Tensor() : at::empty({max_rows, e}, gemm_options);
  at::Tensor out2d = out.view({-1, e});
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  const video_t* video_ptr = video.const_data_ptr<video_t>();
  const gemm_t* table_ptr = table.defined() ? table.const_data_ptr<gemm_t>() : nullptr;
  const bool table_per_row = table.defined() && table.size(0) > 1;
  gemm_t* frame_ptr = frame_panel.mutable_data_ptr<gemm_t>();
  gemm_t* motion_ptr = with_motion ? motion_panel.mutable_data_ptr<gemm_t>() : nullptr;

  for (int64_t i = 0; i < num_blocks; ++i) {
    const int64_t row0 = total * i / num_blocks, rows = total * (i + 1) / num_blocks - row0;
    at::Tensor c_block = kCIsOut ? out2d.narrow(0, row0, rows) : c_buffer.narrow(0, 0, rows);
    gemm_t* c_ptr = c_block.mutable_data_ptr<gemm_t>();
    at::parallel_for(0, rows, 8, [&](int64_t a, int64_t b) {
      RowScratch<acc_t> scratch(g.channels * g.width);
      int64_t r = a;
      while (r < b) {
        const int64_t row = row0 + r, slot = row % g.tokens_per_step;
        gemm_t* frame_row = frame_ptr + r * k;
        gemm_t* motion_row = with_motion ? motion_ptr + r * k : nullptr;
        gemm_t* c_row = c_ptr + r * e;
        if (slot < g.cls_slots) {  // zero panel rows add exactly 0; the CLS row is written after the GEMMs
          std::fill(frame_row, frame_row + k, gemm_t(0));
          if (motion_row) std::fill(motion_row, motion_row + k, gemm_t(0));
          std::fill(c_row, c_row + e, gemm_t(0));
          ++r;
          continue;
        }
        const int64_t m0 = (row / g.tokens_per_step) * g.num_spatial + slot - g.cls_slots;  // token index
        // the run: following rows of this chunk in the same row of patches
        const int64_t count = std::min(b - r, g.grid_w - m0 % g.grid_w);
        for (int64_t n = 0; n < count; ++n) {
          gemm_t* c_n = c_row + n * e;
          if (table_ptr) {
            const gemm_t* src = table_ptr + (table_per_row ? pos_row(m0 + n, g, plan.pos_per_token) : 0) * e;
            std::copy(src, src + e, c_n);
          } else {
            std::fill(c_n, c_n + e, gemm_t(0));
          }
        }
        smif_tokens<video_t, gemm_t, acc_t>(video_ptr, g, plan.video_strides, p, m0, count, k, frame_row, motion_row,
                                            scratch);
        r += count;
      }
    });
    gemm(frame_panel.narrow(0, 0, rows), weight_t, c_block, 1.0f);  // C += [X'] @ W^T
    if (with_motion) gemm(motion_panel.narrow(0, 0, rows), motion_t, c_block, 1.0f);  // C += [S] @ W_m^T
    if constexpr (!kCIsOut) {
      scalar_t* dst = out_ptr + row0 * e;
      at::parallel_for(0, rows * e, 4096, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) dst[j] = static_cast<scalar_t>(c_ptr[j]);
      });
    }
  }
}

const std::vector<at::ScalarType>& cpu_dtypes() {
  static const std::vector<at::ScalarType> dtypes{at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  return dtypes;
}

c10::optional<at::Tensor> rows_2d(const c10::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return c10::nullopt;
  return t->reshape({-1, t->size(-1)}).contiguous();
}

}  // namespace

at::Tensor smif_forward(const at::Tensor& video, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& motion_weight, const c10::optional<at::Tensor>& bias,
                        const c10::optional<at::Tensor>& pos_embed, const c10::optional<at::Tensor>& cls_token,
                        const at::Tensor& threshold, const at::Tensor& fuse_weight, const at::Tensor& fuse_bias,
                        const at::Tensor& gate, const at::Tensor& input_scale, const at::Tensor& input_shift,
                        int64_t radius) {
  const CallPlan plan = check_forward_args(video, weight, bias, pos_embed, cls_token, cpu_dtypes());
  const auto& g = plan.geometry;
  const bool with_motion = motion_weight.has_value() && motion_weight->defined();
  TORCH_CHECK_VALUE(!with_motion || motion_weight->sizes() == weight.sizes(),
                    "motion_weight must have the weight's shape");
  TORCH_CHECK_VALUE(radius >= 0, "SMIF radius must be >= 0");
  const auto acc_type = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  for (const at::Tensor* t : {&threshold, &fuse_weight, &fuse_bias, &gate, &input_scale, &input_shift}) {
    TORCH_CHECK_TYPE(t->scalar_type() == acc_type && t->is_contiguous(), "SMIF parameters must be contiguous ",
                     acc_type);
  }
  TORCH_CHECK_VALUE(fuse_weight.numel() == 2 * g.channels * g.channels && threshold.numel() == g.channels &&
                        fuse_bias.numel() == g.channels && gate.numel() == g.channels &&
                        input_scale.numel() == g.channels && input_shift.numel() == g.channels,
                    "SMIF parameters must have C (fuse_weight C x 2C) values");
  at::Tensor out = at::empty({g.batch, g.steps, g.tokens_per_step, g.embed_dim}, weight.options());
  if (g.batch == 0) return out;
  const at::Tensor weight2d = weight_5d(weight).view({g.embed_dim, g.patch_dim});
  const at::Tensor motion2d = with_motion ? weight_5d(*motion_weight).view({g.embed_dim, g.patch_dim}) : at::Tensor();
  const auto bias_c = rows_2d(bias), pos_c = rows_2d(pos_embed), cls_c = rows_2d(cls_token);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "lsvit_smif_embed_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using gemm_t = std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, scalar_t, acc_t>;
    const auto gemm_dtype = c10::CppTypeToScalarType<gemm_t>::value;
    // C's starting rows: bias + pos in acc_t, rounded once per positional row
    at::Tensor table;
    if (pos_c.has_value()) {
      table = pos_c->to(acc_type);
      if (bias_c.has_value()) table = at::add(table, bias_c->to(acc_type));
    } else if (bias_c.has_value()) {
      table = bias_c->to(acc_type);
    }
    if (table.defined()) table = table.to(gemm_dtype).contiguous();
    const SmifParams<acc_t> params{threshold.const_data_ptr<acc_t>(),
                                   fuse_weight.const_data_ptr<acc_t>(),
                                   fuse_bias.const_data_ptr<acc_t>(),
                                   gate.const_data_ptr<acc_t>(),
                                   input_scale.const_data_ptr<acc_t>(),
                                   input_shift.const_data_ptr<acc_t>(),
                                   radius};
    if (video.scalar_type() == at::kByte) {
      forward_impl<scalar_t, uint8_t>(plan, video, weight2d, motion2d, table, params, out);
    } else {
      forward_impl<scalar_t, scalar_t>(plan, video, weight2d, motion2d, table, params, out);
    }
    if (g.cls_slots) {  // CLS rows: cls + the step's CLS positional row, in acc_t, one rounding
      at::Tensor cls_rows = cls_c->view({1, 1, g.embed_dim}).to(acc_type);
      if (pos_c.has_value()) {
        const at::Tensor pos_acc = pos_c->to(acc_type);
        cls_rows = plan.pos_per_token
                       ? at::add(cls_rows, pos_acc.view({g.steps, g.tokens_per_step, g.embed_dim}).select(1, 0))
                       : at::add(cls_rows, pos_acc.select(0, 0));
      }
      out.select(2, 0).copy_(cls_rows.expand({g.batch, g.steps, g.embed_dim}));
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(lsvit, CPU, m) { m.impl("native_smif_patch_embed_forward", &smif_forward); }

}  // namespace lsvit::cpu
