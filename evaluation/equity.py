"""Equity with uncertainty, for every task family: per-group metrics with seeded bootstrap confidence
intervals, the worst-group gap with its interval, and groups too small to judge.

A family hands over its clean items (windows, frames, texts) and their group labels:

    report = assess_groups({"hour_band": labels, "district": districts}, metric="mase", goal="min",
                           values=per_item_error, units=window_of_item, settings=spec.equity)

- `values`: one number per item when the group metric is their mean (absolute error, 0/1 correctness,
  count error). Fast: resampling is vectorised.
- `score`: instead of `values`, a function of item indices (with repeats) for metrics that are not means
  (macro-F1, mAP): `score(np.array([3, 3, 7, ...])) -> float`. Called `resamples` times per group.
- `units`: the resampling unit of each item (default: the item itself). Items of one unit are resampled
  together, e.g. the 24 hours of one forecast window, or the boxes of one frame.

Groups are resampled independently (stratified bootstrap); the percentile interval is reported. A group with
fewer than `min_units` units is marked `judged: false` and never named worst or best. The gap compares the worst
judged group with the best other judged group of the same key; its interval comes from the same replicates. A key
with fewer than two judged groups has no worst, best or gap.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["assess_groups", "DEFAULTS"]

DEFAULTS = {"resamples": 1000, "level": 0.95, "min_units": 30, "seed": 0}
"""Settings used when a pilot spec gives none (`equity:` in the spec overrides them)."""

_CHUNK = 2_000_000  # draws per vectorised step (bounds memory)


def _settings(settings: Any) -> dict[str, Any]:
    given = settings.model_dump() if hasattr(settings, "model_dump") else dict(settings or {})
    return DEFAULTS | {k: v for k, v in given.items() if k in DEFAULTS}


def _rng(seed: int, group: str) -> np.random.Generator:
    """One generator per group, independent of which other groups exist: results never depend on order."""
    return np.random.default_rng([seed, zlib.crc32(group.encode())])


def _replicates_of_mean(values: np.ndarray, units: np.ndarray, rng: np.random.Generator, b: int) -> np.ndarray:
    """Bootstrap replicates of mean(values) resampling whole units: sum over drawn units / count."""
    _, codes = np.unique(units, return_inverse=True)
    sums, counts = np.bincount(codes, values), np.bincount(codes).astype(float)
    m, reps = len(sums), np.empty(b)
    even = counts.min() == counts.max()  # every unit the same size: each replicate's count is m times it
    step = max(1, _CHUNK // m)
    for lo in range(0, b, step):
        draw = rng.integers(0, m, size=(min(step, b - lo), m))
        reps[lo:lo + len(draw)] = sums[draw].sum(1) / (m * counts[0] if even else counts[draw].sum(1))
    return reps


def _replicates_of_score(items: np.ndarray, units: np.ndarray, score: Callable[[np.ndarray], float],
                         rng: np.random.Generator, b: int) -> np.ndarray:
    uniq, codes = np.unique(units, return_inverse=True)
    members = [items[codes == k] for k in range(len(uniq))]
    reps = np.empty(b)
    for r in range(b):
        reps[r] = score(np.concatenate([members[k] for k in rng.integers(0, len(uniq), len(uniq))]))
    return reps


def _interval(reps: np.ndarray, level: float) -> tuple[float, float]:
    reps = reps[np.isfinite(reps)]
    if not len(reps):
        return math.nan, math.nan
    alpha = (1 - level) / 2
    return float(np.quantile(reps, alpha)), float(np.quantile(reps, 1 - alpha))


def assess_groups(labels: Mapping[str, np.ndarray], *, metric: str, goal: str, values: np.ndarray | None = None,
                  score: Callable[[np.ndarray], float] | None = None, units: np.ndarray | None = None,
                  overall: float | None = None, settings: Any = None) -> dict[str, Any]:
    """Per-group values with bootstrap intervals, per-key worst/best and gap, and the headline (the worst judged
    group of all keys and its key's gap). `labels[key]` has one label per item (None or "" = no group).
    `settings`: resamples, level, min_units, seed (a mapping or a pydantic model). JSON-able result."""
    if (values is None) == (score is None):
        raise ValueError("give exactly one of `values` or `score`")
    if goal not in ("min", "max"):
        raise ValueError("goal must be 'min' or 'max'")
    s = _settings(settings)
    n = len(values) if values is not None else len(next(iter(labels.values()), []))
    units = np.arange(n) if units is None else np.asarray(units)
    values = None if values is None else np.asarray(values, dtype=float)
    worse = max if goal == "min" else min
    groups: dict[str, dict[str, Any]] = {}
    keys: dict[str, dict[str, Any]] = {}
    replicates: dict[str, np.ndarray] = {}
    for key, raw in labels.items():
        raw = np.asarray(raw, dtype=object).ravel()
        if len(raw) != n:
            raise ValueError(f"labels[{key!r}] has {len(raw)} items, expected {n}")
        text = np.array(["" if v is None else str(v) for v in raw], dtype=object)
        members = pd.Series(np.arange(n)).groupby(text).indices
        for label in sorted(members):
            if label == "":
                continue
            name, items = f"{key}={label}", np.asarray(members[label])
            if values is not None:
                items = items[np.isfinite(values[items])]
            if not len(items):
                continue
            rng, g_units = _rng(s["seed"], name), units[items]
            if values is not None:
                point = float(values[items].mean())
                reps = _replicates_of_mean(values[items], g_units, rng, s["resamples"])
            else:
                point = float(score(items))
                reps = _replicates_of_score(items, g_units, score, rng, s["resamples"])
            low, high = _interval(reps, s["level"])
            n_units = int(len(np.unique(g_units)))
            groups[name] = {"key": key, "value": point, "low": low, "high": high, "units": n_units,
                            "items": int(len(items)), "judged": n_units >= s["min_units"]}
            replicates[name] = reps
        judged = [g for g, v in groups.items() if v["key"] == key and v["judged"] and math.isfinite(v["value"])]
        if len(judged) > 1:  # one judged group has nothing to be compared with: no worst, best or gap
            w = worse(judged, key=lambda g: groups[g]["value"])
            b = (min if goal == "min" else max)((g for g in judged if g != w), key=lambda g: groups[g]["value"])
            sign = 1 if goal == "min" else -1
            low, high = _interval(sign * (replicates[w] - replicates[b]), s["level"])
            gap = sign * (groups[w]["value"] - groups[b]["value"])
            keys[key] = {"worst_group": w, "best_group": b, "gap": gap, "gap_low": low, "gap_high": high,
                         "gap_is_clear": bool(w != b and low > 0)}
    report: dict[str, Any] = {"metric": metric, "goal": goal, **s, "groups": groups, "keys": keys,
                              "too_small": [g for g, v in groups.items() if not v["judged"]]}
    if keys:
        key = worse(keys, key=lambda k: groups[keys[k]["worst_group"]]["value"])
        w, b = groups[keys[key]["worst_group"]], groups[keys[key]["best_group"]]
        report |= {"worst_group": keys[key]["worst_group"], "worst": w["value"], "worst_low": w["low"],
                   "worst_high": w["high"], "best_group": keys[key]["best_group"], "best": b["value"],
                   **{k: keys[key][k] for k in ("gap", "gap_low", "gap_high", "gap_is_clear")}}
        if overall is not None and overall > 0 and w["value"] > 0:
            report["worst_vs_overall"] = overall / w["value"] if goal == "min" else w["value"] / overall
    return report
