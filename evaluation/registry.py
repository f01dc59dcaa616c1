"""The registries a task family's folder writes into: the family itself, its metrics and its scenarios.

    @family("forecasting")                      class Forecasting(TaskFamily): ...
    @metric("mase", family="forecasting", goal="min")   def mase(y, yhat, scale): ...
    @scenario("missing_hours", family="forecasting")    def missing_hours(history, future, severity, rng): ...

Registering is all it takes: `evaluation.families` imports every family folder, and a pilot spec then names
what it uses.
"""

from __future__ import annotations

import math

from testbed.registry import Registry

__all__ = ["FAMILIES", "METRICS", "SCENARIOS", "family", "metric", "scenario", "goal_of", "span_of"]

FAMILIES: Registry = Registry("task family")
METRICS: Registry = Registry("metric")
SCENARIOS: Registry = Registry("scenario")


def family(name: str):
    """Register a `TaskFamily` subclass under `name` (also its `name` attribute)."""

    def add(cls):
        cls.name = name
        return FAMILIES.register(name)(cls)

    return add


def metric(name: str, *, family: str, goal: str, span: tuple[float, float] = (0.0, math.inf)):
    """Register a metric of `family`; `goal` is "min" (errors) or "max" (scores); `span`: the values it can take
    (a threshold outside them could never fail, or never pass: the spec is refused)."""
    if goal not in ("min", "max"):
        raise ValueError("goal must be 'min' or 'max'")
    return METRICS.register(name, family=family, goal=goal, span=span)


def scenario(name: str, *, family: str):
    """Register a seeded robustness scenario of `family` (it never perturbs the ground truth)."""
    return SCENARIOS.register(name, family=family)


def goal_of(fn) -> str:
    return fn.__testbed_goal__


def span_of(fn) -> tuple[float, float]:
    """The values a metric can take (`metric`'s `span`)."""
    return fn.__testbed_span__
