// Fused patch embedding on CPU: blocked implicit GEMM over tokens, no patch matrix.
//
// Forward, per block of rows:
//   1. write bias + pos_embed into the block's output rows (the GEMM's C; the epilogue done up front),
//   2. gather the block's tubelets from the strided video into a (rows, K) panel, casting as it goes,
//   3. C += panel @ W^T with one GEMM call (gemm_cpu.h: oneDNN where it runs, else ATen's BLAS).
// Two schedules (Schedule below): kBlocks, ~256-token blocks, one panel per worker (256 x 1536 x 4 = 1.5 MiB on
// the benchmark shape, cache-resident for the GEMM), single-threaded GEMMs; kGemm, blocks of output rows one
// after another (a 4 MiB panel), steps 1-2 over rows, one multi-threaded GEMM. Both keep their loops on the
// calling thread (serial_for below). Per block: 2 rows K E FLOPs; video bytes read once.
// Accumulation is fp32 for every dtype: bf16 runs a bf16 panel and a bf16 GEMM (oneDNN: fp32 accumulation,
// C added in fp32, one rounding); fp16 an fp32 panel, an fp32 weight copy and an fp32 C rounded once.
// bf16 on CPUs with avx512_bf16 (calls of at least 512 tokens, gemm_cpu.h) takes neither schedule: the bf16
// micro-kernel (bf16_gemm.h) with the gather writing its panel, forward_bf16_kernel and weight_grad_bf16_kernel.
//
// Backward. The same blocks: grad_weight += G_block^T @ panel into one fp32 (E, K) accumulator (kGemm) or one
// per worker summed at the end (kBlocks, fixed worker ranges): deterministic. bf16 blocks are bf16 GEMMs
// (WeightGradAccumulator).
// grad_video = scatter(G_block @ W) (tubelets tile the video, so every element is written exactly once: no
// zero fill); bias/pos/cls gradients are sums of grad_tokens (common.cpp).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/ParallelGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "../common.h"
#include "../patch_embed.h"
#include "bf16_gemm.h"
#include "gemm_cpu.h"

namespace lsvit::cpu {
namespace {

// How blocks are spread over threads. kBlocks: each worker runs whole blocks with single-threaded GEMMs (the
// workers one after another on the calling thread, serial_for); kGemm: blocks one after another, init/gather/
// scatter over rows on the calling thread, one multi-threaded GEMM per block. kGemm is the default with more than one
// thread: measured faster here for every dtype (docs/native.md), and oneDNN's GEMM inside an OpenMP worker ran ~2.5x
// slower than on its own.
//
// Tuning knobs, for csrc/bench_cpu.py and the tests: the schedule (auto, blocks, gemm) and the rows per block
// (0 = measured default). They start from LSVIT_CPU_SCHEDULE / LSVIT_CPU_BLOCK_ROWS, read once when the library
// loads, and change through torch.ops.lsvit_cpu.set_schedule / set_block_rows; no call reads the environment.
enum class Schedule { kAuto, kBlocks, kGemm };
const char* schedule_name(Schedule s) {
  return s == Schedule::kBlocks ? "blocks" : s == Schedule::kGemm ? "gemm" : "auto";
}
Schedule parse_schedule(const std::string& name) {
  if (name == "blocks") return Schedule::kBlocks;
  if (name == "gemm") return Schedule::kGemm;
  TORCH_CHECK_VALUE(name == "auto" || name.empty(), "CPU schedule must be 'auto', 'blocks' or 'gemm'; got '", name,
                    "'");
  return Schedule::kAuto;
}
std::atomic<Schedule> forced_schedule{[] {
  const char* env = std::getenv("LSVIT_CPU_SCHEDULE");
  const std::string value = env ? env : "";
  return value == "blocks" || value == "gemm" ? parse_schedule(value) : Schedule::kAuto;
}()};
std::atomic<int64_t> forced_block_rows{[] {
  const char* env = std::getenv("LSVIT_CPU_BLOCK_ROWS");
  const int64_t rows = env ? std::atoll(env) : 0;
  return rows > 0 ? rows : int64_t{0};
}()};

// Forward on one thread: kBlocks (256-row blocks, cache-resident panels) measured ~5% faster than kGemm's
// bigger blocks. Backward: kGemm for any thread count, since every bf16 block adds an (E, K) partial into the
// fp32 accumulator (1 thread, bf16, 3D benchmark shape: 19.9 ms kGemm vs 22.2 ms kBlocks for grad_weight).
Schedule schedule(int64_t threads, bool backward) {
  const Schedule forced = forced_schedule.load(std::memory_order_relaxed);
  if (forced != Schedule::kAuto) return forced;
  return threads > 1 || backward ? Schedule::kGemm : Schedule::kBlocks;
}

// Rows per block: measured on the benchmark shape (docs/native.md), unless set.
int64_t block_rows_env() { return forced_block_rows.load(std::memory_order_relaxed); }
int64_t block_rows_target() {
  const int64_t rows = block_rows_env();
  return rows > 0 ? rows : int64_t{256};
}

// The library is compiled with OpenMP (csrc_build.py), so at::parallel_for forks a thread team. Only the bf16
// micro-kernel's regions use it; the other loops over rows and blocks run as one range on the calling thread
// (ATen ops inside them single-threaded, as in a worker), exactly as in a build without OpenMP: as thread-team
// regions the kGemm schedule's per-block steps made the fp32 forward 2x slower on the loaded 2-core machine
// (docs/native.md, "Threads"). A grain size covering the whole range keeps at::parallel_for's serial branch.
template <typename F>
void serial_for(int64_t begin, int64_t end, const F& f) {
  at::parallel_for(begin, end, std::max<int64_t>(end - begin, 1), f);
}

// kGemm block rows: threads x LSVIT_CPU_BLOCK_ROWS when set, else as many rows as fit a 4 MiB panel (at least
// 256 per thread). Each block costs a few thread-team synchronisations, which on a loaded machine cost a time
// slice each (docs/native.md), so fewer, bigger blocks win; the panel stays bounded whatever the input size.
constexpr int64_t kGemmPanelBytes = int64_t{4} << 20;
int64_t gemm_block_rows(int64_t threads, int64_t patch_dim, int64_t elem_bytes) {
  if (block_rows_env() > 0) return threads * block_rows_env();
  return std::max(threads * 256, kGemmPanelBytes / (patch_dim * elem_bytes));
}

// Blocks of tokens whose output rows are contiguous: with a CLS slot a block stays inside one time step.
struct BlockPlan {
  int64_t segment_len;         // tokens per run of contiguous output rows
  int64_t blocks_per_segment;  // near-equal split of a segment
  int64_t num_blocks;
  int64_t max_rows;

