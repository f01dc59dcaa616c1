"""A campaign's driver (`workflow.campaign` says what a campaign does): it prepares the jobs in order in another
thread, places each on the executor as it is ready, collects the results as they return, has them scored
(`ScoringPool`), records each evaluation, and retries the machinery's failures after a growing wait. Every tracking
write happens here, one evaluation after another."""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from evaluation.tracking import Tracker
from sandbox.executor import STRANDED_CHECK_S, Executor
from sandbox.runner import SandboxResult
from testbed.config import Workspace
from testbed.errors import InfrastructureFailure, ResourceUnavailable, TestbedError, from_tracking_store
from workflow.assess import Assessment
from workflow.campaign_faults import (
    bundle_bytes,
    described,
    gave_up,
    record_failed,
    traceback_of,
    unexpected,
    unrecorded,
)
from workflow.catalogue import get_pilot
from workflow.evaluate import PreparedEvaluation, conclude_evaluation, prepare_evaluation
from workflow.scoring import ScoringPool
from workflow.submissions import Submission, SubmissionStore

__all__ = ["CampaignDriver", "CampaignItem", "PREPARE_AHEAD", "RETRY_BACKOFF_S", "RETRY_BACKOFF_MAX_S"]

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


class CampaignDriver:
    """One campaign's driver: prepares, places, collects, scores and records its jobs (`run`)."""

    def __init__(self, subs: list[Submission], executor: Executor, tracker: Tracker, ws: Workspace, retries: int,
                 isolated: bool, scoring: ScoringPool, on_update: Callable[[CampaignItem], None]):
        self.subs, self.executor, self.tracker, self.ws, self.retries = subs, executor, tracker, ws, retries
        self.isolated, self.scoring, self.on_update = isolated, scoring, on_update
        self.store = SubmissionStore(ws)
        self.items = {sub.id: CampaignItem(sub.id) for sub in subs}
        self.placed: dict[Future, tuple[PreparedEvaluation, float]] = {}
        """Each job on the executor -> its evaluation, and when it was first placed (`time.monotonic()`)."""
        self.assessing: dict[Future, tuple[PreparedEvaluation, float, SandboxResult]] = {}
        """Each returned job being scored -> its evaluation, when it was first placed, its result."""
        self.retrying: dict[str, tuple[float, PreparedEvaluation, float]] = {}
        """Each job waiting to be placed again -> when it may be (`time.monotonic()`), its evaluation, when it was
        first placed."""
        self.placeable: set[tuple[float, float, int]] = set()
        """The (CPUs, GPUs, memory MB) of the jobs the executor has accepted in this campaign: a later refusal of as
        much is a lost node's (the machinery's failure, retried and recorded), not a spec too large for the
        cluster."""

    def run(self) -> list[CampaignItem]:
        """Jobs are prepared in order in another thread (the next ones while a local Ray starts for the first, at
        most `PREPARE_AHEAD` ahead), placed as they are ready, then collected until none is left."""
        preparer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-evaluation")
        queue, preparing = iter(self.subs), deque[tuple[Submission, Future[PreparedEvaluation]]]()

        def ahead() -> None:
            while len(preparing) < PREPARE_AHEAD and (sub := next(queue, None)) is not None:
                preparing.append((sub, preparer.submit(self.prepare, sub)))

        try:
            ahead()
            while preparing:  # no local keeps a prepared evaluation: each is let go once recorded
                self.take(*preparing.popleft(), ahead)
            self.collect()
        except BaseException:
            for future in list(self.placed):
                self.executor.cancel(future)
            raise
        finally:
            preparer.shutdown(cancel_futures=True)  # on an interruption, no later job is prepared in vain
        return [self.items[sub.id] for sub in self.subs]

    def take(self, sub: Submission, preparing: Future[PreparedEvaluation], ahead: Callable[[], None]) -> None:
        """Place `sub`'s job once prepared (the next ones are prepared meanwhile: `ahead`)."""
        ahead()
        item = self.items[sub.id]
        try:
            prepared = preparing.result()
        except TestbedError as exc:
            self.ended_by(item, exc, sub.pilot)
            return
        except Exception as exc:  # noqa: BLE001 - as in `record`: one that cannot be prepared never stops the others
            self.fail(item, unrecorded(exc, self.ws, sub.pilot, "reading whether it has an official evaluation "
                                       "already", "nothing was evaluated") if from_tracking_store(exc) else exc)
            return
        self.place(item, prepared, time.monotonic())

    def collect(self) -> None:
        """Wait for the placed jobs and the scorings, and place the retries when they are due, until none is left;
        a job no live node can run any more is failed as stranded (`Executor.fail_stranded`)."""
        stranded_check = time.monotonic() + STRANDED_CHECK_S
        while self.placed or self.assessing or self.retrying:
            timeout = max(0.0, self.place_due())
            if not (self.placed or self.assessing):  # only retries waiting: `wait` on nothing would return at once
                time.sleep(timeout)
                continue
            done, _ = wait([*self.placed, *self.assessing], timeout=timeout, return_when=FIRST_COMPLETED)
            if not done and self.placed and time.monotonic() >= stranded_check:  # a node lost: a job no node can run
                self.executor.fail_stranded()
                stranded_check = time.monotonic() + STRANDED_CHECK_S
            for future in done:
                if future in self.assessing:
                    self.record(future.result(), *self.assessing.pop(future))
                else:
                    self.returned(future, *self.placed.pop(future))

    def returned(self, future: Future, prepared: PreparedEvaluation, started: float) -> None:
        """A placed job ended: its result goes to be scored, or the machinery's failure is retried."""
        item = self.items[prepared.submission]
        try:
            result = future.result()
        except InfrastructureFailure as exc:
            self.retry(item, prepared, started, exc)
            return
        except TestbedError as exc:
            self.fail(item, exc)
            return
        except Exception as exc:  # noqa: BLE001 - one broken task never stops the campaign
            self.broken(item, prepared, exc)
            return
        item.node, item.status = getattr(future, "node", None), "scoring"
        self.on_update(item)
        self.assessing[self.scoring.submit(prepared, result, official=True)] = (prepared, started, result)

    def prepare(self, sub: Submission) -> PreparedEvaluation:
        return prepare_evaluation(get_pilot(sub.pilot), self.store.bundle(sub.id), sub.vendor, ws=self.ws,
                                  out_dir=self.store.report_dir(sub.id), submission=sub.id, tracker=self.tracker,
                                  isolated=self.isolated, vetted=self.store.vetted(sub.id),
                                  ready_scoring=not self.scoring.active)

    def place(self, item: CampaignItem, prepared: PreparedEvaluation, started: float) -> None:
        if not prepared.job.bundle:  # placed before (a retry): its bytes were let go
            try:
                prepared.job = dataclasses.replace(prepared.job, bundle=bundle_bytes(prepared))
            except (TestbedError, OSError) as exc:
                self.fail(item, exc)
                return
        job = prepared.job
        need = (job.cpus, job.gpus, job.limits.memory_mb)
        try:
            future = self.executor.submit(job)
        except ResourceUnavailable as exc:
            if need not in self.placeable:  # no node ever took a job this large: the spec's or the cluster's
                self.fail(item, exc)
                return
            future = Future()  # a node took it before: one large enough was lost since; the machinery's, retried
            future.set_exception(InfrastructureFailure(
                f"placement refused, though a job asking for as much was placed before in this campaign (a node "
                f"large enough was lost): {exc.problem}", where=exc.where,
                fix="bring back a node that large (`ray status` lists the nodes); a rerun evaluates it again"))
        except TestbedError as exc:
            self.fail(item, exc)
            return
        except Exception as exc:  # noqa: BLE001 - one job the executor fails to place never stops the others
            self.broken(item, prepared, exc)
            return
        else:
            self.placeable.add(need)
            prepared.job = dataclasses.replace(job, bundle=b"")  # the executor has the job: no second copy kept here
        self.placed[future] = (prepared, started)
        item.status = "running"
        self.on_update(item)

    def retry(self, item: CampaignItem, prepared: PreparedEvaluation, started: float,
              exc: InfrastructureFailure) -> None:
        """Placed again after `_backoff`, unless its retries are spent (then recorded as a FAILED run)."""
        if len(item.retries) >= self.retries:
            last = f"attempt {len(item.retries) + 1}: {exc.problem}"
            if self.record_failed(item, prepared, f"the machinery failed on every attempt ({last})", last):
                self.fail(item, gave_up(len(item.retries) + 1, exc, item.run_id, prepared.spec.id))
            return
        item.retries.append(f"attempt {len(item.retries) + 1}: {exc.problem}")
        self.retrying[item.submission] = time.monotonic() + _backoff(len(item.retries)), prepared, started
        item.status = "queued"
        self.on_update(item)

    def place_due(self) -> float:
        """Place the retries whose wait is over; the seconds until the next one is due (0.5 at most)."""
        now = time.monotonic()
        for sub_id, (due, prepared, started) in list(self.retrying.items()):
            if due <= now:
                del self.retrying[sub_id]
                self.place(self.items[sub_id], prepared, started)
        return min([0.5, *(due - now for due, _, _ in self.retrying.values())])

    def record(self, assessed: Assessment | None, prepared: PreparedEvaluation, started: float,
               result: SandboxResult) -> None:
        item = self.items[prepared.submission]
        params = {"campaign_retries": "; ".join(item.retries) or "none", "ray_node": item.node or ""}
        try:
            card = conclude_evaluation(prepared, result, tracker=self.tracker, params=params, assessed=assessed).card
        except TestbedError as exc:
            self.ended_by(item, exc, prepared.spec.id)
            return
        except Exception as exc:  # noqa: BLE001 - one evaluation that cannot be recorded never stops the others
            self.fail(item, unrecorded(exc, self.ws, prepared.spec.id) if from_tracking_store(exc) else exc)
            return
        item.status, item.verdict, item.total, item.passed = "evaluated", card.verdict, card.total_score, card.passed
        item.run_id, item.wall_s = card.mlflow_run_id, time.monotonic() - started
        self.on_update(item)

    # -- what went wrong -----------------------------------------------------------------------------------------

    def fail(self, item: CampaignItem, exc: BaseException, status: str = "failed") -> None:
        item.status = status
        item.error = str(exc) if isinstance(exc, TestbedError) else f"{type(exc).__name__}: {exc}"
        self.on_update(item)

    def record_failed(self, item: CampaignItem, prepared: PreparedEvaluation, reason: str, last: str,
                      **params: str) -> bool:
        """The machinery's failure recorded as a FAILED run (`campaign_faults.record_failed`); False, the item
        failed saying so, when the tracking store refused it."""
        item.run_id, refused = record_failed(self.tracker, self.ws, prepared, item.submission, item.retries, reason,
                                             last, **params)
        if refused is not None:
            self.fail(item, refused)
        return refused is None

    def broken(self, item: CampaignItem, prepared: PreparedEvaluation, exc: Exception) -> None:
        """An exception of no `TestbedError`'s from the executor, placing the job or as its result: a bug of the
        harness's or of Ray's, not the bundle's. Not retried (nothing says a retry mends it): recorded as a FAILED
        run, its traceback with it (param `campaign_traceback`), and the campaign goes on."""
        last = f"attempt {len(item.retries) + 1}: {described(exc)}"
        if self.record_failed(item, prepared, f"the machinery failed unexpectedly ({last})", last,
                              campaign_traceback=traceback_of(exc)):
            self.fail(item, unexpected(exc, item.run_id, prepared.spec.id, type(self.executor).__name__))

    def ended_by(self, item: CampaignItem, exc: TestbedError, pilot: str) -> None:
        """`exc` ended it: skipped where an official evaluation exists (another process finished it), else failed
        (also when the store cannot say: a rerun then tells)."""
        try:
            official = self.tracker.official_run(pilot, item.submission)
        except Exception as unread:  # noqa: BLE001 - as in `record`: that one fails, the campaign goes on
            if not from_tracking_store(unread):
                raise
            official = None
        self.fail(item, exc, "skipped" if official else "failed")


def _backoff(retry: int) -> float:
    """The seconds to wait before the `retry`th placement again of one job (1: the first retry)."""
    return min(RETRY_BACKOFF_S * 2 ** (retry - 1), RETRY_BACKOFF_MAX_S)
