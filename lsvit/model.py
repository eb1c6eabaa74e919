"""LSViT (Chen et al., Frontiers in Neurorobotics 2024): a ViT with short- and long-term temporal differences.

    clip (B, T, C, H, W), normalized float or uint8 + mean/std
      -> SMIF: short-term motion magnitude fused into every frame             (B, T, C, H, W)
         and its signed direction as C more channels                          (B, T, 2C, H, W)
      -> PatchEmbedding: fused op, CLS slot + positional embedding written    (B, T', 1 + N, E)
         (SMIF and PatchEmbedding run as one op, lsvit_kernels.smif_patch_embed: the (B, T, 2C, H, W)
         clip is never built)
         2D: T' = T, per-frame P x P patches; 3D: T' = T / t, t x P x P tubelets
      -> view as per-step sequences                                           (B T', 1 + N, E)
      -> depth x Block: LMI across steps, then attention within each step and MLP
      -> LayerNorm; CLS token of each step averaged over time                 (B, E)
      -> linear head                                                          (B, num_classes)

Parameter names follow timm's ViT (``patch_embed.proj.weight``, ``cls_token``, ``pos_embed``,
``blocks.N.attn.qkv``, ``blocks.N.mlp.fc1``, ``norm``, ``head``) so ImageNet checkpoints load by name
(``lsvit.pretrained``). See docs/model.md for the equations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lsvit_kernels
from lsvit_kernels import FusedPatchConv2d, FusedPatchConv3d, smif_embed
from lsvit_kernels.backends.smif_reference import normalized
from lsvit_kernels.geometry import check_divisible

from .config import ModelConfig
from .lmi import LMI
from .pos_embed import ResampledPosCache, ResampledTimeCache
from .smif import SMIF

LAYER_NORM_EPS = 1e-6  # timm's ViT value


def _exporting() -> bool:
    """True while torch.export, the ONNX exporters or TorchScript tracing capture the model: they get the input
    stage in standard operators and the patch op, which they know how to export (lsvit_kernels.onnx)."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


class DropPath(nn.Module):
    """Stochastic depth: drop a sample's whole residual branch with probability ``rate`` while training."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbedding(nn.Module):
    """Pixels -> tokens with the CLS slot in front and the positional embedding added, in one fused call.

    ``proj`` is ``lsvit_kernels.FusedPatchConv2d`` / ``FusedPatchConv3d``: an ``nn.Conv2d`` / ``nn.Conv3d``
    (``patch_embed.proj.weight`` is timm's key) whose ``tokens`` writes the ``(B, T', 1 + N, E)`` tokens in one
    kernel call: no patch matrix, no ``torch.cat`` of the CLS token, no separate add. With ``motion_channels``,
    ``motion_weight`` (shaped like ``proj.weight``, zero at init so the model starts as the image model) projects
    SMIF's signed differences: the op sees ``[frames ; motion]`` as 2C channels.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        c, e, p, t = config.in_channels, config.embed_dim, config.patch_size, config.tubelet_size
        if config.use_3d_patch_embed:
            self.proj = FusedPatchConv3d(c, e, (t, p, p), backend=config.kernel_backend)
        else:
            self.proj = FusedPatchConv2d(c, e, p, backend=config.kernel_backend)
        if config.motion_channels:
            self.motion_weight = nn.Parameter(torch.zeros_like(self.proj.weight))
        else:
            self.register_parameter("motion_weight", None)

    def forward(self, video: Tensor, pos_embed: Tensor, cls_token: Tensor, motion: Optional[Tensor] = None) -> Tensor:
        """(B, T, C, H, W) video and optional motion of the same shape, (1 + N, E) or per-token (T' (1 + N), E)
        pos, E cls -> (B, T', 1 + N, E)."""
        if motion is not None and self.motion_weight is None:
            raise ValueError("motion given but this model has motion_channels=False: it has no motion weights")
        return self.proj.tokens(
            video,
            pos_embed,
            cls_token,
            layout="BTCHW",
            extra_channels=motion,
            extra_weight=None if motion is None else self.motion_weight,
        )


