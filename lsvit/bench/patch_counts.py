"""Tokens per clip for 2D patches vs tubelets, and the attention cost those token counts imply.

Attention cost is counted in query-key pairs (proportional to the FLOPs and the score-matrix memory of one
attention layer): ``per-step`` = T' (1 + N)^2, attention within each time step (LSViT, with its CLS slot per step);
``full clip`` = (1 + T' N)^2, one sequence over the whole clip (ViViT/VideoMAE-style joint attention).
"""

from __future__ import annotations

import lsvit_kernels as lk

FRAMES = (8, 16, 32)
SIZES = (112, 224)
TUBELETS = (1, 2, 4)
PATCH = 16


def patch_count_rows(frames=FRAMES, sizes=SIZES, tubelets=TUBELETS, patch: int = PATCH) -> list[dict]:
    rows = []
    for size in sizes:
        for t in frames:
            for tub in tubelets:
                if t % tub:
                    continue
                tokens = lk.token_counts(t, size, patch_size=patch, tubelet_size=tub)
                steps = t // tub
                per_step = tokens // steps
                rows.append(
                    {
                        "size": size,
                        "frames": t,
                        "tubelet": tub,
                        "kind": "2D" if tub == 1 else f"3D t={tub}",
                        "steps": steps,
                        "tokens_per_step": per_step,
                        "tokens_per_clip": tokens,
                        "attn_pairs_per_step_sum": steps * (1 + per_step) ** 2,
                        "attn_pairs_full_clip": (1 + tokens) ** 2,
                    }
                )
    return rows
