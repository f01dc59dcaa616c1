"""`testbed audit`: recompute every number of a submission's official scorecard from what was logged with the
run (the predictions, the pilot spec) and the sequestered labels, and say whether they match."""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.families import open_family
from evaluation.scorecard import Scorecard
from evaluation.tracking import RunRecord, Tracker, disagreements
from pilots.spec import PilotSpec
from testbed.config import Workspace
from testbed.errors import AuditError, NotFound, SpecError
from workflow.review import ReviewBook, reviewed_card
from workflow.submissions import SubmissionStore

__all__ = ["AuditCheck", "AuditReport", "audit_submission"]


@dataclass
class AuditCheck:
    name: str
    """What was compared: a hash, or `metrics/<scenario>/<metric>`, `groups/<group>/<metric>`, `baseline/...`,
    `under_load/<metric>`."""
    recorded: Any
    """The value on the scorecard (and in MLflow)."""
    recomputed: Any
    """The value the audit computed itself."""
    ok: bool


@dataclass
class AuditReport:
    submission: str
    run_id: str
    checks: list[AuditCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def mismatches(self) -> list[AuditCheck]:
        return [c for c in self.checks if not c.ok]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):  # JSON keeps NaN and infinity alike (null)
        return (not math.isfinite(a) and not math.isfinite(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _numbers(metrics: dict, groups: dict, baseline: dict, under_load: dict) -> dict[str, float]:
    out = {f"metrics/{s}/{m}": v for s, vals in metrics.items() for m, v in vals.items()}
    out |= {f"under_load/{m}": v for m, v in under_load.items()}
    out |= {f"groups/{g}/{m}": v for g, vals in groups.items() for m, v in vals.items()}
    return out | {f"baseline/{m}": v for m, v in baseline.items() if isinstance(v, int | float)}


def _mlflow_name(key: str) -> str:
    kind, rest = key.split("/", 1)
    return {"metrics": rest, "groups": "group/" + rest.replace("=", "/", 1), "under_load": key}.get(kind, "")


def _check_record(report: AuditReport, card: Scorecard, run: RunRecord, spec: PilotSpec, copy: Scorecard | None,
                  book: ReviewBook) -> None:
    """The logged scorecard against the run's metrics and the logged spec's weights; the copy beside the
    submission (for people) against the record with its review applied."""
    check = report.checks.append
    differ = disagreements(card, run.metrics)
    check(AuditCheck("scorecard against the run's metrics", "as logged", "; ".join(differ[:5]) or "as logged",
                     not differ))
    weights = spec.criteria.weights.model_dump()
    same = card.weights.keys() == weights.keys() and all(_same(card.weights[k], weights[k]) for k in weights)
    check(AuditCheck("criteria weights", card.weights, weights, same))
    try:
        expected = reviewed_card(card, book.latest(card.submission, run))
    except AuditError as exc:
        check(AuditCheck("review trail", "intact", exc.problem, False))
        return
    if copy is not None:
        def shown(c: Scorecard) -> dict[str, Any]:
            return {"total": c.total_score, "passed": c.passed, **{f"gates/{g.name}": g.passed for g in c.gates},
                    **{f"criteria/{k}": v.score for k, v in c.criteria.items()}}

        mine, theirs = shown(expected), shown(copy)
        differ = [f"{k} {theirs.get(k)} against {v}" for k, v in mine.items() if not _same(theirs.get(k), v)]
        check(AuditCheck("the scorecard beside the submission (for people)", "as the record", "; ".join(differ[:5])
                         or "as the record", not differ))


def audit_submission(submission: str, *, ws: Workspace, tracker: Tracker) -> AuditReport:
    """Audit the official evaluation of `submission` (raises NotFound when there is none)."""
    store = SubmissionStore(ws)
    sub = store.get(submission)
    run = tracker.official_run(sub.pilot, submission)
    if run is None:
        raise NotFound(f"submission {submission} has no official evaluation to audit",
                       fix=f"run `testbed evaluate {submission}` first")
    report = AuditReport(submission, run.run_id)
    check = report.checks.append
    with tempfile.TemporaryDirectory(prefix="testbed-audit-") as tmp:
        folder = Path(tmp)
        card = Scorecard.model_validate_json(tracker.download(run.run_id, "scorecard.json", folder).read_text())
        spec_file = tracker.download(run.run_id, "pilot_spec.json", folder)
        preds_file = tracker.download(run.run_id, "predictions.npz", folder)
        for name, path, recorded in (("pilot spec sha256", spec_file, card.pilot_spec_sha256),
                                     ("predictions sha256", preds_file, card.predictions_sha256)):
            logged = run.params.get(name.replace(" sha256", "_sha256").replace(" ", "_"), recorded)
            digest = _sha(path)
            check(AuditCheck(name, recorded, digest, digest == recorded == logged))
        digest = _sha(tracker.download(run.run_id, f"bento/{store.bundle(sub.id).name}", folder))
        check(AuditCheck("bundle sha256", card.bundle_sha256, digest,
                         digest == card.bundle_sha256 == run.params.get("bundle_sha256", digest)))
        spec = PilotSpec.model_validate_json(spec_file.read_text())
        with np.load(preds_file, allow_pickle=False) as npz:
            preds = {k: npz[k] for k in npz.files}
    _check_record(report, card, run, spec, store.scorecard(sub.id), ReviewBook(ws))
    try:
        fam = open_family(spec, ws.data_dir)  # verifies the data against the evaluated spec's sha256
    except SpecError as exc:  # the data on disk are not those evaluated: nothing to recompute from
        check(AuditCheck("dataset sha256", card.dataset_sha256, f"the data on disk differ ({exc.problem}); restore "
                         "the data the evaluation used (pinned by the logged pilot spec)", False))
        return report
    check(AuditCheck("dataset sha256", card.dataset_sha256, fam.dataset_sha256,
                     fam.dataset_sha256 == card.dataset_sha256))
    data = fam.load(card.split)
    try:
        outcome = fam.score_predictions(data, preds)
    except (KeyError, ValueError, IndexError) as exc:
        check(AuditCheck("predictions readable", True, f"{type(exc).__name__}: {exc}", False))
        return report
    mine = _numbers(outcome.metrics, outcome.groups, outcome.baseline, outcome.under_load)
    recorded = _numbers(card.metrics, card.groups, card.baseline, card.under_load)
    for key in sorted(set(mine) | set(recorded)):
        ours, theirs = mine.get(key), recorded.get(key)
        logged = run.metrics.get(_mlflow_name(key), theirs) if theirs is not None and not math.isnan(theirs) else theirs
        check(AuditCheck(key, theirs, ours, ours is not None and theirs is not None and _same(ours, theirs)
                         and _same(ours, logged)))
    gates = {g.name: g for g in card.gates}
    for gate, what, value, shown, moot in (
            ("suspected_lookup", "exactness", fam.exactness(data, preds), "{:.5f}", "not public"),
            ("consistent_under_load", "agreement", fam.agreement(data, preds), "{:.1%} of the items", None)):
        if gate in gates and value is not None:
            detail = gates[gate].detail
            check(AuditCheck(f"{what} ({gate} check)", detail, value,
                             shown.format(value) in detail or bool(moot and moot in detail)))
    return report
