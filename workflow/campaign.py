"""Campaigns: every submission without a finished official evaluation, evaluated in parallel.

Each sandbox job is placed on the executor at once (a Ray task asking for the spec's CPUs/GPUs: Ray starts it
when a node has them free, so the cluster bounds the parallelism). As the jobs return, each is scored and
drawn (here, or in the `ScoringPool`'s processes) and every tracking write happens here, in the driver, one
evaluation after another: the tracking store never sees two writers from one campaign, so SQLite's single
writer is enough (and a tracking server, when `MLFLOW_TRACKING_URI` names one, works the same). The jobs are
prepared in order in another thread, the later ones while the first is placed (and a local Ray starts for it),
at most `PREPARE_AHEAD` ahead of placement; once placed a job's bytes are the executor's, and once recorded an
evaluation is let go (its private bundle copy removed).

Faults: a run is official only once FINISHED (`evaluation.tracking.official_per_submission`), and it is
created only after its sandbox job returned, so a campaign killed at any point leaves no evaluation that looks
finished but is not, and a rerun evaluates exactly what has no finished official run. A failure of the
machinery (`InfrastructureFailure`: a Ray worker or node died, a node's disk filled) is retried up to `retries`
times, each retry recorded on the run (param `campaign_retries`) and placed only after a growing wait
(`RETRY_BACKOFF_S`), then recorded as a FAILED run; a placement refused for a job as large as one the executor took
earlier in the campaign is a lost node's, so the machinery's too. An exception of no `TestbedError`'s from the
executor (a bug of the harness's or of Ray's) fails that job alone, not retried, recorded as a FAILED run too. A
bundle's own failure is a verdict, never retried.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import NamedTuple

from evaluation.tracking import Tracker
from evaluation.tracking_uri import check_tracking_uri
from sandbox.executor import STRANDED_CHECK_S, Executor
from sandbox.runner import SandboxResult
from testbed.config import Workspace
from testbed.errors import AuditError, InfrastructureFailure, ResourceUnavailable, TestbedError
from workflow.assess import Assessment
from workflow.catalogue import get_pilot
from workflow.evaluate import PreparedEvaluation, conclude_evaluation, prepare_evaluation
from workflow.scoring import ScoringPool
from workflow.submissions import Submission, SubmissionStore

__all__ = ["CampaignItem", "Pending", "pending_submissions", "run_campaign"]

PREPARE_AHEAD = 2
"""How many jobs are prepared ahead of their placement. Each prepared job holds its bundle's bytes (up to 1 GiB)
until it is placed, and its private copy of the bundle until its evaluation is recorded: the driver's memory and
temporary disk stay bounded however many submissions a campaign has."""

RETRY_BACKOFF_S = 1.0
"""How long a job waits before it is placed again after the machinery's failure, doubled at each further retry of
that job, up to `RETRY_BACKOFF_MAX_S`: a flapping node or cluster does not spend every retry within a second. The
campaign collects the other jobs' results meanwhile."""
RETRY_BACKOFF_MAX_S = 30.0
"""The longest wait before a retry (`RETRY_BACKOFF_S`)."""


@dataclass
class CampaignItem:
    """What became of one submission in a campaign."""

    submission: str
    status: str = "queued"
    """queued (also while a retry waits to be placed), running, scoring, evaluated, skipped (an official evaluation
    exists) or failed (an error, not a verdict)."""
    verdict: str | None = None
    total: float | None = None
    passed: bool | None = None
    run_id: str | None = None
    """The MLflow run: the evaluation's, or the FAILED record of a failure of the machinery."""
    retries: list[str] = field(default_factory=list)
    """One line per infrastructure failure retried."""
    error: str | None = None
    """Why it failed or was skipped: the whole message (where, problem and fix)."""
    node: str | None = None
    """Where the sandbox ran (the Ray node id)."""
    wall_s: float = 0.0
    """From placing the job to the tracked result."""


class Pending(NamedTuple):
    """What a campaign finds to do."""

    todo: list[Submission]
    """No finished official evaluation yet: to evaluate."""
    done: list[Submission]
    """Officially evaluated already: skipped."""
    unreadable: list[CampaignItem]
    """Submissions whose stored record cannot be read: failed items naming the file and the fix."""