  int64_t first(int64_t i) const {
    const int64_t seg = i / blocks_per_segment, j = i % blocks_per_segment;
    const int64_t base = segment_len / blocks_per_segment, extra = segment_len % blocks_per_segment;
    return seg * segment_len + j * base + std::min(j, extra);
  }
  int64_t rows(int64_t i) const {
    const int64_t j = i % blocks_per_segment;
    return segment_len / blocks_per_segment + (j < segment_len % blocks_per_segment ? 1 : 0);
  }
};

BlockPlan plan_blocks(const PatchGeometry& g, int64_t target) {
  BlockPlan p{};
  p.segment_len = g.cls_slots ? g.num_spatial : g.num_tokens;
  p.blocks_per_segment = (p.segment_len + target - 1) / target;
  p.num_blocks = (g.num_tokens / p.segment_len) * p.blocks_per_segment;
  p.max_rows = (p.segment_len + p.blocks_per_segment - 1) / p.blocks_per_segment;
  return p;
}

// One patch row of bytes: a fixed-size copy (inlined vector moves) for the common 16-pixel rows of 16- and
// 32-bit pixels, a memcpy call otherwise.
inline void copy_patch_row(void* dst, const void* src, size_t bytes) {
  if (bytes == 32) {
    std::memcpy(dst, src, 32);
  } else if (bytes == 64) {
    std::memcpy(dst, src, 64);
  } else {
    std::memcpy(dst, src, bytes);
  }
}

// panel[r, k] = video[tubelet of token first + r][k], cast to acc_t. K runs (c, dt, dh, dw): one patch row of
// pw pixels at a time, contiguous when the video's W stride is 1.
template <typename video_t, typename acc_t>
void gather_panel(const video_t* video, const PatchGeometry& g, const VideoStrides& s, int64_t first, int64_t rows,
                  acc_t* panel) {
  for (int64_t r = 0; r < rows; ++r) {
    const video_t* origin = video + tubelet_origin_offset(first + r, g, s);
    acc_t* dst = panel + r * g.patch_dim;
    for (int64_t c = 0; c < g.channels; ++c) {
      for (int64_t dt = 0; dt < g.tubelet; ++dt) {
        const video_t* plane = origin + c * s.c + dt * s.t;
        for (int64_t dh = 0; dh < g.patch_h; ++dh, dst += g.patch_w) {
          const video_t* src = plane + dh * s.h;
          if constexpr (std::is_same_v<video_t, acc_t>) {
            if (s.w == 1) {  // a plain copy: memcpy beat the element loop by 1 of 23 ms (bf16 benchmark call)
              copy_patch_row(dst, src, g.patch_w * sizeof(acc_t));
              continue;
            }
          }
          if (s.w == 1) {
            for (int64_t dw = 0; dw < g.patch_w; ++dw) dst[dw] = static_cast<acc_t>(src[dw]);
          } else {
            for (int64_t dw = 0; dw < g.patch_w; ++dw) dst[dw] = static_cast<acc_t>(src[dw * s.w]);
          }
        }
      }
    }
  }
}

// The inverse: grad_video[tubelet of token first + r][k] = panel[r, k], grad_video contiguous.
template <typename video_t, typename acc_t>
void scatter_panel(const acc_t* panel, const PatchGeometry& g, int64_t first, int64_t rows, video_t* grad_video) {
  const VideoStrides s = contiguous_strides(g);
  for (int64_t r = 0; r < rows; ++r) {
    video_t* origin = grad_video + tubelet_origin_offset(first + r, g, s);
    const acc_t* src = panel + r * g.patch_dim;
    for (int64_t c = 0; c < g.channels; ++c) {
      for (int64_t dt = 0; dt < g.tubelet; ++dt) {
        video_t* plane = origin + c * s.c + dt * s.t;
        for (int64_t dh = 0; dh < g.patch_h; ++dh, src += g.patch_w) {
          video_t* dst = plane + dh * s.h;
          for (int64_t dw = 0; dw < g.patch_w; ++dw) dst[dw] = static_cast<video_t>(src[dw]);
        }
      }
    }
  }
}

// C's starting values, bias + pos_embed, added in acc_t and rounded to C's type once per positional row (197
// rows for ViT-B/16's per-slot table) instead of once per token: C rows are then plain copies. Rounding every
// token's row through scalar bf16 conversions took 9 of the 28 ms of a bf16 call (docs/native.md).
// Undefined when there is neither bias nor pos (C starts at zero); one row when there is only a bias.
template <typename scalar_t, typename c_t>
at::Tensor c_row_table(const scalar_t* bias, const c10::optional<at::Tensor>& pos, int64_t e,
                       const at::TensorOptions& c_options) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool has_pos = pos.has_value() && pos->defined();
  if (!bias && !has_pos) return at::Tensor();
  const int64_t rows = has_pos ? pos->size(0) : 1;
  at::Tensor table = at::empty({rows, e}, c_options);
  c_t* dst = table.mutable_data_ptr<c_t>();
  const scalar_t* pos_ptr = has_pos ? pos->const_data_ptr<scalar_t>() : nullptr;
  serial_for(0, rows, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < e; ++j) {
        acc_t v = bias ? static_cast<acc_t>(bias[j]) : acc_t(0);
        if (pos_ptr) v += static_cast<acc_t>(pos_ptr[r * e + j]);
        dst[r * e + j] = static_cast<c_t>(v);
      }
    }
  });
  return table;
}

