"""The evaluators' decisions applied to a scorecard (pure functions; the workflow stores the reviews): policy
fit from the rubric (criterion 3), gate overrides, and the vendor claims an evaluator confirmed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evaluation.local_strength import local_strength
from evaluation.scorecard import Criterion, Scorecard, rescore
from testbed.errors import TestbedError

__all__ = ["apply_review", "score_policy_fit", "rubric_percent", "OVERRIDABLE_GATES", "RUBRIC_MAX"]

OVERRIDABLE_GATES = frozenset({"suspected_lookup"})
"""Gates an evaluator may override in a review (with a justification); every other gate is final."""


def apply_review(card: Scorecard, *, overrides: dict[str, str] | None = None,
                 confirmed_claims: Iterable[str] = ()) -> Scorecard:
    """A copy of `card` with an evaluator's review applied: `overrides` maps an overridable gate's name (e.g.
    `suspected_lookup`) to the justification; `confirmed_claims` lists the vendor claims the evaluator verified
    (`seoul_based`, `startup`, `technology_field`); unlisted claims then earn nothing. Pure: applying the same
    review again gives the same card; an empty review restores the measured gates."""
    overrides = dict(overrides or {})
    gates = {g.name: g for g in card.gates}
    refused = sorted(name for name in overrides if name not in gates or not gates[name].overridable)
    if refused:
        raise TestbedError(f"gate(s) {', '.join(refused)} cannot be overridden", where=f"review of {card.submission}",
                           fix=f"only these gates take an evaluator's override: {', '.join(sorted(OVERRIDABLE_GATES))}")
    new = card.model_copy(deep=True)
    for gate in new.gates:
        measured = gate.passed if gate.measured is None else gate.measured
        gate.override = overrides.get(gate.name) if not measured else None
        gate.passed = measured or gate.override is not None
    local = new.criteria["local_strength_fit"]
    local.score, local.status, local.evidence = local_strength(local.evidence["claims"], confirmed_claims)
    new.review = {"overrides": overrides, "confirmed_claims": sorted(set(confirmed_claims))}
    return rescore(new)


# -- policy fit from the evaluators' rubric (criterion 3) ---------------------------------------------------------

RUBRIC_MAX = 4
"""Each policy goal is scored 0 (not served) to 4 (fully served) by the evaluators."""


def rubric_percent(scores: Iterable[int]) -> float:
    """Policy fit (0–100) from the rubric's goal scores (0–4 each): 100 × mean / RUBRIC_MAX."""
    scores = list(scores)
    return 100 * sum(scores) / (RUBRIC_MAX * len(scores))


def score_policy_fit(card: Scorecard, rubric: dict[str, int], evidence: dict[str, Any] | None = None) -> Scorecard:
    """A copy of `card` with policy fit scored from the evaluators' rubric (goal -> 0..4, every goal of the
    pilot scored): 100 * mean / 4; the total recomputed. `evidence` (who reviewed, justifications) is added to the
    criterion's evidence. Pure: raises ValueError for an incomplete rubric."""
    policy = card.criteria["policy_fit"]
    goals = list(policy.evidence.get("policy_goals") or rubric)
    missing = [g for g in goals if g not in rubric]
    if missing or set(rubric) - set(goals):
        raise ValueError(f"the rubric must score exactly the pilot's policy goals (missing {missing}, unknown "
                         f"{sorted(set(rubric) - set(goals))})")
    if any(not 0 <= rubric[g] <= RUBRIC_MAX for g in goals):
        raise ValueError(f"rubric scores must be between 0 and {RUBRIC_MAX}")
    score = rubric_percent(rubric[g] for g in goals)
    new = card.model_copy(deep=True)
    new.criteria["policy_fit"] = Criterion(score=score, status="scored", evidence={
        **policy.evidence, "rubric": {g: rubric[g] for g in goals}, **(evidence or {})})
    return rescore(new)
