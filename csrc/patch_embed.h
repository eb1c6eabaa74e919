// Index math of the patch-embedding op, shared by the CPU and CUDA kernels (the C++ twin of geometry.py).
//
// Plain C++ (no ATen): every function is `__host__ __device__` under nvcc and `inline` otherwise, so the CPU
// kernel, compiled by the host compiler, runs exactly the arithmetic the CUDA kernel runs. All offsets are
// int64_t: a video passes 2^31 elements long before it stops fitting in memory. The `*32` forms take 32-bit
// token / k coordinates (CUDA hot loops avoid 64-bit division) and still return 64-bit offsets; the host-only
// video_read_plan chooses how the CUDA tensor-core kernel reads the video.
//
// Conventions (docs/op.md): the video is the logical (B, T, C, H, W) view with arbitrary strides; tokens are
// numbered m in [0, M), M = B T' N, in (b, step, gy, gx) row-major order; the reduction index k in [0, K),
// K = C t ph pw, runs in (c, dt, dh, dw) order, the order of conv.weight.view(E, -1); the output is
// (B, T', S + N, E) with S = 1 leading CLS slot per step when a CLS token is given.
#pragma once

#include <cstdint>
#include <initializer_list>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LSVIT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LSVIT_HOST_DEVICE inline
#endif

