"""`python -m lsvit_kernels`: a short demo of the op on this machine (token counts, backends, one call)."""

from __future__ import annotations

import time

import torch

import lsvit_kernels as lk


def main() -> None:
    print("Patch tokens per clip, 224x224, 16 frames, P=16:")
    for tubelet in (1, 2, 4):
        kind = "2D (per frame)" if tubelet == 1 else f"3D tubelet {tubelet}"
        print(f"  {kind:<16} {lk.token_counts(16, 224, patch_size=16, tubelet_size=tubelet):>6,}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\nBackends available on {device}: {', '.join(lk.available_backends(device))}")
    embed = lk.FusedPatchConv3d(3, 768, (2, 16, 16), device=device)
    video = torch.randn(2, 16, 3, 224, 224, device=device)
    pos = torch.zeros(1 + 196, 768, device=device)
    cls = torch.zeros(768, device=device)
    with torch.no_grad():
        embed.tokens(video, pos, cls, layout="BTCHW")
        start = time.perf_counter()
        tokens = embed.tokens(video, pos, cls, layout="BTCHW")
        if device == "cuda":
            torch.cuda.synchronize()
    ms = (time.perf_counter() - start) * 1e3
    print(
        f"video {tuple(video.shape)} -> tokens {tuple(tokens.shape)} with CLS slot, via backend "
        f"{lk.last_backend()!r} in {ms:.1f} ms (one call; `make bench` measures properly)"
    )


if __name__ == "__main__":
    main()
