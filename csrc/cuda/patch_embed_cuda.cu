// Fused patch embedding on CUDA: implicit GEMM, out[m, n] = sum_k video[tubelet(m)][k] W[n, k] + bias + pos.
//
// Forward kernels (one output tile per thread block, no patch matrix in global memory):
//   * patch_embed_mma_kernel<scalar_t, video_t, kVec> (fp16 / bf16 weights, video in that dtype or uint8, sm_80+):
//     a 128 x 128 tile of (tokens x embed), 8 warps of 64 x 32, K in steps of 32 through a 3-stage shared-memory
//     ring filled with cp.async (16-byte copies of the weight; copies of kVec video elements, 16 bytes when
//     kVec = 8) and read with ldmatrix into mma.sync.m16n8k16 (fp32 accumulators). A uint8 video, or one whose
//     tubelet rows allow no copy wider than one element, is loaded into registers while the tensor cores work on
//     the current stage and converted to the weight's dtype as it is stored to shared memory, so the MMA
//     operands are always 16-bit values in shared memory.
//     The hot loop has no index arithmetic beyond additions: each row's tubelet origin is a 64-bit pointer made
//     once per block, each k's offset inside a tubelet comes from an int32 table (k_offset_table_kernel, one
//     per call). The table may order k as (dt, dh, dw, c) instead of the weight's (c, dt, dh, dw), with the
//     weight permuted to match, so that a channels-last video (C stride 1) is read in wide chunks too.
//     The epilogue adds bias + pos to the fp32 accumulators and writes rows in the output's (B, T', S + N, E)
//     order (the CLS slot rows are skipped; cls_rows_kernel fills them).
//     Shared memory: 3 stages x (128 + 128) rows x 40 halves (32 + 8 padding: 80-byte rows, so the 8 rows an
//     ldmatrix phase reads fall in distinct banks) = 60 KiB, dynamic; with at most 128 registers per thread
//     (__launch_bounds__(256, 2)) two blocks fit on an SM of sm_80 and sm_90.
//   * patch_embed_fma_kernel (fp32): 64 x 64 tiles, 16-deep K steps, 256 threads each owning a 4 x 4 register
//     tile computed with fp32 FMAs (exact fp32, no TF32); the same k table and per-block row origins.
// Backward: bias / pos / cls gradients are ATen sums (common.cpp); grad_weight and grad_video run over chunks
// of gathered tubelets in the weight's dtype (gather_patches_kernel) with cuBLAS GEMMs: grad_weight = G^T X with
// fp32 output (at::mm with out_dtype: 16-bit inputs, fp32 accumulation and result), grad_video = G W in the
// weight's dtype (fp32 accumulation inside cuBLAS, one rounding), written by scatter_patches_kernel (tubelets
// tile the video: each element written once). No fp32 copy of 16-bit data is made.
// Index math comes from patch_embed.h: 32-bit coordinates (the host checks M, K < 2^31), 64-bit offsets.
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

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
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
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Exact for every pair used here (uint8 and 16-bit values are representable in fp16 / bf16 / fp32).
template <typename To, typename From>
__device__ __forceinline__ To convert(From x) {
  if constexpr (std::is_same_v<To, From>) {
    return x;
  } else {
    return from_float<To>(to_float(x));
  }
}

// An unsigned integer type of kBytes bytes, for vector loads and stores of packed elements.
template <int kBytes>
struct Packed;
template <>
struct Packed<1> {
  using type = uint8_t;
};
template <>
struct Packed<2> {
  using type = uint16_t;
};
template <>
struct Packed<4> {
  using type = uint32_t;
};
template <>
struct Packed<8> {
  using type = uint2;
};
template <>
struct Packed<16> {
  using type = uint4;
};

// Bytes first and first + 1 of `word` (uint8 pixels) as two packed 16-bit values, exactly, without I2F (a
// quarter-rate instruction that would compete with the tensor cores for issue): fp16 0x6400 | b is 1024 + b,
// minus 1024 is b; the float 0x4B000000 | b is 2^23 + b, minus 2^23 is b, then packed to bf16 (exact below 256).
template <typename scalar_t>
__device__ __forceinline__ uint32_t bytes_to_pair(uint32_t word, int first) {
  uint32_t bits;
  if constexpr (std::is_same_v<scalar_t, __half>) {
    const uint32_t biased = __byte_perm(word, 0x64646464u, first == 0 ? 0x4140 : 0x4342);  // [b, 0x64] x 2
    __half2 h;
    memcpy(&h, &biased, 4);
    h = __hsub2(h, __half2(__ushort_as_half(0x6400), __ushort_as_half(0x6400)));
    memcpy(&bits, &h, 4);
  } else {
    const float lo = __uint_as_float(__byte_perm(word, 0x4B00u, 0x5440 + first)) - 8388608.f;
    const float hi = __uint_as_float(__byte_perm(word, 0x4B00u, 0x5441 + first)) - 8388608.f;
    const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
    memcpy(&bits, &pair, 4);
  }
  return bits;
}

