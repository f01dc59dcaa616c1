"""The audit's second half: the hard gates and the measured criteria of a logged scorecard, recomputed from the
metrics the audit recomputed and the pilot spec logged with the run (as `evaluation.criteria` builds them), and
the run's metric history (a metric logged more than once was changed after the run: MLflow shows the latest)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evaluation.criteria import (
    credited_retention,
    load_gate,
    lookup_gate,
    skill_over_baseline,
    threshold_gates,
    viability_parts,
)
from evaluation.family import Outcome, TaskFamily
from evaluation.scorecard import Scorecard
from evaluation.tracking import RunRecord, Tracker
from pilots.spec import PilotSpec

__all__ = ["gate_checks", "criteria_checks", "history_check"]

Check = tuple[str, Any, Any, bool]
"""(what, as recorded, as recomputed, agrees): an `AuditCheck`'s fields."""


def _verdict(card: Scorecard, spec: PilotSpec, run: RunRecord, rate: float) -> tuple[bool, str]:
    """The verdict is the sandbox's (not recomputable); it must be the one tagged on the run, and `completed`
    cannot stand beside an error rate above the service level."""
    tagged = run.tags.get("testbed.verdict", card.verdict)
    if tagged != card.verdict:
        return False, f"the card says {card.verdict}, the run's tag {tagged}"
    if card.verdict == "completed" and rate > spec.service_level.max_error_rate:
        return False, f"request_failures: error rate {rate:.3f} above {spec.service_level.max_error_rate}"
    return card.verdict == "completed", card.verdict


def expected_gates(card: Scorecard, spec: PilotSpec, fam: TaskFamily, outcome: Outcome, run: RunRecord
                   ) -> dict[str, tuple[bool, str]]:
    """Gate name -> (passes, why), as the recomputed `outcome` and the logged spec make it."""
    perf, level = card.performance, spec.service_level
    requests, failed = perf.get("requests"), perf.get("failed_requests")
    rate = failed / requests if isinstance(requests, int) and isinstance(failed, int) and requests else \
        perf.get("error_rate", 1.0)
    isolated = {card.isolated, run.tags.get("testbed.isolated", str(card.isolated).lower()) == "true",
                run.params.get("isolated", str(card.isolated)) == "True"}
    clean = outcome.metrics.get("clean", {})
    load = load_gate(spec, fam.primary_metric, clean, outcome)
    lookup = lookup_gate(spec, card.split, outcome, skill_over_baseline(fam, outcome))
    gates = {"verdict": _verdict(card, spec, run, rate),
             "isolation": (isolated == {True}, "ran in the sandbox" if isolated == {True} else
                           "the card, the run's tag and its param disagree, or it ran without isolation"),
             "error_rate": (rate <= level.max_error_rate, f"{rate:.3f} (max {level.max_error_rate})"),
             "consistent_under_load": (load.passed, load.detail), "suspected_lookup": (lookup.passed, lookup.detail)}
    return gates | {g.name: (g.passed, g.detail) for g in threshold_gates(spec, clean)}


def gate_checks(card: Scorecard, spec: PilotSpec, fam: TaskFamily, outcome: Outcome, run: RunRecord) -> list[Check]:
    """Each gate of the card against the gate recomputed (its own finding: before any evaluator's override), every
    gate the pilot has present, none other, and `passed` as all of them. `outcome`: recomputed, with its
    exactness and agreement."""
    expected, recorded = expected_gates(card, spec, fam, outcome, run), {g.name: g for g in card.gates}
    checks: list[Check] = []
    for name in sorted(set(expected) | set(recorded)):
        gate, (passes, why) = recorded.get(name), expected.get(name, (None, "not a gate of this pilot"))
        found = None if gate is None else gate.passed if gate.measured is None else gate.measured
        checks.append((f"gate {name}", "absent" if gate is None else f"{'passed' if found else 'FAILED'}: "
                       f"{gate.detail}", f"{'passed' if passes else 'FAILED'}: {why}", found is passes))
    passes = all(p for p, _ in expected.values())
    checks.append(("passed (every gate)", card.passed, passes, card.passed is passes))
    return checks


def criteria_checks(card: Scorecard, spec: PilotSpec, fam: TaskFamily, outcome: Outcome) -> list[Check]:
    """Viability and deep-learning fit recomputed from the recomputed metrics, the card's performance (checked
    against the run's metrics) and its model evidence. Policy fit and local strength wait for an evaluator on a
    logged card: they must still be pending."""
    clean, perf = outcome.metrics.get("clean", {}), card.performance
    retention = list(credited_retention(spec, fam, outcome).values())
    checks: list[Check] = []
    skill = skill_over_baseline(fam, outcome)
    try:
        parts = viability_parts(spec, clean, retention, perf, skill)
        viability = 100 * float(np.mean(list(parts.values()))) if card.verdict == "completed" else 0.0
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        viability = f"cannot be recomputed from the card's performance ({type(exc).__name__}: {exc})"
    dl = card.criteria.get("deep_learning_fit")
    model = dl is not None and dl.evidence.get("deep_learning_model")
    credit = 100 * min(1.0, max(0.0, skill / spec.criteria.full_credit_skill))
    expected = {"viability": viability, "deep_learning_fit": credit if model else 0.0, "policy_fit": None}
    for name, value in expected.items():
        got = card.criteria[name].score if name in card.criteria else "absent"
        ok = got == value if value is None or isinstance(value, str) else \
            isinstance(got, int | float) and math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-6)
        pending = "pending at the run (a review applies after it: see the review trail)"
        checks.append((f"criteria/{name}", got, pending if value is None else value, ok))
    return checks


def history_check(tracker: Tracker, run: RunRecord) -> Check:
    """Every metric of the run logged once: one logged again after the run (MLflow reports its latest value)
    could make an altered scorecard agree with the run's metrics."""
    relogged = {k: v for k, v in tracker.metric_history(run.run_id, sorted(run.metrics)).items() if len(v) > 1}
    listed = "; ".join(f"{k} logged {len(v)} times ({', '.join(f'{x:.6g}' for x in v)})"
                       for k, v in list(relogged.items())[:5])
    return ("every metric logged once", "once each", listed or "once each", not relogged)
