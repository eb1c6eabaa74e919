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
    stride_b,
    stride_t,
    stride_h,
    stride_w,
    GRID_H: tl.constexpr,
    GRID_W: tl.constexpr,
    STEPS: tl.constexpr,
    PATCH_T: tl.constexpr,
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Element offset of each token's first (front, top-left) pixel in the strided video. The grid is
    compile-time, so the divisions are multiply-high sequences, not the ~20-instruction runtime division."""
    gx = token % GRID_W
    gy = (token // GRID_W) % GRID_H
    group = token // (GRID_W * GRID_H)  # b * T' + step
    step = group % STEPS
    b = group // STEPS
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
    CHANNELS: tl.constexpr,
    PATCH_T: tl.constexpr,
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Element offset of reduction index ``k`` inside a tubelet; divisions by constexprs become shifts.

    ``CHANNELS_LAST == False``: ``k = (c, dt, dh, dw)``, the order of ``conv.weight.view(E, -1)``; a run of
    ``PATCH_W`` consecutive k is one contiguous patch row when ``stride_w == 1``.
    ``CHANNELS_LAST == True`` (the wrapper checks ``stride_w == CHANNELS * stride_c``): ``k = (dt, dh, dw, c)``,
    so a run of ``PATCH_W * CHANNELS`` consecutive k is one contiguous row of interleaved pixels
    (``stride_c == 1``, as decoders write frames), and the weight is permuted to match.
    """
    if CHANNELS_LAST:
        pixel = k % (PATCH_W * CHANNELS)  # dw * C + c
        row = k // (PATCH_W * CHANNELS)
        dh = row % PATCH_H
        dt = row // PATCH_H
        return widen(pixel, WIDE) * stride_c + widen(dh, WIDE) * stride_h + widen(dt, WIDE) * stride_t
    dw = k % PATCH_W
    row = k // PATCH_W
    dh = row % PATCH_H
    dt = (row // PATCH_H) % PATCH_T
    c = row // (PATCH_H * PATCH_T)
    return (
        widen(c, WIDE) * stride_c + widen(dt, WIDE) * stride_t + widen(dh, WIDE) * stride_h + widen(dw, WIDE) * stride_w
    )


@triton.jit
def token_row(token, NUM_SPATIAL: tl.constexpr, CLS_SLOTS: tl.constexpr, WIDE: tl.constexpr):
    """Row of each patch token in the ``(B T' (S + N), E)`` token buffer (CLS slots skipped)."""
    group = token // NUM_SPATIAL
    return widen(group, WIDE) * (NUM_SPATIAL + CLS_SLOTS) + CLS_SLOTS + token % NUM_SPATIAL


@triton.jit
def store_tokens(
    acc, token, m_mask, offs_n, n_mask, out_ptr, bias_ptr, pos_ptr, cls_ptr, embed_dim,
    NUM_SPATIAL: tl.constexpr, STEPS: tl.constexpr, CLS_SLOTS: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_POS: tl.constexpr, POS_PER_TOKEN: tl.constexpr, WIDE: tl.constexpr, INTERPRET_BF16: tl.constexpr,
):  # fmt: skip
    """A forward's epilogue on a (BLOCK_M tokens, BLOCK_N) accumulator, in its own dtype: bias and positional rows
    added, the tile stored in the token buffer, and the CLS slot (plus its positional row) written just before
    each of the tile's tokens that opens a time step."""
    row = token_row(token, NUM_SPATIAL, CLS_SLOTS, WIDE)  # rows of the token buffer
    step = (token // NUM_SPATIAL) % STEPS
    tile_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(acc.dtype)[None, :]
    if HAS_POS:
        pos_row = CLS_SLOTS + token % NUM_SPATIAL
        if POS_PER_TOKEN:
            pos_row += step * (NUM_SPATIAL + CLS_SLOTS)
        pos = tl.load(pos_ptr + (widen(pos_row, WIDE)[:, None] * embed_dim + offs_n[None, :]), mask=tile_mask)
        acc += pos.to(acc.dtype)
    out_dtype = out_ptr.dtype.element_ty
    tl.store(
        out_ptr + (row[:, None] * embed_dim + offs_n[None, :]),
        rounded_to(acc, out_dtype, INTERPRET_BF16),
        mask=tile_mask,
    )
    if CLS_SLOTS:
        opens_step = m_mask & (token % NUM_SPATIAL == 0)
        cls_mask = opens_step[:, None] & n_mask[None, :]
        cls = tl.load(cls_ptr + offs_n, mask=n_mask, other=0.0).to(acc.dtype)
        cls_rows = tl.zeros_like(acc) + cls[None, :]
        if HAS_POS:
            cls_pos_row = tl.zeros_like(step)
            if POS_PER_TOKEN:
                cls_pos_row = step * (NUM_SPATIAL + CLS_SLOTS)
            cls_pos_offs = widen(cls_pos_row, WIDE)[:, None] * embed_dim + offs_n[None, :]
            cls_rows += tl.load(pos_ptr + cls_pos_offs, mask=cls_mask).to(acc.dtype)
        tl.store(
            out_ptr + ((row - 1)[:, None] * embed_dim + offs_n[None, :]),
            rounded_to(cls_rows, out_dtype, INTERPRET_BF16),
            mask=cls_mask,
        )


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


@triton.jit
def unpacked_bytes(words, ROWS: tl.constexpr, COLS: tl.constexpr):
    """The ``(ROWS, COLS)`` bytes of a ``(ROWS, COLS // 4)`` int32 tile, little-endian: byte ``i`` of word ``j``
    is column ``4 j + i``. Values 0..255, as int32."""
    b0 = words & 0xFF
    b1 = (words >> 8) & 0xFF
    b2 = (words >> 16) & 0xFF
    b3 = (words >> 24) & 0xFF
    # join stacks on a new last axis: [..., j, a, p] = byte 2 a + p of word j, which flattens to column 4 j + 2 a + p
    return tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), (ROWS, COLS))


