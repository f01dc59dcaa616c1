"""What a campaign says and records when something other than the bundle fails: the machinery (a Ray worker or
node lost, a node's disk full, a bug of the harness's or of Ray's), recorded as a FAILED MLflow run that is no
evaluation (`record_failed`), and the tracking store failing for one evaluation (`unrecorded`). Used by
`workflow.campaign`; a bundle's own failure is a verdict, never one of these."""

from __future__ import annotations

import hashlib
import traceback

from evaluation.tracking import Tracker
from evaluation.tracking_uri import check_tracking_uri
from testbed.config import Workspace
from testbed.errors import AuditError, InfrastructureFailure, ResourceUnavailable, from_tracking_store
from workflow.evaluate import PreparedEvaluation

__all__ = ["TRACEBACK_CHARS", "bundle_bytes", "described", "gave_up", "record_failed", "traceback_of",
           "unexpected", "unrecorded"]

TRACEBACK_CHARS = 6000
"""The end of an unexpected exception's traceback kept on its FAILED run (MLflow keeps 6,000 characters a param)."""


def record_failed(tracker: Tracker, ws: Workspace, prepared: PreparedEvaluation, submission: str, retries: list[str],
                  reason: str, last: str, **params: str) -> tuple[str | None, ResourceUnavailable | None]:
    """The machinery's failure recorded as a FAILED run that is no evaluation (not the bundle's failure: the next
    campaign evaluates it again): (its run id, None), or (None, the error to fail the item with) when the tracking
    store refused it."""
    pilot = prepared.spec.id
    try:
        return tracker.record_failure(
            pilot, submission, prepared.vendor.name, reason,
            {"campaign_retries": "; ".join(retries) or "none", "campaign_failure": last,
             "bundle_sha256": prepared.info.sha256, "resources": prepared.spec.resources.model_dump_json(),
             **params}), None
    except Exception as refused:  # noqa: BLE001 - that one fails, the campaign goes on
        if not from_tracking_store(refused):
            raise
        return None, unrecorded(refused, ws, pilot, f"recording that {reason}")


def gave_up(attempts: int, exc: InfrastructureFailure, run_id: str | None, pilot: str) -> InfrastructureFailure:
    """What an item whose `attempts` all failed on the machinery says (its FAILED run: `run_id`)."""
    return InfrastructureFailure(
        f"the machinery failed on {attempts} attempt(s), no retry left (last: {exc.problem}); recorded as MLflow run "
        f"{run_id} (FAILED, not an evaluation)", where=exc.where,
        fix=f"check the Ray nodes (`ray status`: lost nodes, memory); a rerun (`testbed evaluate --all {pilot}`) "
            "evaluates it again")


def unexpected(exc: BaseException, run_id: str | None, pilot: str, executor: str) -> InfrastructureFailure:
    """What an item failed by an exception of no `TestbedError`'s from the executor (a bug of the harness's or of
    Ray's: its traceback on the FAILED run `run_id`, param `campaign_traceback`) says."""
    return InfrastructureFailure(
        f"the machinery failed unexpectedly ({described(exc)}), not retried; recorded as MLflow run {run_id} (FAILED, "
        "not an evaluation)", where=f"the executor ({executor})",
        fix=f"a bug of the testbed's or of Ray's: its traceback is the run's param `campaign_traceback`; check the "
            f"Ray nodes (`ray status`); a rerun (`testbed evaluate --all {pilot}`) evaluates it again")


def traceback_of(exc: BaseException) -> str:
    """The end of `exc`'s traceback, as a FAILED run keeps it (`TRACEBACK_CHARS`)."""
    return "".join(traceback.format_exception(exc))[-TRACEBACK_CHARS:]


def described(exc: BaseException) -> str:
    """`exc`'s type and the first line of its message; a Ray task's error (`RayTaskError(KeyError)`), whose own
    message is the worker's process title, with its cause's."""
    cause = getattr(exc, "cause", None)
    lines = str(cause if isinstance(cause, BaseException) else exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def bundle_bytes(prepared: PreparedEvaluation) -> bytes:
    """The bundle's bytes again, for a job placed once more: read from the file the evaluation hashed (its private
    copy), and refused unless they are still the bytes hashed, run and logged."""
    data = prepared.bundle.read_bytes()
    if hashlib.sha256(data).hexdigest() != prepared.info.sha256:
        raise AuditError(f"the bundle changed since it was checked and first run (sha256 {prepared.info.sha256[:12]}…)",
                         where=str(prepared.bundle),
                         fix=f"restore the submitted bundle; a rerun (`testbed evaluate --all {prepared.spec.id}`) "
                             "evaluates it again")
    return data


def unrecorded(exc: BaseException, ws: Workspace, pilot: str, doing: str = "recording the evaluation",
               outcome: str = "no official evaluation was recorded") -> ResourceUnavailable:
    """The tracking store failed while `doing` for one evaluation (a write refused, a read failed, a server
    restarting): that one fails and the campaign goes on; a store that no longer answers at all stops the
    campaign here, saying so (`check_tracking_uri` raises), rather than each later evaluation waiting minutes on
    MLflow's retries."""
    check_tracking_uri(ws.tracking_uri)
    detail = " ".join(str(exc).split())[:300]
    return ResourceUnavailable(f"the tracking store failed while {doing} ({type(exc).__name__}: {detail}): "
                               f"{outcome}",
                               where=f"MLFLOW_TRACKING_URI={ws.tracking_uri}",
                               fix=f"check the tracking store; a rerun (`testbed evaluate --all {pilot}`) evaluates "
                                   "it again")
