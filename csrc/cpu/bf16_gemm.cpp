// See bf16_gemm.h. No torch header here (see there).
#include "bf16_gemm.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LSVIT_BF16_GEMM 1
#include <immintrin.h>
#define LSVIT_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#else
#define LSVIT_BF16_GEMM 0
#endif

namespace lsvit::cpu::bf16_gemm {

void pack_weight(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, int64_t nb0, int64_t nb1, uint16_t* packed) {
  const int64_t kp = padded_k(k), pairs = kp / 2;
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    uint16_t* block = packed + nb * pairs * kNr * 2;
    for (int64_t j = 0; j < kNr; ++j) {
      const int64_t col = nb * kNr + j;
      uint16_t* dst = block + j * 2;
      if (col >= n) {
        for (int64_t p = 0; p < pairs; ++p) dst[p * kNr * 2] = dst[p * kNr * 2 + 1] = 0;
        continue;
      }
      const uint16_t* src = w + col * ldw;
      for (int64_t p = 0; p < k / 2; ++p) std::memcpy(dst + p * kNr * 2, src + 2 * p, 4);
      if (k % 2) {
        dst[(pairs - 1) * kNr * 2] = src[k - 1];
        dst[(pairs - 1) * kNr * 2 + 1] = 0;
      }
    }
  }
}

#if LSVIT_BF16_GEMM

bool available() {
  static const bool runs = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                           __builtin_cpu_supports("avx512bf16");
  return runs;
}

namespace {

constexpr int kNv = kNr / 16;  // zmm vectors per micro-tile row

// One MR x kNr micro-tile over the whole K: MR x kNv fp32 accumulators in registers (24 of the 32 zmm for
// 8 x 3); per k pair kNv weight loads, MR broadcasts of a row's bf16 pair and MR x kNv vdpbf16ps.
template <int MR>
LSVIT_AVX512_BF16 void micro_tile(const uint16_t* a, int64_t kp, const uint16_t* b, const __mmask16* masks,
                                  const float* const* init_rows, uint16_t* const* out_rows, int64_t col0) {
  __m512 acc[MR][kNv];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) {
      acc[r][v] = init_rows[r] ? _mm512_maskz_loadu_ps(masks[v], init_rows[r] + col0 + 16 * v) : _mm512_setzero_ps();
    }
  }
  const int64_t pairs = kp / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh bv[kNv];
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + (p * kNr + 16 * v) * 2);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * kp + 2 * p, 4);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int v = 0; v < kNv; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) {
      const __m256i h = (__m256i)_mm512_cvtneps_pbh(acc[r][v]);
      _mm256_mask_storeu_epi16(out_rows[r] + col0 + 16 * v, masks[v], h);
    }
  }
}

template <int MR>
LSVIT_AVX512_BF16 void strips(const uint16_t* a, int64_t rows, int64_t kp, const uint16_t* b, const __mmask16* masks,
                              const float* const* init_rows, uint16_t* const* out_rows, int64_t col0) {
  int64_t r = 0;
  for (; r + MR <= rows; r += MR) micro_tile<MR>(a + r * kp, kp, b, masks, init_rows + r, out_rows + r, col0);
  switch (rows - r) {  // the remainder strip, one instantiation per height
    case 7: micro_tile<7>(a + r * kp, kp, b, masks, init_rows + r, out_rows + r, col0); break;
    case 6: micro_tile<6>(a + r * kp, kp, b, masks, init_rows + r, out_rows + r, col0); break;
    case 5: micro_tile<5>(a + r * kp, kp, b, masks, init_rows + r, out_rows + r, col0); break;
    case 4: micro_tile<4>(a + r * kp, kp, b, masks, init_rows + r, out_rows + r, col0); break;
    case 3: micro_tile<3>(a + r * kp, kp, b, masks, init_rows + r, out_rows + r, col0); break;
    case 2: micro_tile<2>(a + r * kp, kp, b, masks, init_rows + r, out_rows + r, col0); break;
    case 1: micro_tile<1>(a + r * kp, kp, b, masks, init_rows + r, out_rows + r, col0); break;
    default: break;
  }
}

static_assert(kMr == 8 && kNr % 16 == 0, "the remainder switch covers heights below 8");

LSVIT_AVX512_BF16 void gemm_rows_avx512(const uint16_t* a, int64_t rows, int64_t kp, const uint16_t* packed, int64_t n,
                                        const float* const* init_rows, uint16_t* const* out_rows) {
  // Weight block outside, strips inside: one block of the packed weight (kp / 2 x kNr pairs, 147 KiB at
  // K = 1536) stays in L2 while every strip of the panel passes it.
  for (int64_t nb = 0; nb < n_blocks(n); ++nb) {
    const int64_t col0 = nb * kNr, cols = std::min(kNr, n - col0);
    __mmask16 masks[kNv];
    for (int v = 0; v < kNv; ++v) {
      const int64_t lanes = std::clamp<int64_t>(cols - 16 * v, 0, 16);
      masks[v] = static_cast<__mmask16>((1u << lanes) - 1u);
    }
    strips<kMr>(a, rows, kp, packed + nb * kp * kNr, masks, init_rows, out_rows, col0);
  }
}

}  // namespace

void gemm_rows(const uint16_t* a, int64_t rows, int64_t kp, const uint16_t* packed, int64_t n,
               const float* const* init_rows, uint16_t* const* out_rows) {
  gemm_rows_avx512(a, rows, kp, packed, n, init_rows, out_rows);
}

#else

bool available() { return false; }

void gemm_rows(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, const float* const*, uint16_t* const*) {}

#endif

}  // namespace lsvit::cpu::bf16_gemm
