"""Campaigns: every submission without a finished official evaluation, evaluated in parallel.

Each sandbox job is placed on the executor at once (a Ray task asking for the spec's CPUs/GPUs: Ray starts it
when a node has them free, so the cluster bounds the parallelism). As the jobs return, each is scored and
drawn (here, or in the `ScoringPool`'s processes) and every tracking write happens here, in the driver, one
evaluation after another: the tracking store never sees two writers from one campaign, so SQLite's single
writer is enough (and a tracking server, when `MLFLOW_TRACKING_URI` names one, works the same). The jobs are
prepared in order in another thread, the later ones while the first is placed (and a local Ray starts for it),
at most `PREPARE_AHEAD` ahead of placement; once placed a job's bytes are the executor's, and once recorded an
evaluation is let go (its private bundle copy removed). `workflow.campaign_driver` does all this.

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

from collections.abc import Callable
from typing import NamedTuple

from evaluation.tracking import Tracker
from sandbox.executor import Executor
from testbed.config import Workspace
from testbed.errors import AuditError
from workflow.campaign_driver import CampaignDriver, CampaignItem
from workflow.catalogue import get_pilot
from workflow.scoring import ScoringPool
from workflow.submissions import Submission, SubmissionStore

__all__ = ["CampaignItem", "Pending", "pending_submissions", "run_campaign"]


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
    return CampaignDriver(subs, executor, tracker, ws, retries, isolated, scoring or ScoringPool(0), on_update).run()
