"""`vitkit serve`: an HTTP API and a page for a checkpoint of any model family, with dynamic batching.

The app needs the serve extra (FastAPI, uvicorn, prometheus_client): it is imported on first use of
`create_app` or `app_from_checkpoint`, so that `import vitkit.serve` and a core install's `vitkit` run without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Batcher", "app_from_checkpoint", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "Batcher":
        from .batcher import Batcher

        return Batcher
    if name in ("app_from_checkpoint", "create_app"):
        try:
            from . import app
        except ImportError as e:
            raise ImportError(f"vitkit.serve needs the serve extra ({e.name} is missing): "
                              "pip install 'vitkit[serve]'", name=e.name) from None  # fmt: skip
        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
