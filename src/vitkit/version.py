"""vitkit's version, recorded in every checkpoint it writes (the same as pyproject.toml's)."""

__version__ = "0.1.0"
