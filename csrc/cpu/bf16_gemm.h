// A bf16 GEMM of our own for the fused CPU forward: AVX-512 `vdpbf16ps` (avx512_bf16), fp32 accumulation,
// fp32 epilogue rows added before the one rounding to bf16 (docs/native.md, "bf16 micro-kernel").
//
// Why not a library GEMM: oneDNN (through at::native::mkldnn_matmul) takes a ready row-major panel and packs
// it again, and wants C in bf16; MKL's bf16 GEMM runs its AVX2 code on AMD CPUs. Here the caller's gather
// writes the tubelets straight into the layout the micro-kernel reads (a row-major panel with an even row
// length: a bf16 pair (k, k+1) of a row is the 32-bit value the kernel broadcasts), the weight is packed once
// per call, and the epilogue reads fp32 bias + pos rows and writes bf16 output rows wherever they are.
//
// This header and bf16_gemm.cpp include no torch header: the kernel functions are compiled for AVX-512 through
// function target attributes, and no inline function of another header is instantiated with them. Call them
// only when available() is true (this CPU has avx512_bf16 and the OS saves the AVX-512 state).
#pragma once

#include <cstdint>

namespace lsvit::cpu::bf16_gemm {

// Columns of one packed weight block (the micro-tile's width) and rows of one micro-tile.
constexpr int64_t kNr = 48;
constexpr int64_t kMr = 8;

// True when the kernel is compiled in (x86-64 with GCC or Clang) and this CPU runs it.
bool available();

// K rounded up to even: the row length of the A panel and of the packed weight's pairs.
inline int64_t padded_k(int64_t k) { return (k + 1) / 2 * 2; }
inline int64_t n_blocks(int64_t n) { return (n + kNr - 1) / kNr; }
// bf16 elements of the packed weight: n_blocks x (padded K / 2) x kNr x 2.
inline int64_t packed_weight_elems(int64_t n, int64_t k) { return n_blocks(n) * padded_k(k) * kNr; }

// Packs weight blocks [nb0, nb1) of w (n rows of k bf16, row stride ldw) as packed[nb][k / 2][j][2] =
// w[nb kNr + j][k .. k + 1]: the pair of consecutive k of one output column is the 32-bit lane vdpbf16ps reads.
// Columns past n and the k past an odd K are zero.
void pack_weight(const uint16_t* w, int64_t n, int64_t k, int64_t ldw, int64_t nb0, int64_t nb1, uint16_t* packed);

// For each row r < rows: out_rows[r][0 .. n) = bf16(init_rows[r][0 .. n) + a[r, :] @ w^T), fp32 accumulation,
// one round-to-nearest-even. a: rows x kp bf16 row-major with kp = padded_k(k) (zero in the padded column);
// init_rows[r] may be null (no addend).
void gemm_rows(const uint16_t* a, int64_t rows, int64_t kp, const uint16_t* packed, int64_t n,
               const float* const* init_rows, uint16_t* const* out_rows);

// dst[2 i] = x0[i], dst[2 i + 1] = x1[i] (0 where x1 is null) for i < len: two rows made into bf16 pairs.
void interleave_pairs(const uint16_t* x0, const uint16_t* x1, int64_t len, uint16_t* dst);

// dst[i] = src[i] rounded to bf16 (to nearest even) for i < n.
void round_to_bf16(const float* src, int64_t n, uint16_t* dst);

// Pair p of two rows x0, x1 of length len (x1 null: zeros) in the strip layout of gemm_pairs_f32's A: element i
// of the pair goes to dst + ((i / kMr) * pairs + p) * kMr * 2 + (i % kMr) * 2; call with dst already offset by
// p * kMr * 2.
void interleave_strips(const uint16_t* x0, const uint16_t* x1, int64_t len, int64_t pairs, uint16_t* dst);

// fp32 out (grad_weight): for each row r < rows and each column c of packed blocks [nb0, nb1): out_rows[r][c] =
// init_rows[r][c] (or 0 where null) + sum_p a(r, p) . b(p, c). a holds strips of kMr rows, each (pairs, kMr, 2):
// row r's pair p at a + ((r / kMr) * pairs + p) * kMr * 2 + (r % kMr) * 2, so that a strip is one contiguous run
// (interleave_strips writes it). packed holds blocks nb0.. as [block][pairs][kNr][2]. Columns at or past n are
// not written. init_rows[r] may equal out_rows[r] (accumulation in place).
void gemm_pairs_f32(const uint16_t* a, int64_t rows, int64_t pairs, const uint16_t* packed, int64_t n, int64_t nb0,
                    int64_t nb1, const float* const* init_rows, float* const* out_rows);

}  // namespace lsvit::cpu::bf16_gemm
