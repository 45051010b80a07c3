"""Lazy re-exports for a package's `__init__` (PEP 562): a name is imported from its module when it is
first used, so that `import vitkit` and the `vitkit` command's parser run without importing torch
(about 3 s of every command's start on two cores); the command that needs it imports it.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, homes: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose public names are those of `homes`: relative module
    name -> the names it defines, e.g. {".config": ("TrainConfig", "make_config")}."""
    module_of = {name: module for module, names in homes.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name], package), name)
        setattr(sys.modules[package], name, value)  # imported once: later uses are plain attributes
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(module_of))

    return __getattr__, __dir__
