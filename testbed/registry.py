"""Decorator registries (task families, metrics, scenarios) and plugin discovery."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from testbed.errors import NotFound, RegistryError

__all__ = ["Registry", "load_plugins"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named things of one kind; `@registry.register("name")` adds one."""

    def __init__(self, kind: str):
        self.kind, self._items = kind, {}

    def register(self, name: str, **meta) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise RegistryError(f"{self.kind} {name!r} is registered twice",
                                    where=getattr(item, "__module__", None),
                                    fix=f"give the {self.kind} another name, or remove the duplicate")
            for key, value in meta.items():
                setattr(item, f"__testbed_{key}__", value)
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise NotFound(f"unknown {self.kind} {name!r}", fix=f"use one of: {', '.join(sorted(self._items))}") \
                from None

    def where(self, **meta) -> dict[str, T]:
        """The registered items whose metadata match, e.g. `METRICS.where(family="forecasting")`."""
        return {name: item for name, item in self._items.items()
                if all(getattr(item, f"__testbed_{k}__", None) == v for k, v in meta.items())}

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


def load_plugins(package: str) -> None:
    """Import every module and subpackage of `package`, so each registers itself: adding one is adding a file
    (or a folder)."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{package}.{info.name}")
