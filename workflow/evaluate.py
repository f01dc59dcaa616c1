"""One evaluation, end to end: data -> sandbox job on the executor -> scoring -> scorecard -> tracker."""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import shutil
import weakref
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from evaluation.families import open_family
from evaluation.family import TaskFamily
from evaluation.report import warm_up, write_report
from evaluation.scorecard import Scorecard
from evaluation.tracking import Tracker
from pilots.spec import PilotSpec
from pilots.vendor import VendorProfile
from sandbox.artifacts import scan_models
from sandbox.bundle import inspect_bundle
from sandbox.contention import yield_cpu
from sandbox.copies import private_copy
from sandbox.environment import PythonEnvironment, bundle_environment
from sandbox.executor import Executor
from sandbox.isolation import SandboxLimits, check_isolation, hidden_paths
from sandbox.runner import SandboxJob, SandboxResult
from testbed.config import Workspace
from testbed.errors import TestbedError
from workflow.assess import Assessment, Scoring, assess

__all__ = ["Evaluation", "PreparedEvaluation", "evaluate_bundle", "prepare_evaluation", "scoring_of",
           "conclude_evaluation", "sandbox_job"]

_BESIDE = ThreadPoolExecutor(max_workers=2, thread_name_prefix="evaluation-beside-sandbox", initializer=yield_cpu)
"""Work an evaluation needs only after its sandbox run (the model scan, the family's `ready_scoring`), done
while the sandbox runs, at a lower CPU priority (`yield_cpu`)."""


@dataclass
class Evaluation:
    card: Scorecard
    files: dict[str, Path]
    """Scorecard files written (scorecard.json, scorecard.html, plots)."""


def sandbox_job(spec: PilotSpec, fam: TaskFamily, bundle: Path, data, ws: Workspace, isolated: bool,
                seed: int = 0, environment: PythonEnvironment | None = None) -> SandboxJob:
    """The job for one bundle: inputs only (the family's phases, ordered by `seed`), the spec's limits and
    resources, and the Python environment the bundle declared (built by the executor's node before the sandbox
    starts)."""
    r = spec.resources
    return SandboxJob(
        bundle=bundle.read_bytes(), route=fam.contract.route, phases=fam.phases(data, seed),
        limits=SandboxLimits(memory_mb=r.memory_mb, max_processes=r.max_processes,
                             cpu_seconds=int(r.wall_time_s * max(1.0, r.cpus)), threads=math.ceil(r.cpus),
                             cpus=r.cpus),
        wall_time_s=r.wall_time_s, startup_timeout_s=r.startup_timeout_s, isolated=isolated, cpus=r.cpus,
        gpus=r.gpus, forbidden=hidden_paths(ws.harness_locations), environment=environment)


def _staging(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + ".new")


def _stage(card: Scorecard, plots: dict, out_dir: Path, title: str, extra: dict[str, bytes]) -> dict[str, Path]:
    """Write the report (and `extra` files) beside `out_dir` (`_swap_in` puts it in place)."""
    staging = _staging(out_dir)
    shutil.rmtree(staging, ignore_errors=True)
    written = write_report(card, plots, staging, title)
    for name, data in extra.items():
        (staging / name).write_bytes(data)
        written[name] = staging / name
    return written


def _swap_in(out_dir: Path, staged: dict[str, Path]) -> dict[str, Path]:
    """Replace `out_dir` by the staged report: the previous scorecard stays whole until then."""
    shutil.rmtree(out_dir, ignore_errors=True)
    _staging(out_dir).rename(out_dir)
    return {rel: out_dir / rel for rel in staged}


def _role(tracker: Tracker | None, spec: PilotSpec, submission: str, reevaluate: str | None) -> str:
    """`official` for a submission's first tracked evaluation, `reevaluation` after it (only when asked for
    explicitly, with a reason), `check` without a tracker."""
    if tracker is None:
        return "check"
    existing = tracker.official_run(spec.id, submission)
    if existing is None:
        return "official"
    if not (reevaluate or "").strip():
        raise TestbedError(
            f"submission {submission} already has its official evaluation (MLflow run {existing.run_id}); the "
            f"leaderboard ranks that one (`testbed scorecard {submission}` shows it)",
            fix=f"to evaluate it again on purpose: testbed evaluate {submission} --reevaluate --reason \"WHY\" "
                "(recorded beside the official evaluation, never replacing it)")
    return "reevaluation"


