"""The Vision Transformer of Dosovitskiy et al. (2021), equations 1-4.

    z0  = [x_class; x_p^1 E; ...; x_p^N E] + E_pos        (1)  PatchEmbed, class token, pos_embed
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                     (2)  Block: Attention
    z_l  = MLP(LN(z'_l)) + z'_l                           (3)  Block: Mlp
    y    = LN(z_L^0)                                      (4)  norm, then the head

Parameter names follow timm's, the de-facto PyTorch convention, so timm state dicts load as they are.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SAVED_WEIGHTS_UP_TO, attention_weights, recomputed_attention
from .config import ViTConfig
from .hybrid import HybridEmbed
from .layers import DropPath, lecun_normal_
from .posembed import resample_pos_embed, sincos_pos_embed


class PatchEmbed(nn.Module):
    """x_p E of eq. 1: non-overlapping P×P patches, each linearly projected to D.

    A Conv2d with kernel = stride = P is exactly that projection. x: (B, C, H, W) -> (B, D, H/P, W/P).
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    @torch.no_grad()
    def init_weights(self) -> None:
        lecun_normal_(self.proj.weight)  # flax's Conv default, as the official embedding
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention (MSA) with one fused q/k/v projection. x: (B, T, D) -> (B, T, D)."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k, v each (B, heads, T, D/heads)."""
        B, T, _ = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, D/heads) -> (B, T, D), then the output projection."""
        B, _, T, _ = x.shape
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, T, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split_heads(x)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled():
            # Training in bf16 on the CPU: PyTorch's fused kernel's backward is 3-7x slower than that of
            # the explicit softmax(q kᵀ/√d) v (benchmarks/attention_cpu.py). Short sequences keep the T x T
            # weights for the backward pass (faster); longer ones recompute them there, keeping the fused
            # kernel's memory (vitkit.models.attention). The dropped weights are needed as they were.
            # Without gradients the fused kernel is as fast, in the whole model (benchmarks/interleaved_rows.py).
            if q.shape[-2] <= SAVED_WEIGHTS_UP_TO or (self.attn_drop and self.training):
                return self._merge_heads(self._attend(q, k, v)[0])
            return self._merge_heads(recomputed_attention(q, k, v, self.scale))
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self._merge_heads(x)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """softmax(q kᵀ / √d) v, explicitly: -> (B, heads, T, D/heads), the weights (B, heads, T, T)."""
        weights = attention_weights(q, k, self.scale)  # (B, heads, T, T)
        return F.dropout(weights, self.attn_drop, self.training) @ v, weights

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same computation with softmax(q kᵀ / √d) made explicit: -> (B, T, D), (B, heads, T, T)."""
        out, weights = self._attend(*self._split_heads(x))
        return self._merge_heads(out), weights


class Mlp(nn.Module):
    """Dense(mlp_dim) → GELU → Dense(D), dropout after each dense layer. (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class PatchDropout(nn.Module):
    """In training, keep a random subset of (1 - p) of each image's patch tokens, and every prefix token
    (Liu et al. 2022, "PatchDropout"; timm's patch_drop_rate). (B, prefix + N, D) -> (B, prefix + K, D),
    K = max(1, int(N (1 - p))). The cost of every layer falls with the tokens, and hiding parts of the
    image regularises much as random erasing does; evaluation sees all tokens."""

    def __init__(self, p: float = 0.0, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.p = p
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        B, N, D = patches.shape
        keep = torch.randn(B, N, device=x.device).argsort(dim=1)[:, : max(1, int(N * (1.0 - self.p)))]
        return torch.cat([prefix, patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, D))], dim=1)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """diag(γ) on a residual branch (CaiT, Touvron et al. 2021), γ initialised to `init_values`.
    (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """One pre-LN encoder layer, equations 2 and 3 (each branch scaled by LayerScale when
    cfg.init_values is set). (B, T, D) -> (B, T, D)."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        D = cfg.embed_dim
        self.norm1 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.attn = Attention(D, cfg.num_heads, cfg.qkv_bias, cfg.attn_dropout, cfg.dropout)
        self.ls1 = LayerScale(D, cfg.init_values) if cfg.init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.mlp = Mlp(D, cfg.mlp_dim, cfg.dropout)
        self.ls2 = LayerScale(D, cfg.init_values) if cfg.init_values else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))  # (2)
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))  # (3)

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As forward, also returning the attention weights (B, heads, T, T)."""
        y, weights = self.attn.forward_with_weights(self.norm1(x))
        x = x + self.drop_path(self.ls1(y))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x)))), weights