// C rows of a block before the GEMM: each token's row of the table (zeros without one).
template <typename c_t>
void init_block(const CallPlan& plan, const c_t* table, bool per_pos_row, int64_t first, int64_t rows, c_t* block) {
  const auto& g = plan.geometry;
  const int64_t e = g.embed_dim;
  for (int64_t r = 0; r < rows; ++r) {
    c_t* dst = block + r * e;
    if (!table) {
      std::fill(dst, dst + e, c_t(0));
      continue;
    }
    const c_t* src = table + (per_pos_row ? pos_row(first + r, g, plan.pos_per_token) : 0) * e;
    std::copy(src, src + e, dst);
  }
}

// kGemm blocks are ranges of output rows, CLS rows included, so that a block can span time steps and C is
// one contiguous run of output rows. Rows [r0, r1): the panel row and (when c is given) the C row of each;
// a CLS row gets a zero panel row (it adds exactly 0 to C and to grad_weight) and a zero C row (write_cls_rows
// overwrites it after the GEMM). panel and c point at row r0's rows.
template <typename video_t, typename gemm_t>
void prepare_rows(const CallPlan& plan, const video_t* video, const gemm_t* table, bool per_pos_row, int64_t r0,
                  int64_t r1, gemm_t* panel, gemm_t* c) {
  const auto& g = plan.geometry;
  for (int64_t r = r0; r < r1; ++r) {
    gemm_t* p = panel + (r - r0) * g.patch_dim;
    gemm_t* c_row = c ? c + (r - r0) * g.embed_dim : nullptr;
    const int64_t slot = r % g.tokens_per_step;
    if (slot < g.cls_slots) {
      std::fill(p, p + g.patch_dim, gemm_t(0));
      if (c_row) std::fill(c_row, c_row + g.embed_dim, gemm_t(0));
      continue;
    }
    const int64_t m = (r / g.tokens_per_step) * g.num_spatial + slot - g.cls_slots;  // token index
    if (c_row) init_block<gemm_t>(plan, table, per_pos_row, m, 1, c_row);
    gather_panel<video_t, gemm_t>(video, g, plan.video_strides, m, 1, p);
  }
}

// Near-equal ranges of output rows, at most target rows each.
struct RowPlan {
  int64_t total, num_blocks, max_rows;
  int64_t begin(int64_t i) const { return total * i / num_blocks; }
};
RowPlan plan_rows(const PatchGeometry& g, int64_t target) {
  RowPlan p{};
  p.total = g.batch * g.steps * g.tokens_per_step;
  p.num_blocks = std::max<int64_t>(1, (p.total + target - 1) / target);
  p.max_rows = (p.total + p.num_blocks - 1) / p.num_blocks;
  return p;
}

template <typename scalar_t>
void write_cls_rows(const CallPlan& plan, const scalar_t* cls, const scalar_t* pos, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto& g = plan.geometry;
  const int64_t e = g.embed_dim;
  for (int64_t bs = 0; bs < g.batch * g.steps; ++bs) {
    scalar_t* dst = out + bs * g.tokens_per_step * e;
    const scalar_t* pos_row_ptr = pos ? pos + cls_pos_row(bs % g.steps, g, plan.pos_per_token) * e : nullptr;
    for (int64_t j = 0; j < e; ++j) {
      acc_t v = static_cast<acc_t>(cls[j]);
      if (pos_row_ptr) v += static_cast<acc_t>(pos_row_ptr[j]);
      dst[j] = static_cast<scalar_t>(v);
    }
  }
}

const void* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? t->const_data_ptr() : nullptr;
}

// Runs of columns [col0, col1) of a tubelet that are contiguous in the video (a patch row when its W stride is
// 1), each (first column, length), cut where a column is a multiple of cut.
std::vector<std::pair<int64_t, int64_t>> column_runs(const std::vector<int64_t>& k_off, int64_t col0, int64_t col1,
                                                     int64_t cut) {
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (int64_t k = col0; k < col1; ++k) {
    if (!runs.empty() && k % cut != 0 && k_off[k] == k_off[k - 1] + 1) {
      ++runs.back().second;
    } else {
      runs.emplace_back(k, 1);
    }
  }
  return runs;
}

std::vector<int64_t> column_offsets(const PatchGeometry& g, const VideoStrides& s) {
  std::vector<int64_t> k_off(g.patch_dim);  // video offset of each column inside a tubelet
  for (int64_t k = 0; k < g.patch_dim; ++k) k_off[k] = k_offset(k, g, s);
  return k_off;
}

// Tokens per block of the bf16 micro-kernel path: a 384 KiB panel at K = 1536, which with one packed weight
// block (147 KiB) stays in a 1 MiB L2 (docs/native.md, "bf16 micro-kernel").
constexpr int64_t kBf16KernelBlockRows = 128;