namespace lsvit {

// Sizes of one call, filled once on the host and passed by value to kernels.
struct PatchGeometry {
  int64_t batch, frames, channels, height, width;  // logical video (B, T, C, H, W)
  int64_t embed_dim;                               // E
  int64_t tubelet, patch_h, patch_w;               // t, ph, pw (from the weight)
  int64_t cls_slots;                               // S: 0 or 1
  // Derived (make_geometry fills them).
  int64_t steps, grid_h, grid_w, num_spatial, tokens_per_step, num_tokens, patch_dim;
};

// Element strides of the logical (B, T, C, H, W) video.
struct VideoStrides {
  int64_t b, t, c, h, w;
};

LSVIT_HOST_DEVICE PatchGeometry make_geometry(int64_t batch, int64_t frames, int64_t channels, int64_t height,
                                              int64_t width, int64_t embed_dim, int64_t tubelet, int64_t patch_h,
                                              int64_t patch_w, int64_t cls_slots) {
  PatchGeometry g{batch,     frames, channels, height, width, embed_dim, tubelet, patch_h, patch_w,
                  cls_slots, 0,      0,        0,      0,     0,         0,       0};
  g.steps = frames / tubelet;
  g.grid_h = height / patch_h;
  g.grid_w = width / patch_w;
  g.num_spatial = g.grid_h * g.grid_w;              // N
  g.tokens_per_step = cls_slots + g.num_spatial;    // S + N
  g.num_tokens = batch * g.steps * g.num_spatial;   // M: patch tokens of the whole batch, CLS excluded
  g.patch_dim = channels * tubelet * patch_h * patch_w;  // K
  return g;
}

// Element offset of the top-left-front pixel of patch token m (geometry.tubelet_origin).
LSVIT_HOST_DEVICE int64_t tubelet_origin_offset(int64_t m, const PatchGeometry& g, const VideoStrides& s) {
  const int64_t gx = m % g.grid_w;
  const int64_t gy = (m / g.grid_w) % g.grid_h;
  const int64_t step = (m / g.num_spatial) % g.steps;
  const int64_t b = m / (g.steps * g.num_spatial);
  return b * s.b + step * g.tubelet * s.t + gy * g.patch_h * s.h + gx * g.patch_w * s.w;
}

// Element offset of reduction index k inside a tubelet, relative to its origin (geometry.k_offset).
LSVIT_HOST_DEVICE int64_t k_offset(int64_t k, const PatchGeometry& g, const VideoStrides& s) {
  const int64_t dw = k % g.patch_w;
  const int64_t dh = (k / g.patch_w) % g.patch_h;
  const int64_t dt = (k / (g.patch_w * g.patch_h)) % g.tubelet;
  const int64_t c = k / (g.patch_w * g.patch_h * g.tubelet);
  return c * s.c + dt * s.t + dh * s.h + dw * s.w;
}

// Row of patch token m in the output viewed as (B T' (S + N), E): its CLS slots are skipped.
LSVIT_HOST_DEVICE int64_t output_row(int64_t m, const PatchGeometry& g) {
  return (m / g.num_spatial) * g.tokens_per_step + g.cls_slots + m % g.num_spatial;
}

// Row of pos_embed added to patch token m: one row per slot broadcast over time, or one row per token.
LSVIT_HOST_DEVICE int64_t pos_row(int64_t m, const PatchGeometry& g, bool pos_per_token) {
  const int64_t slot = g.cls_slots + m % g.num_spatial;
  if (!pos_per_token) return slot;
  const int64_t step = (m / g.num_spatial) % g.steps;
  return step * g.tokens_per_step + slot;
}

// Row of pos_embed added to the CLS slot of (b, step): row 0 of the step's slots.
LSVIT_HOST_DEVICE int64_t cls_pos_row(int64_t step, const PatchGeometry& g, bool pos_per_token) {
  return pos_per_token ? step * g.tokens_per_step : 0;
}

// 32-bit forms for the CUDA kernels, whose hot loops must not divide 64-bit integers (a slow-path call on the
// GPU). Valid when M and K are below 2^31, which the CUDA host code checks; offsets stay int64.
struct TokenCoords {
  int32_t b, step, gy, gx;
};

LSVIT_HOST_DEVICE TokenCoords token_coords32(int32_t m, const PatchGeometry& g) {
  const int32_t grid_w = static_cast<int32_t>(g.grid_w), grid_h = static_cast<int32_t>(g.grid_h);
  const int32_t steps = static_cast<int32_t>(g.steps);
  const int32_t row = m / grid_w;  // b * T' * gh + step * gh + gy
  const int32_t frame = row / grid_h;
  return TokenCoords{frame / steps, frame % steps, row % grid_h, m % grid_w};
}

LSVIT_HOST_DEVICE int64_t tubelet_origin_offset(const TokenCoords& t, const PatchGeometry& g, const VideoStrides& s) {
  return t.b * s.b + static_cast<int64_t>(t.step) * g.tubelet * s.t + static_cast<int64_t>(t.gy) * g.patch_h * s.h +
         static_cast<int64_t>(t.gx) * g.patch_w * s.w;
}

LSVIT_HOST_DEVICE int64_t output_row(const TokenCoords& t, const PatchGeometry& g) {
  const int64_t slot = g.cls_slots + static_cast<int64_t>(t.gy) * g.grid_w + t.gx;
  return (static_cast<int64_t>(t.b) * g.steps + t.step) * g.tokens_per_step + slot;
}

LSVIT_HOST_DEVICE int64_t pos_row(const TokenCoords& t, const PatchGeometry& g, bool pos_per_token) {
  const int64_t slot = g.cls_slots + static_cast<int64_t>(t.gy) * g.grid_w + t.gx;
  return pos_per_token ? t.step * g.tokens_per_step + slot : slot;
}

LSVIT_HOST_DEVICE int64_t k_offset32(int32_t k, const PatchGeometry& g, const VideoStrides& s) {
  const int32_t pw = static_cast<int32_t>(g.patch_w), ph = static_cast<int32_t>(g.patch_h);
  const int32_t t = static_cast<int32_t>(g.tubelet);
  const int32_t row = k / pw;  // (c * t + dt) * ph + dh
  const int32_t slab = row / ph;
  return static_cast<int64_t>(slab / t) * s.c + static_cast<int64_t>(slab % t) * s.t +
         static_cast<int64_t>(row % ph) * s.h + static_cast<int64_t>(k % pw) * s.w;
}

// The CUDA forward may read a channels-last video (C stride 1) in the reduction order (dt, dh, dw, c), where
// consecutive k are consecutive in memory, with the weight permuted to match (E, t, ph, pw, C). This maps such
// a k' to the weight's own k in (c, dt, dh, dw) order.
LSVIT_HOST_DEVICE int32_t weight_k_of_channels_last32(int32_t k, const PatchGeometry& g) {
  const int32_t channels = static_cast<int32_t>(g.channels), pw = static_cast<int32_t>(g.patch_w);
  const int32_t ph = static_cast<int32_t>(g.patch_h), t = static_cast<int32_t>(g.tubelet);
  const int32_t pixel = k / channels;  // (dt * ph + dh) * pw + dw
  const int32_t c = k % channels;
  return (c * t) * ph * pw + pixel;  // ((c * t + dt) * ph + dh) * pw + dw
}

// How the CUDA tensor-core forward reads the video: chunks of `vec` consecutive k (8, 2 or 1 elements) in the
// weight's k order, or in the channels-last order above, whichever allows the wider chunks. A chunk must lie in
// one run of consecutive k that are consecutive in memory, and start aligned to `vec` elements for every token.
struct VideoReadPlan {
  int vec = 1;
  bool channels_last_order = false;
};

// Widest chunk in {8, 2}, else 1, that divides `run` and the stride of every dimension in `outer` longer than 1,
// with the data address aligned to it.
inline int widest_chunk(uintptr_t address, int64_t element_size, int64_t run, const int64_t (*outer)[2],
                        int outer_count) {
  for (const int vec : {8, 2}) {
    bool aligned = run % vec == 0 && address % (vec * element_size) == 0;
    for (int i = 0; i < outer_count; ++i) aligned = aligned && (outer[i][1] == 1 || outer[i][0] % vec == 0);
    if (aligned) return vec;
  }
  return 1;
}

inline VideoReadPlan video_read_plan(uintptr_t address, int64_t element_size, const PatchGeometry& g,
                                     const VideoStrides& s) {
  // Weight order (c, dt, dh, dw): runs of pw pixels along a patch row when the W stride is 1.
  const int64_t weight_order[4][2] = {{s.b, g.batch}, {s.t, g.frames}, {s.c, g.channels}, {s.h, g.height}};
  VideoReadPlan plan;
  plan.vec = widest_chunk(address, element_size, s.w == 1 ? g.patch_w : 1, weight_order, 4);
  // Channels-last order (dt, dh, dw, c), C stride 1: runs of pw * C values along a patch row when pixels are
  // packed (W stride C), else runs of C values and the W stride must keep chunks aligned.
  if (s.c == 1 && g.channels > 1) {
    const bool packed = s.w == g.channels;
    const int64_t channels_last[4][2] = {{s.b, g.batch}, {s.t, g.frames}, {s.h, g.height}, {s.w, g.width}};
    const int vec = widest_chunk(address, element_size, packed ? g.patch_w * g.channels : g.channels, channels_last,
                                 packed ? 3 : 4);
    if (vec > plan.vec) plan = VideoReadPlan{vec, true};
  }
  return plan;
}

// Largest k_offset of the geometry (strides are never negative in torch): the CUDA kernels keep k offsets in
// int32 when this fits.
LSVIT_HOST_DEVICE int64_t max_k_offset(const PatchGeometry& g, const VideoStrides& s) {
  return (g.channels - 1) * s.c + (g.tubelet - 1) * s.t + (g.patch_h - 1) * s.h + (g.patch_w - 1) * s.w;
}

// Contiguous (B, T, C, H, W) strides, for the gradient of the video.
LSVIT_HOST_DEVICE VideoStrides contiguous_strides(const PatchGeometry& g) {
  const int64_t w = 1, h = g.width, c = g.height * g.width, t = g.channels * c, b = g.frames * t;
  return VideoStrides{b, t, c, h, w};
}

}  // namespace lsvit