def pending_submissions(store: SubmissionStore, tracker: Tracker, *, pilot: str | None = None,
                        ids: list[str] | None = None) -> Pending:
    """`ids` in order, or every submission to `pilot` (to any pilot without it). An id not stored refuses the
    campaign (a mistyped id); an unreadable record fails on its own, the others still run."""
    pilot_id = get_pilot(pilot).id if pilot and not ids else None
    found = Pending([], [], [])
    for sub_id in dict.fromkeys(ids or store.ids()):
        try:
            sub = store.get(sub_id)
        except AuditError as exc:
            if pilot_id is None or sub_id.rsplit("-", 1)[0] == pilot_id:  # ids are `<pilot>-<hash>`
                found.unreadable.append(CampaignItem(sub_id, status="failed", error=str(exc)))
            continue
        if pilot_id is None or sub.pilot == pilot_id:
            (found.done if tracker.official_run(sub.pilot, sub.id) else found.todo).append(sub)
    return found


def run_campaign(subs: list[Submission], *, executor: Executor, tracker: Tracker, ws: Workspace,
                 retries: int = 2, isolated: bool = True, scoring: ScoringPool | None = None,
                 on_update: Callable[[CampaignItem], None] = lambda item: None) -> list[CampaignItem]:
    """Evaluate `subs` in parallel on `executor`, recording each official evaluation in `tracker`; returns one
    item per submission (in order). `scoring`: processes that score and draw beside the driver (by default
    the driver does). `on_update` is called whenever an item changes (progress display)."""
    store = SubmissionStore(ws)
    items = {sub.id: CampaignItem(sub.id) for sub in subs}
    placed: dict[Future, tuple[PreparedEvaluation, float]] = {}
    scoring = scoring or ScoringPool(0)
    assessing: dict[Future, tuple[PreparedEvaluation, float, SandboxResult]] = {}
    placeable: set[tuple[float, float, int]] = set()
    """The (CPUs, GPUs, memory MB) of the jobs the executor has accepted in this campaign: a later refusal of as
    much is a lost node's (the machinery's failure, retried and recorded), not a spec too large for the cluster."""

    def fail(item: CampaignItem, exc: BaseException, status: str = "failed") -> None:
        item.status, item.error = status, str(exc) if isinstance(exc, TestbedError) else f"{type(exc).__name__}: {exc}"
        on_update(item)

    def record_failed(item: CampaignItem, prepared: PreparedEvaluation, reason: str, last: str,
                      **params: str) -> bool:
        """The machinery's failure recorded as a FAILED run that is no evaluation (not the bundle's failure: the
        next campaign evaluates it again); False, the item failed saying so, when the tracking store refused it."""
        pilot = prepared.spec.id
        try:
            item.run_id = tracker.record_failure(
                pilot, item.submission, prepared.vendor.name, reason,
                {"campaign_retries": "; ".join(item.retries) or "none", "campaign_failure": last,
                 "bundle_sha256": prepared.info.sha256, "resources": prepared.spec.resources.model_dump_json(),
                 **params})
        except Exception as refused:  # noqa: BLE001 - as in `record`: that one fails, the campaign goes on
            if not _from_store(refused):
                raise
            fail(item, _unrecorded(refused, ws, pilot, f"recording that {reason}"))
            return False
        return True

    def give_up(item: CampaignItem, prepared: PreparedEvaluation, exc: InfrastructureFailure) -> None:
        """The retries are spent: recorded as a FAILED run."""
        last, pilot = f"attempt {len(item.retries) + 1}: {exc.problem}", prepared.spec.id
        if not record_failed(item, prepared, f"the machinery failed on every attempt ({last})", last):
            return
        fail(item, InfrastructureFailure(
            f"the machinery failed on {len(item.retries) + 1} attempt(s), no retry left (last: {exc.problem}); "
            f"recorded as MLflow run {item.run_id} (FAILED, not an evaluation)", where=exc.where,
            fix=f"check the Ray nodes (`ray status`: lost nodes, memory); a rerun (`testbed evaluate --all {pilot}`) "
                "evaluates it again"))

    def broken(item: CampaignItem, prepared: PreparedEvaluation, exc: Exception) -> None:
        """An exception of no `TestbedError`'s from the executor, placing the job or as its result: a bug of the
        harness's or of Ray's, not the bundle's. Not retried (nothing says a retry mends it): recorded as a FAILED
        run, its traceback with it (param `campaign_traceback`), and the campaign goes on."""
        what, pilot = _described(exc), prepared.spec.id
        last = f"attempt {len(item.retries) + 1}: {what}"
        trace = "".join(traceback.format_exception(exc))[-_TRACEBACK_CHARS:]
        if not record_failed(item, prepared, f"the machinery failed unexpectedly ({last})", last,
                             campaign_traceback=trace):
            return
        fail(item, InfrastructureFailure(
            f"the machinery failed unexpectedly ({what}), not retried; recorded as MLflow run {item.run_id} (FAILED, "
            "not an evaluation)", where=f"the executor ({type(executor).__name__})",
            fix=f"a bug of the testbed's or of Ray's: its traceback is the run's param `campaign_traceback`; check the "
                f"Ray nodes (`ray status`); a rerun (`testbed evaluate --all {pilot}`) evaluates it again"))

    def place(item: CampaignItem, prepared: PreparedEvaluation, started: float) -> None:
        if not prepared.job.bundle:  # placed before (a retry): its bytes were let go
            try:
                prepared.job = dataclasses.replace(prepared.job, bundle=_bundle_bytes(prepared))
            except (TestbedError, OSError) as exc:
                fail(item, exc)
                return
        job = prepared.job
        need = (job.cpus, job.gpus, job.limits.memory_mb)
        try:
            future = executor.submit(job)
        except ResourceUnavailable as exc:
            if need not in placeable:  # no node ever took a job this large: the spec's or the cluster's, say so
                fail(item, exc)
                return
            future = Future()  # a node took it before: one large enough was lost since; the machinery's, retried
            future.set_exception(InfrastructureFailure(
                f"placement refused, though a job asking for as much was placed before in this campaign (a node "
                f"large enough was lost): {exc.problem}", where=exc.where,
                fix="bring back a node that large (`ray status` lists the nodes); a rerun evaluates it again"))
        except TestbedError as exc:
            fail(item, exc)
            return
        except Exception as exc:  # noqa: BLE001 - one job the executor fails to place never stops the others
            broken(item, prepared, exc)
            return
        else:
            placeable.add(need)
            prepared.job = dataclasses.replace(job, bundle=b"")  # the executor has the job: no second copy kept here
        placed[future] = (prepared, started)
        item.status = "running"
        on_update(item)

    def prepare(sub: Submission) -> PreparedEvaluation:
        return prepare_evaluation(get_pilot(sub.pilot), store.bundle(sub.id), sub.vendor, ws=ws,
                                  out_dir=store.report_dir(sub.id), submission=sub.id, tracker=tracker,
                                  isolated=isolated, vetted=store.vetted(sub.id), ready_scoring=not scoring.active)

    def ended_by(item: CampaignItem, exc: TestbedError, pilot: str) -> None:
        """`exc` ended it: skipped where an official evaluation exists (another process finished it), else failed
        (also when the store cannot say: a rerun then tells)."""
        try:
            official = tracker.official_run(pilot, item.submission)
        except Exception as unread:  # noqa: BLE001 - as in `record`: that one fails, the campaign goes on
            if not _from_store(unread):
                raise
            official = None
        fail(item, exc, "skipped" if official else "failed")

    def record(assessed: Assessment | None, prepared: PreparedEvaluation, started: float,
               result: SandboxResult) -> None:
        item = items[prepared.submission]
        params = {"campaign_retries": "; ".join(item.retries) or "none", "ray_node": item.node or ""}
        try:
            card = conclude_evaluation(prepared, result, tracker=tracker, params=params, assessed=assessed).card
        except TestbedError as exc:
            ended_by(item, exc, prepared.spec.id)
            return
        except Exception as exc:  # noqa: BLE001 - one evaluation that cannot be recorded never stops the others
            fail(item, _unrecorded(exc, ws, prepared.spec.id) if _from_store(exc) else exc)
            return
        item.status, item.verdict, item.total, item.passed = "evaluated", card.verdict, card.total_score, card.passed
        item.run_id, item.wall_s = card.mlflow_run_id, time.monotonic() - started
        on_update(item)

    retrying: dict[str, tuple[float, PreparedEvaluation, float]] = {}
    """Each job waiting to be placed again -> when it may be (`time.monotonic()`), its evaluation, when it was
    first placed."""

    def retry(item: CampaignItem, prepared: PreparedEvaluation, started: float, exc: InfrastructureFailure) -> None:
        """Placed again after `_backoff`, unless its retries are spent."""
        if len(item.retries) >= retries:
            give_up(item, prepared, exc)
            return
        item.retries.append(f"attempt {len(item.retries) + 1}: {exc.problem}")
        retrying[item.submission] = time.monotonic() + _backoff(len(item.retries)), prepared, started
        item.status = "queued"
        on_update(item)

    def place_due() -> float:
        """Place the retries whose wait is over; the seconds until the next one is due (0.5 at most)."""
        now = time.monotonic()
        for sub_id, (due, prepared, started) in list(retrying.items()):
            if due <= now:
                del retrying[sub_id]
                place(items[sub_id], prepared, started)
        return min([0.5, *(due - now for due, _, _ in retrying.values())])

    preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-evaluation")
    queue, preparing = iter(subs), deque[tuple[Submission, Future[PreparedEvaluation]]]()
    def ahead() -> None:
        while len(preparing) < PREPARE_AHEAD and (sub := next(queue, None)) is not None:
            preparing.append((sub, preparer.submit(prepare, sub)))

    try:  # jobs are prepared in order in another thread: the next ones while a local Ray starts for the first
        ahead()
        while preparing:
            sub, future = preparing.popleft()
            ahead()  # the next ones are prepared while this one is placed
            item = items[sub.id]
            try:
                prepared = future.result()
            except TestbedError as exc:
                ended_by(item, exc, sub.pilot)
                continue
            except Exception as exc:  # noqa: BLE001 - as in `record`: one that cannot be prepared never stops the others
                fail(item, _unrecorded(exc, ws, sub.pilot, "reading whether it has an official evaluation already",
                                       "nothing was evaluated") if _from_store(exc) else exc)
                continue
            place(item, prepared, time.monotonic())
        stranded_check = time.monotonic() + STRANDED_CHECK_S
        while placed or assessing or retrying:
            timeout = max(0.0, place_due())
            if not (placed or assessing):  # only retries waiting: `wait` on nothing would return at once
                time.sleep(timeout)
                continue
            done, _ = wait([*placed, *assessing], timeout=timeout, return_when=FIRST_COMPLETED)
            if not done and placed and time.monotonic() >= stranded_check:  # a node lost: a job no node can run
                executor.fail_stranded()
                stranded_check = time.monotonic() + STRANDED_CHECK_S
            for future in done:
                if future in assessing:
                    record(future.result(), *assessing.pop(future))
                    continue
                prepared, started = placed.pop(future)
                item = items[prepared.submission]
                try:
                    result = future.result()
                except InfrastructureFailure as exc:
                    retry(item, prepared, started, exc)
                    continue
                except TestbedError as exc:
                    fail(item, exc)
                    continue
                except Exception as exc:  # noqa: BLE001 - one broken task never stops the campaign
                    broken(item, prepared, exc)
                    continue
                item.node, item.status = getattr(future, "node", None), "scoring"
                on_update(item)
                assessing[scoring.submit(prepared, result, official=True)] = (prepared, started, result)
    except BaseException:
        for future in list(placed):
            executor.cancel(future)
        raise
    finally:
        preparer.shutdown(cancel_futures=True)  # on an interruption, no later job is prepared in vain
    return [items[sub.id] for sub in subs]