// bf16 forward on the bf16 micro-kernel (bf16_gemm.h). The weight is packed once per call; workers then pull
// blocks of tokens from a shared counter, gather each block's tubelets straight into the kernel's A panel
// (rows of padded_k bf16) and multiply, bias + pos (an fp32 table) added to the fp32 sums before the one
// rounding into the tokens' output rows. CLS rows are left to the caller.
template <typename video_t>
void forward_bf16_kernel(const CallPlan& plan, const video_t* video_ptr, const at::Tensor& weight2d,
                         const at::BFloat16* bias_ptr, const c10::optional<at::Tensor>& pos, at::BFloat16* out_ptr) {
  const auto& g = plan.geometry;
  const int64_t n = g.embed_dim, k = g.patch_dim, kp = bf16_gemm::padded_k(k);
  const at::Tensor w = weight2d.contiguous();
  at::Tensor packed = at::empty({bf16_gemm::packed_weight_elems(n, k)}, weight2d.options());
  const auto* w_ptr = reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::BFloat16>());
  auto* packed_ptr = reinterpret_cast<uint16_t*>(packed.mutable_data_ptr<at::BFloat16>());
  at::Tensor table;
  {
    c10::ParallelGuard serial_table(true);  // ~0.1 ms: not worth a thread-team region (see serial())
    table = c_row_table<at::BFloat16, float>(bias_ptr, pos, n, weight2d.options().dtype(at::kFloat));
  }
  const float* table_ptr = table.defined() ? table.const_data_ptr<float>() : nullptr;
  const bool per_pos_row = pos.has_value() && pos->defined();
  const int64_t block = block_rows_env() > 0 ? block_rows_env() : kBf16KernelBlockRows;
  const int64_t num_blocks = (g.num_tokens + block - 1) / block;
  const std::vector<int64_t> k_off = column_offsets(g, plan.video_strides);
  const auto runs = column_runs(k_off, 0, k, k);
  std::atomic<int64_t> next_block{0}, next_pack{0}, packed_blocks{0};
  const int64_t pack_blocks = bf16_gemm::n_blocks(n);
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), num_blocks));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    // The weight is packed inside the same region: workers take weight blocks from a counter, then wait until
    // every block is packed. A worker that starts late finds the packing done instead of the others waiting for
    // it at the end of a second region (on a loaded machine each region end may cost a time slice).
    for (int64_t nb = next_pack++; nb < pack_blocks; nb = next_pack++) {
      bf16_gemm::pack_weight(w_ptr, n, k, k, nb, nb + 1, packed_ptr);
      packed_blocks.fetch_add(1, std::memory_order_release);
    }
    while (packed_blocks.load(std::memory_order_acquire) < pack_blocks) std::this_thread::yield();
    at::Tensor panel = at::empty({block, kp}, weight2d.options());
    at::BFloat16* panel_ptr = panel.mutable_data_ptr<at::BFloat16>();
    std::vector<const float*> init_rows(block);
    std::vector<uint16_t*> out_rows(block);
    std::vector<const video_t*> origins(block);
    for (int64_t i = next_block++; i < num_blocks; i = next_block++) {
      const int64_t m0 = i * block, rows = std::min(block, g.num_tokens - m0);
      for (int64_t r = 0; r < rows; ++r) {
        origins[r] = video_ptr + tubelet_origin_offset(m0 + r, g, plan.video_strides);
      }
      // Run by run, every token of the block: consecutive tokens read neighbouring tubelets (see
      // weight_grad_bf16_kernel).
      for (const auto& [k0, len] : runs) {
        at::BFloat16* dst = panel_ptr + k0;
        for (int64_t r = 0; r < rows; ++r, dst += kp) {
          const video_t* src = origins[r] + k_off[k0];
          if constexpr (std::is_same_v<video_t, at::BFloat16>) {
            std::memcpy(dst, src, len * sizeof(at::BFloat16));
          } else {
            for (int64_t j = 0; j < len; ++j) dst[j] = static_cast<at::BFloat16>(static_cast<float>(src[j]));
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t m = m0 + r;
        if (kp != k) panel_ptr[r * kp + k] = at::BFloat16(0.0f);  // odd K: rows padded with one zero
        init_rows[r] = table_ptr ? table_ptr + (per_pos_row ? pos_row(m, g, plan.pos_per_token) : 0) * n : nullptr;
        out_rows[r] = reinterpret_cast<uint16_t*>(out_ptr + output_row(m, g) * n);
      }
      bf16_gemm::gemm_rows(reinterpret_cast<const uint16_t*>(panel_ptr), rows, kp, packed_ptr, n, init_rows.data(),
                           out_rows.data());
    }
  });
}

