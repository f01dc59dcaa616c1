"""`testbed audit`: recompute every number of a submission's official scorecard from what was logged with the
run (the predictions, the pilot spec) and the sequestered labels, and say whether they match."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.families import open_family
from evaluation.scorecard import Scorecard
from evaluation.tracking import RunRecord, Tracker, disagreements
from pilots.spec import PilotSpec
from sandbox.bundle import sha256_file
from testbed.config import Workspace, harness_version
from testbed.errors import AuditError, NotFound, TestbedError
from workflow.audit_gates import criteria_checks, gate_checks, history_check
from workflow.record import copy_differences, same_number
from workflow.review import ReviewBook, reviewed_card
from workflow.submissions import SubmissionStore

__all__ = ["AuditCheck", "AuditReport", "audit_submission"]

COPY = "the scorecard beside the submission (for people)"
STORED = "the submission's stored bundle sha256 (what a re-evaluation runs)"


@dataclass
class AuditCheck:
    name: str
    """What was compared: a hash, `artifact <name>` (missing or unreadable), `metrics/<scenario>/<metric>`,
    `groups/<group>/<metric>`, `baseline/...`, `under_load/<metric>`, `gate <name>`, `criteria/<name>`, ..."""
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
    scored_by: str | None = None
    """The harness version on the card, where it is not the one auditing: a difference may then be a formula
    changed since, not an altered record (audit again with that version checked out to tell)."""

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def mismatches(self) -> list[AuditCheck]:
        return [c for c in self.checks if not c.ok]


READ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error)
"""What reading a damaged artifact raises (pydantic's ValidationError is a ValueError)."""


def _fetch(report: AuditReport, tracker: Tracker, name: str, folder: Path) -> Path | None:
    """Artifact `name` of the audited run, or None with a failed check saying it is missing."""
    try:
        return tracker.download(report.run_id, name, folder)
    except AuditError as exc:
        report.checks.append(AuditCheck(f"artifact {name}", "logged with the run", exc.problem, False))
        return None


def _parse(report: AuditReport, name: str, path: Path | None, read: Callable[[Path], Any]) -> Any:
    """`read(path)`, or None with a failed check saying the artifact cannot be read."""
    if path is None:
        return None
    try:
        return read(path)
    except READ_ERRORS as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        report.checks.append(AuditCheck(f"artifact {name}", "readable", f"unreadable ({type(exc).__name__}: "
                                        f"{first}); restore it from a backup of the artifact store", False))
        return None


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _numbers(metrics: dict, groups: dict, baseline: dict, under_load: dict) -> dict[str, float]:
    out = {f"metrics/{s}/{m}": v for s, vals in metrics.items() for m, v in vals.items()}
    out |= {f"under_load/{m}": v for m, v in under_load.items()}
    out |= {f"groups/{g}/{m}": v for g, vals in groups.items() for m, v in vals.items()}
    return out | {f"baseline/{m}": v for m, v in baseline.items() if isinstance(v, int | float)}


def _mlflow_name(key: str) -> str:
    kind, rest = key.split("/", 1)
    return {"metrics": rest, "groups": "group/" + rest.replace("=", "/", 1), "under_load": key}.get(kind, "")


def _check_record(report: AuditReport, card: Scorecard, run: RunRecord, spec: PilotSpec | None,
                  copy: Scorecard | AuditError | None, book: ReviewBook) -> None:
    """The logged scorecard against the run's metrics and the logged spec's weights; the copy beside the
    submission (for people; an AuditError when unreadable) against the record with its review applied."""
    check = report.checks.append
    differ = disagreements(card, run.metrics)
    check(AuditCheck("scorecard against the run's metrics", "as logged", "; ".join(differ[:5]) or "as logged",
                     not differ))
    if spec is not None:
        weights = spec.criteria.weights.model_dump()
        same = card.weights.keys() == weights.keys() and all(same_number(card.weights[k], weights[k]) for k in weights)
        check(AuditCheck("criteria weights", card.weights, weights, same))
    try:
        review = book.latest(card.submission, run, strict=True)  # a forged entry fails it
    except AuditError as exc:
        check(AuditCheck("review trail", "intact", exc.problem, False))
        return
    check(AuditCheck("review trail", "intact", f"intact; latest decision: {review.decision} by {review.by}"
                     if review else "intact; no review yet", True))
    expected = reviewed_card(card, review)
    if isinstance(copy, AuditError):
        check(AuditCheck(COPY, "readable", f"{copy.problem}; `testbed scorecard {card.submission} --restore` "
                         "rewrites it from the record", False))
    elif copy is not None:
        differ = copy_differences(copy, expected)
        check(AuditCheck(COPY, "as the record", "; ".join(differ[:5]) or "as the record", not differ))


def audit_submission(submission: str, *, ws: Workspace, tracker: Tracker) -> AuditReport:
    """Audit the official evaluation of `submission` (raises NotFound when there is none). An artifact missing
    or unreadable is a failed check, and the audit goes on with what it can still compare."""
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
        names = {"card": "scorecard.json", "spec": "pilot_spec.json", "preds": "predictions.npz",
                 "bundle": f"bento/{store.bundle(sub.id).name}"}
        files = {k: _fetch(report, tracker, name, folder) for k, name in names.items()}
        card = _parse(report, names["card"], files["card"], lambda p: Scorecard.model_validate_json(p.read_bytes()))
        for name, key, param in (("pilot spec sha256", "spec", "pilot_spec_sha256"),
                                 ("predictions sha256", "preds", "predictions_sha256"),
                                 ("bundle sha256", "bundle", "bundle_sha256")):
            logged = run.params.get(param)
            recorded = getattr(card, param) if card is not None else logged
            if files[key] is not None:
                digest = sha256_file(files[key])
                check(AuditCheck(name, recorded, digest, digest == recorded == (logged or digest)))
        spec = _parse(report, names["spec"], files["spec"], lambda p: PilotSpec.model_validate_json(p.read_bytes()))
        preds = _parse(report, names["preds"], files["preds"], _arrays)
    check(AuditCheck(*history_check(tracker, run)))
    found = store.stored_sha256(sub.id)  # what a re-evaluation runs; what was evaluated is the artifact above
    check(AuditCheck(STORED, sub.bundle_sha256, found, found == sub.bundle_sha256))
    try:
        copy = store.scorecard(sub.id)
    except AuditError as exc:  # the copy is for people: a broken one is reported, the record still audited
        copy = exc
    if card is None:
        return report
    _check_record(report, card, run, spec, copy, ReviewBook(ws, tracker))
    if card.harness_version != harness_version():
        report.scored_by = card.harness_version
    if spec is None or preds is None:
        return report
    with np.errstate(all="ignore"):  # as when scored: answers that overflow give an infinite error, quietly
        _recompute(report, card, run, spec, preds, ws)
    return report


def _recompute(report: AuditReport, card: Scorecard, run: RunRecord, spec: PilotSpec, preds: dict[str, np.ndarray],
               ws: Workspace) -> None:
    """Every number, gate and measured criterion of `card` recomputed from the logged predictions and spec and
    the sequestered labels."""
    check = report.checks.append
    try:
        fam = open_family(spec, ws.data_dir)  # verifies the data against the evaluated spec's sha256
    except TestbedError as exc:  # the data on disk are not those evaluated: nothing to recompute from
        check(AuditCheck("dataset sha256", card.dataset_sha256, f"the data on disk differ ({exc.problem}); restore "
                         "the data the evaluation used (pinned by the logged pilot spec)", False))
        return
    check(AuditCheck("dataset sha256", card.dataset_sha256, fam.dataset_sha256,
                     fam.dataset_sha256 == card.dataset_sha256))
    data = fam.load(card.split)
    try:
        outcome = fam.score_predictions(data, preds)
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        check(AuditCheck("predictions readable", True, f"{type(exc).__name__}: {exc}", False))
        return
    mine = _numbers(outcome.metrics, outcome.groups, outcome.baseline, outcome.under_load)
    recorded = _numbers(card.metrics, card.groups, card.baseline, card.under_load)
    for key in sorted(set(mine) | set(recorded)):
        ours, theirs = mine.get(key), recorded.get(key)
        logged = run.metrics.get(_mlflow_name(key), theirs) if theirs is not None and not math.isnan(theirs) else theirs
        check(AuditCheck(key, theirs, ours, ours is not None and theirs is not None and same_number(ours, theirs)
                         and same_number(ours, logged)))
    outcome = dataclasses.replace(outcome, exactness=fam.exactness(data, preds), agreement=fam.agreement(data, preds))
    gates = {g.name: g for g in card.gates}
    for gate, what, value, shown, moot in (
            ("suspected_lookup", "exactness", outcome.exactness, "{:.5f}", "not public"),
            ("consistent_under_load", "agreement", outcome.agreement, "{:.1%} of the items", None)):
        if gate in gates and value is not None:
            detail = gates[gate].detail
            check(AuditCheck(f"{what} ({gate} check)", detail, value,
                             shown.format(value) in detail or bool(moot and moot in detail)))
    for name, theirs, ours, ok in gate_checks(card, spec, fam, outcome, run) + \
            criteria_checks(card, spec, fam, outcome):
        check(AuditCheck(name, theirs, ours, ok))
