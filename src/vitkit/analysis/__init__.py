"""The paper's analyses (section 4.5, appendix D): embedding filters, position-embedding similarity,
mean attention distance and attention rollout; each a function of a model and tensors."""

from ..lazy import lazy_exports

EXPORTS = {
    ".report": ("analyze",),
    ".distance": ("attention_distance", "mean_attention_distance", "patch_distances"),
    ".filters": ("EmbeddingFilters", "embedding_filters"),
    ".pos_embed": ("PosEmbedSimilarity", "cosine_similarity_matrix", "grid_contrasts", "pos_embed_similarity"),
    ".rollout": ("attention_rollout", "last_layer_attention", "rollout"),
}
__all__ = sorted(name for names in EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
