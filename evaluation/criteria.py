"""Evidence -> the four decision criteria, the hard gates and the scorecard (`build_scorecard`).

Evidence over claims: deep-learning fit needs a deep-learning model found in the bundle (`sandbox.artifacts`);
a near-exact match to a public truth is a suspected lookup that only an evaluator can override; the vendor's
claims score once an evaluator confirms them (`evaluation.decisions`); performance is measured against load
(`evaluation.performance`)."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from evaluation.family import Outcome, TaskFamily
from evaluation.local_strength import declared_claims, local_strength
from evaluation.performance import credits, performance
from evaluation.registry import METRICS, goal_of
from evaluation.scorecard import CRITERIA, Criterion, Gate, Scorecard, rescore
from pilots.spec import PilotSpec
from pilots.vendor import VendorProfile
from sandbox.artifacts import ModelArtifact, deep_learning_model
from sandbox.runner import SandboxResult

__all__ = ["build_scorecard", "LOOKUP_EXACTNESS", "LOOKUP_SKILL", "lookup_gate", "load_gate", "threshold_gates",
           "viability_parts", "skill_over_baseline", "retention_ratio", "credited_retention", "against",
           "plain_equity"]

LOOKUP_EXACTNESS = 0.99
"""When the truth is public, predictions whose `exactness` reaches this are a suspected lookup..."""
LOOKUP_SKILL = 0.95
"""...and so is a skill over the non-deep-learning baseline this close to perfect."""



def _known(*values: float | None) -> bool:
    return all(v is not None and not math.isnan(v) for v in values)


def against(value: float, bound: float, spec: str) -> str:
    """`value` as the format `spec` says (".4g", ".3f", ".1%"), with as many more digits as it takes not to read as
    `bound` when it is not `bound`: a gate's detail (or the page's service level) never shows a failing value as the
    requirement itself (an error rate of 1.04% against 1.0% reads 1.04%, an error of 1.00004 against max 1.0 reads
    1.00004)."""
    digits, kind = int(spec[1:-1]), spec[-1]
    if kind == "f" and math.isfinite(value) and abs(value) >= 1e9:  # fixed point would write hundreds of digits
        digits, kind = 4, "g"
    while math.isfinite(value) and value != bound and digits < 17 and (
            f"{value:.{digits}{kind}}" == f"{bound:.{digits}{kind}}"):
        digits += 1
    return f"{value:.{digits}{kind}}"


def retention_ratio(goal: str, clean: float | None, other: float | None) -> float:
    """`other` relative to `clean` (1 = as good, below 1 = worse); a perfect clean score loses nothing to a
    perfect other score. NaN (no robustness credit) when the clean score has nothing to retain: a score of 0, an
    infinite error."""
    if not _known(clean, other):
        return float("nan")
    if goal == "min":
        return float("nan") if math.isinf(clean) else (clean / other if other > 0 else 1.0)
    return other / clean if clean > 0 else float("nan")


def credited_retention(spec: PilotSpec, fam: TaskFamily, outcome: Outcome) -> dict[str, float]:
    """What each scenario retains of the clean score, as the robustness credit counts it: the clean score only up
    to the level where deep-learning fit reaches full credit (`criteria.full_credit_skill` over the baseline, where
    the family compares the baseline on its primary metric). No criterion credits a clean score beyond that level,
    so neither may its loss under a scenario cost more than a loss from that level: with the plain ratio a model
    worse clean and under every scenario, which lost nothing, outranked one that lost a little of its lead."""
    primary = fam.primary_metric
    goal = goal_of(METRICS.where(family=fam.name)[primary])
    clean = outcome.metrics.get("clean", {}).get(primary)
    base = outcome.baseline.get(primary) if (fam.baseline_metric or primary) == primary else None
    full = spec.criteria.full_credit_skill
    if _known(clean, base) and base > 0:
        clean = max(clean, base * (1 - full)) if goal == "min" else min(clean, base / (1 - full) if full < 1 else
                                                                           math.inf)
    return {name: retention_ratio(goal, clean, m.get(primary)) for name, m in outcome.metrics.items()
            if name != "clean"}


def _skill(goal: str, baseline: float | None, model: float | None) -> float:
    """Relative improvement over the baseline: 1 - model/baseline for errors (zero error = 1, perfect),
    1 - baseline/model for scores."""
    if not _known(baseline, model):
        return float("nan")
    if goal == "min":
        return 1 - model / baseline if baseline > 0 else 0.0
    return 1 - baseline / model if model > 0 else (0.0 if baseline <= 0 else -1.0)


def _clip(x: float | None) -> float:
    return 0.0 if x is None or math.isnan(x) else float(min(1.0, max(0.0, x)))


def _cause(log: str) -> str | None:
    """The exception that stopped the service, from its log (e.g. `ModuleNotFoundError: No module named 'x'`):
    the last exception line that is not BentoML's own wrapper around it (`bentoml.exceptions.ImportServiceError`
    comes after the import error it wraps). A missing module says what to declare."""
    found = re.findall(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*)$", log, flags=re.M)
    own = [line for line in found if not line.lstrip().startswith("bentoml.")]
    cause = (own or found or [None])[-1]
    if cause is None:
        return None
    cause = cause.strip()[:300]
    missing = re.search(r"No module named '([\w.]+)'", cause)
    if missing:
        cause += (f" (declare the package that provides `{missing.group(1).split('.')[0]}` under `python.packages` in "
                  "bentofile.yaml: the sandbox has only the packages the bundle declares)")
    return cause


def _violations(found: list[str], most: int = 3) -> str:
    """The contract violations, each problem once with the phases it was seen in (`phase: problem` each)."""
    phases: dict[str, list[str]] = {}
    for text in found:
        phase, sep, problem = text.partition(": ")
        phases.setdefault(problem if sep else text, []).extend([phase] if sep else [])
    return "; ".join(f"{problem} (in {', '.join(dict.fromkeys(where))})" if where else problem
                     for problem, where in list(phases.items())[:most])


def _verdict(spec: PilotSpec, result: SandboxResult, outcome: Outcome, perf: dict) -> tuple[str, str, list[str]]:
    verdict, reason = result.verdict, result.reason
    if verdict == "completed" and outcome.violations:
        verdict, reason = "contract_violation", _violations(outcome.violations)
    allowed = spec.service_level.max_error_rate
    if verdict == "completed" and perf["error_rate"] > allowed:
        verdict = "request_failures"
        reason = (f"{perf['failed_requests']} of {perf['requests']} requests failed (error rate "
                  f"{against(perf['error_rate'], allowed, '.1%')}; the service level allows {allowed:.1%})")
        reason += f"; first error: {perf['errors'][0]}" if perf["errors"] else ""
    tail: list[str] = []
    if verdict != "completed":
        tail = [line for line in result.log.splitlines() if line.strip()][-15:]
        cause = _cause(result.log)
        if cause and cause not in reason:
            reason += f"; the service's own log (its words, not the harness's) ends with: {cause}"
    return verdict, reason, tail


def _dl_finding(found: ModelArtifact | None, model: ModelArtifact | None, opened: list[str] | None) -> str:
    if model is not None:
        return ("deep-learning model found by reading the bundle, " + ("and the service opened its file (seen from "
                "outside the sandbox)" if opened is not None else "though which files the service opened was not "
                "observed") + "; that the service computes its answers with it cannot be seen from outside: the "
                "credit counts, and an evaluator who finds that it does not rejects the submission in review")
    if found is not None:
        return (f"the bundle holds a deep-learning model ({found.path}), but the service never opened it: no "
                "deep-learning credit, whatever it beats")
    return "no deep-learning model found in the bundle: no deep-learning credit, whatever it beats"


def skill_over_baseline(fam: TaskFamily, outcome: Outcome) -> float:
    """The clean predictions' skill over the harness's non-deep-learning baseline, on the family's
    `baseline_metric` (its primary metric by default)."""
    versus = fam.baseline_metric or fam.primary_metric
    goal = goal_of(METRICS.where(family=fam.name)[versus])
    return _skill(goal, outcome.baseline.get(versus), outcome.metrics.get("clean", {}).get(versus))


def threshold_gates(spec: PilotSpec, clean: dict[str, float]) -> list[Gate]:
    """One gate per gating threshold of the pilot, on the clean metrics."""
    gates = []
    for t in spec.thresholds:
        if t.gate:
            bound = f"max {t.max}" if t.max is not None else f"min {t.min}"
            value = clean.get(t.metric, math.nan)
            shown = against(value, t.max if t.max is not None else t.min, ".4g")
            gates.append(Gate(name=f"threshold:{t.metric}", passed=t.passes(value),
                              detail=f"{'not measured' if math.isnan(value) else shown} ({bound})"))
    return gates


def viability_parts(spec: PilotSpec, clean: dict[str, float], retention: list[float], perf: dict[str, Any],
                    skill: float) -> dict[str, float]:
    """Criterion 2's components, each 0–1: thresholds met, robustness, reliability, latency and throughput
    credits (the criterion is 100 × their mean when the run completed, else 0). Robustness is what the scenarios
    retain (`credited_retention`; a pilot without scenarios: all) of a clean score worth retaining: its credit shrinks
    as the clean score falls behind the harness's
    baseline (`skill` below 0) and is none at twice the baseline's error (half its score), so a model that ignores
    its input, or is wrong by orders of magnitude, is not "perfectly robust" (nothing it does gets worse)."""
    latency, throughput = credits(perf, spec.service_level)
    worth = 1.0 if math.isnan(skill) else _clip(1 + skill)
    return {"accuracy": float(np.mean([t.passes(clean.get(t.metric)) for t in spec.thresholds])),
            "robustness": worth * (float(np.mean([_clip(r) for r in retention])) if retention else 1.0),
            "reliability": 1 - perf["error_rate"], "latency": latency, "throughput": throughput}


def _deep_learning_fit(spec: PilotSpec, fam: TaskFamily, profile: VendorProfile, outcome: Outcome,
                       models: list[ModelArtifact], opened: list[str] | None) -> tuple[Criterion, float]:
    """Criterion 1: a deep-learning model found in the bundle, whose file the service opened (`opened`, seen
    from outside; None: not observed, the bundle's contents alone count), and how much it beats the harness's
    non-deep-learning baseline. No such model: no credit, whatever it beats."""
    versus = fam.baseline_metric or fam.primary_metric
    clean = outcome.metrics.get("clean", {})
    skill = skill_over_baseline(fam, outcome)
    found, seen = deep_learning_model(models), set(opened or ())
    model = found if opened is None else deep_learning_model([m for m in models if m.path in seen])
    return Criterion(score=100 * _clip(skill / spec.criteria.full_credit_skill) if model else 0.0, evidence={
        "deep_learning_model": model.as_dict() if model else None,
        "finding": _dl_finding(found, model, opened),
        "opened_by_service": None if opened is None or found is None else model is not None,
        "model_artifacts_found": len(models),
        "baseline": outcome.baseline.get("name"), "compared_on": versus,
        f"baseline_{versus}": outcome.baseline.get(versus), f"model_{versus}": clean.get(versus),
        "skill_over_baseline": skill, "beats_baseline": bool(skill > 0),
        "full_credit_skill": spec.criteria.full_credit_skill,
        "declared_field": profile.technology_field, "declared_field_matches_task":
            profile.technology_field in fam.technology_fields}), skill


def lookup_gate(spec: PilotSpec, split: str, outcome: Outcome, skill: float) -> Gate:
    """Too good to be true: near-exact agreement with a truth the vendor could have had. Judged as the official
    split would judge it: where the `test` split's truth is not public, a check on the public sample (whose
    truth every vendor has) is not flagged either."""
    hidden = next((name for name in (split, "test") if not spec.dataset.splits[name].truth_known), None)
    if hidden:
        return Gate(name="suspected_lookup", passed=True, measured=True, overridable=True,
                    detail=f"the `{hidden}` split's truth is not public" + ("" if hidden == split else
                           f"; not judged on the public `{split}` split, as the official evaluation would not be"))
    exact = outcome.exactness
    if exact is None and math.isnan(skill):
        return Gate(name="suspected_lookup", passed=True, measured=True, overridable=True,
                    detail="no predictions to compare with the public truth")
    suspected = (exact is not None and exact >= LOOKUP_EXACTNESS) or (not math.isnan(skill) and skill >= LOOKUP_SKILL)
    detail = (f"exactness {'—' if exact is None else against(exact, LOOKUP_EXACTNESS, '.5f')} (flag at "
              f"{LOOKUP_EXACTNESS}), skill over baseline {against(skill, LOOKUP_SKILL, '.3f')} (flag at "
              f"{LOOKUP_SKILL}); the `{split}` split's truth is public")
    if suspected:
        detail = "SUSPECTED LOOKUP: predictions match the public truth near-exactly; " + detail + \
                 " — passes only with an evaluator's override in a review"
    return Gate(name="suspected_lookup", passed=not suspected, measured=not suspected, overridable=True,
                detail=detail)


def load_gate(spec: PilotSpec, primary: str, clean: dict, outcome: Outcome) -> Gate:
    """The timed answers are the scored model's: item by item, the timed phases answered as the clean one did."""
    agreement, need = outcome.agreement, spec.service_level.min_agreement_under_load
    if agreement is None:
        return Gate(name="consistent_under_load", passed=True,
                    detail="not measured: no answers from the timed phases, or none from clean, to compare")
    detail = (f"{against(agreement, need, '.1%')} of the items answered alike while timed and in the untimed clean "
              f"phase (min {need:.0%}); the scores are the timed answers' ({primary} "
              f"{clean.get(primary, math.nan):.4g})")
    passed = agreement >= need
    return Gate(name="consistent_under_load", passed=passed, detail=detail if passed else
                "the answers given while timed differ from the clean answers to the same items: the latency and "
                "throughput measured are not those of the scored model; " + detail)