// ---- sm_80 instructions: cp.async, ldmatrix, mma.sync --------------------------------------------------
// The "memory" clobbers keep the compiler from moving ordinary loads and stores across them.
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies kBytes from global to shared memory asynchronously; valid == false zero-fills the destination (no read).
template <int kBytes>
__device__ __forceinline__ void cp_async(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? kBytes : 0;
  if constexpr (kBytes == 16) {  // .cg: through L2 only (LDGSTS.E.BYPASS.128)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(dst), "l"(src), "n"(kBytes), "r"(src_bytes)
                 : "memory");
  }
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8 x 8 matrices of 16-bit elements; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// d += a (16 x 16, row-major) * b (16 x 8, column-major), fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Pointers and flags of one forward call.
template <typename scalar_t, typename video_t>
struct ForwardArgs {
  const video_t* video;
  const scalar_t* weight;  // (E, weight_ld) row-major; columns >= K are zero
  const int32_t* k_table;  // (ceil(K / 32) * 32,) video offset of k inside a tubelet; 0 past K
  const scalar_t* bias;    // (E,) or nullptr
  const scalar_t* pos;     // (R, E) or nullptr
  const scalar_t* cls;     // (E,) or nullptr
  scalar_t* out;           // (B T' (S + N), E)
  int32_t weight_ld;       // K, or K rounded up to 8 when the weight was copied for 16-byte alignment
  PatchGeometry g;
  VideoStrides s;
  bool pos_per_token;
};

// ---- 16-bit: tensor cores (mma.sync), sm_80+ ----------------------------------------------------------------
constexpr int kMmaTileM = 128;  // tokens per block
constexpr int kMmaTileN = 128;  // embedding columns per block
constexpr int kMmaTileK = 32;   // K per stage
constexpr int kMmaStages = 3;
constexpr int kMmaThreads = 256;  // 8 warps: 2 (M) x 4 (N), 64 x 32 each
constexpr int kMmaWarpM = 64, kMmaWarpN = 32;
constexpr int kSmemPitch = kMmaTileK + 8;  // elements per shared row: 80 bytes, 16-byte aligned, conflict-free LDSM
constexpr int kStageElems = (kMmaTileM + kMmaTileN) * kSmemPitch;
constexpr int kMmaSmemBytes = kMmaStages * kStageElems * 2;  // 61,440
// Loads: a thread copies rows r and r + 64 of each operand tile (r = tid / 4), 8 consecutive k of each row
// split into chunks of the vector width.
constexpr int kLoadThreadsPerRow = kMmaThreads / (kMmaTileM / 2);  // 4
static_assert(kMmaTileM == kMmaTileN && kLoadThreadsPerRow * 8 == kMmaTileK, "load mapping assumes these tiles");
static_assert(kMmaWarpM * 2 == kMmaTileM && kMmaWarpN * 4 == kMmaTileN, "8 warps as 2 x 4");

template <typename T>
struct alignas(2 * sizeof(T)) Pair {
  T x, y;
};

// Two blocks per SM (at most 128 registers per thread), except for a uint8 video read one byte at a time: its 16
// register-staged bytes do not fit beside the accumulators in 128 registers (ptxas spills on sm_90), so that
// fallback runs one block per SM.
template <typename scalar_t, typename video_t, int kVec>
constexpr int kMmaBlocksPerSm = std::is_same_v<video_t, uint8_t> && kVec == 1 ? 1 : 2;