template <typename scalar_t, typename video_t>
void forward_impl(const CallPlan& plan, const at::Tensor& video, const at::Tensor& weight2d,
                  const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& pos,
                  const c10::optional<at::Tensor>& cls, at::Tensor& out) {
  // bf16: a bf16 panel and a bf16 GEMM straight into the output rows (oneDNN's avx512_bf16 / AMX kernels,
  // which accumulate in fp32 and add C = bf16(bias + pos) before the one rounding): half the panel bytes and
  // ~2.5x the GEMM rate of the fp32 path. fp16 (no native fp16 GEMM on AVX-512 CPUs without avx512_fp16) and
  // fp32/fp64 use gemm_t = the accumulation type.
  using acc_t = at::opmath_type<scalar_t>;
  using gemm_t = std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, scalar_t, acc_t>;
  constexpr bool kCIsOut = std::is_same_v<gemm_t, scalar_t>;
  const auto& g = plan.geometry;
  const int64_t threads = at::get_num_threads();
  const Schedule sched = schedule(threads, /*backward=*/false);
  const BlockPlan blocks = plan_blocks(g, block_rows_target());
  const auto gemm_options = weight2d.options().dtype(c10::CppTypeToScalarType<gemm_t>::value);
  const at::Tensor weight_t = weight2d.to(gemm_options.dtype()).t();  // (K, E) view; an fp32 copy for fp16
  const video_t* video_ptr = video.const_data_ptr<video_t>();
  const auto* bias_ptr = static_cast<const scalar_t*>(data_or_null(bias));
  const auto* pos_ptr = static_cast<const scalar_t*>(data_or_null(pos));
  at::Tensor out2d = out.view({-1, g.embed_dim});  // (B T' (S + N), E)
  scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    if (use_bf16_kernel(g.num_tokens, /*weight_grad=*/false)) {
      forward_bf16_kernel<video_t>(plan, video_ptr, weight2d, bias_ptr, pos, out_ptr);
      if (g.cls_slots) write_cls_rows<scalar_t>(plan, cls->const_data_ptr<scalar_t>(), pos_ptr, out_ptr);
      return;
    }
  }
  const at::Tensor table = c_row_table<scalar_t, gemm_t>(bias_ptr, pos, g.embed_dim, gemm_options);
  const gemm_t* table_ptr = table.defined() ? table.const_data_ptr<gemm_t>() : nullptr;
  const bool per_pos_row = pos_ptr != nullptr;

  if (sched == Schedule::kGemm) {
    const RowPlan rp = plan_rows(g, gemm_block_rows(threads, g.patch_dim, sizeof(gemm_t)));
    at::Tensor panel = at::empty({rp.max_rows, g.patch_dim}, gemm_options);
    at::Tensor c_buffer = kCIsOut ? at::Tensor() : at::empty({rp.max_rows, g.embed_dim}, gemm_options);
    gemm_t* panel_ptr = panel.mutable_data_ptr<gemm_t>();
    for (int64_t i = 0; i < rp.num_blocks; ++i) {
      const int64_t row0 = rp.begin(i), rows = rp.begin(i + 1) - row0;
      at::Tensor c_block = kCIsOut ? out2d.narrow(0, row0, rows) : c_buffer.narrow(0, 0, rows);
      gemm_t* c_ptr = c_block.mutable_data_ptr<gemm_t>();
      serial_for(0, rows, [&](int64_t a, int64_t b) {
        prepare_rows<video_t, gemm_t>(plan, video_ptr, table_ptr, per_pos_row, row0 + a, row0 + b,
                                      panel_ptr + a * g.patch_dim, c_ptr + a * g.embed_dim);
      });
      gemm(panel.narrow(0, 0, rows), weight_t, c_block, 1.0f);  // multi-threaded GEMM
      if constexpr (!kCIsOut) {
        scalar_t* dst = out_ptr + row0 * g.embed_dim;
        serial_for(0, rows * g.embed_dim, [&](int64_t j0, int64_t j1) {
          for (int64_t j = j0; j < j1; ++j) dst[j] = static_cast<scalar_t>(c_ptr[j]);
        });
      }
    }
  } else {
    // Workers take blocks from a shared counter rather than fixed ranges: on a loaded machine a descheduled
    // thread then delays one block, not half the work (the blocks are independent, so the order is free).
    std::atomic<int64_t> next_block{0};
    const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks.num_blocks));
    // The workers call ATen ops (the GEMM, adds): they run in the caller's thread-local state, as the calling
    // thread does (below autograd: an op with an out= argument refuses tensors that require grad otherwise).
    const at::ThreadLocalState state;
    serial_for(0, workers, [&](int64_t, int64_t) {
      at::ThreadLocalStateGuard caller_state(state);  // the caller's dispatch state (autograd off)
      at::Tensor panel = at::empty({blocks.max_rows, g.patch_dim}, gemm_options);
      at::Tensor c_buffer = kCIsOut ? at::Tensor() : at::empty({blocks.max_rows, g.embed_dim}, gemm_options);
      for (int64_t i = next_block++; i < blocks.num_blocks; i = next_block++) {
        const int64_t first = blocks.first(i), rows = blocks.rows(i), row0 = output_row(first, g);
        at::Tensor c_block = kCIsOut ? out2d.narrow(0, row0, rows) : c_buffer.narrow(0, 0, rows);
        gemm_t* c_ptr = c_block.mutable_data_ptr<gemm_t>();
        init_block<gemm_t>(plan, table_ptr, per_pos_row, first, rows, c_ptr);
        gather_panel<video_t, gemm_t>(video_ptr, g, plan.video_strides, first, rows, panel.mutable_data_ptr<gemm_t>());
        gemm(panel.narrow(0, 0, rows), weight_t, c_block, 1.0f);  // C += panel @ W^T
        if constexpr (!kCIsOut) {
          scalar_t* dst = out_ptr + row0 * g.embed_dim;
          for (int64_t j = 0; j < rows * g.embed_dim; ++j) dst[j] = static_cast<scalar_t>(c_ptr[j]);
        }
      }
    });
  }
  if (g.cls_slots) {
    write_cls_rows<scalar_t>(plan, cls->const_data_ptr<scalar_t>(), pos_ptr, out_ptr);
  }
}

// Runs f with ATen's element-wise ops single-threaded (as inside at::parallel_for). For the (E, K) adds and
// casts between GEMMs: ~0.3 ms each on one core, while a thread-team region costs a scheduler time slice
// (4-8 ms here) whenever the other core is taken by another job; at 2 threads on a loaded machine the bf16
// grad_weight of the benchmark shape measured 72 ms with them parallel, against 16 ms for torch.mm's.
template <typename F>
void serial(F&& f) {
  c10::ParallelGuard guard(true);
  f();
}

// grad_weight's per-block GEMM and its fp32 (fp64) accumulator. bf16: each block's G^T @ panel is a bf16 GEMM
// (fp32 accumulation inside, one rounding of the block's sum) added into the fp32 accumulator, so the 16-bit
// operands run at the bf16 GEMM rate (4x the fp32 rate here) instead of being upcast to an fp32 GEMM; with one
// block that is exactly one rounding, as torch's own bf16 grad_weight. Other dtypes accumulate in the GEMM
// (beta = 1) straight into the fp32/fp64 accumulator.
template <typename scalar_t, typename gemm_t>
struct WeightGradAccumulator {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kRoundedBlocks = !std::is_same_v<gemm_t, acc_t>;
  at::Tensor acc, block;  // acc: (E, K) acc_t; block: (E, K) gemm_t when kRoundedBlocks
  int64_t blocks = 0;

  WeightGradAccumulator(int64_t e, int64_t k, const at::TensorOptions& acc_options,
                        const at::TensorOptions& gemm_options) {
    acc = kRoundedBlocks ? at::empty({e, k}, acc_options) : at::zeros({e, k}, acc_options);
    if (kRoundedBlocks) block = at::empty({e, k}, gemm_options);
  }
  // acc += g^T @ panel; g (rows, E) and panel (rows, K) in gemm_t.
  void add(const at::Tensor& g, const at::Tensor& panel) {
    if (!kRoundedBlocks) {
      gemm(g.t(), panel, acc, 1.0f);
    } else {
      if (blocks == 1) serial([&] { acc.copy_(block); });  // the first block's sum, kept until a second comes
      gemm(g.t(), panel, block, 0.0f);
      if (blocks >= 1) serial([&] { acc.add_(block); });
    }
    ++blocks;
  }
  // The sum in acc_t.
  const at::Tensor& sum() {
    if (kRoundedBlocks && blocks == 1) {
      serial([&] { acc.copy_(block); });
      blocks = 2;  // acc holds the sum from here on
    }
    return acc;
  }
  // The result in the weight's dtype.
  at::Tensor result(at::ScalarType dtype) {
    if (kRoundedBlocks && blocks == 1) return block;  // the one GEMM's rounding, nothing else
    if (std::is_same_v<acc_t, scalar_t>) return acc;
    at::Tensor out;
    serial([&] { out = acc.to(dtype); });
    return out;
  }
};