def plain_equity(groups: dict[str, dict[str, float]], metric: str, goal: str, overall: float | None) -> dict:
    """The equity headline of a family without bootstrap intervals: the worst group of all, against the best
    other group of its own key (none when its key has no other measured group)."""
    ranked = sorted(((v[metric], k) for k, v in groups.items() if not math.isnan(v.get(metric, math.nan))),
                    reverse=goal == "min")
    if not ranked:
        return {"metric": metric}
    worst, worst_g = ranked[0]
    equity = {"metric": metric, "worst_group": worst_g, "worst": worst,
              "worst_vs_overall": retention_ratio(goal, overall, worst)}
    same_key = [(v, g) for v, g in ranked[1:] if g.split("=", 1)[0] == worst_g.split("=", 1)[0]]
    if same_key:
        best, best_g = same_key[-1]
        equity |= {"best_group": best_g, "best": best, "gap": abs(worst - best)}
    return equity


def build_scorecard(spec: PilotSpec, fam: TaskFamily, profile: VendorProfile, outcome: Outcome,
                    result: SandboxResult, *, models: list[ModelArtifact] | None = None, **ids: Any) -> Scorecard:
    """Combine a family's outcome, the run's performance, the bundle's model evidence and the vendor profile
    into a scorecard."""
    primary = fam.primary_metric
    goal = goal_of(METRICS.where(family=fam.name)[primary])
    clean = outcome.metrics.get("clean", {})
    perf = performance(result)
    verdict, reason, tail = _verdict(spec, result, outcome, perf)
    retention = {name: retention_ratio(goal, clean.get(primary), m.get(primary))
                 for name, m in outcome.metrics.items() if name != "clean"}
    # with intervals when the family bootstraps them (`evaluation.equity`), else the plain per-group values
    equity = outcome.equity or plain_equity(outcome.groups, primary, goal, clean.get(primary))

    dl, skill = _deep_learning_fit(spec, fam, profile, outcome, models or [], result.opened)
    credited = credited_retention(spec, fam, outcome)
    parts = viability_parts(spec, clean, list(credited.values()), perf, skill)
    viability = Criterion(score=100 * float(np.mean(list(parts.values()))) if verdict == "completed" else 0.0,
                          evidence={"components": parts, "credited_retention": credited,
                                    "p95_latency_ms": perf["service_latency_ms"].get("p95"),
                                    "throughput_items_per_s": perf["service_throughput_items_per_s"],
                                    "performance_method": perf["method"], "coverage": outcome.coverage})
    policy = Criterion(score=None, status="pending_evaluator",
                       evidence={"policy_goals": spec.policy_goals,
                                 "equity": {k: v for k, v in equity.items() if k not in ("groups", "keys")}})
    score, status, evidence = local_strength(declared_claims(profile, fam.technology_fields))
    local = Criterion(score=score, status=status, evidence=evidence)
    criteria = dict(zip(CRITERIA, (dl, viability, policy, local), strict=True))

    gates = [Gate(name="verdict", passed=verdict == "completed", detail=f"{verdict}: {reason}"),
             Gate(name="isolation", passed=result.isolated,
                  detail="ran in the sandbox" if result.isolated else "ran WITHOUT isolation (--unsafe-no-sandbox)"),
             Gate(name="error_rate", passed=perf["error_rate"] <= spec.service_level.max_error_rate,
                  detail=f"{perf['failed_requests']} of {perf['requests']} requests failed "
                         f"({against(perf['error_rate'], spec.service_level.max_error_rate, '.3f')}; max "
                         f"{spec.service_level.max_error_rate})" if perf["requests"]
                  else "no requests were sent (the service never became ready)"),
             load_gate(spec, primary, clean, outcome),
             lookup_gate(spec, ids.get("split", "test"), outcome, skill), *threshold_gates(spec, clean)]
    card = Scorecard(pilot=spec.id, verdict=verdict, verdict_reason=reason, metrics=outcome.metrics,
                     retention=retention, under_load=outcome.under_load, groups=outcome.groups, equity=equity,
                     performance=perf, baseline=outcome.baseline, criteria=criteria, gates=gates, passed=False,
                     total_score=0.0, total_is_provisional=True, isolated=result.isolated, log_tail=tail,
                     sandbox_limits=dict(result.limits),
                     model_evidence=[m.as_dict() for m in models or []], phase_plan=fam.plan_record(),
                     weights=spec.criteria.weights.model_dump(), **ids)
    return rescore(card)