def _same_store(submission: str, out_dir: Path, ws: Workspace) -> None:
    """Refuse a first official run when the testbed home already holds `submission`'s official scorecard: the
    tracking store in use is not the one it was evaluated in (a misspelt `MLFLOW_TRACKING_URI` is a new, empty
    store), and evaluating there would make a second official evaluation and replace the scorecard."""
    try:
        run = json.loads((out_dir / "scorecard.json").read_bytes()).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        return
    if run:
        raise TestbedError(f"the tracking store {ws.tracking_uri} holds no official evaluation of {submission}, but "
                           f"this testbed home's scorecard ({out_dir / 'scorecard.json'}) records one as MLflow run "
                           f"{run}: the store is not the one {submission} was evaluated in",
                           where="MLFLOW_TRACKING_URI",
                           fix="set MLFLOW_TRACKING_URI to the store that holds that run (unset, it is the default "
                               "SQLite store under mlflow/), or start afresh with another TESTBED_HOME")


@dataclass
class PreparedEvaluation:
    """Everything decided before the sandbox runs: the job to place, and what scoring and tracking need after."""

    spec: PilotSpec
    bundle: Path
    vendor: VendorProfile
    submission: str
    job: SandboxJob
    fam: TaskFamily
    data: object
    info: object
    models: Future
    """The bundle's model artifacts (`scan_models`), read in the background while the sandbox runs."""
    scoring_ready: Future
    """The family's answer-independent scoring work (`TaskFamily.ready_scoring`), done meanwhile too."""
    role: str
    out_dir: Path
    split: str
    isolated: bool
    reevaluate: str | None


def prepare_evaluation(spec: PilotSpec, bundle: Path, vendor: VendorProfile, *, ws: Workspace, out_dir: Path,
                       submission: str, tracker: Tracker | None = None, split: str = "test", isolated: bool = True,
                       reevaluate: str | None = None, vetted: tuple[str, bytes] | None = None,
                       checked: Callable[[], object] = lambda: None, ready_scoring: bool = True) -> PreparedEvaluation:
    """Check the bundle and build its sandbox job (refused when the official evaluation exists and no
    `reevaluate` reason is given); nothing is recorded yet. `vetted`: see `inspect_bundle`. `checked` is called
    once every check has passed, before the heavier part (the split's data, the scenarios' inputs).
    `ready_scoring`: do the family's answer-independent scoring work beside the sandbox (False when other
    processes will score the run; should the driver have to, the scoring does that work when it needs it)."""
    role = _role(tracker, spec, submission, reevaluate)
    if role == "official" and tracker is not None:
        _same_store(submission, out_dir, ws)
    if role == "official" and not isolated:
        raise TestbedError(f"an evaluation without the sandbox would be {submission}'s official one for good (the "
                           "leaderboard ranks it, and it fails the isolation gate)", where="--unsafe-no-sandbox",
                           fix=f"evaluate it in the sandbox first (`testbed evaluate {submission}`), then, if needed, "
                               "`--unsafe-no-sandbox --reevaluate --reason WHY`; or try the bundle with `testbed "
                               "check --unsafe-no-sandbox` (nothing logged)")
    if role == "reevaluation":
        out_dir = out_dir.parent / "reevaluations" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    if isolated:
        check_isolation()
    hidden_paths(ws.harness_locations)  # as `sandbox_job` will (whatever `isolated`), but before Ray starts
    ws.envs.mkdir(parents=True, exist_ok=True)  # a setting naming no usable folder: said here, not by a Ray node
    where = str(bundle)
    if vetted is not None:  # a stored submission: what is hashed is what runs and is logged (`private_copy`)
        bundle = private_copy(bundle, vetted[0], submission)
    try:
        prepared = _prepare(spec, bundle, where, vendor, ws, out_dir, submission, split, isolated, reevaluate, vetted,
                            checked, ready_scoring, role)
    except BaseException:
        if vetted is not None:
            shutil.rmtree(bundle.parent, ignore_errors=True)
        raise
    if vetted is not None:
        weakref.finalize(prepared, shutil.rmtree, bundle.parent, True)
    return prepared


def _prepare(spec: PilotSpec, bundle: Path, where: str, vendor: VendorProfile, ws: Workspace, out_dir: Path,
             submission: str, split: str, isolated: bool, reevaluate: str | None, vetted: tuple[str, bytes] | None,
             checked: Callable[[], object], ready_scoring: bool, role: str) -> PreparedEvaluation:
    """`prepare_evaluation`'s work on `bundle` (`where`: the file to name in errors)."""
    info = inspect_bundle(bundle, vetted=vetted)
    models = _BESIDE.submit(scan_models, bundle)  # xz decompression releases the GIL
    fam = open_family(spec, ws.data_dir)
    fam.contract.check_bundle(info, spec.id, where)
    environment = bundle_environment(info.manifest, ws.envs, where=where)
    checked()
    data = fam.load(split)
    job = sandbox_job(spec, fam, bundle, data, ws, isolated, seed=secrets.randbits(32), environment=environment)
    warm_up()  # the scorecard's plotting, readied while the sandbox runs
    readied: Future = _BESIDE.submit(fam.ready_scoring, data) if ready_scoring else Future()
    if not ready_scoring:
        readied.set_result(None)
    return PreparedEvaluation(spec, bundle, vendor, submission, job, fam, data, info, models, readied, role, out_dir,
                              split, isolated, reevaluate)


