"""The scorecard: evidence -> four decision criteria, hard gates and the weighted total."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evaluation.family import Outcome, TaskFamily
from evaluation.registry import METRICS, goal_of
from pilots.spec import PilotSpec
from pilots.vendor import SEOUL_LEADING_FIELDS, VendorProfile
from sandbox.runner import SandboxResult

__all__ = ["Scorecard", "Criterion", "Gate", "build_scorecard", "performance", "weighted_total", "score_policy_fit",
           "RUBRIC_MAX"]

CRITERIA = ("deep_learning_fit", "viability", "policy_fit", "local_strength_fit")


class Criterion(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    score: float | None
    """0–100, or None while it waits for a city evaluator."""
    status: Literal["scored", "pending_evaluator"] = "scored"
    """`pending_evaluator` until an evaluator's review exists (policy fit)."""
    evidence: dict[str, Any] = Field(default_factory=dict)
    """The measured facts the score was computed from."""


class Gate(BaseModel):
    name: str
    """What is checked (verdict, a metric threshold, the error rate, isolation)."""
    passed: bool
    """False rejects the submission whatever its total."""
    detail: str
    """The measured value against the requirement."""


class Scorecard(BaseModel):
    """One evaluation of one submission; `model_dump_json()` is the machine-readable scorecard."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    pilot: str
    """Pilot id."""
    submission: str
    """Submission id."""
    vendor: str
    """Vendor name from the profile."""
    bundle_sha256: str
    """sha256 of the submitted `.bento` bytes."""
    dataset_sha256: str
    """sha256 of the data file the split was cut from."""
    harness_version: str
    """Version of the testbed that produced this scorecard: package version + git commit (`+g<sha>[.dirty]`)."""
    split: str
    """`test` (sequestered, official) or `sample` (public, vendor check)."""
    official: bool
    """True for evaluations logged to MLflow; false for vendor checks."""
    isolated: bool
    """False when run with the explicit unsafe flag (no sandbox): never an acceptable result."""
    verdict: str
    """completed, contract_violation, timeout, resource_limit, crashed or sandbox_violation."""
    verdict_reason: str
    """Why the run ended the way it did."""
    metrics: dict[str, dict[str, float]]
    """Scenario (`clean` first) -> metric -> value."""
    retention: dict[str, float]
    """Scenario -> primary metric retained against clean (1 = no loss, below 1 = degraded)."""
    groups: dict[str, dict[str, float]]
    """`key=value` group -> metric -> value (clean scenario)."""
    equity: dict[str, Any]
    """Worst and best group on the primary metric and the gap between them."""
    performance: dict[str, Any]
    """Latency percentiles (single stream), offline throughput, error rate, start-up time, peak memory."""
    baseline: dict[str, Any]
    """The non-deep-learning reference computed by the harness on the same items."""
    criteria: dict[str, Criterion]
    """The four decision criteria."""
    gates: list[Gate]
    """Hard gates; any failure rejects."""
    passed: bool
    """All gates passed."""
    total_score: float
    """Weighted total (0–100) over the scored criteria."""
    total_is_provisional: bool
    """True while a criterion (policy fit) waits for an evaluator; weights are renormalised meanwhile."""
    mlflow_run_id: str | None = None
    """The MLflow run that holds this evaluation (official runs only)."""
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    """When the evaluation finished (UTC)."""


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values) * 1000
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 95, 99)} | {"mean": float(arr.mean())}


def performance(result: SandboxResult) -> dict[str, Any]:
    """Service-level measurements, the same for every family."""
    statuses = [s for p in result.phases.values() for s in p.statuses]
    single = result.phases.get("single_stream")
    offline = result.phases.get("offline")
    ok_latency = [lat for lat, s in zip(single.latencies_s, single.statuses, strict=True) if s == 200] if single else []
    done = sum(i for i, s in zip(offline.items, offline.statuses, strict=True) if s == 200) if offline else 0
    return {
        "latency_ms": _percentiles(ok_latency),
        "latencies_ms": [round(x * 1000, 3) for x in ok_latency],
        "throughput_items_per_s": done / offline.wall_s if offline and offline.wall_s > 0 else 0.0,
        "error_rate": (sum(s != 200 for s in statuses) / len(statuses)) if statuses else 1.0,
        "requests": len(statuses),
        "startup_s": result.startup_s,
        "peak_rss_mb": result.peak_rss_mb,
        "errors": [e for p in result.phases.values() for e in p.errors][:5],
    }


def _ratio(goal: str, clean: float, other: float) -> float:
    if any(v is None or math.isnan(v) for v in (clean, other)) or min(clean, other) <= 0:
        return float("nan")
    return clean / other if goal == "min" else other / clean


def _skill(goal: str, baseline: float | None, model: float | None) -> float:
    """Relative improvement over the baseline: 1 - model/baseline for errors, 1 - baseline/model for scores."""
    ratio = _ratio(goal, baseline, model)
    return float("nan") if math.isnan(ratio) else 1 - 1 / ratio


def _clip(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else float(min(1.0, max(0.0, x)))


def build_scorecard(spec: PilotSpec, fam: TaskFamily, profile: VendorProfile, outcome: Outcome,
                    result: SandboxResult, **ids: Any) -> Scorecard:
    """Combine a family's outcome, the run's performance and the vendor profile into a scorecard."""
    primary = fam.primary_metric
    goal = goal_of(METRICS.where(family=fam.name)[primary])
    clean = outcome.metrics.get("clean", {})
    perf = performance(result)
    verdict, reason = result.verdict, result.reason
    if verdict == "completed" and outcome.violations:
        verdict, reason = "contract_violation", "; ".join(outcome.violations[:3])
    retention = {name: _ratio(goal, clean.get(primary), m.get(primary))
                 for name, m in outcome.metrics.items() if name != "clean"}
    ranked = sorted(((v[primary], k) for k, v in outcome.groups.items() if not math.isnan(v.get(primary, math.nan))),
                    reverse=goal == "min")
    equity = {"metric": primary}
    if ranked:
        (worst, worst_g), (best, best_g) = ranked[0], ranked[-1]
        equity |= {"worst_group": worst_g, "worst": worst, "best_group": best_g, "best": best,
                   "gap": abs(worst - best), "worst_vs_overall": _ratio(goal, clean.get(primary), worst)}

    # 1. deep-learning fit: does it beat the non-deep-learning reference, by how much?
    versus = fam.baseline_metric or primary
    skill = _skill(goal_of(METRICS.where(family=fam.name)[versus]), outcome.baseline.get(versus), clean.get(versus))
    dl = Criterion(score=100 * _clip(skill / spec.criteria.full_credit_skill), evidence={
        "baseline": outcome.baseline.get("name"), "compared_on": versus,
        f"baseline_{versus}": outcome.baseline.get(versus), f"model_{versus}": clean.get(versus),
        "skill_over_baseline": skill,
        "beats_baseline": bool(skill > 0), "full_credit_skill": spec.criteria.full_credit_skill,
        "vendor_field_matches_task": profile.technology_field in fam.technology_fields})
    # 2. viability: accuracy against thresholds, robustness, reliability, latency, throughput.
    lat = perf["latency_ms"].get("p95", math.nan)
    parts = {
        "accuracy": float(np.mean([t.passes(clean.get(t.metric)) for t in spec.thresholds])),
        "robustness": float(np.mean([_clip(r) for r in retention.values()])) if retention else 1.0,
        "reliability": 1 - perf["error_rate"],
        "latency": _clip(spec.service_level.p95_latency_ms / lat) if lat and not math.isnan(lat) else 0.0,
        "throughput": _clip(perf["throughput_items_per_s"] / spec.service_level.min_throughput),
    }
    viability = Criterion(score=100 * float(np.mean(list(parts.values()))) if verdict == "completed" else 0.0,
                          evidence={"components": parts, "p95_latency_ms": lat,
                                    "throughput_items_per_s": perf["throughput_items_per_s"],
                                    "coverage": outcome.coverage})
    # 3. policy fit: the evaluators' rubric; equity across groups is evidence for them.
    policy = Criterion(score=None, status="pending_evaluator",
                       evidence={"policy_goals": spec.policy_goals, "equity": equity})
    # 4. local strength fit: Seoul-based, startup, a field where Seoul leads.
    local_parts = {"seoul_based": profile.seoul_based, "startup": profile.startup,
                   "seoul_leading_field": profile.technology_field in SEOUL_LEADING_FIELDS}
    local = Criterion(score=100 * (0.4 * local_parts["seoul_based"] + 0.2 * local_parts["startup"]
                                   + 0.4 * local_parts["seoul_leading_field"]),
                      evidence={**local_parts, "district": profile.headquarters_district,
                                "technology_field": profile.technology_field})
    criteria = dict(zip(CRITERIA, (dl, viability, policy, local), strict=True))

    gates = [Gate(name="verdict", passed=verdict == "completed", detail=f"{verdict}: {reason}"),
             Gate(name="isolation", passed=result.isolated,
                  detail="ran in the sandbox" if result.isolated else "ran WITHOUT isolation (--unsafe-no-sandbox)"),
             Gate(name="error_rate", passed=perf["error_rate"] <= spec.service_level.max_error_rate,
                  detail=f"{perf['error_rate']:.3f} (max {spec.service_level.max_error_rate})")]
    for t in spec.thresholds:
        if t.gate:
            bound = f"max {t.max}" if t.max is not None else f"min {t.min}"
            gates.append(Gate(name=f"threshold:{t.metric}", passed=t.passes(clean.get(t.metric)),
                              detail=f"{clean.get(t.metric, math.nan):.4g} ({bound})"))
    weights = spec.criteria.weights.model_dump()
    scored = {k: c.score for k, c in criteria.items() if c.score is not None}
    total = sum(weights[k] * s for k, s in scored.items()) / max(1e-9, sum(weights[k] for k in scored))
    return Scorecard(pilot=spec.id, verdict=verdict, verdict_reason=reason, metrics=outcome.metrics,
                     retention=retention, groups=outcome.groups, equity=equity, performance=perf,
                     baseline=outcome.baseline, criteria=criteria, gates=gates, passed=all(g.passed for g in gates),
                     total_score=round(total, 2), total_is_provisional=len(scored) < len(criteria),
                     isolated=result.isolated, **ids)


# -- policy fit from the evaluators' rubric (criterion 3) ---------------------------------------------------------

RUBRIC_MAX = 4
"""Each policy goal is scored 0 (not served) to 4 (fully served) by the evaluators."""


def weighted_total(scores: dict[str, float | None], weights: dict[str, float]) -> tuple[float, bool]:
    """The weighted mean of the scored criteria (weights renormalised over them) and whether it is provisional
    (a criterion still unscored)."""
    scored = {k: s for k, s in scores.items() if s is not None}
    total = sum(weights[k] * s for k, s in scored.items()) / max(1e-9, sum(weights[k] for k in scored))
    return round(total, 2), len(scored) < len(CRITERIA)


def score_policy_fit(card: Scorecard, rubric: dict[str, int], weights: dict[str, float],
                     evidence: dict[str, Any] | None = None) -> Scorecard:
    """A copy of `card` with policy fit scored from the evaluators' rubric (goal -> 0..4, every goal of the
    pilot scored): 100 * mean / 4; the total recomputed and no longer provisional. `evidence` (who reviewed,
    justifications) is added to the criterion's evidence. Pure: raises ValueError for an incomplete rubric."""
    policy = card.criteria["policy_fit"]
    goals = list(policy.evidence.get("policy_goals") or rubric)
    missing = [g for g in goals if g not in rubric]
    if missing or set(rubric) - set(goals):
        raise ValueError(f"the rubric must score exactly the pilot's policy goals (missing {missing}, unknown "
                         f"{sorted(set(rubric) - set(goals))})")
    if any(not 0 <= rubric[g] <= RUBRIC_MAX for g in goals):
        raise ValueError(f"rubric scores must be between 0 and {RUBRIC_MAX}")
    score = 100 * sum(rubric[g] for g in goals) / (RUBRIC_MAX * len(goals))
    criteria = {**card.criteria, "policy_fit": Criterion(score=score, status="scored", evidence={
        **policy.evidence, "rubric": {g: rubric[g] for g in goals}, **(evidence or {})})}
    total, provisional = weighted_total({k: c.score for k, c in criteria.items()}, weights)
    return card.model_copy(update={"criteria": criteria, "total_score": total, "total_is_provisional": provisional})
