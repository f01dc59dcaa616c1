"""One evaluation, end to end: data -> sandbox job on the executor -> scoring -> scorecard -> tracker."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from evaluation.families import open_family
from evaluation.family import TaskFamily
from evaluation.report import write_report
from evaluation.scorecard import Scorecard, build_scorecard
from evaluation.tracking import Tracker
from pilots.spec import PilotSpec
from pilots.vendor import VendorProfile
from sandbox.bundle import inspect_bundle
from sandbox.environment import PythonEnvironment, bundle_environment
from sandbox.executor import Executor
from sandbox.isolation import SandboxLimits, check_isolation
from sandbox.runner import SandboxJob
from testbed.config import Workspace, harness_version

__all__ = ["Evaluation", "evaluate_bundle", "sandbox_job"]


@dataclass
class Evaluation:
    card: Scorecard
    files: dict[str, Path]
    """Scorecard files written (scorecard.json, scorecard.html, plots)."""


def sandbox_job(spec: PilotSpec, fam: TaskFamily, bundle: Path, data, ws: Workspace, isolated: bool,
                environment: PythonEnvironment | None = None) -> SandboxJob:
    """The job for one bundle: inputs only (the family's phases), the spec's limits and resources, and the
    Python environment the bundle declared (built by the executor's node before the sandbox starts)."""
    r = spec.resources
    return SandboxJob(
        bundle=bundle.read_bytes(), route=fam.contract.route, phases=fam.phases(data),
        limits=SandboxLimits(memory_mb=r.memory_mb, max_processes=r.max_processes,
                             cpu_seconds=int(r.wall_time_s * max(1.0, r.cpus)), threads=math.ceil(r.cpus)),
        wall_time_s=r.wall_time_s, startup_timeout_s=r.startup_timeout_s, isolated=isolated, cpus=r.cpus,
        gpus=r.gpus, forbidden=ws.harness_paths, environment=environment)


def _write(card: Scorecard, figures: dict, out_dir: Path, title: str) -> dict[str, Path]:
    """Write the report beside `out_dir`, then swap it in: the previous scorecard stays whole until then."""
    staging = out_dir.with_name(out_dir.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    written = write_report(card, figures, staging, title)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return {rel: out_dir / rel for rel in written}


def evaluate_bundle(spec: PilotSpec, bundle: Path, vendor: VendorProfile, *, executor: Executor, ws: Workspace,
                    out_dir: Path, submission: str, tracker: Tracker | None = None, split: str = "test",
                    isolated: bool = True) -> Evaluation:
    """Evaluate `bundle` on `split`. With a tracker the run is official and recorded there; without one it is
    a check (the vendor kit): nothing is recorded."""
    if isolated:
        check_isolation()
    info = inspect_bundle(bundle)
    fam = open_family(spec, ws.data_dir)
    fam.contract.check_routes(info.routes, where=str(bundle))
    environment = bundle_environment(info.manifest, ws.envs, where=str(bundle))
    data = fam.load(split)
    result = executor.run(sandbox_job(spec, fam, bundle, data, ws, isolated, environment))
    outcome = fam.score(data, result)
    version = harness_version()
    card = build_scorecard(spec, fam, vendor, outcome, result, submission=submission, vendor=vendor.name,
                           bundle_sha256=info.sha256, dataset_sha256=fam.dataset_sha256, harness_version=version,
                           split=split, official=tracker is not None)
    if tracker:
        card.mlflow_run_id = tracker.start(card, {
            "bundle_sha256": info.sha256, "dataset_sha256": fam.dataset_sha256, "harness_version": version,
            "bento_tag": info.tag, "family": spec.family, "split": split, "vendor": vendor.name,
            "isolated": isolated, "resources": spec.resources.model_dump_json()})
    try:
        files = _write(card, fam.plots(data, outcome) if card.verdict in ("completed", "contract_violation") else {},
                       out_dir, f"{spec.title.en} — {spec.title.ko}")
    except BaseException:
        if tracker:
            tracker.fail(card.mlflow_run_id)
        raise
    if tracker:
        tracker.finish(card.mlflow_run_id, card, files, bundle, result.log)
    else:
        (out_dir / "sandbox.log").write_text(result.log)
    return Evaluation(card=card, files=files)
