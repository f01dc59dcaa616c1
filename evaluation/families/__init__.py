"""Task families. A family is one module here: a `TaskFamily` subclass registered with `@family(name)`,
bringing its contract, data loader, request phases, scoring and plots."""

from __future__ import annotations

from pilots.registry import Registry, load_plugins

__all__ = ["FAMILIES", "family"]

FAMILIES: Registry = Registry("task family")


def family(name: str):
    def add(cls):
        cls.name = name
        return FAMILIES.register(name)(cls)

    return add


load_plugins("evaluation.families")
