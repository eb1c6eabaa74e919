// See bf16_gemm.h. No torch header here (see there).
#include "bf16_gemm.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

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

// One MR x kNr micro-tile over the whole reduction: MR x kNv fp32 accumulators in registers (24 of the 32 zmm
// for 8 x 3); per pair of the reduction kNv packed-B loads, MR broadcasts of a row's bf16 pair and MR x kNv
// vdpbf16ps. Row r's pair p is at a + r * rs + p * ps. The epilogue rounds to bf16 (Out = uint16_t) or stores
// fp32 (Out = float).
template <int MR, typename Out>
LSVIT_AVX512_BF16 void micro_tile(const uint16_t* a, int64_t rs, int64_t ps, int64_t pairs, const uint16_t* b,
                                  const __mmask16* masks, const float* const* init_rows, Out* const* out_rows,
                                  int64_t col0) {
  // The addends are read after the loop (their lines prefetched now): an fp32 grad_weight row is not in cache,
  // and loading it first would stall the first products on its latency.
  __m512 acc[MR][kNv];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) {
      acc[r][v] = _mm512_setzero_ps();
      if (init_rows[r]) _mm_prefetch(reinterpret_cast<const char*>(init_rows[r] + col0 + 16 * v), _MM_HINT_T0);
    }
  }
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh bv[kNv];
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + (p * kNr + 16 * v) * 2);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * rs + p * ps, 4);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int v = 0; v < kNv; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, bv[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < kNv; ++v) {
      if (init_rows[r])
        acc[r][v] = _mm512_add_ps(acc[r][v], _mm512_maskz_loadu_ps(masks[v], init_rows[r] + col0 + 16 * v));
      if constexpr (std::is_same_v<Out, float>) {
        _mm512_mask_storeu_ps(out_rows[r] + col0 + 16 * v, masks[v], acc[r][v]);
      } else {
        const __m256i h = (__m256i)_mm512_cvtneps_pbh(acc[r][v]);
        _mm256_mask_storeu_epi16(out_rows[r] + col0 + 16 * v, masks[v], h);
      }
    }
  }
}

// Every row of one packed-B block: strips of kMr rows, then one shorter strip.
template <typename Out>
LSVIT_AVX512_BF16 void strips(const uint16_t* a, int64_t rows, int64_t rs, int64_t ps, int64_t pairs, const uint16_t* b,
                              const __mmask16* masks, const float* const* init_rows, Out* const* out_rows,
                              int64_t col0) {
  int64_t r = 0;
  for (; r + kMr <= rows; r += kMr) {
    micro_tile<kMr, Out>(a + r * rs, rs, ps, pairs, b, masks, init_rows + r, out_rows + r, col0);
  }
  const uint16_t* ar = a + r * rs;
  switch (rows - r) {  // the remainder strip, one instantiation per height
    case 7: micro_tile<7, Out>(ar, rs, ps, pairs, b, masks, init_rows + r, out_rows + r, col0); break;
    case 6: micro_tile<6, Out>(ar, rs, ps, pairs, b, masks, init_rows + r, out_rows + r, col0); break;
    case 5: micro_tile<5, Out>(ar, rs, ps, pairs, b, masks, init_rows + r, out_rows + r, col0); break;
    case 4: micro_tile<4, Out>(ar, rs, ps, pairs, b, masks, init_rows + r, out_rows + r, col0); break;
    case 3: micro_tile<3, Out>(ar, rs, ps, pairs, b, masks, init_rows + r, out_rows + r, col0); break;
    case 2: micro_tile<2, Out>(ar, rs, ps, pairs, b, masks, init_rows + r, out_rows + r, col0); break;
    case 1: micro_tile<1, Out>(ar, rs, ps, pairs, b, masks, init_rows + r, out_rows + r, col0); break;
    default: break;
  }
}

static_assert(kMr == 8 && kNr % 16 == 0, "the remainder switch covers heights below 8");

