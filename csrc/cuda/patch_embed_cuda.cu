// Fused patch embedding on CUDA: implicit GEMM, out[m, n] = sum_k video[tubelet(m)][k] W[n, k] + bias + pos.
//
// Forward kernels (one output tile per thread block, no patch matrix in global memory):
//   * patch_embed_wmma_kernel (fp16 / bf16 weights, video in that dtype or uint8): a 64 x 64 tile of
//     (tokens x embed), K in steps of 32. Each step gathers the 64 tubelet slices from the strided video into
//     shared memory (converting uint8 on the way), stages 64 x 32 of the weight, and the 4 warps (2 x 2, 32 x 32
//     each) run 2 x 2 WMMA 16x16x16 tensor-core products accumulating in fp32. The epilogue stores the fp32
//     accumulators to shared memory and adds bias + pos while writing rows in the output's (B, T', S + N, E)
//     order (the CLS slot rows are skipped; cls_rows_kernel fills them).
//     Per tile: 2 * 64 * 64 * K FLOPs; reads 64 K video elements + 64 K weight elements; writes 64 * 64 outputs.
//   * patch_embed_fma_kernel (fp32): the same 64 x 64 tiling with 16-deep K steps and 256 threads, each owning a 4 x 4
//     register tile computed with fp32 FMAs (exact fp32, no TF32).
//   Block sizes: 64 x 64 keeps 27 KiB (wmma) / 8 KiB (fma) of static shared memory and few registers per thread,
//   so several blocks share an SM and hide the gather's latency; M = B T' N is in the thousands, so the grid
//   fills the GPU.
// Backward: bias / pos / cls gradients are ATen sums (common.cpp); grad_weight and grad_video go through
// chunks of gathered tubelets (gather_patches_kernel) and cuBLAS GEMMs (at::addmm_out / at::mm) in fp32, and
// grad_video is written by scatter_patches_kernel (tubelets tile the video: each element written once).
// Index math comes from patch_embed.h; every offset is int64_t.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../common.h"
#include "../patch_embed.h"

