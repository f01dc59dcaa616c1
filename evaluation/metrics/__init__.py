"""Metric registry. A metric is one function in a module here, registered with `@metric(name, family=..., goal=...)`."""

from __future__ import annotations

from pilots.registry import Registry, load_plugins

__all__ = ["METRICS", "metric", "goal_of"]

METRICS: Registry = Registry("metric")


def metric(name: str, *, family: str, goal: str):
    """Register a metric; `goal` is "min" (errors) or "max" (scores)."""
    if goal not in ("min", "max"):
        raise ValueError("goal must be 'min' or 'max'")
    return METRICS.register(name, family=family, goal=goal)


def goal_of(fn) -> str:
    return fn.__testbed_goal__


load_plugins("evaluation.metrics")