template <typename scalar_t, typename video_t, int kVec>
__global__ void __launch_bounds__(kMmaThreads, (kMmaBlocksPerSm<scalar_t, video_t, kVec>))
    patch_embed_mma_kernel(const ForwardArgs<scalar_t, video_t> a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the host refuses GPUs older than sm_80 before launching
#else
  // Video chunks of kVec elements: copied asynchronously when no conversion is needed and the chunk is at least
  // 4 bytes, else staged through registers (loaded before the MMAs of a stage, stored after them).
  constexpr bool kAsyncVideo = std::is_same_v<video_t, scalar_t> && kVec >= 2;
  constexpr int kVideoChunks = 8 / kVec;  // per row and thread per stage
  using VideoPacked = typename Packed<kVec * sizeof(video_t)>::type;
  using TilePacked = typename Packed<kVec * sizeof(scalar_t)>::type;

  extern __shared__ __align__(16) unsigned char smem[];  // kMmaStages x {A: 128 x 40, B: 128 x 40} of scalar_t
  const uint32_t smem_base = shared_address(smem);
  constexpr uint32_t kStageBytes = kStageElems * 2, kTileBBytes = kMmaTileM * kSmemPitch * 2;

  const PatchGeometry& g = a.g;
  const int32_t num_tokens = static_cast<int32_t>(g.num_tokens);
  const int32_t embed_dim = static_cast<int32_t>(g.embed_dim);
  const int32_t patch_dim = static_cast<int32_t>(g.patch_dim);
  const int32_t n_tiles = (embed_dim + kMmaTileN - 1) / kMmaTileN;
  const int32_t m0 = static_cast<int32_t>(blockIdx.x / n_tiles) * kMmaTileM;  // neighbours share the video tile
  const int32_t n0 = static_cast<int32_t>(blockIdx.x % n_tiles) * kMmaTileN;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;

  // This thread's rows of the two operand tiles and where they start.
  const int load_row = tid / kLoadThreadsPerRow;               // and load_row + 64
  const int load_col = (tid % kLoadThreadsPerRow) * 8;         // first of its 8 k within a stage
  const video_t* video_row[2];
  bool video_row_valid[2];
  const scalar_t* weight_row[2];
  bool weight_row_valid[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int32_t m = m0 + load_row + 64 * i, n = n0 + load_row + 64 * i;
    video_row_valid[i] = m < num_tokens;
    video_row[i] = a.video + (video_row_valid[i] ? tubelet_origin_offset(token_coords32(m, g), g, a.s) : 0);
    weight_row_valid[i] = n < embed_dim;
    weight_row[i] = a.weight + (weight_row_valid[i] ? static_cast<int64_t>(n) * a.weight_ld : 0) + load_col;
  }
  const uint32_t load_dst = (load_row * kSmemPitch + load_col) * 2;  // byte offset in a tile; row + 64: + kHalf
  constexpr uint32_t kHalfTileBytes = 64 * kSmemPitch * 2;

  VideoPacked staged[2][kVideoChunks];  // register-staged video chunks (used when !kAsyncVideo)

  auto load_weight = [&](uint32_t stage_base, int32_t k0) {
    const bool k_valid = k0 + load_col < a.weight_ld;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const bool valid = k_valid && weight_row_valid[i];
      cp_async<16>(stage_base + kTileBBytes + load_dst + i * kHalfTileBytes, valid ? weight_row[i] + k0 : a.weight,
                   valid);
    }
  };
  // Async video chunks straight into the stage, or plain loads into `staged`.
  auto load_video = [&](uint32_t stage_base, int32_t k0) {
#pragma unroll
    for (int j = 0; j < kVideoChunks; ++j) {
      const int32_t k = k0 + load_col + j * kVec;
      const bool k_valid = k < patch_dim;
      const int32_t offset = __ldg(a.k_table + k);  // the table is padded to whole stages
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const bool valid = k_valid && video_row_valid[i];
        if constexpr (kAsyncVideo) {
          cp_async<kVec * 2>(stage_base + load_dst + i * kHalfTileBytes + j * kVec * 2,
                             valid ? video_row[i] + offset : a.video, valid);
        } else {
          staged[i][j] = valid ? *reinterpret_cast<const VideoPacked*>(video_row[i] + offset) : VideoPacked{};
        }
      }
    }
  };
  auto store_staged_video = [&](uint32_t stage_offset) {
    if constexpr (!kAsyncVideo) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int j = 0; j < kVideoChunks; ++j) {
          TilePacked packed;
          if constexpr (std::is_same_v<video_t, uint8_t> && kVec >= 2) {  // single bytes: I2F is shorter
            uint32_t words[kVec == 8 ? 2 : 1] = {};  // the chunk's bytes, zero-extended
            memcpy(words, &staged[i][j], sizeof(VideoPacked));
            uint32_t pairs[kVec == 8 ? 4 : 1];
#pragma unroll
            for (int w = 0; w < (kVec == 8 ? 4 : 1); ++w) {
              pairs[w] = bytes_to_pair<scalar_t>(words[w / 2], 2 * (w % 2));
            }
            memcpy(&packed, pairs, sizeof(packed));
          } else {
            video_t in[kVec];
            scalar_t out[kVec];
            memcpy(in, &staged[i][j], sizeof(in));
#pragma unroll
            for (int e = 0; e < kVec; ++e) out[e] = convert<scalar_t>(in[e]);
            memcpy(&packed, out, sizeof(packed));
          }
          *reinterpret_cast<TilePacked*>(smem + stage_offset + load_dst + i * kHalfTileBytes + j * kVec * 2) = packed;
        }
      }
    }
  };

  // ldmatrix addresses of this lane (byte offsets in a stage): A rows warp_m + lane % 16, k (lane / 16) * 8;
  // B rows warp_n + lane % 8 + (lane / 16) * 8, k ((lane / 8) % 2) * 8 (see mma_16816's fragment layouts).
  const int warp_m = (warp / 4) * kMmaWarpM, warp_n = (warp % 4) * kMmaWarpN;
  const uint32_t a_lane = ((warp_m + lane % 16) * kSmemPitch + (lane / 16) * 8) * 2;
  const uint32_t b_lane = kTileBBytes + ((warp_n + lane % 8 + (lane / 16) * 8) * kSmemPitch + ((lane / 8) % 2) * 8) * 2;

  float acc[4][4][4];  // [m16 tile][n8 tile][fragment]
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  const int32_t num_k_tiles = (patch_dim + kMmaTileK - 1) / kMmaTileK;
  // Prologue: stages 0 .. kMmaStages - 2 (one commit group each, possibly empty).
