"""The Triton kernels of the patch embedding: forward, grad_weight, grad_video and the row reductions.

Importing this module imports Triton; ``triton_patch_embed.py`` (the backend) imports it only when Triton is
there. Every kernel is a plain ``@triton.jit`` function called with explicit block sizes, so it runs under
``TRITON_INTERPRET=1`` and compiles ahead of time; choosing block sizes is ``triton_tuning.py``'s job.

Notation (docs/op.md): the video is the logical ``(B, T, C, H, W)`` view with any strides; a patch token
``m`` in ``[0, M = B T' N)`` is ordered ``(b, step, gy, gx)``; the reduction index ``k`` in ``[0, K = C t ph pw)``
is ordered ``(c, dt, dh, dw)`` (``conv.weight.view(E, -1)``), so a run of ``pw`` consecutive ``k`` is one patch
row, contiguous in W for the usual layouts. Token indices are int32 (the wrapper checks ``M < 2^31``); every
offset is int32 when every offset of the launch fits (fewer registers for the gathered tiles' addresses) and
int64 when any passes 2^31 - 1 (``WIDE``, chosen by the wrapper): videos pass 2^31 elements.

The index math mirrors ``geometry.tubelet_origin`` / ``geometry.k_offset`` (the Python statement of it).
"""

from __future__ import annotations

import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------------------------
# Index helpers: the Triton statement of geometry.tubelet_origin / geometry.k_offset.


@triton.jit
def widen(x, WIDE: tl.constexpr):
    """``x`` as int64 when the launch's offsets can pass 2^31 - 1, else unchanged (int32)."""
    if WIDE:
        x = x.to(tl.int64)
    return x