// Token pairs per chunk of the bf16 micro-kernel's grad_weight: the chunk's G pairs (E x 128 pairs x 4 B = 384
// KiB at E = 768) stay in L2 and one packed panel block (128 pairs x 48 columns x 4 B = 24 KiB) in L1.
constexpr int64_t kBf16KernelWeightGradPairs = 128;

// bf16 grad_weight[e, k] = sum_m G[m, e] P[m, k] on the bf16 micro-kernel (bf16_gemm.h): bf16 products, fp32
// accumulation over all tokens, one rounding at the end. The reduction runs over token pairs (m, m + 1): the
// gather writes the two tubelets of a pair interleaved, column by column, straight into the packed-B layout
// (block of kNr columns, pair, column, 2), and the pair's two grad_tokens rows are interleaved into strips of
// kMr rows (strip, pair, row, 2), so that a micro-tile's A operand is one contiguous run. Threads split the
// tokens: worker w takes a contiguous range of chunks (every column block) into its own fp32 (E, K)
// accumulator; a second region sums the accumulators row by row in worker order and rounds once, so the result
// depends on the thread count only, not on scheduling. (Splitting the columns instead, each worker walking every
// token, repeated the grad_tokens interleave per worker and was slower than oneDNN at 2 threads.) An odd last
// token is paired with zeros. Returns the (E, K) gradient in bf16.
template <typename video_t>
at::Tensor weight_grad_bf16_kernel(const CallPlan& plan, const video_t* video, const at::Tensor& grad2d) {
  const auto& g = plan.geometry;
  const int64_t e_dim = g.embed_dim, k_dim = g.patch_dim, tokens = g.num_tokens;
  const auto bf16_options = grad2d.options().dtype(at::kBFloat16);
  at::Tensor result = at::empty({e_dim, k_dim}, bf16_options);
  const int64_t total_pairs = (tokens + 1) / 2;
  if (total_pairs == 0) return result.zero_();
  const std::vector<int64_t> k_off = column_offsets(g, plan.video_strides);
  const int64_t chunk_pairs = block_rows_env() > 0 ? (block_rows_env() + 1) / 2 : kBf16KernelWeightGradPairs;
  const int64_t chunks = (total_pairs + chunk_pairs - 1) / chunk_pairs;
  const int64_t col_blocks = bf16_gemm::n_blocks(k_dim);
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), chunks));
  const auto* grad_ptr = reinterpret_cast<const uint16_t*>(grad2d.const_data_ptr<at::BFloat16>());
  at::BFloat16* result_ptr = result.mutable_data_ptr<at::BFloat16>();
  at::Tensor acc = at::empty({workers, e_dim, k_dim}, grad2d.options().dtype(at::kFloat));  // one per worker
  float* acc_base = acc.mutable_data_ptr<float>();
  const auto runs = column_runs(k_off, 0, k_dim, bf16_gemm::kNr);  // never crossing a block
  constexpr int64_t kNr = bf16_gemm::kNr;

  at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
    at::Tensor g_pairs =
        at::empty({(e_dim + bf16_gemm::kMr - 1) / bf16_gemm::kMr, chunk_pairs, bf16_gemm::kMr, 2}, bf16_options);
    at::Tensor panel = at::zeros({col_blocks, chunk_pairs, kNr, 2}, bf16_options);  // columns past K stay 0
    auto* gp = reinterpret_cast<uint16_t*>(g_pairs.mutable_data_ptr<at::BFloat16>());
    auto* bp = reinterpret_cast<uint16_t*>(panel.mutable_data_ptr<at::BFloat16>());
    std::vector<float*> out_rows(e_dim);
    std::vector<const float*> no_init(e_dim, nullptr);
    std::vector<const video_t*> origins(2 * chunk_pairs);  // the chunk's tubelets (null: past the last token)
    for (int64_t w = w0; w < w1; ++w) {
      for (int64_t e = 0; e < e_dim; ++e) out_rows[e] = acc_base + (w * e_dim + e) * k_dim;
      const std::vector<const float*> accumulate(out_rows.begin(), out_rows.end());
      const int64_t c_begin = chunks * w / workers, c_end = chunks * (w + 1) / workers;
      for (int64_t c = c_begin; c < c_end; ++c) {
        const int64_t p0 = c * chunk_pairs, pairs = std::min(chunk_pairs, total_pairs - p0);
        for (int64_t p = 0; p < pairs; ++p) {
          const int64_t m0 = 2 * (p0 + p), m1 = m0 + 1;
          const bool second = m1 < tokens;
          bf16_gemm::interleave_strips(grad_ptr + output_row(m0, g) * e_dim,
                                       second ? grad_ptr + output_row(m1, g) * e_dim : nullptr, e_dim, pairs,
                                       gp + p * bf16_gemm::kMr * 2);
          origins[2 * p] = video + tubelet_origin_offset(m0, g, plan.video_strides);
          origins[2 * p + 1] = second ? video + tubelet_origin_offset(m1, g, plan.video_strides) : nullptr;
        }
        // Run by run, every pair of the chunk: consecutive pairs read neighbouring tubelets (the next bytes of the
        // same video rows) and write consecutive panel rows, two streams the prefetcher follows. Pair by pair,
        // run by run (96 rows of 6 planes, 32 panel blocks apart) took 5x as long (0.8 vs 4.2 ms CPU for the 3D
        // benchmark video at E = 16, where the gather is all the work).
        for (const auto& [k, len] : runs) {
          uint16_t* dst = bp + ((k / kNr) * pairs * kNr + k % kNr) * 2;
          for (int64_t p = 0; p < pairs; ++p, dst += kNr * 2) {
            const video_t* v0 = origins[2 * p] + k_off[k];
            const video_t* v1 = origins[2 * p + 1] ? origins[2 * p + 1] + k_off[k] : nullptr;
            if constexpr (std::is_same_v<video_t, at::BFloat16>) {
              bf16_gemm::interleave_pairs(reinterpret_cast<const uint16_t*>(v0), reinterpret_cast<const uint16_t*>(v1),
                                          len, dst);
            } else {
              for (int64_t i = 0; i < len; ++i) {
                dst[2 * i] = at::BFloat16(static_cast<float>(v0[i])).x;
                dst[2 * i + 1] = v1 ? at::BFloat16(static_cast<float>(v1[i])).x : uint16_t{0};
              }
            }
          }
        }
        bf16_gemm::gemm_pairs_f32(gp, e_dim, pairs, bp, k_dim, 0, col_blocks,
                                  c == c_begin ? no_init.data() : accumulate.data(), out_rows.data());
      }
    }
  });
  // The workers' sums, added in worker order, and the one rounding.
  at::parallel_for(0, e_dim, 16, [&](int64_t e0, int64_t e1) {
    std::vector<float> row(k_dim);
    for (int64_t e = e0; e < e1; ++e) {
      std::copy_n(acc_base + e * k_dim, k_dim, row.data());
      for (int64_t w = 1; w < workers; ++w) {
        const float* part = acc_base + (w * e_dim + e) * k_dim;
        for (int64_t j = 0; j < k_dim; ++j) row[j] += part[j];
      }
      bf16_gemm::round_to_bf16(row.data(), k_dim, reinterpret_cast<uint16_t*>(result_ptr + e * k_dim));
    }
  });
  return result;
}