#pragma unroll
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (s < num_k_tiles) {
      load_weight(smem_base + s * kStageBytes, s * kMmaTileK);
      load_video(smem_base + s * kStageBytes, s * kMmaTileK);
      store_staged_video(s * kStageBytes);
    }
    cp_async_commit();
  }

  int read_stage = 0, write_stage = kMmaStages - 1;
  for (int32_t kt = 0; kt < num_k_tiles; ++kt) {
    cp_async_wait<kMmaStages - 2>();  // this thread's copies of stage kt have landed
    __syncthreads();  // everyone's have; and everyone is done reading the stage refilled below (kt - 1's)
    const int32_t next = kt + kMmaStages - 1;
    const uint32_t write_offset = write_stage * kStageBytes;
    if (next < num_k_tiles) {
      load_weight(smem_base + write_offset, next * kMmaTileK);
      load_video(smem_base + write_offset, next * kMmaTileK);
    }
    cp_async_commit();

    const uint32_t stage = smem_base + read_stage * kStageBytes;
#pragma unroll
    for (int kk = 0; kk < kMmaTileK; kk += 16) {
      uint32_t a_frag[4][4], b_frag[2][4];
#pragma unroll
      for (int i = 0; i < 4; ++i) ldmatrix_x4(a_frag[i], stage + a_lane + (i * 16 * kSmemPitch + kk) * 2);
#pragma unroll
      for (int j = 0; j < 2; ++j) ldmatrix_x4(b_frag[j], stage + b_lane + (j * 16 * kSmemPitch + kk) * 2);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
          mma_16816<scalar_t>(acc[i][j], a_frag[i], b_frag[j / 2][(j % 2) * 2], b_frag[j / 2][(j % 2) * 2 + 1]);
    }

    if (next < num_k_tiles) store_staged_video(write_offset);  // read after two more barriers
    read_stage = read_stage == kMmaStages - 1 ? 0 : read_stage + 1;
    write_stage = write_stage == kMmaStages - 1 ? 0 : write_stage + 1;
  }
  cp_async_wait<0>();  // only empty groups remain; leave nothing in flight

  // Epilogue: lane holds rows warp_m + 16 i + lane / 4 (+ 8), columns warp_n + 8 j + 2 (lane % 4) (+ 1).
  const int32_t col0 = n0 + warp_n + 2 * (lane % 4);
  float bias[4][2];
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int32_t n = col0 + 8 * j + e;
      bias[j][e] = a.bias != nullptr && n < embed_dim ? to_float(a.bias[n]) : 0.f;
    }
  const bool pairs = embed_dim % 2 == 0;  // then (row * E + n) is even for the even n here: 2-element accesses
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int32_t m = m0 + warp_m + 16 * i + 8 * h + lane / 4;
      if (m >= num_tokens) continue;
      const TokenCoords t = token_coords32(m, g);
      scalar_t* out_row = a.out + output_row(t, g) * g.embed_dim;
      const scalar_t* pos_row_ptr = a.pos != nullptr ? a.pos + pos_row(t, g, a.pos_per_token) * g.embed_dim : nullptr;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int32_t n = col0 + 8 * j;
        if (n >= embed_dim) continue;
        float v0 = acc[i][j][2 * h] + bias[j][0], v1 = acc[i][j][2 * h + 1] + bias[j][1];
        if (pairs) {
          if (pos_row_ptr != nullptr) {
            const Pair<scalar_t> p = *reinterpret_cast<const Pair<scalar_t>*>(pos_row_ptr + n);
            v0 += to_float(p.x);
            v1 += to_float(p.y);
          }
          *reinterpret_cast<Pair<scalar_t>*>(out_row + n) =
              Pair<scalar_t>{from_float<scalar_t>(v0), from_float<scalar_t>(v1)};
        } else {
          if (pos_row_ptr != nullptr) v0 += to_float(pos_row_ptr[n]);
          out_row[n] = from_float<scalar_t>(v0);
          if (n + 1 < embed_dim) {
            if (pos_row_ptr != nullptr) v1 += to_float(pos_row_ptr[n + 1]);
            out_row[n + 1] = from_float<scalar_t>(v1);
          }
        }
      }
    }
  }
#endif
}