# ----------------------------------------------------------------------------------------------------------------
# Forward


@triton.jit
def patch_embed_fwd_kernel(
    # pointers
    video_ptr,  # logical (B, T, C, H, W), any strides; the weight's dtype or uint8
    weight_ptr,  # (E, K) contiguous, K in this launch's k order (k_offset)
    bias_ptr,  # (E,) or a dummy when not HAS_BIAS
    pos_ptr,  # (S + N, E) or (T' (S + N), E) contiguous, or a dummy
    cls_ptr,  # (E,) or a dummy when CLS_SLOTS == 0
    out_ptr,  # (B, T', S + N, E) contiguous; its element type is the output dtype
    # sizes that vary between calls of one model (batch, embedding width)
    num_tokens,  # M = B T' N patch tokens
    embed_dim,  # E
    # video strides (elements), logical (B, T, C, H, W) order
    stride_b,
    stride_t,
    stride_c,
    stride_h,
    stride_w,
    # geometry, compile-time: index divisions become multiply-high sequences and K's extent is known
    CHANNELS: tl.constexpr,
    GRID_H: tl.constexpr,
    GRID_W: tl.constexpr,
    STEPS: tl.constexpr,  # T'
    PATCH_T: tl.constexpr,
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,  # k order (dt, dh, dw, c) for stride_c == 1 videos (k_offset)
    CLS_SLOTS: tl.constexpr,  # S: 1 writes the CLS slot of each step, 0 none
    HAS_BIAS: tl.constexpr,
    HAS_POS: tl.constexpr,
    POS_PER_TOKEN: tl.constexpr,  # pos has T' (S + N) rows instead of S + N broadcast over time
    WIDE: tl.constexpr,  # some offset of this launch passes 2^31 - 1: int64 offsets
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for float32; ignored for 16-bit operands
    INTERPRET_BF16: tl.constexpr,  # interpreter + bf16: fp32 dot, hand-rounded stores (see rounded_to)
    VIDEO_AS_B: tl.constexpr,  # compute (X W^T)^T = W X^T: the video tile is the dot's B operand
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Tokens of one (BLOCK_M patch tokens) x (BLOCK_N embedding columns) tile, in one pass.

    The program gathers its tokens' tubelets straight from the strided video (no im2col buffer), walks K in
    BLOCK_K steps ordered so each load row is a run of contiguous pixels (k_offset), accumulates ``X W^T`` in
    float32 with ``tl.dot`` (tensor cores), adds bias and pos_embed to the float32 accumulator and stores once.
    Programs whose tile holds the first patch of a time step also write that step's CLS slot (cls + its pos
    row), so the whole token buffer is written by this one launch.

    ``VIDEO_AS_B`` (set for uint8 videos): the tile is computed transposed, ``W X^T``, so the converted video
    tile is the B operand. sm_90's wgmma reads B from shared memory only, so the uint8 -> 16-bit conversion is
    stored to shared memory before the MMA; as the A operand it would feed wgmma from registers, which ptxas
    serializes (advisory C7515: every wgmma waits for the previous one).

    Per tile (v, w = bytes per video, weight element): reads ``BLOCK_M K v`` (video), ``K BLOCK_N w`` (weight),
    ``BLOCK_M BLOCK_N w`` (pos, when given), writes ``BLOCK_M BLOCK_N w``; ``2 BLOCK_M BLOCK_N K`` FLOPs. For
    B=32, T=16, 224x224, 2x16x16, E=768 bf16 with 128 x 128 tiles: 0.39 + 0.39 + 0.03 MB read, 0.03 MB written,
    50 MFLOP per tile (61 FLOP per byte of L2 traffic), 2352 tiles. From DRAM each operand crosses once (the
    grouped order keeps a group's video tiles and the weight in L2): 157 MB read + 78 MB written for 118 GFLOP,
    505 FLOP/byte, above the H100 ridge (790 TFLOP/s / 3 TB/s = 263), so compute-bound: floor 150 us
    (``triton_tuning.roofline_floor_us``; docs/triton.md). Block sizes: ``triton_tuning.py``.
    """
    NUM_SPATIAL: tl.constexpr = GRID_H * GRID_W
    PATCH_DIM: tl.constexpr = CHANNELS * PATCH_T * PATCH_H * PATCH_W
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(num_tokens, BLOCK_M), tl.cdiv(embed_dim, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < num_tokens
    n_mask = offs_n < embed_dim
    token = tl.where(m_mask, offs_m, 0)

    origin = tubelet_offset(
        token, stride_b, stride_t, stride_h, stride_w, GRID_H, GRID_W, STEPS, PATCH_T, PATCH_H, PATCH_W, WIDE
    )  # (BLOCK_M,)
    compute_dtype = tl.float32 if INTERPRET_BF16 else weight_ptr.dtype.element_ty
    if VIDEO_AS_B:
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, PATCH_DIM, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < PATCH_DIM
        inner = k_offset(
            offs_k, stride_t, stride_c, stride_h, stride_w, CHANNELS, PATCH_T, PATCH_H, PATCH_W, CHANNELS_LAST, WIDE
        )
        if VIDEO_AS_B:
            x_t = tl.load(
                video_ptr + (origin[None, :] + inner[:, None]), mask=k_mask[:, None] & m_mask[None, :], other=0
            )  # (BLOCK_K, BLOCK_M) = X^T tile
            w = tl.load(
                weight_ptr + (offs_n[:, None] * PATCH_DIM + offs_k[None, :]),
                mask=n_mask[:, None] & k_mask[None, :],
                other=0.0,
            )  # (BLOCK_N, BLOCK_K) = W tile
            acc_t = tl.dot(w.to(compute_dtype), x_t.to(compute_dtype), acc_t, input_precision=DOT_PRECISION)
        else:
            x = tl.load(video_ptr + (origin[:, None] + inner[None, :]), mask=m_mask[:, None] & k_mask[None, :], other=0)
            w = tl.load(
                weight_ptr + (offs_n[None, :] * PATCH_DIM + offs_k[:, None]),
                mask=k_mask[:, None] & n_mask[None, :],
                other=0.0,
            )  # (BLOCK_K, BLOCK_N) = W^T tile
            acc = tl.dot(x.to(compute_dtype), w.to(compute_dtype), acc, input_precision=DOT_PRECISION)
    if VIDEO_AS_B:
        acc = tl.trans(acc_t)

    # epilogue, while the accumulator is still float32
    store_tokens(
        acc, token, m_mask, offs_n, n_mask, out_ptr, bias_ptr, pos_ptr, cls_ptr, embed_dim,
        NUM_SPATIAL, STEPS, CLS_SLOTS, HAS_BIAS, HAS_POS, POS_PER_TOKEN, WIDE, INTERPRET_BF16,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Backward


@triton.jit
def patch_embed_grad_weight_kernel(
    # pointers
    grad_ptr,  # (B, T', S + N, E) contiguous grad of the tokens
    video_ptr,  # logical (B, T, C, H, W), any strides
    partial_ptr,  # (pieces, E, K) float32: slot j of a tile holds its j-th program's partial, K in k order
    # sizes
    num_tokens,  # M
    embed_dim,  # E
    pieces,  # partial slots per tile: the most programs any tile is shared by
    # video strides
    stride_b,
    stride_t,
    stride_c,
    stride_h,
    stride_w,
    # geometry, compile-time (see the forward)
    CHANNELS: tl.constexpr,
    GRID_H: tl.constexpr,
    GRID_W: tl.constexpr,
    STEPS: tl.constexpr,
    PATCH_T: tl.constexpr,
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    # meta-parameters
    CLS_SLOTS: tl.constexpr,
    WIDE: tl.constexpr,  # some offset of this launch passes 2^31 - 1: int64 offsets
    DOT_PRECISION: tl.constexpr,
    INTERPRET_BF16: tl.constexpr,
    VIDEO_WORDS: tl.constexpr,  # uint8 video read as int32 words of 4 pixels (below; the wrapper checks it can be)
    EVEN_N: tl.constexpr,  # embed_dim % BLOCK_N == 0: the loads in the loop are masked on the tokens only
    BLOCK_M: tl.constexpr,  # tokens per reduction step
    BLOCK_N: tl.constexpr,  # rows of grad_weight (E)
    BLOCK_K: tl.constexpr,  # columns of grad_weight (K)
    GROUP_M: tl.constexpr,  # grouping of the (E, K) tiles
):
    """grad_weight ``G^T X`` as an implicit GEMM over the video, scheduled stream-K: every program does the same
    number of token steps (to one), so a grid of exactly the resident CTA slots (or a multiple) leaves no tail
    wave.

    The work is the flattened range of (tile, token step) pairs, tile-major: a (BLOCK_N of E) x (BLOCK_K of K)
    tile of grad_weight needs ``cdiv(M, BLOCK_M)`` steps, each loading a ``(BLOCK_N, BLOCK_M)`` tile of
    grad_tokens (patch rows only) and gathering the ``(BLOCK_M, BLOCK_K)`` video tile exactly as the forward
    does. Of the ``S`` steps in all, each of the ``P`` programs walks a run of ``S // P`` or ``S // P + 1``
    consecutive steps (``triton_tuning.stream_k``): the tail of one tile and the head of the next, or more tiles
    when its run is long. Per tile it touches it accumulates in float32 and stores a float32 partial in the
    tile's slot ``p - (first program of the tile)``; the program finishing a tile zeroes the slots no program of
    that tile fills, so the wrapper's sum over slots is complete and deterministic (no atomics, no memset).

    Per step: reads ``BLOCK_M BLOCK_N g + BLOCK_M BLOCK_K v`` bytes, ``2 BLOCK_M BLOCK_N BLOCK_K`` FLOPs; per
    tile touched one ``BLOCK_N BLOCK_K 4``-byte store. Reference shape (B=32, T=16, 224, 2x16x16, E=768, bf16)
    with sm_90's 64 x 128 x 128: 72 tiles x 784 steps on 264 programs (``triton_tuning.best_programs``) of 213
    or 214 steps, each touching at most 2 tiles, 5 partial slots per tile; 32 KB and 2.1 MFLOP per step; from
    DRAM 77 MB of grad + 154 MB of video read, 5 x 4.7 MB of partials written, 118 GFLOP: compute-bound, floor
    150 us on H100.
    """
    NUM_SPATIAL: tl.constexpr = GRID_H * GRID_W
    PATCH_DIM: tl.constexpr = CHANNELS * PATCH_T * PATCH_H * PATCH_W
    pid = tl.program_id(0)
    num_pid_n = tl.cdiv(embed_dim, BLOCK_N)
    num_pid_k = tl.cdiv(PATCH_DIM, BLOCK_K)
    tile_steps = tl.cdiv(num_tokens, BLOCK_M)
    # P programs share S steps: the first S % P walk S // P + 1 steps, the others S // P (int32: the wrapper
    # checks S < 2^31). The loop nest is flattened into one software-pipelined loop, so the next tile's first
    # loads are in flight while this tile's partial is stored.
    programs = tl.num_programs(0)
    total = num_pid_n * num_pid_k * tile_steps
    short = total // programs
    longer = total % programs  # programs walking short + 1 steps
    start = pid * short + tl.minimum(pid, longer)
    stop = start + short + (pid < longer).to(tl.int32)
    slot_size = tl.cast(embed_dim, tl.int64) * PATCH_DIM
    compute_dtype = tl.float32 if INTERPRET_BF16 else grad_ptr.dtype.element_ty
    # The video's loads: elements, or int32 words of 4 pixels (VIDEO_WORDS): the same video seen with patch rows
    # (runs of PATCH_W pixels, or PATCH_W * CHANNELS interleaved ones) and every stride a quarter as long (the
    # wrapper checks the runs and strides are multiples of 4 and the pointer 4-byte aligned). The word tile is
    # unpacked in registers, so it has no MMA-operand shared layout to inherit and its copies are as wide as the
    # runs: 16 bytes, where the swizzled layout of an MN-major uint8 mma.sync operand (sm_80: 8-element vectors)
    # caps a byte tile's at 8.
    if VIDEO_WORDS:
        VEC: tl.constexpr = 4
        V_CHANNELS: tl.constexpr = 1 if CHANNELS_LAST else CHANNELS
        V_PATCH_W: tl.constexpr = (PATCH_W * CHANNELS if CHANNELS_LAST else PATCH_W) // 4
        v_ptr = video_ptr.to(tl.pointer_type(tl.int32))
        v_stride_b, v_stride_t, v_stride_h, v_stride_w = stride_b // 4, stride_t // 4, stride_h // 4, 1
        v_stride_c = 1 if CHANNELS_LAST else stride_c // 4
    else:
        VEC: tl.constexpr = 1
        V_CHANNELS: tl.constexpr = CHANNELS
        V_PATCH_W: tl.constexpr = PATCH_W
        v_ptr = video_ptr
        v_stride_b, v_stride_t, v_stride_c, v_stride_h, v_stride_w = stride_b, stride_t, stride_c, stride_h, stride_w
    for tile in tl.range(start // tile_steps, tl.cdiv(stop, tile_steps), flatten=True):
        tile_first = tile * tile_steps
        lo = tl.maximum(start, tile_first) - tile_first
        hi = tl.minimum(stop, tile_first + tile_steps) - tile_first
        # the tile's slot: programs before this one that walk part of it (its first step's owner is slot 0)
        long_steps = longer * (short + 1)
        first_owner = tl.where(
            tile_first < long_steps,
            tile_first // (short + 1),
            longer + (tile_first - long_steps) // tl.maximum(short, 1),
        )
        piece = pid - first_owner
        pid_n, pid_k = grouped_tile(tile, num_pid_n, num_pid_k, GROUP_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        n_mask = offs_n < embed_dim
        k_mask = offs_k < PATCH_DIM
        if EVEN_N:
            n_mask = tl.full((BLOCK_N,), 1, tl.int1)
        if PATCH_DIM % BLOCK_K == 0:
            k_mask = tl.full((BLOCK_K,), 1, tl.int1)
        offs_v = pid_k * (BLOCK_K // VEC) + tl.arange(0, BLOCK_K // VEC)  # the tile's video columns (or words)
        v_mask = offs_v < PATCH_DIM // VEC
        if PATCH_DIM % BLOCK_K == 0:
            v_mask = tl.full((BLOCK_K // VEC,), 1, tl.int1)
        inner = k_offset(
            offs_v, v_stride_t, v_stride_c, v_stride_h, v_stride_w, V_CHANNELS, PATCH_T, PATCH_H, V_PATCH_W,
            CHANNELS_LAST, WIDE,
        )  # fmt: skip
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for step in range(lo, hi):
            offs_m = step * BLOCK_M + tl.arange(0, BLOCK_M)
            m_mask = offs_m < num_tokens
            token = offs_m  # past M only in masked lanes: their offsets are never dereferenced
            row = token_row(token, NUM_SPATIAL, CLS_SLOTS, WIDE)
            g = tl.load(
                grad_ptr + (row[None, :] * embed_dim + offs_n[:, None]),
                mask=n_mask[:, None] & m_mask[None, :],
                other=0.0,
            )  # (BLOCK_N, BLOCK_M) = G^T tile
            origin = tubelet_offset(
                token, v_stride_b, v_stride_t, v_stride_h, v_stride_w, GRID_H, GRID_W, STEPS, PATCH_T, PATCH_H,
                V_PATCH_W, WIDE,
            )  # fmt: skip
            x = tl.load(v_ptr + (origin[:, None] + inner[None, :]), mask=m_mask[:, None] & v_mask[None, :], other=0)
            if VIDEO_WORDS:
                x = unpacked_bytes(x, BLOCK_M, BLOCK_K)
            acc = tl.dot(g.to(compute_dtype), x.to(compute_dtype), acc, input_precision=DOT_PRECISION)

        tile_offs = offs_n[:, None] * PATCH_DIM + offs_k[None, :]
        tile_mask = n_mask[:, None] & k_mask[None, :]
        tl.store(partial_ptr + (piece * slot_size + tile_offs), acc, mask=tile_mask)
        if hi == tile_steps:  # this program finishes the tile: zero the slots none of its programs fills
            for unused in range(piece + 1, pieces):
                tl.store(partial_ptr + (unused * slot_size + tile_offs), tl.zeros_like(acc), mask=tile_mask)


@triton.jit
def patch_embed_grad_video_kernel(
    # pointers
    grad_ptr,  # (B, T', S + N, E) contiguous
    weight_ptr,  # (E, K) contiguous, K in k order
    grad_video_ptr,  # (B, T, C, H, W) with the strides below; its element type is the output dtype
    # sizes
    num_tokens,
    embed_dim,
    # grad_video strides
    stride_b,
    stride_t,
    stride_c,
    stride_h,
    stride_w,
    # geometry, compile-time (see the forward)
    CHANNELS: tl.constexpr,
    GRID_H: tl.constexpr,
    GRID_W: tl.constexpr,
    STEPS: tl.constexpr,
    PATCH_T: tl.constexpr,
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    # meta-parameters
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
    PATCH_DIM: tl.constexpr = CHANNELS * PATCH_T * PATCH_H * PATCH_W
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(num_tokens, BLOCK_M), tl.cdiv(PATCH_DIM, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < num_tokens
    n_mask = offs_n < PATCH_DIM
    token = tl.where(m_mask, offs_m, 0)
    row = token_row(token, GRID_H * GRID_W, CLS_SLOTS, WIDE)
    compute_dtype = tl.float32 if INTERPRET_BF16 else grad_ptr.dtype.element_ty

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for e0 in range(0, embed_dim, BLOCK_K):
        offs_e = e0 + tl.arange(0, BLOCK_K)
        e_mask = offs_e < embed_dim
        g = tl.load(
            grad_ptr + (row[:, None] * embed_dim + offs_e[None, :]), mask=m_mask[:, None] & e_mask[None, :], other=0.0
        )
        w_mask = e_mask[:, None] & n_mask[None, :]
        w = tl.load(weight_ptr + (offs_e[:, None] * PATCH_DIM + offs_n[None, :]), mask=w_mask, other=0.0)
        acc = tl.dot(g.to(compute_dtype), w.to(compute_dtype), acc, input_precision=DOT_PRECISION)

    origin = tubelet_offset(
        token, stride_b, stride_t, stride_h, stride_w, GRID_H, GRID_W, STEPS, PATCH_T, PATCH_H, PATCH_W, WIDE
    )
    inner = k_offset(
        offs_n, stride_t, stride_c, stride_h, stride_w, CHANNELS, PATCH_T, PATCH_H, PATCH_W, CHANNELS_LAST, WIDE
    )
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
