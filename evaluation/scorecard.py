"""The scorecard: the record of one evaluation (metrics, the four decision criteria, hard gates, the weighted
total), as `scorecard.json` holds it. `evaluation.criteria` builds it from the evidence; `rescore` recomputes
the total and `passed` after a review (`evaluation.decisions`)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = ["Scorecard", "Criterion", "Gate", "Number", "rescore", "CRITERIA"]

CRITERIA = ("deep_learning_fit", "viability", "policy_fit", "local_strength_fit")


Number = Annotated[float, BeforeValidator(lambda v: math.nan if v is None else v)]
"""A metric value: JSON has no NaN or infinity, so `scorecard.json` writes them as null (a run that did not
complete has NaN metrics; answers as large as the contract allows can make an error infinite), and reading the
file back takes null as NaN."""


class Criterion(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    score: float | None
    """0–100, or None while it waits for a city evaluator."""
    status: Literal["scored", "pending_evaluator"] = "scored"
    """`pending_evaluator` until an evaluator's review exists (policy fit; local strength while claims wait)."""
    evidence: dict[str, Any] = Field(default_factory=dict)
    """The measured facts the score was computed from."""


class Gate(BaseModel):
    name: str
    """What is checked (verdict, a metric threshold, the error rate, isolation)."""
    passed: bool
    """False rejects the submission whatever its total."""
    detail: str
    """The measured value against the requirement."""
    measured: bool | None = None
    """The check's own result (None: same as `passed`); differs from `passed` only under an override."""
    overridable: bool = False
    """An evaluator may override a failure of this gate in a review (suspected lookup only)."""
    override: str | None = None
    """The evaluator's justification, when overridden."""


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
    """completed, contract_violation, request_failures (more failed requests than the service level allows),
    timeout, resource_limit, crashed or sandbox_violation."""
    verdict_reason: str
    """Why the run ended the way it did."""
    metrics: dict[str, dict[str, Number]]
    """Scenario (`clean` first) -> metric -> value."""
    retention: dict[str, Number]
    """Scenario -> primary metric retained against clean (1 = no loss, below 1 = degraded)."""
    under_load: dict[str, Number] = Field(default_factory=dict)
    """Metric -> value of the answers given in the timed phases (single stream, offline), on the items they
    answered; the `consistent_under_load` gate compares those answers with the clean ones item by item."""
    groups: dict[str, dict[str, Number]]
    """`key=value` group -> metric -> value (clean scenario)."""
    equity: dict[str, Any]
    """Worst and best group on the primary metric and the gap between them; with bootstrap intervals per group,
    per key and for the gap, and the groups too small to judge (`evaluation.equity.assess_groups`)."""
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
    total_score: Number
    """Weighted total (0–100) of the four criteria, rounded to 0.01; a criterion waiting for an evaluator counts 0."""
    total_is_provisional: bool
    """True while a criterion (policy fit; local strength until its claims are reviewed) waits for an evaluator;
    it counts 0 in the total meanwhile (the weights are not renormalised), so a review can only add to it."""
    log_tail: list[str] = Field(default_factory=list)
    """The sandbox log's last lines when the run did not complete (the cause of a crash)."""
    sandbox_limits: dict[str, str] = Field(default_factory=dict)
    """How each limit was enforced (uid, memory, processes, tmp): cgroups, or rlimits where cgroups were
    unavailable (then memfd/shm memory is not bounded)."""
    model_evidence: list[dict[str, Any]] = Field(default_factory=list)
    """Model artifacts found by reading the bundle statically (`sandbox.artifacts`)."""
    phase_plan: dict[str, Any] = Field(default_factory=dict)
    """The anti-replay plan: its seed and each phase's batch sizes (the order follows from the seed)."""
    weights: dict[str, float] = Field(default_factory=dict)
    """The pilot's criteria weights, so the total can be recomputed after a review."""
    evaluation: Literal["official", "reevaluation", "check"] = "check"
    """`official` (the one the leaderboard ranks), `reevaluation` (explicit, with a reason) or a vendor check."""
    reevaluation_reason: str | None = None
    """Why a re-evaluation was run."""
    review: dict[str, Any] = Field(default_factory=dict)
    """What `apply_review` applied: gate overrides with justifications, and confirmed vendor claims."""
    pilot_spec_sha256: str | None = None
    """sha256 of the pilot spec (JSON) the run was scored against; the spec is logged with official runs."""
    predictions_sha256: str | None = None
    """sha256 of the logged prediction artifact (`predictions.npz`) of an official run."""
    mlflow_run_id: str | None = None
    """The MLflow run that holds this evaluation (official runs only)."""
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    """When the evaluation finished (UTC)."""

    def confirmable_claims(self) -> dict[str, dict[str, Any]]:
        """The vendor's claims that count for this pilot, each with its status: what a review may confirm."""
        local = self.criteria.get("local_strength_fit")
        claims = local.evidence.get("claims", {}) if local is not None else {}
        return {name: claim for name, claim in claims.items() if claim.get("counts")}


def rescore(card: Scorecard) -> Scorecard:
    """Recompute `passed` and the total from the card's gates, criteria and weights (in place; returns it). A
    criterion still waiting for an evaluator counts 0 in the (provisional) total: a review can only add to it, and
    what a vendor declares about itself earns nothing, nor moves a ranking, before an evaluator confirms it."""
    weight = sum(card.weights.get(k, 0) for k in card.criteria)
    total = sum(card.weights.get(k, 0) * (c.score or 0.0) for k, c in card.criteria.items()) / weight if weight else 0.0
    card.passed = all(g.passed for g in card.gates)
    card.total_score = round(total, 2)
    card.total_is_provisional = any(c.score is None for c in card.criteria.values())
    return card