// ---- fp32: FMA ----------------------------------------------------------------------------------------
constexpr int kFmaTileM = 64;  // tokens per block
constexpr int kFmaTileN = 64;  // embedding columns per block
constexpr int kFmaK = 16;
constexpr int kFmaThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each
constexpr int kFmaPad = 4;

template <typename video_t>
__global__ void __launch_bounds__(kFmaThreads) patch_embed_fma_kernel(const ForwardArgs<float, video_t> a) {
  // k-major so a thread reads its 4 rows as one float4; the 4-float pad spreads the transposing stores over banks
  __shared__ __align__(16) float tile_x[kFmaK][kFmaTileM + kFmaPad];
  __shared__ __align__(16) float tile_w[kFmaK][kFmaTileN + kFmaPad];
  __shared__ int64_t origin[kFmaTileM];  // video offset of each row's tubelet

  const PatchGeometry& g = a.g;
  const int32_t num_tokens = static_cast<int32_t>(g.num_tokens);
  const int32_t embed_dim = static_cast<int32_t>(g.embed_dim);
  const int32_t patch_dim = static_cast<int32_t>(g.patch_dim);
  const int32_t m0 = static_cast<int32_t>(blockIdx.x) * kFmaTileM;
  const int32_t n0 = static_cast<int32_t>(blockIdx.y) * kFmaTileN;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  if (tid < kFmaTileM) {
    origin[tid] = m0 + tid < num_tokens ? tubelet_origin_offset(token_coords32(m0 + tid, g), g, a.s) : 0;
  }

  float acc[4][4] = {};
  for (int32_t k0 = 0; k0 < patch_dim; k0 += kFmaK) {
    __syncthreads();  // origins ready on the first step; the previous step's FMAs are done with the tiles
    for (int idx = tid; idx < kFmaTileM * kFmaK; idx += kFmaThreads) {
      const int r = idx / kFmaK, kk = idx % kFmaK;  // consecutive threads walk k: contiguous pixels of a patch row
      const bool valid = m0 + r < num_tokens && k0 + kk < patch_dim;
      tile_x[kk][r] = valid ? to_float(a.video[origin[r] + __ldg(a.k_table + k0 + kk)]) : 0.f;
    }
    for (int idx = tid; idx < kFmaTileN * kFmaK; idx += kFmaThreads) {
      const int n = idx / kFmaK, kk = idx % kFmaK;
      const bool valid = n0 + n < embed_dim && k0 + kk < patch_dim;
      tile_w[kk][n] = valid ? a.weight[static_cast<int64_t>(n0 + n) * a.weight_ld + k0 + kk] : 0.f;
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
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int32_t m = m0 + ty * 4 + i;
    if (m >= num_tokens) continue;
    const TokenCoords t = token_coords32(m, g);
    float* out_row = a.out + output_row(t, g) * g.embed_dim;
    const float* pos_row_ptr = a.pos != nullptr ? a.pos + pos_row(t, g, a.pos_per_token) * g.embed_dim : nullptr;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int32_t n = n0 + tx * 4 + j;
      if (n >= embed_dim) continue;
      float v = acc[i][j];
      if (a.bias != nullptr) v += a.bias[n];
      if (pos_row_ptr != nullptr) v += pos_row_ptr[n];
      out_row[n] = v;
    }
  }
}

// ---- k table, CLS slots, gather / scatter for the backward ----------------------------------------------
// table[k] = offset of reduction index k inside a tubelet (k < K), 0 for the padding up to `padded_k`; k runs in
// the weight's (c, dt, dh, dw) order, or in (dt, dh, dw, c) order for a channels-last read.
__global__ void k_offset_table_kernel(int32_t* table, int32_t padded_k, PatchGeometry g, VideoStrides s,
                                      bool channels_last_order) {
  const int32_t k = static_cast<int32_t>(blockIdx.x * blockDim.x + threadIdx.x);
  if (k >= padded_k) return;
  const int32_t weight_k = channels_last_order ? weight_k_of_channels_last32(k, g) : k;
  table[k] = k < g.patch_dim ? static_cast<int32_t>(k_offset32(weight_k, g, s)) : 0;
}

// One block per (b, step): out[row of its CLS slot, :] = cls + pos[cls_pos_row].
template <typename scalar_t, typename video_t>
__global__ void cls_rows_kernel(const ForwardArgs<scalar_t, video_t> a) {
  const int32_t bs = static_cast<int32_t>(blockIdx.x);  // b * T' + step
  const int32_t step = bs % static_cast<int32_t>(a.g.steps);
  const int64_t prow = a.pos_per_token ? step * a.g.tokens_per_step : 0;
  scalar_t* dst = a.out + bs * a.g.tokens_per_step * a.g.embed_dim;
  for (int32_t n = threadIdx.x; n < a.g.embed_dim; n += blockDim.x) {
    float v = to_float(a.cls[n]);
    if (a.pos) v += to_float(a.pos[prow * a.g.embed_dim + n]);
    dst[n] = from_float<scalar_t>(v);
  }
}

