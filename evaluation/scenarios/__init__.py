"""Robustness scenarios. One is a seeded function in a module here, registered with
`@scenario(name, family=...)`; it gets the clean inputs, a severity in [0, 1] and a numpy Generator, and
returns perturbed inputs of the same shape. The harness never perturbs the ground truth."""

from __future__ import annotations

from pilots.registry import Registry, load_plugins

__all__ = ["SCENARIOS", "scenario"]

SCENARIOS: Registry = Registry("scenario")


def scenario(name: str, *, family: str):
    return SCENARIOS.register(name, family=family)


load_plugins("evaluation.scenarios")