namespace lsvit::cuda {
namespace {

// ---- element conversions ------------------------------------------------------------------------------
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(uint8_t x) { return static_cast<float>(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// WMMA needs sm_70 for fp16 and sm_80 for bf16; the host refuses older GPUs before launching.
template <typename T>
struct WmmaSupported { static constexpr bool value = true; };
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
template <>
struct WmmaSupported<__nv_bfloat16> { static constexpr bool value = false; };
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700
template <>
struct WmmaSupported<__half> { static constexpr bool value = false; };
#endif

// Pointers and flags of one forward call.
template <typename scalar_t, typename video_t>
struct ForwardArgs {
  const video_t* video;
  const scalar_t* weight;  // (E, K) row-major
  const scalar_t* bias;    // (E,) or nullptr
  const scalar_t* pos;     // (R, E) or nullptr
  const scalar_t* cls;     // (E,) or nullptr
  scalar_t* out;           // (B T' (S + N), E)
  PatchGeometry g;
  VideoStrides s;
  bool pos_per_token;
};

constexpr int kTileM = 64;  // tokens per block
constexpr int kTileN = 64;  // embedding columns per block

// Per-row facts of a block's 64 tokens, computed once per block (the int64 divisions stay out of the K loop).
struct RowInfo {
  int64_t origin[kTileM];   // video offset of the tubelet's first pixel
  int64_t out_row[kTileM];  // row in the (B T' (S + N), E) output
  int64_t pos_row[kTileM];  // row of pos_embed
};

__device__ __forceinline__ void fill_row_info(RowInfo& info, int64_t m0, const PatchGeometry& g,
                                              const VideoStrides& s, bool pos_per_token) {
  for (int r = threadIdx.x; r < kTileM; r += blockDim.x) {
    const int64_t m = m0 + r;
    const bool valid = m < g.num_tokens;
    info.origin[r] = valid ? tubelet_origin_offset(m, g, s) : 0;
    info.out_row[r] = valid ? output_row(m, g) : 0;
    info.pos_row[r] = valid ? pos_row(m, g, pos_per_token) : 0;
  }
}

// bias[n] + pos[pos_row, n] in fp32.
template <typename scalar_t, typename video_t>
__device__ __forceinline__ float addend(const ForwardArgs<scalar_t, video_t>& a, int64_t prow, int64_t n) {
  float v = a.bias ? to_float(a.bias[n]) : 0.f;
  if (a.pos) v += to_float(a.pos[prow * a.g.embed_dim + n]);
  return v;
}

// ---- 16-bit: tensor cores ----------------------------------------------------------------------------
constexpr int kWmmaK = 32;       // K per step
constexpr int kWmmaPad = 8;      // 16-byte row padding against bank conflicts (ldm stays a multiple of 8)
constexpr int kWmmaThreads = 128;
constexpr int kCPad = 4;

template <typename scalar_t, typename video_t>
__global__ void __launch_bounds__(kWmmaThreads)
    patch_embed_wmma_kernel(const ForwardArgs<scalar_t, video_t> a) {
  if constexpr (!WmmaSupported<scalar_t>::value) {
    __trap();
  } else {
    using namespace nvcuda;
    __shared__ __align__(32) scalar_t tile_x[kTileM][kWmmaK + kWmmaPad];  // gathered tubelets (tokens x k)
    __shared__ __align__(32) scalar_t tile_w[kTileN][kWmmaK + kWmmaPad];  // weight rows (embed x k)
    __shared__ __align__(32) float tile_c[kTileM][kTileN + kCPad];        // fp32 accumulators for the epilogue
    __shared__ int64_t k_off[kWmmaK];
    __shared__ RowInfo rows;

    const PatchGeometry& g = a.g;
    const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
    const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
    const int tid = threadIdx.x, warp = tid / 32;
    const int warp_m = (warp / 2) * 32, warp_n = (warp % 2) * 32;
    fill_row_info(rows, m0, g, a.s, a.pos_per_token);

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    for (int64_t k0 = 0; k0 < g.patch_dim; k0 += kWmmaK) {
      if (tid < kWmmaK) k_off[tid] = k0 + tid < g.patch_dim ? k_offset(k0 + tid, g, a.s) : 0;
      __syncthreads();  // k_off ready (and rows, on the first step); previous step's MMAs done with the tiles
      for (int idx = tid; idx < kTileM * kWmmaK; idx += kWmmaThreads) {
        const int r = idx / kWmmaK, kk = idx % kWmmaK;
        const bool valid = m0 + r < g.num_tokens && k0 + kk < g.patch_dim;
        tile_x[r][kk] = from_float<scalar_t>(valid ? to_float(a.video[rows.origin[r] + k_off[kk]]) : 0.f);
      }
      for (int idx = tid; idx < kTileN * kWmmaK; idx += kWmmaThreads) {
        const int n = idx / kWmmaK, kk = idx % kWmmaK;
        const bool valid = n0 + n < g.embed_dim && k0 + kk < g.patch_dim;
        tile_w[n][kk] = valid ? a.weight[(n0 + n) * g.patch_dim + k0 + kk] : from_float<scalar_t>(0.f);
      }
      __syncthreads();
      for (int kk = 0; kk < kWmmaK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, scalar_t, wmma::row_major> frag_x[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, scalar_t, wmma::col_major> frag_w[2];
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(frag_x[i], &tile_x[warp_m + 16 * i][kk], kWmmaK + kWmmaPad);
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(frag_w[j], &tile_w[warp_n + 16 * j][kk], kWmmaK + kWmmaPad);
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], frag_x[i], frag_w[j], acc[i][j]);
      }
      __syncthreads();
    }

    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(&tile_c[warp_m + 16 * i][warp_n + 16 * j], acc[i][j], kTileN + kCPad,
                                wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < kTileM * kTileN; idx += kWmmaThreads) {
      const int r = idx / kTileN, c = idx % kTileN;
      const int64_t n = n0 + c;
      if (m0 + r < g.num_tokens && n < g.embed_dim) {
        a.out[rows.out_row[r] * g.embed_dim + n] = from_float<scalar_t>(tile_c[r][c] + addend(a, rows.pos_row[r], n));
      }
    }
  }
}

// ---- fp32: FMA ----------------------------------------------------------------------------------------
constexpr int kFmaK = 16;
constexpr int kFmaThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each

template <typename video_t>
__global__ void __launch_bounds__(kFmaThreads) patch_embed_fma_kernel(const ForwardArgs<float, video_t> a) {
  // k-major so a thread reads its 4 rows as one float4; the 4-float pad spreads the transposing stores over banks
  __shared__ __align__(16) float tile_x[kFmaK][kTileM + kCPad];
  __shared__ __align__(16) float tile_w[kFmaK][kTileN + kCPad];
  __shared__ int64_t k_off[kFmaK];
  __shared__ RowInfo rows;

  const PatchGeometry& g = a.g;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  fill_row_info(rows, m0, g, a.s, a.pos_per_token);

  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < g.patch_dim; k0 += kFmaK) {
    if (tid < kFmaK) k_off[tid] = k0 + tid < g.patch_dim ? k_offset(k0 + tid, g, a.s) : 0;
    __syncthreads();
    for (int idx = tid; idx < kTileM * kFmaK; idx += kFmaThreads) {
      const int r = idx / kFmaK, kk = idx % kFmaK;  // consecutive threads walk k: contiguous pixels of a patch row
      const bool valid = m0 + r < g.num_tokens && k0 + kk < g.patch_dim;
      tile_x[kk][r] = valid ? to_float(a.video[rows.origin[r] + k_off[kk]]) : 0.f;
    }
    for (int idx = tid; idx < kTileN * kFmaK; idx += kFmaThreads) {
      const int n = idx / kFmaK, kk = idx % kFmaK;
      const bool valid = n0 + n < g.embed_dim && k0 + kk < g.patch_dim;
      tile_w[kk][n] = valid ? a.weight[(n0 + n) * g.patch_dim + k0 + kk] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kFmaK; ++kk) {
      const float4 x = *reinterpret_cast<const float4*>(&tile_x[kk][ty * 4]);
      const float4 w = *reinterpret_cast<const float4*>(&tile_w[kk][tx * 4]);
      const float xs[4] = {x.x, x.y, x.z, x.w}, ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(xs[i], ws[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty * 4 + i;
    if (m0 + r >= g.num_tokens) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx * 4 + j;
      if (n < g.embed_dim) a.out[rows.out_row[r] * g.embed_dim + n] = acc[i][j] + addend(a, rows.pos_row[r], n);
    }
  }
}

// ---- CLS slots, gather / scatter for the backward ------------------------------------------------------
// One block per (b, step): out[row of its CLS slot, :] = cls + pos[cls_pos_row].
template <typename scalar_t, typename video_t>
__global__ void cls_rows_kernel(const ForwardArgs<scalar_t, video_t> a) {
  const int64_t bs = blockIdx.x;  // b * T' + step
  const int64_t prow = cls_pos_row(bs % a.g.steps, a.g, a.pos_per_token);
  scalar_t* dst = a.out + bs * a.g.tokens_per_step * a.g.embed_dim;
  for (int64_t n = threadIdx.x; n < a.g.embed_dim; n += blockDim.x) {
    float v = to_float(a.cls[n]);
    if (a.pos) v += to_float(a.pos[prow * a.g.embed_dim + n]);
    dst[n] = from_float<scalar_t>(v);
  }
}

// patches[i, k] = video[tubelet of token m0 + i][k] in fp32, for a chunk of `rows` tokens.
template <typename video_t>
__global__ void gather_patches_kernel(const video_t* video, PatchGeometry g, VideoStrides s, int64_t m0, int64_t rows,
                                      float* patches) {
  const int64_t total = rows * g.patch_dim;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / g.patch_dim, k = idx % g.patch_dim;
    patches[idx] = to_float(video[tubelet_origin_offset(m0 + i, g, s) + k_offset(k, g, s)]);
  }
}

// grad_video[tubelet of token m0 + i][k] = patches[i, k]; grad_video contiguous (B, T, C, H, W).
template <typename scalar_t>
__global__ void scatter_patches_kernel(const float* patches, PatchGeometry g, int64_t m0, int64_t rows,
                                       scalar_t* grad_video) {
  const VideoStrides s = contiguous_strides(g);
  const int64_t total = rows * g.patch_dim;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / g.patch_dim, k = idx % g.patch_dim;
    grad_video[tubelet_origin_offset(m0 + i, g, s) + k_offset(k, g, s)] = from_float<scalar_t>(patches[idx]);
  }
}

// ---- host side ----------------------------------------------------------------------------------------
const std::vector<at::ScalarType>& cuda_dtypes() {
  static const std::vector<at::ScalarType> dtypes{at::kFloat, at::kHalf, at::kBFloat16};
  return dtypes;
}

template <typename T>
const T* optional_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? reinterpret_cast<const T*>(t->const_data_ptr()) : nullptr;
}

void check_tensor_cores(at::ScalarType dtype, int device) {
  if (dtype == at::kFloat) return;
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  const int needed = dtype == at::kBFloat16 ? 8 : 7;
  TORCH_CHECK(major >= needed, "the cuda backend's ", dtype, " kernel needs tensor cores of compute capability ",
              needed, ".0 or newer; this GPU has ", major, ".x: use float32 or backend='triton'");
}

// Calls fn(T{}) with T the CUDA element type of `dtype` (float, __half, __nv_bfloat16, uint8_t when allowed).
template <bool kAllowUint8, typename Fn>
void dispatch_cuda_type(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: fn(float{}); break;
    case at::kHalf: fn(__half{}); break;
    case at::kBFloat16: fn(__nv_bfloat16{}); break;
    case at::kByte:
      if constexpr (kAllowUint8) {
        fn(uint8_t{});
        break;
      }
      [[fallthrough]];
    default: TORCH_CHECK(false, "the cuda backend does not support ", dtype, " here");
  }
}