// Packed-B blocks [nb0, nb1) (stored from packed on, pairs x kNr pairs each) and row strips. blocks_outer: one
// block (147 KiB at K = 1536 in the forward) stays in L2 while every strip of the panel passes it. Otherwise
// (grad_weight) one strip of A (8 rows x the chunk's pairs) stays in L1 while it passes every block, and each
// fp32 output row is read and written front to back.
template <typename Out>
LSVIT_AVX512_BF16 void blocks(const uint16_t* a, int64_t rows, int64_t rs, int64_t ps, int64_t pairs,
                              const uint16_t* packed, int64_t n, int64_t nb0, int64_t nb1,
                              const float* const* init_rows, Out* const* out_rows, bool blocks_outer,
                              int64_t strip_stride) {
  const int64_t nblocks = nb1 - nb0;
  std::vector<__mmask16> masks(nblocks * kNv);
  for (int64_t i = 0; i < nblocks; ++i) {
    const int64_t cols = std::min(kNr, n - (nb0 + i) * kNr);
    for (int v = 0; v < kNv; ++v) {
      const int64_t lanes = std::clamp<int64_t>(cols - 16 * v, 0, 16);
      masks[i * kNv + v] = static_cast<__mmask16>((1u << lanes) - 1u);
    }
  }
  auto block_ptr = [&](int64_t i) { return packed + i * pairs * kNr * 2; };
  if (blocks_outer) {
    for (int64_t i = 0; i < nblocks; ++i) {
      strips<Out>(a, rows, rs, ps, pairs, block_ptr(i), &masks[i * kNv], init_rows, out_rows, (nb0 + i) * kNr);
    }
    return;
  }
  for (int64_t r = 0; r < rows; r += kMr) {
    const int64_t h = std::min(kMr, rows - r);
    const uint16_t* strip = strip_stride ? a + (r / kMr) * strip_stride : a + r * rs;
    for (int64_t i = 0; i < nblocks; ++i) {
      strips<Out>(strip, h, rs, ps, pairs, block_ptr(i), &masks[i * kNv], init_rows + r, out_rows + r, (nb0 + i) * kNr);
    }
  }
}

LSVIT_AVX512_BF16 void interleave_avx512(const uint16_t* x0, const uint16_t* x1, int64_t len, uint16_t* dst) {
  for (int64_t i = 0; i < len; i += 16) {
    const __mmask16 m = len - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (len - i)) - 1u);
    const __m512i lo = _mm512_maskz_cvtepu16_epi32(m, _mm256_maskz_loadu_epi16(m, x0 + i));
    const __m512i hi =
        x1 ? _mm512_maskz_slli_epi32(m, _mm512_maskz_cvtepu16_epi32(m, _mm256_maskz_loadu_epi16(m, x1 + i)), 16)
           : _mm512_setzero_si512();
    _mm512_mask_storeu_epi32(dst + 2 * i, m, _mm512_or_si512(lo, hi));
  }
}

LSVIT_AVX512_BF16 void round_avx512(const float* src, int64_t n, uint16_t* dst) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
    _mm256_mask_storeu_epi16(dst + i, m, h);
  }
}

LSVIT_AVX512_BF16 void interleave_strips_avx512(const uint16_t* x0, const uint16_t* x1, int64_t len, int64_t pairs,
                                                uint16_t* dst) {
  for (int64_t i = 0; i < len; i += kMr) {
    const int64_t n = std::min(kMr, len - i);
    const __mmask8 m = static_cast<__mmask8>((1u << n) - 1u);
    const __m256i lo = _mm256_maskz_cvtepu16_epi32(m, _mm_maskz_loadu_epi16(m, x0 + i));
    const __m256i hi =
        x1 ? _mm256_maskz_slli_epi32(m, _mm256_maskz_cvtepu16_epi32(m, _mm_maskz_loadu_epi16(m, x1 + i)), 16)
           : _mm256_setzero_si256();
    _mm256_mask_storeu_epi32(dst + (i / kMr) * pairs * kMr * 2, m, _mm256_or_si256(lo, hi));
  }
}

}  // namespace

void interleave_strips(const uint16_t* x0, const uint16_t* x1, int64_t len, int64_t pairs, uint16_t* dst) {
  interleave_strips_avx512(x0, x1, len, pairs, dst);
}

void round_to_bf16(const float* src, int64_t n, uint16_t* dst) { round_avx512(src, n, dst); }

void interleave_pairs(const uint16_t* x0, const uint16_t* x1, int64_t len, uint16_t* dst) {
  interleave_avx512(x0, x1, len, dst);
}

void gemm_rows(const uint16_t* a, int64_t rows, int64_t kp, const uint16_t* packed, int64_t n,
               const float* const* init_rows, uint16_t* const* out_rows) {
  blocks<uint16_t>(a, rows, kp, 2, kp / 2, packed, n, 0, n_blocks(n), init_rows, out_rows, true, 0);
}

void gemm_pairs_f32(const uint16_t* a, int64_t rows, int64_t pairs, const uint16_t* packed, int64_t n, int64_t nb0,
                    int64_t nb1, const float* const* init_rows, float* const* out_rows) {
  blocks<float>(a, rows, 2, 2 * kMr, pairs, packed, n, nb0, nb1, init_rows, out_rows, false, pairs * kMr * 2);
}

#else

bool available() { return false; }

void interleave_pairs(const uint16_t*, const uint16_t*, int64_t, uint16_t*) {}
void round_to_bf16(const float*, int64_t, uint16_t*) {}

void gemm_rows(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, const float* const*, uint16_t* const*) {}
void gemm_pairs_f32(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, int64_t, int64_t, const float* const*,
                    float* const*) {}
void interleave_strips(const uint16_t*, const uint16_t*, int64_t, int64_t, uint16_t*) {}

#endif

}  // namespace lsvit::cpu::bf16_gemm
