"""Scoring and drawing finished runs beside the campaign's driver, in processes of their own.

A campaign's driver scores, draws and records each evaluation as its sandbox job returns (`workflow.campaign`).
On a cluster the sandboxes run elsewhere, and one process doing all of that sets the campaign's pace: ~2 s per
subway evaluation, against ~3.5 s of sandbox time on one of the cluster's CPUs. A `ScoringPool` does the scoring
and the drawing (`workflow.assess`, the CPU-bound part) in spawned worker processes, each holding the pilots'
families and data once; the driver keeps every tracking write and file, so the tracking store still sees one
writer. With no workers the driver does it all (`workflow.evaluate.conclude_evaluation`).

A worker that fails or dies costs nothing but time: the driver then assesses that run itself, and so meets
(and reports) a genuine scoring error as it would without the pool. Either way the scorecard is the same: the
worker runs the same code on the same bytes (the pilot's data checked against the spec's sha256 as it opens).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from evaluation.families import open_family
from pilots.spec import PilotSpec
from sandbox.contention import yield_cpu
from sandbox.runner import SandboxResult
from workflow.assess import Assessment, Scoring, assess
from workflow.evaluate import PreparedEvaluation, scoring_of

__all__ = ["ScoringPool", "scoring_workers"]

_log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when its parent dies."""
MAX_WORKERS = 8
"""More would each hold every pilot's data for little gain: the tracking writes stay serial."""


def scoring_workers(submissions: int, *, remote: bool, cpus: int | None = None) -> int:
    """How many processes a campaign of `submissions` scores in: none when the sandboxes run on this machine
    (a local Ray keeps its cores busy, and the driver then waits on the sandboxes, not the reverse); else one
    per spare core of this machine, no more than the submissions after the first."""
    if not remote:
        return 0
    return max(0, min(submissions - 1, (cpus or os.cpu_count() or 1) - 1, MAX_WORKERS))


class ScoringPool:
    """Assesses finished runs in `workers` spawned processes (0: none, the driver does it)."""

    def __init__(self, workers: int) -> None:
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_ready_worker) if workers > 0 else None
        # each started now (imports, ~2 s), while the first sandboxes run
        self._warming = [self._pool.submit(int) for _ in range(workers)] if self._pool else []

    @property
    def active(self) -> bool:
        """Whether workers score the runs (False: the driver does)."""
        return self._pool is not None

    def ready(self) -> None:
        """Wait until every worker has started (a measurement's starting line; a campaign need not wait)."""
        for warm in self._warming:
            warm.result()

    def submit(self, p: PreparedEvaluation, result: SandboxResult, *, official: bool) -> Future[Assessment | None]:
        """The run's `Assessment` from a worker, or None: the caller assesses it (`conclude_evaluation` does),
        as it must when there are no workers or a worker failed. The future never raises."""
        future: Future[Assessment | None] = Future()
        try:
            if self._pool is None:
                raise RuntimeError("no workers")
            remote = self._pool.submit(_assess_in_worker, scoring_of(p, official), result)
        except RuntimeError:  # no workers, or the pool broke (a worker died) or is shut down
            future.set_result(None)
            return future

        def settle(done: Future) -> None:
            try:
                future.set_result(done.result())
            except BaseException as exc:  # noqa: BLE001 - a worker's trouble: the driver assesses instead
                _log.warning("a scoring process failed (%s: %s): the driver scores %s itself", type(exc).__name__,
                             str(exc)[:300], p.submission)
                future.set_result(None)

        remote.add_done_callback(settle)
        return future

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _ready_worker() -> None:
    """A worker's start: it dies with the driver (killed, the driver leaves no worker behind), leaves Ctrl-C to
    the driver (which stops the pool), runs below the sandboxes in CPU priority as the driver's other side work
    does, and readies matplotlib."""
    from evaluation.report import warm_up

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the driver died before that
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield_cpu()
    warm_up()


@functools.lru_cache(maxsize=4)
def _opened(spec_json: str, data_dir: str, split: str):
    """A pilot's family and split in this worker, read once; the answer-independent scoring work done."""
    fam = open_family(PilotSpec.model_validate_json(spec_json), Path(data_dir))
    data = fam.load(split)
    fam.ready_scoring(data)
    return fam, data


def _assess_in_worker(scoring: Scoring, result: SandboxResult) -> Assessment:
    fam, data = _opened(scoring.spec.model_dump_json(), str(scoring.data_dir), scoring.split)
    fam.adopt_plan(scoring.plan)  # which items each request carried: this job's own plan
    return assess(scoring, fam, data, result)