_TRACEBACK_CHARS = 6000
"""The end of an unexpected exception's traceback kept on its FAILED run (MLflow keeps 6,000 characters a param)."""


def _backoff(retry: int) -> float:
    """The seconds to wait before the `retry`th placement again of one job (1: the first retry)."""
    return min(RETRY_BACKOFF_S * 2 ** (retry - 1), RETRY_BACKOFF_MAX_S)


def _described(exc: BaseException) -> str:
    """`exc`'s type and the first line of its message; a Ray task's error (`RayTaskError(KeyError)`), whose own
    message is the worker's process title, with its cause's."""
    cause = getattr(exc, "cause", None)
    lines = str(cause if isinstance(cause, BaseException) else exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _bundle_bytes(prepared: PreparedEvaluation) -> bytes:
    """The bundle's bytes again, for a job placed once more: read from the file the evaluation hashed (its private
    copy), and refused unless they are still the bytes hashed, run and logged."""
    data = prepared.bundle.read_bytes()
    if hashlib.sha256(data).hexdigest() != prepared.info.sha256:
        raise AuditError(f"the bundle changed since it was checked and first run (sha256 {prepared.info.sha256[:12]}…)",
                         where=str(prepared.bundle),
                         fix=f"restore the submitted bundle; a rerun (`testbed evaluate --all {prepared.spec.id}`) "
                             "evaluates it again")
    return data


def _from_store(exc: BaseException) -> bool:
    """Whether `exc` came from the tracking store's client (MLflow, or SQLAlchemy under it)."""
    return type(exc).__module__.startswith(("mlflow", "sqlalchemy"))


def _unrecorded(exc: BaseException, ws: Workspace, pilot: str, doing: str = "recording the evaluation",
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