int grid_1d(int64_t total, int threads) {
  return static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, int64_t{1} << 16));
}

template <typename scalar_t, typename video_t>
void launch_forward(const CallPlan& plan, const at::Tensor& video, const at::Tensor& weight2d,
                    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& pos,
                    const c10::optional<at::Tensor>& cls, at::Tensor& out, cudaStream_t stream) {
  ForwardArgs<scalar_t, video_t> a{reinterpret_cast<const video_t*>(video.const_data_ptr()),
                                   reinterpret_cast<const scalar_t*>(weight2d.const_data_ptr()),
                                   optional_ptr<scalar_t>(bias),
                                   optional_ptr<scalar_t>(pos),
                                   optional_ptr<scalar_t>(cls),
                                   reinterpret_cast<scalar_t*>(out.mutable_data_ptr()),
                                   plan.geometry,
                                   plan.video_strides,
                                   plan.pos_per_token};
  const auto& g = plan.geometry;
  const dim3 grid((g.num_tokens + kTileM - 1) / kTileM, (g.embed_dim + kTileN - 1) / kTileN);
  TORCH_CHECK(grid.y <= 65535, "embed_dim=", g.embed_dim, " is too large for the cuda backend's grid");
  if constexpr (std::is_same_v<scalar_t, float>) {
    patch_embed_fma_kernel<video_t><<<grid, kFmaThreads, 0, stream>>>(a);
  } else {
    patch_embed_wmma_kernel<scalar_t, video_t><<<grid, kWmmaThreads, 0, stream>>>(a);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (a.cls != nullptr) {
    cls_rows_kernel<scalar_t, video_t><<<static_cast<unsigned>(g.batch * g.steps), 256, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

const at::Tensor& check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor for the cuda backend; got ", t.device());
  return t;
}

}  // namespace

at::Tensor forward(const at::Tensor& video, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& pos_embed, const c10::optional<at::Tensor>& cls_token) {
  const CallPlan plan = check_forward_args(check_cuda(video, "video"), weight, bias, pos_embed, cls_token,
                                           cuda_dtypes());
  const auto& g = plan.geometry;
  const c10::cuda::CUDAGuard guard(video.device());
  at::Tensor out = at::empty({g.batch, g.steps, g.tokens_per_step, g.embed_dim}, weight.options());
  if (g.batch == 0) return out;
  check_tensor_cores(weight.scalar_type(), video.get_device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(video.get_device());
  const at::Tensor weight2d = weight_5d(weight).view({g.embed_dim, g.patch_dim});
  auto flat = [](const c10::optional<at::Tensor>& t) -> c10::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return c10::nullopt;
    return t->reshape({-1, t->size(-1)}).contiguous();
  };
  const auto bias_c = flat(bias), pos_c = flat(pos_embed), cls_c = flat(cls_token);
  dispatch_cuda_type<false>(weight.scalar_type(), [&](auto zero) {
    using cuda_t = decltype(zero);
    if (video.scalar_type() == at::kByte) {
      launch_forward<cuda_t, uint8_t>(plan, video, weight2d, bias_c, pos_c, cls_c, out, stream);
    } else {
      launch_forward<cuda_t, cuda_t>(plan, video, weight2d, bias_c, pos_c, cls_c, out, stream);
    }
  });
  return out;
}

Grads backward(const at::Tensor& grad_tokens_in, const at::Tensor& video, const at::Tensor& weight, int64_t pos_rows,
               bool has_bias, bool has_cls, std::array<bool, 5> mask) {
  const CallPlan plan =
      check_backward_args(grad_tokens_in, check_cuda(video, "video"), weight, pos_rows, has_cls, cuda_dtypes());
  const auto& g = plan.geometry;
  mask[2] = mask[2] && has_bias;
  mask[3] = mask[3] && pos_rows > 0;
  mask[4] = mask[4] && has_cls;
  TORCH_CHECK_TYPE(!mask[0] || video.scalar_type() != at::kByte,
                   "a uint8 video has no gradient; pass output_mask[0]=False");
  const c10::cuda::CUDAGuard guard(video.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(video.get_device());
  const at::Tensor grad_tokens = grad_tokens_in.contiguous();
  Grads grads;
  at::Tensor grad_video =
      mask[0] ? at::empty({g.batch, g.frames, g.channels, g.height, g.width}, video.options()) : at::Tensor();
  at::Tensor grad_weight32 = mask[1] ? at::zeros({g.embed_dim, g.patch_dim}, weight.options().dtype(at::kFloat))
                                     : at::Tensor();
  if ((mask[0] || mask[1]) && g.batch > 0) {
    // (M, E) fp32 gradient of the patch tokens (CLS rows dropped) and the fp32 weight (E, K).
    const at::Tensor grad_patches =
        grad_tokens.narrow(2, g.cls_slots, g.num_spatial).reshape({g.num_tokens, g.embed_dim}).to(at::kFloat);
    const at::Tensor weight32 = weight_5d(weight).view({g.embed_dim, g.patch_dim}).to(at::kFloat);
    // Chunks of at most 2^24 patch elements (64 MiB of fp32) bound the extra memory.
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(g.num_tokens, (int64_t{1} << 24) / g.patch_dim));
    at::Tensor buffer = at::empty({chunk, g.patch_dim}, weight.options().dtype(at::kFloat));
    for (int64_t m0 = 0; m0 < g.num_tokens; m0 += chunk) {
      const int64_t rows = std::min(chunk, g.num_tokens - m0);
      at::Tensor patches = buffer.narrow(0, 0, rows);
      const at::Tensor grad_chunk = grad_patches.narrow(0, m0, rows);
      const int blocks = grid_1d(rows * g.patch_dim, 256);
      if (mask[1]) {
        dispatch_cuda_type<true>(video.scalar_type(), [&](auto zero) {
          using video_t = decltype(zero);
          gather_patches_kernel<video_t><<<blocks, 256, 0, stream>>>(
              reinterpret_cast<const video_t*>(video.const_data_ptr()), g, plan.video_strides, m0, rows,
              patches.mutable_data_ptr<float>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
        at::addmm_out(grad_weight32, grad_weight32, grad_chunk.t(), patches);  // (E, K) += (E, rows) @ (rows, K)
      }
      if (mask[0]) {
        at::mm_out(patches, grad_chunk, weight32);  // (rows, K)
        dispatch_cuda_type<false>(video.scalar_type(), [&](auto zero) {
          using video_t = decltype(zero);
          scatter_patches_kernel<video_t><<<blocks, 256, 0, stream>>>(
              patches.const_data_ptr<float>(), g, m0, rows, reinterpret_cast<video_t*>(grad_video.mutable_data_ptr()));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      }
    }
  }
  std::get<0>(grads) = grad_video;
  if (mask[1]) std::get<1>(grads) = grad_weight32.to(weight.scalar_type()).view(weight.sizes());
  token_reduction_grads(grad_tokens, plan, pos_rows, mask, grads);
  return grads;
}

}  // namespace lsvit::cuda