class Attention(nn.Module):
    """Multi-head self-attention over the tokens of one time step (sequences (B T', 1 + N, E))."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attention_dropout: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attention_dropout = attention_dropout
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B T', heads, L, head_dim)
        dropout = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, length, dim)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """LMI across time steps, then a pre-norm ViT block on each time step.

    LMI comes first, where TEA puts motion excitation (at the start of the residual block): the first block's
    LMI then compares the patch tokens themselves, linear in the pixels of two frames, so every 2D token enters
    attention already knowing which way its content moves; and the last block's gates still reach the head
    through attention (after the last attention they would only touch patch tokens the head never reads).
    """

    def __init__(self, config: ModelConfig, drop_path: float):
        super().__init__()
        e = config.embed_dim
        self.norm1 = nn.LayerNorm(e, eps=LAYER_NORM_EPS)
        self.attn = Attention(e, config.num_heads, config.qkv_bias, config.attention_dropout, config.dropout)
        self.norm2 = nn.LayerNorm(e, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(e, config.mlp_width, config.dropout)
        self.drop_path = DropPath(drop_path)
        self.lmi = LMI(e, config.lmi_reduction)
        self.lmi_first = config.lmi_position == "start"  # "end": models trained before the move

    def forward(self, x: Tensor, steps: int, grid: tuple[int, int]) -> Tensor:
        if self.lmi_first:
            x = self.lmi(x, steps, grid)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x if self.lmi_first else self.lmi(x, steps, grid)


class LSViTForAction(nn.Module):
    """LSViT action classifier: ``(B, T, C, H, W)`` normalized float clips (or uint8 clips with their mean and
    std) -> ``(B, num_classes)`` logits.

    Args:
        config: the architecture (copied: later edits to the caller's config do not desync the model).
        num_frames: clip length for 3D patching (defaults to ``config.num_frames``); must be a multiple of
            ``tubelet_size``. Positional embeddings are per spatial slot and broadcast over time, so any
            multiple of ``tubelet_size`` (3D) or any frame count (2D) runs; ``num_frames`` fixes what the model
            was built and validated for and the length of the temporal embedding (``num_frames / t`` rows,
            linearly resampled for another step count; none when ``num_frames`` is None).
    """

    def __init__(self, config: ModelConfig, num_frames: Optional[int] = None):
        super().__init__()
        self.config = config.model_copy()
        frames = num_frames if num_frames is not None else config.num_frames
        if config.use_3d_patch_embed:
            if frames is None:
                raise ValueError("num_frames must be specified when using 3D patch embedding")
            check_divisible("num_frames", frames, "tubelet_size", config.tubelet_size, alternative="tubelet_size=1")
        self.num_frames = frames
        if num_frames is not None:
            self.config.num_frames = num_frames  # so model.config.model_dump() rebuilds this very model
        e, grid = config.embed_dim, config.grid_size

        self.smif = SMIF(config.in_channels, config.smif_window)
        # SMIF and the patch embedding as one op (lsvit_kernels.smif_patch_embed); False runs SMIF's PyTorch passes,
        # cat and the patch op (same parameters, same tokens up to rounding): for comparisons and benchmarks
        self.fused_input_stage = True
        self.patch_embed = PatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, e))
        self._pos_cache = ResampledPosCache((grid, grid))
        # temporal embedding: one row per time step, zero at init (an ImageNet-initialized model starts as the
        # image model); added per token through the op's (T' (1 + N), E) positional mode
        steps = config.num_steps(frames) if config.temporal_embed and frames is not None else 0
        if steps:
            self.temporal_pos_embed = nn.Parameter(torch.zeros(steps, e))
            self._time_cache = ResampledTimeCache(steps)
        else:
            self.register_parameter("temporal_pos_embed", None)
        self.pos_drop = nn.Dropout(config.dropout)
        rates = torch.linspace(0, config.drop_path_rate, config.depth).tolist()
        self.blocks = nn.ModuleList(Block(config, rate) for rate in rates)
        self.norm = nn.LayerNorm(e, eps=LAYER_NORM_EPS)
        self.head_drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(e, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in [*self.blocks.modules(), self.head]:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def patch_embed_backend(self) -> Optional[str]:
        """The backend that computed the latest patch-embedding call in this thread."""
        return lsvit_kernels.last_backend()

    def no_weight_decay(self) -> set[str]:
        """Parameter names conventionally excluded from weight decay."""
        return {"pos_embed", "cls_token", "temporal_pos_embed"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids for layer-wise lr decay (timm's convention): the stem (patch embedding, SMIF, positional
        tables) is layer 0, block i is layer i + 1 (the final norm joins the last block), the head the last layer."""
        return {
            "stem": r"^cls_token|^pos_embed|^temporal_pos_embed|^patch_embed|^smif",
            "blocks": r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    def position_embedding(self, height: int, width: int, steps: Optional[int] = None) -> Tensor:
        """Positional rows for ``steps`` time steps of ``height x width`` frames.

        ``(1 + N, E)`` (spatial, broadcast over time by the op) without a temporal embedding or when ``steps`` is
        None; otherwise ``(steps (1 + N), E)``, row ``s (1 + N) + l`` = spatial row ``l`` + temporal row ``s``.
        Each table is resampled (bicubic grid, linear time) and cached when its size differs from the trained one.
        """
        p = self.config.patch_size
        check_divisible("video height", height, "patch_size", p)
        check_divisible("video width", width, "patch_size", p)
        spatial = self._pos_cache(self.pos_embed, (height // p, width // p))
        if self.temporal_pos_embed is None or steps is None:
            return spatial
        temporal = self._time_cache(self.temporal_pos_embed, steps)  # (steps, E)
        return (temporal.unsqueeze(1) + spatial.unsqueeze(0)).reshape(-1, spatial.shape[-1])

    def tokens(
        self, video: Tensor, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None
    ) -> Tensor:
        """SMIF + one fused patch embedding of frames and signed motion: (B, T, C, H, W) -> (B, T', 1 + N, E).

        ``video`` is a normalized float clip, or uint8 pixels with the ``mean`` / ``std`` (in [0, 1] units, as
        ``lsvit.data.normalize_clip``) to normalize them with: the op normalizes each value it reads, so no float
        copy of the clip is made. With ``fused_input_stage`` (the default) the whole stage is one
        ``lsvit_kernels.smif_patch_embed`` call; otherwise SMIF's PyTorch passes, ``cat`` and the patch op.
        """
        if video.dim() != 5:
            raise ValueError(f"video must be (B, T, C, H, W); got shape {list(video.shape)}")
        if video.dtype == torch.uint8:
            if mean is None or std is None:
                raise ValueError(
                    "a uint8 video needs mean= and std= (the normalization the model was trained with, e.g. the "
                    "run's data record); or pass a normalized float video"
                )
        elif not video.is_floating_point():
            raise TypeError(f"video must be uint8 pixels or a normalized float tensor; got {video.dtype}")
        if video.shape[2] != self.config.in_channels:
            raise ValueError(
                f"video has C={video.shape[2]} channels but the model expects C={self.config.in_channels} "
                f"(in_channels); is the video (B, T, C, H, W) rather than (B, C, T, H, W)?"
            )
        steps = self.config.num_steps(video.shape[1])  # checks divisibility by the tubelet in 3D
        pos = self.position_embedding(video.shape[3], video.shape[4], steps)
        if self.fused_input_stage and not _exporting():
            return self._fused_tokens(video, pos, mean, std)
        if video.dtype == torch.uint8:
            video = normalized(video, self.cls_token.dtype, list(mean), list(std), 1.0 / 255.0)
        motion = self.smif.signed_motion(video) if self.config.motion_channels else None
        return self.patch_embed(self.smif(video), pos, self.cls_token, motion)

    def _fused_tokens(
        self, video: Tensor, pos: Tensor, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]
    ) -> Tensor:
        """The input stage as one ``smif_patch_embed``: SMIF's X' and S computed in the patch gather."""
        proj, smif = self.patch_embed.proj, self.smif
        return smif_embed.smif_patch_embed(
            video,
            proj.weight,
            self.patch_embed.motion_weight,
            proj.bias,
            pos,
            cls_token=self.cls_token,
            threshold_logit=smif.threshold_logit,
            fuse_weight=smif.fuse.weight,
            fuse_bias=smif.fuse.bias,
            gate=smif.gate,
            window=2 * smif.radius + 1,
            mean=mean,
            std=std,
            backend=proj.backend,  # a patch-op backend without a SMIF kernel runs SMIF in torch, then itself
        )

    def forward_features(
        self, video: Tensor, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None
    ) -> Tensor:
        """Pooled CLS feature (B, E); ``mean`` / ``std`` for uint8 video as in :meth:`tokens`."""
        tokens = self.tokens(video, mean, std)  # (B, T', 1 + N, E)
        b, steps, length, e = tokens.shape
        p = self.config.patch_size
        grid = (video.shape[3] // p, video.shape[4] // p)
        x = self.pos_drop(tokens.view(b * steps, length, e))  # per-step sequences, CLS slot in front
        for block in self.blocks:
            x = block(x, steps, grid)
        x = self.norm(x)
        return x[:, 0].view(b, steps, e).mean(dim=1)  # CLS of every step, averaged over time

    def forward(
        self, video: Tensor, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None
    ) -> Tensor:
        """Logits (B, num_classes) of normalized float clips, or of uint8 clips with their ``mean`` / ``std``."""
        return self.head(self.head_drop(self.forward_features(video, mean, std)))