template <typename scalar_t, typename video_t>
void backward_impl(const CallPlan& plan, const at::Tensor& grad_tokens, const at::Tensor& video,
                   const at::Tensor& weight2d, bool need_video, bool need_weight, at::Tensor& grad_video,
                   at::Tensor& grad_weight2d) {
  // Operands in gemm_t (see forward_impl): bf16 stays bf16 (panel, grad_tokens and weight; fp32 accumulation
  // inside the GEMM), fp16 runs in fp32 (a copy of each grad_tokens block), fp32/fp64 as they are.
  // grad_video: one dot product over E per element, one rounding.
  using acc_t = at::opmath_type<scalar_t>;
  using gemm_t = std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, scalar_t, acc_t>;
  using Accumulator = WeightGradAccumulator<scalar_t, gemm_t>;
  constexpr bool kGradNative = std::is_same_v<gemm_t, scalar_t>;
  const auto& g = plan.geometry;
  const int64_t threads = at::get_num_threads();
  const Schedule sched = schedule(threads, /*backward=*/true);
  const BlockPlan blocks = plan_blocks(g, block_rows_target());
  const auto acc_options = weight2d.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const auto gemm_options = weight2d.options().dtype(c10::CppTypeToScalarType<gemm_t>::value);
  const at::Tensor weight_gemm = need_video ? weight2d.to(gemm_options.dtype()) : at::Tensor();  // (E, K)
  const at::Tensor grad2d = grad_tokens.view({-1, g.embed_dim});  // (B T' (S + N), E)
  const video_t* video_ptr = video.const_data_ptr<video_t>();
  video_t* grad_video_ptr = need_video ? grad_video.mutable_data_ptr<video_t>() : nullptr;
  const at::ScalarType dtype = weight2d.scalar_type();
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    if (need_weight && use_bf16_kernel(g.num_tokens, /*weight_grad=*/true)) {
      grad_weight2d = weight_grad_bf16_kernel<video_t>(plan, video_ptr, grad2d);
      need_weight = false;
      if (!need_video) return;
    }
  }

  if (sched == Schedule::kGemm) {  // one block of output rows after another, multi-threaded GEMMs
    const RowPlan rp = plan_rows(g, gemm_block_rows(threads, g.patch_dim, sizeof(gemm_t)));
    // One panel serves both GEMMs of a block: grad_weight reads the gathered tubelets, then grad_video writes
    // its rows over them.
    at::Tensor panel = at::empty({rp.max_rows, g.patch_dim}, gemm_options);
    at::Tensor g_buffer = kGradNative ? at::Tensor() : at::empty({rp.max_rows, g.embed_dim}, gemm_options);
    c10::optional<Accumulator> grad_w;
    if (need_weight) grad_w.emplace(g.embed_dim, g.patch_dim, acc_options, gemm_options);
    for (int64_t i = 0; i < rp.num_blocks; ++i) {
      const int64_t row0 = rp.begin(i), rows = rp.begin(i + 1) - row0;
      const at::Tensor g_block = grad2d.narrow(0, row0, rows);  // (rows, E), CLS rows included
      const at::Tensor g_gemm = kGradNative ? g_block : g_buffer.narrow(0, 0, rows).copy_(g_block);
      at::Tensor p = panel.narrow(0, 0, rows);
      if (need_weight) {
        gemm_t* p_ptr = p.mutable_data_ptr<gemm_t>();
        serial_for(0, rows, [&](int64_t a, int64_t b) {
          prepare_rows<video_t, gemm_t>(plan, video_ptr, nullptr, false, row0 + a, row0 + b, p_ptr + a * g.patch_dim,
                                        nullptr);
        });
        grad_w->add(g_gemm, p);  // CLS rows add exactly 0
      }
      if (need_video) {
        gemm(g_gemm, weight_gemm, p, 0.0f);  // (rows, K) = (rows, E) @ (E, K)
        const gemm_t* src = p.const_data_ptr<gemm_t>();
        serial_for(0, rows, [&](int64_t a, int64_t b) {
          for (int64_t r = row0 + a; r < row0 + b; ++r) {
            const int64_t slot = r % g.tokens_per_step;
            if (slot < g.cls_slots) continue;
            const int64_t m = (r / g.tokens_per_step) * g.num_spatial + slot - g.cls_slots;
            scatter_panel<video_t, gemm_t>(src + (r - row0) * g.patch_dim, g, m, 1, grad_video_ptr);
          }
        });
      }
    }
    if (need_weight) grad_weight2d = grad_w->result(dtype);
    return;
  }

  // kBlocks: fixed worker ranges, one grad_weight accumulator each, single-threaded GEMMs (the sum does not
  // depend on scheduling).
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, blocks.num_blocks));
  std::vector<c10::optional<Accumulator>> partials(workers);
  auto work = [&](int64_t w) {
    at::Tensor panel = at::empty({blocks.max_rows, g.patch_dim}, gemm_options);
    at::Tensor g_buffer = kGradNative ? at::Tensor() : at::empty({blocks.max_rows, g.embed_dim}, gemm_options);
    if (need_weight) partials[w].emplace(g.embed_dim, g.patch_dim, acc_options, gemm_options);
    const int64_t lo = blocks.num_blocks * w / workers, hi = blocks.num_blocks * (w + 1) / workers;
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t first = blocks.first(i), rows = blocks.rows(i);
      const at::Tensor g_block = grad2d.narrow(0, output_row(first, g), rows);  // (rows, E), contiguous
      const at::Tensor g_gemm = kGradNative ? g_block : g_buffer.narrow(0, 0, rows).copy_(g_block);
      at::Tensor p = panel.narrow(0, 0, rows);
      if (need_weight) {
        gather_panel<video_t, gemm_t>(video_ptr, g, plan.video_strides, first, rows, p.mutable_data_ptr<gemm_t>());
        partials[w]->add(g_gemm, p);  // (E, K) += (E, rows) @ (rows, K)
      }
      if (need_video) {
        gemm(g_gemm, weight_gemm, p, 0.0f);  // (rows, K) = (rows, E) @ (E, K)
        scatter_panel<video_t, gemm_t>(p.const_data_ptr<gemm_t>(), g, first, rows, grad_video_ptr);
      }
    }
  };
  // The workers call ATen ops (the GEMM, adds): they run in the caller's thread-local state, as the calling
  // thread does (below autograd: an op with an out= argument refuses tensors that require grad otherwise).
  const at::ThreadLocalState state;
  serial_for(0, workers, [&](int64_t wbegin, int64_t wend) {
    at::ThreadLocalStateGuard caller_state(state);  // the caller's dispatch state (autograd off)
    for (int64_t w = wbegin; w < wend; ++w) work(w);
  });
  if (need_weight) {
    if (workers == 1) {
      grad_weight2d = partials[0]->result(dtype);
      return;
    }
    at::Tensor total = partials[0]->sum();
    for (int64_t w = 1; w < workers; ++w) total.add_(partials[w]->sum());
    grad_weight2d = std::is_same_v<acc_t, scalar_t> ? total : total.to(dtype);
  }
}

