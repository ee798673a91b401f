"""Package names that load on first use (PEP 562), so that a package's torch-free submodules (recipe rules,
family specs, the stage schedule) import without torch, and the web process never waits for it.

    # in a package's __init__.py
    __getattr__, __all__ = lazy_exports(__name__, {"evaluate": "report", "SizeStats": "size"})
"""
from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, where: dict[str, str]):
    """(a module __getattr__ that imports `package.<where[name]>` when `name` is first read, the names)."""
    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value
    return __getattr__, list(where)
