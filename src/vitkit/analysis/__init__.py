"""The paper's analyses (section 4.5, appendix D): embedding filters, position-embedding similarity,
mean attention distance and attention rollout; each a function of a model and tensors."""

from .report import analyze
from .distance import attention_distance, mean_attention_distance, patch_distances
from .filters import EmbeddingFilters, embedding_filters
from .pos_embed import PosEmbedSimilarity, cosine_similarity_matrix, grid_contrasts, pos_embed_similarity
from .rollout import attention_rollout, last_layer_attention, rollout

__all__ = [
    "EmbeddingFilters", "PosEmbedSimilarity", "analyze", "attention_distance", "attention_rollout",
    "cosine_similarity_matrix", "embedding_filters", "grid_contrasts", "last_layer_attention",
    "mean_attention_distance", "patch_distances", "pos_embed_similarity", "rollout",
]  # fmt: skip
