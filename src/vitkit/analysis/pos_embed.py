"""Position-embedding similarity (Fig. 7 centre): does the learned E_pos encode the 2-D grid?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..models.vit import VisionTransformer


@dataclass
class PosEmbedSimilarity:
    """similarity: (N, N) cosine similarity of the patch position embeddings, row-major over grid (gh, gw).

    neighbour / far: mean similarity to the 4-neighbours / to patches more than half the grid away
    (Euclidean distance in patches > max(gh, gw) / 2). same_line / other: mean similarity to the other
    patches of the same row or column / to patches sharing neither.
    """

    similarity: torch.Tensor
    grid: tuple[int, int]
    neighbour: float
    far: float
    same_line: float
    other: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": list(self.grid), "neighbour": self.neighbour, "far": self.far,
            "neighbour_minus_far": self.neighbour - self.far, "same_row_or_column": self.same_line,
            "other": self.other, "same_row_or_column_minus_other": self.same_line - self.other,
        }  # fmt: skip


def cosine_similarity_matrix(pos: torch.Tensor) -> torch.Tensor:
    """pos: (N, D) -> (N, N), entry (i, j) = cos(pos_i, pos_j)."""
    unit = F.normalize(pos.double(), dim=1)
    return unit @ unit.T


def grid_contrasts(similarity: torch.Tensor, grid: tuple[int, int]) -> dict[str, float]:
    """The four means of PosEmbedSimilarity from an (N, N) similarity over a row-major (gh, gw) grid."""
    gh, gw = grid
    rows = torch.arange(gh).repeat_interleave(gw)
    cols = torch.arange(gw).repeat(gh)
    dr, dc = rows[:, None] - rows[None], cols[:, None] - cols[None]
    distance = torch.sqrt((dr.square() + dc.square()).double())
    off_diagonal = distance > 0
    same_line = off_diagonal & ((dr == 0) | (dc == 0))

    def mean(mask: torch.Tensor) -> float:
        return similarity[mask].mean().item() if mask.any() else float("nan")

    return {
        "neighbour": mean(distance == 1),
        "far": mean(distance > max(gh, gw) / 2),
        "same_line": mean(same_line),
        "other": mean(off_diagonal & ~same_line),
    }


def pos_embed_similarity(model: VisionTransformer) -> PosEmbedSimilarity:
    """Cosine similarities of the learned patch position embeddings (the prefix tokens' left out, where
    they have any: not with no_embed_class)."""
    cfg = model.config
    if not hasattr(model, "pos_embed"):
        raise ValueError(f"position-embedding similarity needs position embeddings; {cfg.name or 'the model'} "
                         f"is a {cfg.family} model without any")
    pos = model.pos_embed.detach()[0, cfg.pos_prefix_tokens :]  # (N, D)
    similarity = cosine_similarity_matrix(pos)
    return PosEmbedSimilarity(similarity.float(), cfg.grid_size, **grid_contrasts(similarity, cfg.grid_size))