const std::vector<at::ScalarType>& cpu_dtypes() {
  static const std::vector<at::ScalarType> dtypes{at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  return dtypes;
}

}  // namespace

at::Tensor forward(const at::Tensor& video, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& pos_embed, const c10::optional<at::Tensor>& cls_token) {
  const CallPlan plan = check_forward_args(video, weight, bias, pos_embed, cls_token, cpu_dtypes());
  const auto& g = plan.geometry;
  const at::Tensor w5 = weight_5d(weight);
  at::Tensor out = at::empty({g.batch, g.steps, g.tokens_per_step, g.embed_dim}, weight.options());
  if (g.batch == 0) return out;
  const at::Tensor weight2d = w5.view({g.embed_dim, g.patch_dim});
  auto contiguous = [](const c10::optional<at::Tensor>& t) -> c10::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return c10::nullopt;
    return t->reshape({-1, t->size(-1)}).contiguous();
  };
  const auto bias_c = contiguous(bias), pos_c = contiguous(pos_embed), cls_c = contiguous(cls_token);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "lsvit_patch_embed_cpu", [&] {
    if (video.scalar_type() == at::kByte) {
      forward_impl<scalar_t, uint8_t>(plan, video, weight2d, bias_c, pos_c, cls_c, out);
    } else {
      forward_impl<scalar_t, scalar_t>(plan, video, weight2d, bias_c, pos_c, cls_c, out);
    }
  });
  return out;
}

Grads backward(const at::Tensor& grad_tokens_in, const at::Tensor& video, const at::Tensor& weight, int64_t pos_rows,
               bool has_bias, bool has_cls, std::array<bool, 5> mask) {
  const CallPlan plan =
      check_backward_args(grad_tokens_in, video, weight, pos_rows, has_bias, has_cls, mask, cpu_dtypes());
  const auto& g = plan.geometry;
  const at::Tensor grad_tokens = grad_tokens_in.contiguous();
  const at::Tensor w5 = weight_5d(weight);
  Grads grads;
  at::Tensor grad_video =
      mask[0] ? at::empty({g.batch, g.frames, g.channels, g.height, g.width}, video.options()) : at::Tensor();
  at::Tensor grad_weight2d;
  if ((mask[0] || mask[1]) && g.batch > 0) {
    const at::Tensor weight2d = w5.view({g.embed_dim, g.patch_dim});
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "lsvit_patch_embed_cpu_bwd", [&] {
      if (video.scalar_type() == at::kByte) {
        backward_impl<scalar_t, uint8_t>(plan, grad_tokens, video, weight2d, false, mask[1], grad_video, grad_weight2d);
      } else {
        backward_impl<scalar_t, scalar_t>(plan, grad_tokens, video, weight2d, mask[0], mask[1], grad_video,
                                          grad_weight2d);
      }
    });
  } else if (mask[1]) {
    grad_weight2d = at::zeros({g.embed_dim, g.patch_dim}, weight.options());
  }
  std::get<0>(grads) = grad_video;
  if (mask[1]) std::get<1>(grads) = grad_weight2d.view(weight.sizes());
  token_reduction_grads(grad_tokens, plan, pos_rows, mask, grads);
  return grads;
}

TORCH_LIBRARY_FRAGMENT(lsvit_cpu, m) {
  m.def("set_schedule(str schedule) -> str", [](const std::string& name) -> std::string {
    return schedule_name(forced_schedule.exchange(parse_schedule(name)));
  });
  m.def("set_block_rows(int rows) -> int", [](int64_t rows) -> int64_t {
    TORCH_CHECK_VALUE(rows >= 0, "block rows must be >= 0 (0: the measured default); got ", rows);
    return forced_block_rows.exchange(rows);
  });
}

}  // namespace lsvit::cpu