// patches[i, k] = video[tubelet of token m0 + i][k] in the patches' dtype; one block per row i.
template <typename scalar_t, typename video_t>
__global__ void gather_patches_kernel(const video_t* video, const int32_t* k_table, PatchGeometry g, VideoStrides s,
                                      int32_t m0, scalar_t* patches) {
  const int32_t i = static_cast<int32_t>(blockIdx.x), patch_dim = static_cast<int32_t>(g.patch_dim);
  const video_t* src = video + tubelet_origin_offset(token_coords32(m0 + i, g), g, s);
  scalar_t* dst = patches + static_cast<int64_t>(i) * patch_dim;
  for (int32_t k = threadIdx.x; k < patch_dim; k += blockDim.x) dst[k] = convert<scalar_t>(src[__ldg(k_table + k)]);
}

// grad_video[tubelet of token m0 + i][k] = patches[i, k]; grad_video contiguous (B, T, C, H, W); one block per row.
template <typename scalar_t>
__global__ void scatter_patches_kernel(const scalar_t* patches, const int32_t* k_table, PatchGeometry g, int32_t m0,
                                       scalar_t* grad_video) {
  const int32_t i = static_cast<int32_t>(blockIdx.x), patch_dim = static_cast<int32_t>(g.patch_dim);
  scalar_t* dst = grad_video + tubelet_origin_offset(token_coords32(m0 + i, g), g, contiguous_strides(g));
  const scalar_t* src = patches + static_cast<int64_t>(i) * patch_dim;
  for (int32_t k = threadIdx.x; k < patch_dim; k += blockDim.x) dst[__ldg(k_table + k)] = src[k];
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
  TORCH_CHECK(major >= 8, "the cuda backend's ", dtype,
              " kernel needs compute capability 8.0 or newer (cp.async, mma.sync); this GPU has ", major,
              ".x: use float32 or backend='triton'");
}

// 32-bit coordinates in the kernels (token_coords32, k_offset32, block indices).
void check_index_range(const PatchGeometry& g) {
  constexpr int64_t kLimit = std::numeric_limits<int32_t>::max() - 256;
  TORCH_CHECK(g.num_tokens <= kLimit && g.patch_dim <= kLimit && g.embed_dim <= kLimit,
              "the cuda backend indexes tokens, K and E with 32 bits; this call has M=", g.num_tokens,
              " tokens, K=", g.patch_dim, ", E=", g.embed_dim, ": split the batch");
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

// The int32 k table of (g, s) on `like`'s device, padded with zeros to whole 32-deep stages.
at::Tensor k_offset_table(const PatchGeometry& g, const VideoStrides& s, const at::Tensor& like, cudaStream_t stream,
                          bool channels_last_order = false) {
  TORCH_CHECK(max_k_offset(g, s) <= std::numeric_limits<int32_t>::max(), "a tubelet spans more than 2^31 elements");
  const int32_t padded_k = static_cast<int32_t>((g.patch_dim + kMmaTileK - 1) / kMmaTileK * kMmaTileK);
  at::Tensor table = at::empty({padded_k}, like.options().dtype(at::kInt));
  k_offset_table_kernel<<<(padded_k + 255) / 256, 256, 0, stream>>>(table.mutable_data_ptr<int32_t>(), padded_k, g, s,
                                                                    channels_last_order);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return table;
}

template <typename scalar_t, typename video_t, int kVec>
void launch_mma(const ForwardArgs<scalar_t, video_t>& a, cudaStream_t stream) {
  const auto& g = a.g;
  const int64_t blocks = ((g.num_tokens + kMmaTileM - 1) / kMmaTileM) * ((g.embed_dim + kMmaTileN - 1) / kMmaTileN);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "too many output tiles for one launch: split the batch");
  auto kernel = patch_embed_mma_kernel<scalar_t, video_t, kVec>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMmaSmemBytes));
  kernel<<<static_cast<unsigned>(blocks), kMmaThreads, kMmaSmemBytes, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename video_t>