class VisionTransformer(nn.Module):
    """ViT (and the hybrid, when `cfg.backbone_layers` is set). x: (B, C, H, W) -> logits (B, classes).

    A distilled model (DeiT) returns the mean of its two heads' logits in eval mode, and both,
    (class-token logits, distillation-token logits), in training mode.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        D = cfg.embed_dim
        if cfg.is_hybrid:
            self.patch_embed: nn.Module = HybridEmbed(cfg.backbone_layers, cfg.patch_size, cfg.in_chans, D)
        else:
            self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distilled else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D)) if cfg.reg_tokens else None
        if cfg.pos_embed == "sincos":  # a function of the grid, not a weight: kept out of state dicts
            self.register_buffer("pos_embed", sincos_pos_embed(cfg.grid_size, D), persistent=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_prefix_tokens + math.prod(cfg.grid_size), D))
        self.pos_drop = nn.Dropout(cfg.dropout)
        self.patch_drop = PatchDropout(cfg.patch_drop, cfg.num_prefix_tokens)
        # stochastic depth grows linearly with depth (DeiT), 0 at the first layer
        drop_rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.Sequential(*[Block(cfg, p) for p in drop_rates])
        # fc_norm moves the final LayerNorm after pooling (timm's names: `norm` on tokens, `fc_norm` after)
        self.norm = nn.Identity() if cfg.fc_norm else nn.LayerNorm(D, eps=cfg.norm_eps)
        self.fc_norm = nn.LayerNorm(D, eps=cfg.norm_eps) if cfg.fc_norm else nn.Identity()
        self.pre_logits = (
            nn.Sequential(OrderedDict(fc=nn.Linear(D, cfg.representation_size), act=nn.Tanh()))
            if cfg.representation_size
            else nn.Identity()
        )
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.head_dist = nn.Linear(D, cfg.num_classes) if cfg.distilled and cfg.num_classes else None
        self.init_weights()

    # ---- initialisation, as google-research/vision_transformer --------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Dense kernels xavier-uniform, MLP biases N(0, 1e-6), other biases 0, E_pos N(0, 0.02),
        class token and head 0; the patch embedding initialises itself. The descendants' tokens as timm:
        registers N(0, 1e-6), the distillation token N(0, 0.02); LayerScale γ = init_values."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if name.endswith("attn.qkv"):
                    # q, k and v are three D×D kernels in the official code: xavier for each
                    bound = math.sqrt(6.0 / (module.in_features + module.out_features // 3))
                    nn.init.uniform_(module.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    if "mlp" in name.split("."):
                        nn.init.normal_(module.bias, std=1e-6)
                    else:
                        nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                nn.init.constant_(module.gamma, module.init_values)
        self.patch_embed.init_weights()
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        if self.reg_token is not None:  # distinct registers: identical ones would stay identical
            nn.init.normal_(self.reg_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.reset_head()

    @torch.no_grad()
    def reset_head(self, num_classes: int | None = None) -> None:
        """A new zero-initialised head (the paper's fine-tuning head), optionally for another class count."""
        cfg = self.config
        if num_classes is not None and num_classes != cfg.num_classes:
            cfg.num_classes = num_classes
            device = self.pos_embed.device
            self.head = nn.Linear(cfg.num_features, num_classes, device=device) if num_classes else nn.Identity()
            if cfg.distilled:
                self.head_dist = nn.Linear(cfg.embed_dim, num_classes, device=device) if num_classes else None
        for head in (self.head, self.head_dist):
            if isinstance(head, nn.Linear):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def set_patch_drop(self, p: float) -> None:
        """The fraction of patch tokens that training drops from now on (0: keep all)."""
        self.patch_drop.p = p

    # ---- eq. 1 ---------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_chans:
            raise ValueError(
                f"expected images of shape (B, {cfg.in_chans}, H, W), got {tuple(x.shape)}"
            )
        H, W = x.shape[-2:]
        expected = f"{cfg.img_size[0]}x{cfg.img_size[1]}"
        if cfg.dynamic_img_size:
            if H % cfg.stride or W % cfg.stride:
                raise ValueError(
                    f"input size {H}x{W} is not divisible by the patch size {cfg.stride} "
                    f"(model built for {expected}, dynamic_img_size=True)"
                )
        elif (H, W) != cfg.img_size:
            raise ValueError(
                f"input size {H}x{W} does not match the model's {expected} (patch size {cfg.stride}); "
                f"resize it, or build the model with dynamic_img_size=True"
            )

    def _position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """E_pos for a (gh, gw) grid: (1, pos_prefix + gh*gw, D)."""
        cfg = self.config
        if grid == cfg.grid_size:
            return self.pos_embed
        if cfg.pos_embed == "sincos":  # dynamic_img_size: the fixed table of the new grid
            return sincos_pos_embed(grid, cfg.embed_dim).to(self.pos_embed)
        return resample_pos_embed(self.pos_embed, grid, cfg.pos_prefix_tokens, cfg.grid_size)  # as timm does

    def prefix_tokens(self, batch: int) -> list[torch.Tensor]:
        """The learned tokens before the patches, each (B, n, D): class, distillation, registers."""
        tokens = [t for t in (self.cls_token, self.dist_token, self.reg_token) if t is not None]
        return [t.expand(batch, -1, -1) for t in tokens]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Equation 1: (B, C, H, W) -> z0 (B, prefix + N, D), after the embedding dropout."""
        self._check_input(x)
        x = self.patch_embed(x)  # (B, D, H/P, W/P)
        pos = self._position_embedding(tuple(x.shape[-2:]))
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        prefix = self.prefix_tokens(x.shape[0])
        if self.config.pos_prefix_tokens:  # the paper: E_pos covers the class token too
            return self.pos_drop(torch.cat([*prefix, x], dim=1) + pos)
        return self.pos_drop(torch.cat([*prefix, x + pos], dim=1))

    # ---- forward passes --------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> all tokens after the final LayerNorm, (B, prefix + N, D)."""
        return self.norm(self.blocks(self.patch_drop(self.embed(x))))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, prefix + N, D) -> (B, D): the class token, or the mean of the patch tokens ('gap'),
        then fc_norm if the config has it."""
        if self.config.pool == "token":
            return self.fc_norm(tokens[:, 0])
        return self.fc_norm(tokens[:, self.config.num_prefix_tokens :].mean(dim=1))

    def forward_head(
        self, tokens: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, prefix + N, D) -> logits (B, classes), or the representation (B, F) with pre_logits.
        Distilled: the mean of the class and distillation tokens' representations or logits, or in
        training mode both logits."""
        if self.config.distilled:
            return self._distilled_head(tokens, pre_logits)
        x = self.pre_logits(self.pool(tokens))
        return x if pre_logits else self.head(self.head_drop(x))

    def _distilled_head(
        self, tokens: torch.Tensor, pre_logits: bool
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x, x_dist = self.head_drop(tokens[:, 0]), self.head_drop(tokens[:, 1])
        if pre_logits or self.head_dist is None:
            return (x + x_dist) / 2
        logits, logits_dist = self.head(x), self.head_dist(x_dist)
        return (logits, logits_dist) if self.training else (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    def _layer_indices(self, layers: int | Sequence[int] | None) -> list[int]:
        depth = len(self.blocks)
        if layers is None:
            return list(range(depth))
        if isinstance(layers, int):
            if not 0 < layers <= depth:
                raise ValueError(f"layers={layers}: the model has {depth} layers")
            return list(range(depth - layers, depth))
        out_of_range = [i for i in layers if not -depth <= i < depth]
        if out_of_range:
            raise ValueError(f"layer indices {out_of_range} out of range for a model of {depth} layers")
        return sorted({i % depth for i in layers})

    def forward_intermediates(
        self, x: torch.Tensor, layers: int | Sequence[int] | None = None, norm: bool = False
    ) -> list[torch.Tensor]:
        """Outputs z_l of the chosen layers, each (B, prefix + N, D).

        `layers`: None for all, an int n for the last n, or a list of indices (negative allowed).
        `norm=True` applies the final LayerNorm to each.
        """
        wanted = self._layer_indices(layers)
        out = []
        x = self.embed(x)
        for i, block in enumerate(self.blocks[: wanted[-1] + 1] if wanted else []):
            x = block(x)
            if i in wanted:
                out.append(self.norm(x) if norm else x)
        return out

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """softmax(q kᵀ/√d) of every layer, each (B, heads, T, T), computed explicitly; the plain
        forward keeps the fused kernel."""
        maps = []
        x = self.embed(x)
        for block in self.blocks:
            x, weights = block.forward_with_weights(x)
            maps.append(weights)
        return maps