@triton.jit
def tubelet_offset(
    token,  # (BLOCK,) int32 patch-token indices in [0, M)
    grid_h,
    grid_w,
    steps,
    stride_b,
    stride_t,
    stride_h,
    stride_w,
    PATCH_T: tl.constexpr,
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Element offset of each token's first (front, top-left) pixel in the strided video."""
    gx = token % grid_w
    gy = (token // grid_w) % grid_h
    group = token // (grid_w * grid_h)  # b * T' + step
    step = group % steps
    b = group // steps
    return (
        widen(b, WIDE) * stride_b
        + widen(step * PATCH_T, WIDE) * stride_t
        + widen(gy * PATCH_H, WIDE) * stride_h
        + widen(gx * PATCH_W, WIDE) * stride_w
    )


@triton.jit
def k_offset(
    k,  # (BLOCK_K,) int32 reduction indices in [0, K)
    stride_t,
    stride_c,
    stride_h,
    stride_w,
    PATCH_T: tl.constexpr,
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Element offset of ``k = (c, dt, dh, dw)`` inside a tubelet; divisions by constexprs become shifts."""
    dw = k % PATCH_W
    row = k // PATCH_W
    dh = row % PATCH_H
    dt = (row // PATCH_H) % PATCH_T
    c = row // (PATCH_H * PATCH_T)
    return (
        widen(c, WIDE) * stride_c + widen(dt, WIDE) * stride_t + widen(dh, WIDE) * stride_h + widen(dw, WIDE) * stride_w
    )


@triton.jit
def token_row(token, num_spatial, CLS_SLOTS: tl.constexpr, WIDE: tl.constexpr):
    """Row of each patch token in the ``(B T' (S + N), E)`` token buffer (CLS slots skipped)."""
    group = token // num_spatial
    return widen(group, WIDE) * (num_spatial + CLS_SLOTS) + CLS_SLOTS + token % num_spatial


@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) in grouped order: GROUP_M row tiles sweep all column tiles together, so the row tiles
    (gathered video) and the column operand (weight) stay in L2 while they are reused."""
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_m
    pid_n = (pid % width) // group_m
    return pid_m, pid_n


@triton.jit
def rounded_to(x, dtype: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    """``x.to(dtype)``. Triton's interpreter truncates float32 -> bfloat16 (compiled code rounds to nearest
    even), so there the value is first rounded to nearest even on its bits, which makes truncation exact."""
    if INTERPRET_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


# ----------------------------------------------------------------------------------------------------------------
# Forward


@triton.jit
def patch_embed_fwd_kernel(
    # pointers
    video_ptr,  # logical (B, T, C, H, W), any strides; the weight's dtype or uint8
    weight_ptr,  # (E, K) contiguous
    bias_ptr,  # (E,) or a dummy when not HAS_BIAS
    pos_ptr,  # (S + N, E) or (T' (S + N), E) contiguous, or a dummy
    cls_ptr,  # (E,) or a dummy when CLS_SLOTS == 0
    out_ptr,  # (B, T', S + N, E) contiguous; its element type is the output dtype
    # sizes
    num_tokens,  # M = B T' N patch tokens
    embed_dim,  # E
    patch_dim,  # K = C t ph pw
    grid_h,
    grid_w,
    steps,  # T'
    # video strides (elements), logical (B, T, C, H, W) order
    stride_b,
    stride_t,
    stride_c,
    stride_h,
    stride_w,
    # meta-parameters
    PATCH_T: tl.constexpr,
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    CLS_SLOTS: tl.constexpr,  # S: 1 writes the CLS slot of each step, 0 none
    HAS_BIAS: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_PER_TOKEN: tl.constexpr,  # pos has T' (S + N) rows instead of S + N broadcast over time
    WIDE: tl.constexpr,  # some offset of this launch passes 2^31 - 1: int64 offsets
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for float32; ignored for 16-bit operands
    INTERPRET_BF16: tl.constexpr,  # interpreter + bf16: fp32 dot, hand-rounded stores (see rounded_to)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Tokens of one (BLOCK_M patch tokens) x (BLOCK_N embedding columns) tile, in one pass.

    The program gathers its tokens' tubelets straight from the strided video (no im2col buffer), walks K in
    BLOCK_K steps ordered (c, dt, dh, dw) so each load row is a run of contiguous dw pixels, accumulates
    ``X W^T`` in float32 with ``tl.dot`` (tensor cores), adds bias and pos_embed to the float32 accumulator and
    stores once. Programs whose tile holds the first patch of a time step also write that step's CLS slot
    (cls + its pos row), so the whole token buffer is written by this one launch.

    Per tile (v, w = bytes per video, weight element): reads ``BLOCK_M K v`` (video), ``K BLOCK_N w`` (weight),
    ``BLOCK_M BLOCK_N w`` (pos, when given), writes ``BLOCK_M BLOCK_N w``; ``2 BLOCK_M BLOCK_N K`` FLOPs. For
    B=32, T=16, 224x224, 2x16x16, E=768 bf16 with 128 x 128 tiles: 0.39 + 0.39 + 0.03 MB read, 0.03 MB written,
    50 MFLOP per tile (61 FLOP per byte of L2 traffic), 2352 tiles. From DRAM each operand crosses once (the
    grouped order keeps a group's video tiles and the weight in L2): 157 MB read + 78 MB written for 118 GFLOP,
    505 FLOP/byte, above the H100 ridge (790 TFLOP/s / 3 TB/s = 263), so compute-bound: floor 150 us
    (``triton_tuning.roofline_floor_us``; docs/triton.md). Block sizes: ``triton_tuning.py``.
    """
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(num_tokens, BLOCK_M), tl.cdiv(embed_dim, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < num_tokens
    n_mask = offs_n < embed_dim
    token = tl.where(m_mask, offs_m, 0)

    origin = tubelet_offset(
        token, grid_h, grid_w, steps, stride_b, stride_t, stride_h, stride_w, PATCH_T, PATCH_H, PATCH_W, WIDE
    )  # (BLOCK_M,)
    compute_dtype = tl.float32 if INTERPRET_BF16 else weight_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, patch_dim, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < patch_dim
        inner = k_offset(offs_k, stride_t, stride_c, stride_h, stride_w, PATCH_T, PATCH_H, PATCH_W, WIDE)
        x = tl.load(video_ptr + (origin[:, None] + inner[None, :]), mask=m_mask[:, None] & k_mask[None, :], other=0)
        w = tl.load(
            weight_ptr + (offs_n[None, :] * patch_dim + offs_k[:, None]),
            mask=k_mask[:, None] & n_mask[None, :],
            other=0.0,
        )  # (BLOCK_K, BLOCK_N) = W^T tile
        acc = tl.dot(x.to(compute_dtype), w.to(compute_dtype), acc, input_precision=DOT_PRECISION)

    # epilogue, while the accumulator is still float32
    num_spatial = grid_h * grid_w
    row = token_row(token, num_spatial, CLS_SLOTS, WIDE)  # (BLOCK_M,) rows of the token buffer
    step = (token // num_spatial) % steps
    tile_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_POS:
        pos_row = CLS_SLOTS + token % num_spatial
        if POS_PER_TOKEN:
            pos_row += step * (num_spatial + CLS_SLOTS)
        pos = tl.load(pos_ptr + (widen(pos_row, WIDE)[:, None] * embed_dim + offs_n[None, :]), mask=tile_mask)
        acc += pos.to(tl.float32)
    out_dtype = out_ptr.dtype.element_ty
    tl.store(
        out_ptr + (row[:, None] * embed_dim + offs_n[None, :]),
        rounded_to(acc, out_dtype, INTERPRET_BF16),
        mask=tile_mask,
    )

    if CLS_SLOTS:
        # the tile's tokens that open a time step write the CLS slot just before them
        opens_step = m_mask & (token % num_spatial == 0)
        cls_mask = opens_step[:, None] & n_mask[None, :]
        cls = tl.load(cls_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        cls_rows = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32) + cls[None, :]
        if HAS_POS:
            cls_pos_row = tl.zeros_like(step)
            if POS_PER_TOKEN:
                cls_pos_row = step * (num_spatial + CLS_SLOTS)
            cls_pos_offs = widen(cls_pos_row, WIDE)[:, None] * embed_dim + offs_n[None, :]
            cls_pos = tl.load(pos_ptr + cls_pos_offs, mask=cls_mask)
            cls_rows += cls_pos.to(tl.float32)
        tl.store(
            out_ptr + ((row - 1)[:, None] * embed_dim + offs_n[None, :]),
            rounded_to(cls_rows, out_dtype, INTERPRET_BF16),
            mask=cls_mask,
        )


# ----------------------------------------------------------------------------------------------------------------
# Backward


@triton.jit
def patch_embed_grad_weight_kernel(
    # pointers
    grad_ptr,  # (B, T', S + N, E) contiguous grad of the tokens
    video_ptr,  # logical (B, T, C, H, W), any strides
    partial_ptr,  # (SPLITS, E, K) float32: one partial grad_weight per split of the tokens
    # sizes
    num_tokens,  # M
    embed_dim,  # E
    patch_dim,  # K
    grid_h,
    grid_w,
    steps,
    tokens_per_split,  # a multiple of BLOCK_M
    # video strides
    stride_b,
    stride_t,
    stride_c,
    stride_h,
    stride_w,
    # meta-parameters
    PATCH_T: tl.constexpr,
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    CLS_SLOTS: tl.constexpr,
    WIDE: tl.constexpr,  # some offset of this launch passes 2^31 - 1: int64 offsets
    DOT_PRECISION: tl.constexpr,
    INTERPRET_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,  # tokens per reduction step
    BLOCK_N: tl.constexpr,  # rows of grad_weight (E)
    BLOCK_K: tl.constexpr,  # columns of grad_weight (K)
    GROUP_M: tl.constexpr,  # grouping of the (E, K) tiles
):
    """One (BLOCK_N of E) x (BLOCK_K of K) tile of grad_weight over one split of the tokens: an implicit GEMM
    ``G^T X`` that re-reads the video instead of storing a patch matrix.

    The program walks its ``tokens_per_split`` tokens in BLOCK_M steps, loading a ``(BLOCK_N, BLOCK_M)`` tile of
    grad_tokens (patch rows only) and gathering the ``(BLOCK_M, BLOCK_K)`` video tile exactly as the forward
    does, accumulating in float32; it stores a float32 partial, summed over splits by the wrapper (splits give
    the GPU enough programs when E x K has few tiles; a deterministic sum, no atomics).

    Per step: reads ``BLOCK_M BLOCK_N g + BLOCK_M BLOCK_K v`` bytes, ``2 BLOCK_M BLOCK_N BLOCK_K`` FLOPs; per
    program one ``BLOCK_N BLOCK_K 4``-byte store. Reference shape (B=32, T=16, 224, 2x16x16, E=768, bf16) with
    sm_90's 64 x 128 x 128: 72 tiles x 4 splits of 49 steps, 32 KB and 2.1 MFLOP per step; from DRAM 77 MB of
    grad + 154 MB of video read, 4 x 4.7 MB of partials written, 118 GFLOP: compute-bound, floor 150 us on H100.
    """
    pid = tl.program_id(0)
    split = tl.program_id(1)
    pid_n, pid_k = grouped_tile(pid, tl.cdiv(embed_dim, BLOCK_N), tl.cdiv(patch_dim, BLOCK_K), GROUP_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    n_mask = offs_n < embed_dim
    k_mask = offs_k < patch_dim
    inner = k_offset(offs_k, stride_t, stride_c, stride_h, stride_w, PATCH_T, PATCH_H, PATCH_W, WIDE)
    num_spatial = grid_h * grid_w
    compute_dtype = tl.float32 if INTERPRET_BF16 else grad_ptr.dtype.element_ty

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    start = split * tokens_per_split
    stop = tl.minimum(start + tokens_per_split, num_tokens)
    for m0 in range(start, stop, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_mask = offs_m < stop
        token = tl.where(m_mask, offs_m, 0)
        row = token_row(token, num_spatial, CLS_SLOTS, WIDE)
        g = tl.load(
            grad_ptr + (row[None, :] * embed_dim + offs_n[:, None]), mask=n_mask[:, None] & m_mask[None, :], other=0.0
        )  # (BLOCK_N, BLOCK_M) = G^T tile
        origin = tubelet_offset(
            token, grid_h, grid_w, steps, stride_b, stride_t, stride_h, stride_w, PATCH_T, PATCH_H, PATCH_W, WIDE
        )
        x = tl.load(video_ptr + (origin[:, None] + inner[None, :]), mask=m_mask[:, None] & k_mask[None, :], other=0)
        acc = tl.dot(g.to(compute_dtype), x.to(compute_dtype), acc, input_precision=DOT_PRECISION)

    out = partial_ptr + split.to(tl.int64) * embed_dim * patch_dim
    tl.store(out + (offs_n[:, None] * patch_dim + offs_k[None, :]), acc, mask=n_mask[:, None] & k_mask[None, :])


@triton.jit
def patch_embed_grad_video_kernel(
    # pointers
    grad_ptr,  # (B, T', S + N, E) contiguous
    weight_ptr,  # (E, K) contiguous
    grad_video_ptr,  # (B, T, C, H, W) with the strides below; its element type is the output dtype
    # sizes
    num_tokens,
    embed_dim,
    patch_dim,
    grid_h,
    grid_w,
    steps,
    # grad_video strides
    stride_b,
    stride_t,
    stride_c,
    stride_h,
    stride_w,
    # meta-parameters
    PATCH_T: tl.constexpr,
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    CLS_SLOTS: tl.constexpr,
    WIDE: tl.constexpr,  # some offset of this launch passes 2^31 - 1: int64 offsets
    DOT_PRECISION: tl.constexpr,
    INTERPRET_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr,  # tokens
    BLOCK_N: tl.constexpr,  # columns of K (pixels of a tubelet)
    BLOCK_K: tl.constexpr,  # reduction over E
    GROUP_M: tl.constexpr,
):
    """One (BLOCK_M tokens) x (BLOCK_N of K) tile of ``G W``, scattered straight into the video gradient.

    Patches do not overlap and tile the video, so each element of grad_video is written by exactly one program
    and no patch-gradient matrix is stored. Per tile: reads ``BLOCK_M E g + E BLOCK_N w`` bytes (the weight
    from L2), writes ``BLOCK_M BLOCK_N v``, ``2 BLOCK_M BLOCK_N E`` FLOPs. Reference shape, bf16, 128 x 128:
    0.2 + 0.2 MB read, 32 KB written, 25 MFLOP per tile, 4704 tiles; from DRAM 79 MB read, 154 MB written,
    118 GFLOP: compute-bound, floor 150 us on H100.
    """
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(num_tokens, BLOCK_M), tl.cdiv(patch_dim, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < num_tokens
    n_mask = offs_n < patch_dim
    token = tl.where(m_mask, offs_m, 0)
    row = token_row(token, grid_h * grid_w, CLS_SLOTS, WIDE)
    compute_dtype = tl.float32 if INTERPRET_BF16 else grad_ptr.dtype.element_ty

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for e0 in range(0, embed_dim, BLOCK_K):
        offs_e = e0 + tl.arange(0, BLOCK_K)
        e_mask = offs_e < embed_dim
        g = tl.load(
            grad_ptr + (row[:, None] * embed_dim + offs_e[None, :]), mask=m_mask[:, None] & e_mask[None, :], other=0.0
        )
        w_mask = e_mask[:, None] & n_mask[None, :]
        w = tl.load(weight_ptr + (offs_e[:, None] * patch_dim + offs_n[None, :]), mask=w_mask, other=0.0)
        acc = tl.dot(g.to(compute_dtype), w.to(compute_dtype), acc, input_precision=DOT_PRECISION)

    origin = tubelet_offset(
        token, grid_h, grid_w, steps, stride_b, stride_t, stride_h, stride_w, PATCH_T, PATCH_H, PATCH_W, WIDE
    )
    inner = k_offset(offs_n, stride_t, stride_c, stride_h, stride_w, PATCH_T, PATCH_H, PATCH_W, WIDE)
    tl.store(
        grad_video_ptr + (origin[:, None] + inner[None, :]),
        rounded_to(acc, grad_video_ptr.dtype.element_ty, INTERPRET_BF16),
        mask=m_mask[:, None] & n_mask[None, :],
    )


@triton.jit
def patch_embed_grad_rows_kernel(
    # pointers
    grad_ptr,  # (groups, rows, E) contiguous view of grad_tokens
    partial_ptr,  # (SPLITS, rows, E) float32
    # sizes
    groups,  # B T' (pos broadcast over time) or B (pos per token)
    rows,  # S + N or T' (S + N)
    embed_dim,
    groups_per_split,
    # meta-parameters
    BLOCK_M: tl.constexpr,  # rows
    BLOCK_N: tl.constexpr,  # embedding columns
):
    """Sum of grad_tokens over the groups the pos embedding is broadcast across, for one (BLOCK_M rows) x
    (BLOCK_N of E) tile and one split of the groups: the one pass over grad_output that grad_pos, grad_bias
    (the patch rows' sum) and grad_cls (the CLS rows' sum) are read from.

    Per group step: reads ``BLOCK_M BLOCK_N g`` bytes, adds as many; one float32 tile stored per program.
    Reference shape, bf16: 77.5 MB read once, 0.6 MB x splits written: bandwidth-bound, floor 26 us on H100.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m < rows)[:, None] & (offs_n < embed_dim)[None, :]
    tile = offs_m.to(tl.int64)[:, None] * embed_dim + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    start = split * groups_per_split
    stop = tl.minimum(start + groups_per_split, groups)
    ptrs = grad_ptr + (start.to(tl.int64) * rows * embed_dim + tile)
    for _ in range(start, stop):
        acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        ptrs += rows * embed_dim  # pointer arithmetic is 64-bit
    tl.store(partial_ptr + (split.to(tl.int64) * rows * embed_dim + tile), acc, mask=mask)