void launch_forward(const CallPlan& plan, const at::Tensor& video, const at::Tensor& weight2d,
                    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& pos,
                    const c10::optional<at::Tensor>& cls, at::Tensor& out, cudaStream_t stream) {
  const auto& g = plan.geometry;
  VideoReadPlan read;
  if constexpr (!std::is_same_v<scalar_t, float>) {
    read = video_read_plan(reinterpret_cast<uintptr_t>(video.const_data_ptr()), video.element_size(), g,
                           plan.video_strides);
  }
  const at::Tensor table = k_offset_table(g, plan.video_strides, video, stream, read.channels_last_order);
  // The weight in the table's k order: (E, t, ph, pw, C) for the channels-last order (a copy).
  at::Tensor weight = read.channels_last_order
                          ? weight2d.view({g.embed_dim, g.channels, g.tubelet, g.patch_h, g.patch_w})
                                .permute({0, 2, 3, 4, 1})
                                .contiguous()
                                .view({g.embed_dim, g.patch_dim})
                          : weight2d;
  // 16-byte weight copies need 16-byte aligned rows: K a multiple of 8 and an aligned pointer, else a zero-padded
  // copy (E x ceil(K / 8) * 8, the size of the weight).
  if constexpr (!std::is_same_v<scalar_t, float>) {
    if (g.patch_dim % 8 != 0 || reinterpret_cast<uintptr_t>(weight.const_data_ptr()) % 16 != 0) {
      const at::Tensor unpadded = weight;
      weight = at::zeros({g.embed_dim, (g.patch_dim + 7) / 8 * 8}, weight2d.options());
      weight.narrow(1, 0, g.patch_dim).copy_(unpadded);
    }
  }
  ForwardArgs<scalar_t, video_t> a{reinterpret_cast<const video_t*>(video.const_data_ptr()),
                                   reinterpret_cast<const scalar_t*>(weight.const_data_ptr()),
                                   table.const_data_ptr<int32_t>(),
                                   optional_ptr<scalar_t>(bias),
                                   optional_ptr<scalar_t>(pos),
                                   optional_ptr<scalar_t>(cls),
                                   reinterpret_cast<scalar_t*>(out.mutable_data_ptr()),
                                   static_cast<int32_t>(weight.size(1)),
                                   g,
                                   plan.video_strides,
                                   plan.pos_per_token};
  if constexpr (std::is_same_v<scalar_t, float>) {
    const dim3 grid((g.num_tokens + kFmaTileM - 1) / kFmaTileM, (g.embed_dim + kFmaTileN - 1) / kFmaTileN);
    TORCH_CHECK(grid.y <= 65535, "embed_dim=", g.embed_dim, " is too large for the cuda backend's grid");
    patch_embed_fma_kernel<video_t><<<grid, kFmaThreads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    switch (read.vec) {
      case 8: launch_mma<scalar_t, video_t, 8>(a, stream); break;
      case 2: launch_mma<scalar_t, video_t, 2>(a, stream); break;
      default: launch_mma<scalar_t, video_t, 1>(a, stream); break;
    }
  }
  if (a.cls != nullptr) {
    cls_rows_kernel<scalar_t, video_t><<<static_cast<unsigned>(g.batch * g.steps), 256, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

const at::Tensor& check_cuda(const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), "lsvit kernel: video not on a CUDA device");
  return t;
}

// Threads per gather / scatter block: one row of K elements per block.
unsigned row_threads(int64_t patch_dim) {
  return static_cast<unsigned>(std::min<int64_t>(256, (patch_dim + 31) / 32 * 32));
}

}  // namespace

