"""The configuration of a Vision Transformer: one dataclass, serialisable to JSON."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from ..data.preprocessing import HasDataConfig

Pool = Literal["token", "gap"]
PosEmbed = Literal["learn", "sincos"]

# Limits that keep a config read from an untrusted file from allocating absurd amounts of memory.
# How position embeddings are resampled to another grid (models.posembed); torch-free here, for the CLI.
ResampleMethod = Literal["bicubic", "bilinear", "official"]
RESAMPLE_METHODS: tuple[str, ...] = ("bicubic", "bilinear", "official")
MAX_WIDTH = 16384
MAX_DEPTH = 256
MAX_TOKENS = 1 << 20
MAX_REGISTERS = 256


def check_fields(cls: type, d: Mapping[str, Any], what: str) -> None:
    """A one-line ValueError naming the keys of `d` that the dataclass `cls` has no field for."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        hints = [f"{k} -> {m[0]}?" for k, m in close.items() if m]
        hint = f" (did you mean: {', '.join(hints)})" if hints else ""
        raise ValueError(f"unknown {what} {unknown}{hint}; expected some of {sorted(known)}")


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, float)) else (int(x[0]), int(x[1]))


@dataclass
class ViTConfig(HasDataConfig):
    """Hyper-parameters of the paper's Table 1 plus the options of section 3 and appendix D.

    `backbone_layers` makes the model a hybrid (section 3.1): ``None`` is a pure ViT, ``()`` a
    ResNet stem only, ``(3, 4, 9)`` the R50 used with ViT-B/16. For a hybrid, `patch_size` is the
    patch size on the backbone's feature map (1 in the paper's hybrids).
    `mean`, `std`, `crop_pct` and `interpolation` record the preprocessing the weights expect.

    The options of the paper's descendants, each off by default: `fc_norm` (the final LayerNorm after
    pooling instead of on every token: MAE, timm's global_pool='avg'), `reg_tokens` (K register tokens,
    Darcet et al. 2024), `no_embed_class` (position embeddings on the patches only: DeiT III, DINOv2 with
    registers), `init_values` (LayerScale, Touvron et al. 2021), `distilled` (DeiT's distillation token and
    head) and `pos_embed='sincos'` (fixed 2-D sin-cos position embeddings: MAE, "simple ViT").
    """

    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    pool: Pool = "token"
    class_token: bool = True
    representation_size: int | None = None
    qkv_bias: bool = True
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    patch_drop: float = 0.0
    norm_eps: float = 1e-6
    dynamic_img_size: bool = False
    backbone_layers: tuple[int, ...] | None = None
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    crop_pct: float = 1.0
    interpolation: str = "bicubic"
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    fc_norm: bool = False
    reg_tokens: int = 0
    no_embed_class: bool = False
    init_values: float | None = None
    distilled: bool = False
    pos_embed: PosEmbed = "learn"

    def __post_init__(self) -> None:
        self.img_size = to_2tuple(self.img_size)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.backbone_layers is not None:
            self.backbone_layers = tuple(int(n) for n in self.backbone_layers)
        self.validate()

    # ---- derived quantities -------------------------------------------------------------
    @property
    def is_hybrid(self) -> bool:
        return self.backbone_layers is not None

    @property
    def backbone_stride(self) -> int:
        """Stride of the ResNet feature map: the stem's 4, then 2 per stage after the first."""
        if self.backbone_layers is None:
            return 1
        return 4 * 2 ** max(len(self.backbone_layers) - 1, 0)

    @property
    def stride(self) -> int:
        """Input pixels per token along each side."""
        return self.backbone_stride * self.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.img_size[0] // self.stride, self.img_size[1] // self.stride)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: the class token, the distillation token, the registers, in that order."""
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def pos_prefix_tokens(self) -> int:
        """Prefix tokens that have a position embedding of their own (none with no_embed_class or sin-cos)."""
        return 0 if self.no_embed_class or self.pos_embed == "sincos" else self.num_prefix_tokens

    @property
    def num_features(self) -> int:
        """Width of the pooled representation that the head reads."""
        return self.representation_size or self.embed_dim

    @property
    def family(self) -> str:
        return "hybrid" if self.is_hybrid else "vit"

    # ---- checks and (de)serialisation ---------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError, one line, for a configuration that cannot be built."""
        def bad(msg: str) -> None:
            raise ValueError(f"invalid ViT config{f' {self.name!r}' if self.name else ''}: {msg}")

        for key in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_dim"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                bad(f"{key} must be a positive integer, got {value!r}")
        if self.num_classes < 0:
            bad(f"num_classes must be >= 0, got {self.num_classes}")
        if min(self.img_size) <= 0:
            bad(f"img_size must be positive, got {self.img_size}")
        if self.embed_dim % self.num_heads:
            bad(f"num_heads={self.num_heads} does not divide embed_dim={self.embed_dim}")
        if self.pool not in ("token", "gap"):
            bad(f"pool must be 'token' or 'gap', got {self.pool!r}")
        if self.pool == "token" and not self.class_token:
            bad("pool='token' needs class_token=True")
        for key in ("dropout", "attn_dropout", "drop_path", "patch_drop"):
            if not 0.0 <= getattr(self, key) < 1.0:
                bad(f"{key} must be in [0, 1), got {getattr(self, key)}")
        self._validate_descendants(bad)
        if max(self.embed_dim, self.mlp_dim, self.representation_size or 0) > MAX_WIDTH:
            bad(f"width over {MAX_WIDTH} (embed_dim={self.embed_dim}, mlp_dim={self.mlp_dim})")
        if self.depth > MAX_DEPTH:
            bad(f"depth={self.depth} is over the limit of {MAX_DEPTH}")
        if math.prod(self.grid_size) > MAX_TOKENS:
            bad(f"img_size={self.img_size} with stride {self.stride} gives over {MAX_TOKENS} tokens")
        if self.backbone_layers is not None and (
            len(self.backbone_layers) > 4 or any(n <= 0 or n > 64 for n in self.backbone_layers)
        ):
            bad(f"backbone_layers must be up to 4 stages of 1..64 units, got {self.backbone_layers}")
        for size in self.img_size:
            if size % self.stride:
                bad(f"img_size={self.img_size} is not divisible by the patch stride {self.stride}")

    def _validate_descendants(self, bad: Any) -> None:
        if isinstance(self.reg_tokens, bool) or not isinstance(self.reg_tokens, int):
            bad(f"reg_tokens must be an integer, got {self.reg_tokens!r}")
        if not 0 <= self.reg_tokens <= MAX_REGISTERS:
            bad(f"reg_tokens must be in [0, {MAX_REGISTERS}], got {self.reg_tokens}")
        if self.init_values is not None and not self.init_values > 0:
            bad(f"init_values (LayerScale) must be positive or None, got {self.init_values!r}")
        if self.pos_embed not in ("learn", "sincos"):
            bad(f"pos_embed must be 'learn' or 'sincos', got {self.pos_embed!r}")
        if self.pos_embed == "sincos" and self.embed_dim % 4:
            bad(f"pos_embed='sincos' needs embed_dim divisible by 4, got {self.embed_dim}")
        if self.distilled:
            # DeiT's two heads read the class and distillation tokens themselves
            clashes = [(not self.class_token, "class_token=False"), (self.pool != "token", f"pool={self.pool!r}"),
                       (self.reg_tokens > 0, "reg_tokens"), (self.fc_norm, "fc_norm"),
                       (bool(self.representation_size), "representation_size")]  # fmt: skip
            named = [what for clash, what in clashes if clash]
            if named:
                bad(f"distilled=True (DeiT's heads on the class and distillation tokens) excludes {', '.join(named)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ViTConfig":
        check_fields(cls, d, "ViT config keys")
        return cls(**d)

    def replace(self, **overrides: Any) -> "ViTConfig":
        return ViTConfig.from_dict({**self.to_dict(), **overrides})