def evaluate_bundle(spec: PilotSpec, bundle: Path, vendor: VendorProfile, *, executor: Executor, ws: Workspace,
                    out_dir: Path, submission: str, tracker: Tracker | None = None, split: str = "test",
                    isolated: bool = True, reevaluate: str | None = None,
                    vetted: tuple[str, bytes] | None = None) -> Evaluation:
    """Evaluate `bundle` on `split`. With a tracker the run is recorded there: the submission's first one is its
    official evaluation (written to `out_dir`); another needs `reevaluate` (the reason) and is written under
    `out_dir`'s sibling `reevaluations/`. Without a tracker it is a check (the vendor kit): nothing is recorded.
    `vetted`: what the submission store recorded of these bytes (`SubmissionStore.vetted`)."""
    checked: Future[None] = Future()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-evaluation") as pool:
        preparing = pool.submit(prepare_evaluation, spec, bundle, vendor, ws=ws, out_dir=out_dir,
                                submission=submission, tracker=tracker, split=split, isolated=isolated,
                                reevaluate=reevaluate, vetted=vetted, checked=lambda: checked.set_result(None))
        wait([checked, preparing], return_when=FIRST_COMPLETED)
        if checked.done():  # a local Ray starts (~3 s) while the job is built; never for a refused evaluation
            executor.connect()
        prepared = preparing.result()
    return conclude_evaluation(prepared, executor.run(prepared.job), tracker=tracker)


def scoring_of(p: PreparedEvaluation, official: bool) -> Scoring:
    """What scoring `p`'s finished run needs, in plain values (see `workflow.assess`)."""
    return Scoring(p.spec, p.fam.data_dir, p.split, p.vendor, p.submission, p.info.sha256, p.models.result(), p.role,
                   p.reevaluate, official, p.fam.plan_state())


def conclude_evaluation(p: PreparedEvaluation, result: SandboxResult, *, tracker: Tracker | None = None,
                        params: dict[str, str] | None = None, assessed: Assessment | None = None) -> Evaluation:
    """Score the sandbox's `result` (unless `assessed` already did, e.g. in another process), write the
    scorecard and record the run (with extra `params`, e.g. the infrastructure retries a campaign made). An
    official evaluation that another process finished meanwhile is refused here, so a submission never gets
    two."""
    spec = p.spec
    official = tracker is not None and p.role == "official"
    if official:
        _role(tracker, spec, p.submission, None)
    if assessed is None:
        p.scoring_ready.exception()  # waits; should it have failed, the scoring meets (and reports) it again
        assessed = assess(scoring_of(p, official=tracker is not None), p.fam, p.data, result)
    with _exclusive(p.out_dir.with_name(".official.lock")) if official else nullcontext():
        if official:  # checked again under the lock: another process may have finished it meanwhile
            _role(tracker, spec, p.submission, None)
        return _record(p, result, assessed, tracker, params)


@contextmanager
def _exclusive(path: Path):
    """An exclusive lock on `path` for the block: a second evaluation of the same submission waits here, then
    finds the first one's official run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _record(p: PreparedEvaluation, result: SandboxResult, assessed: Assessment, tracker: Tracker | None,
            params: dict[str, str] | None) -> Evaluation:
    spec, info, card = p.spec, p.info, assessed.card
    if tracker:
        card.mlflow_run_id = tracker.start(card, {
            "bundle_sha256": info.sha256, "dataset_sha256": card.dataset_sha256,
            "harness_version": card.harness_version, "bento_tag": info.tag, "family": spec.family, "split": p.split,
            "vendor": p.vendor.name, "isolated": p.isolated, "resources": spec.resources.model_dump_json(),
            "evaluation": p.role, "pilot_spec_sha256": card.pilot_spec_sha256,
            "predictions_sha256": card.predictions_sha256, "phase_seed": card.phase_plan.get("seed"),
            "sandbox_limits": json.dumps(result.limits, sort_keys=True), **(params or {})})
    try:
        staged = _stage(card, assessed.plots, p.out_dir, f"{spec.title.en} — {spec.title.ko}", assessed.extra)
    except BaseException:
        if tracker:
            tracker.fail(card.mlflow_run_id)
        raise
    if tracker:  # the run is finished before its scorecard is in place: a killed process leaves no finished look
        tracker.finish(card.mlflow_run_id, card, staged, p.bundle, result.log)
    else:
        (staged["scorecard.json"].parent / "sandbox.log").write_text(result.log)
    return Evaluation(card=card, files=_swap_in(p.out_dir, staged))