at::Tensor forward(const at::Tensor& video_in, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                   const c10::optional<at::Tensor>& pos_embed, const c10::optional<at::Tensor>& cls_token) {
  CallPlan plan = check_forward_args(check_cuda(video_in), weight, bias, pos_embed, cls_token, cuda_dtypes());
  const auto& g = plan.geometry;
  const c10::cuda::CUDAGuard guard(video_in.device());
  at::Tensor out = at::empty({g.batch, g.steps, g.tokens_per_step, g.embed_dim}, weight.options());
  if (g.batch == 0) return out;
  check_tensor_cores(weight.scalar_type(), video_in.get_device());
  check_index_range(g);
  // k offsets are int32: a video whose strides spread one tubelet over more than 2^31 elements is made contiguous
  at::Tensor video = video_in;
  if (max_k_offset(g, plan.video_strides) > std::numeric_limits<int32_t>::max()) {
    video = video_in.contiguous();
    plan.video_strides = contiguous_strides(g);
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(video.get_device());
  const at::Tensor weight2d = weight_5d(weight).view({g.embed_dim, g.patch_dim});
  auto flat = [](const c10::optional<at::Tensor>& t) -> c10::optional<at::Tensor> {
    if (!t.has_value() || !t->defined()) return c10::nullopt;
    return t->reshape({-1, t->size(-1)}).contiguous();
  };
  const auto bias_c = flat(bias), cls_c = flat(cls_token);
  auto pos_c = flat(pos_embed);
  // The 16-bit epilogue reads pos in pairs when E is even: a view starting at an odd element gets an aligned copy.
  if (pos_c.has_value() && reinterpret_cast<uintptr_t>(pos_c->const_data_ptr()) % (2 * pos_c->element_size()) != 0) {
    pos_c = pos_c->clone();
  }
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

Grads backward(const at::Tensor& grad_tokens_in, const at::Tensor& video_in, const at::Tensor& weight, int64_t pos_rows,
               bool has_bias, bool has_cls, std::array<bool, 5> mask) {
  CallPlan plan = check_backward_args(grad_tokens_in, check_cuda(video_in), weight, pos_rows, has_bias, has_cls, mask,
                                      cuda_dtypes());
  const auto& g = plan.geometry;
  const c10::cuda::CUDAGuard guard(video_in.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(video_in.get_device());
  const at::Tensor grad_tokens = grad_tokens_in.contiguous();
  const at::ScalarType dtype = weight.scalar_type();
  Grads grads;
  at::Tensor grad_video =
      mask[0] ? at::empty({g.batch, g.frames, g.channels, g.height, g.width}, video_in.options()) : at::Tensor();
  at::Tensor grad_weight32 =
      mask[1] ? at::empty({g.embed_dim, g.patch_dim}, weight.options().dtype(at::kFloat)) : at::Tensor();
  if (mask[1] && g.batch == 0) grad_weight32.zero_();
  if ((mask[0] || mask[1]) && g.batch > 0) {
    check_index_range(g);
    at::Tensor video = video_in;
    if (mask[1] && max_k_offset(g, plan.video_strides) > std::numeric_limits<int32_t>::max()) {
      video = video_in.contiguous();
      plan.video_strides = contiguous_strides(g);
    }
    // (M, E) gradient of the patch tokens (CLS rows dropped) and the (E, K) weight, both in the weight's dtype.
    const at::Tensor grad_patches =
        grad_tokens.narrow(2, g.cls_slots, g.num_spatial).reshape({g.num_tokens, g.embed_dim});
    const at::Tensor weight2d = weight_5d(weight).view({g.embed_dim, g.patch_dim});
    const at::Tensor video_table = mask[1] ? k_offset_table(g, plan.video_strides, video, stream) : at::Tensor();
    const at::Tensor grad_table = mask[0] ? k_offset_table(g, contiguous_strides(g), video, stream) : at::Tensor();
    // Chunks of at most 2^24 patch elements bound the extra memory (32 MiB in 16-bit, 64 MiB in fp32).
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(g.num_tokens, (int64_t{1} << 24) / g.patch_dim));
    at::Tensor buffer = at::empty({chunk, g.patch_dim}, weight.options());
    const unsigned threads = row_threads(g.patch_dim);
    for (int64_t m0 = 0; m0 < g.num_tokens; m0 += chunk) {
      const int64_t rows = std::min(chunk, g.num_tokens - m0);
      at::Tensor patches = buffer.narrow(0, 0, rows);
      const at::Tensor grad_chunk = grad_patches.narrow(0, m0, rows);
      dispatch_cuda_type<false>(dtype, [&](auto zero) {
        using scalar_t = decltype(zero);
        if (mask[1]) {
          dispatch_cuda_type<true>(video.scalar_type(), [&](auto video_zero) {
            using video_t = decltype(video_zero);
            if constexpr (std::is_same_v<video_t, uint8_t> || std::is_same_v<video_t, scalar_t>) {
              gather_patches_kernel<scalar_t, video_t><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
                  reinterpret_cast<const video_t*>(video.const_data_ptr()), video_table.const_data_ptr<int32_t>(), g,
                  plan.video_strides, static_cast<int32_t>(m0),
                  reinterpret_cast<scalar_t*>(patches.mutable_data_ptr()));
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            } else {
              TORCH_CHECK(false, "video dtype ", video.scalar_type(), " does not match weight dtype ", dtype);
            }
          });
          // (E, K) += (E, rows) @ (rows, K), fp32 result; 16-bit operands through cuBLAS's fp32-output GEMM
          if constexpr (std::is_same_v<scalar_t, float>) {
            if (m0 == 0) {
              at::mm_out(grad_weight32, grad_chunk.t(), patches);
            } else {
              at::addmm_out(grad_weight32, grad_weight32, grad_chunk.t(), patches);
            }
          } else if (m0 == 0) {
            at::mm_out(grad_weight32, grad_chunk.t(), patches, at::kFloat);
          } else {
            grad_weight32.add_(at::mm(grad_chunk.t(), patches, at::kFloat));
          }
        }
        if (mask[0]) {
          at::mm_out(patches, grad_chunk, weight2d);  // (rows, K) in the weight's dtype
          scatter_patches_kernel<scalar_t><<<static_cast<unsigned>(rows), threads, 0, stream>>>(
              reinterpret_cast<const scalar_t*>(patches.const_data_ptr()), grad_table.const_data_ptr<int32_t>(), g,
              static_cast<int32_t>(m0), reinterpret_cast<scalar_t*>(grad_video.mutable_data_ptr()));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    }
  }
  std::get<0>(grads) = grad_video;
  if (mask[1]) std::get<1>(grads) = grad_weight32.to(dtype).view(weight.sizes());
  token_reduction_grads(grad_tokens, plan, pos_rows, mask, grads);
  return grads;
}

}  // namespace lsvit::cuda
