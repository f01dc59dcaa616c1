"""The record and the copy: a submission's official scorecard is the one logged with its MLflow run (checked
against the run's metrics, with its current review applied); the copy beside the submission
(`TESTBED_HOME/submissions/<id>/scorecard/`) is for people, and is shown only as far as it agrees with it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.scorecard import Scorecard
from evaluation.tracking import Tracker
from testbed.config import Workspace
from testbed.errors import AuditError, NotFound, TestbedError, from_tracking_store
from workflow.review import ReviewBook, official_card, official_evaluation, reviewed_card
from workflow.submissions import SubmissionStore

__all__ = ["same_number", "copy_differences", "Shown", "verified_scorecard"]


def same_number(a: Any, b: Any) -> bool:
    """Equal, numbers within rounding (JSON keeps NaN and infinity alike: as null)."""
    if isinstance(a, int | float) and isinstance(b, int | float):
        return (not math.isfinite(a) and not math.isfinite(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    """Every value in a card's JSON by its path (`gates/0/detail`, `criteria/viability/score`, ...)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _leaves(item, f"{path}{key}/").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _leaves(item, f"{path}{i}/").items()}
    return {path.rstrip("/"): value}


def copy_differences(copy: Scorecard, record: Scorecard) -> list[str]:
    """Where the copy beside the submission differs from the record (with its review applied), anywhere in the
    card (a gate's detail, a latency, the reviewer's name): `what copy-value against record-value`."""
    mine, theirs = _leaves(record.model_dump(mode="json")), _leaves(copy.model_dump(mode="json"))
    return [f"{k} {str(theirs.get(k))[:60]} against {str(v)[:60]}" for k, v in mine.items()
            if not same_number(theirs.get(k), v)] + [f"{k} {str(v)[:60]} against none" for k, v in theirs.items()
                                                     if k not in mine]


@dataclass
class Shown:
    card: Scorecard
    """What to show: the copy when it agrees with the record (or the record cannot be read), else the record."""
    folder: Path
    """The copy's folder (its HTML page)."""
    warning: str | None = None
    """Why the copy is not shown, or shown unverified; None when it is the record."""


def _record(ws: Workspace, tracker: Tracker, submission: str) -> tuple[Scorecard | None, str | None]:
    """The record with its current review applied, or None and why it cannot be read."""
    sub = SubmissionStore(ws).get(submission)
    try:
        run = official_evaluation(tracker, sub)
        if run is None:
            return None, f"the tracking store ({ws.tracking_uri}) holds no official evaluation of {submission}"
        return reviewed_card(official_card(tracker, run), ReviewBook(ws, tracker).latest(sub.id, run)), None
    except TestbedError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - the store failing leaves the copy to show, unverified
        if not from_tracking_store(exc):
            raise
        return None, f"the MLflow tracking store failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"


def verified_scorecard(ws: Workspace, tracker: Tracker, submission: str) -> Shown:
    """The submission's official scorecard for `testbed scorecard`: the copy beside it, checked against the
    record (one search and one download); the record instead where the copy differs or is unreadable."""
    store = SubmissionStore(ws)
    store.get(submission)
    folder, where = store.report_dir(submission), store.report_dir(submission) / "scorecard.json"
    try:
        copy, broken = store.scorecard(submission), None
    except AuditError as exc:
        copy, broken = None, exc
    record, why = _record(ws, tracker, submission)
    restore = f"`testbed scorecard {submission} --restore` rewrites the copy from the record; `testbed audit " \
              f"{submission}` checks the record itself"
    if record is None:
        if broken is not None:
            raise AuditError(f"{broken.problem}, and the record cannot be read instead ({why})", where=str(where),
                             fix=f"`testbed audit {submission}` says what is wrong with the record; once it is "
                                 f"whole, {restore.split(';')[0]}")
        if copy is None:
            raise NotFound(f"submission {submission} has no scorecard yet",
                           fix=f"run `testbed evaluate {submission}`")
        return Shown(copy, folder, f"the scorecard beside the submission ({where}) is shown UNVERIFIED: it could "
                                   f"not be checked against the MLflow record: {why}")
    if broken is not None:
        return Shown(record, folder, f"{broken.problem} ({where}); showing the MLflow record instead. fix: {restore}")
    if copy is None:
        return Shown(record, folder, f"no scorecard beside the submission ({where}); showing the MLflow record. "
                                     f"fix: {restore}")
    differ = copy_differences(copy, record)
    if differ:
        return Shown(record, folder, f"the scorecard beside the submission ({where}) DIFFERS from the MLflow record "
                                     f"(run {record.mlflow_run_id}): {'; '.join(differ[:4])} (copy against record); "
                                     f"showing the record. fix: {restore}")
    return Shown(copy, folder)
