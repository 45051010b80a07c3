"""`vitkit serve`: an HTTP API and a page for a checkpoint of any model family, with dynamic batching."""

from .app import app_from_checkpoint, create_app
from .batcher import Batcher

__all__ = ["Batcher", "app_from_checkpoint", "create_app"]
