"""One evaluation, end to end: data -> sandbox job on the executor -> scoring -> scorecard -> MLflow."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from evaluation.families import FAMILIES
from evaluation.report import write_report
from evaluation.scorecard import Scorecard, build_scorecard
from evaluation.tracking import Tracker
from pilots.spec import PilotSpec
from pilots.vendor import VendorProfile
from pilots.workspace import HARNESS_VERSION, PROJECT_ROOT, Workspace
from sandbox.bundle import inspect_bundle
from sandbox.executor import Executor
from sandbox.isolation import SandboxLimits, check_isolation
from sandbox.runner import SandboxJob
from serving.contracts import get_contract

__all__ = ["Evaluation", "evaluate_bundle"]


@dataclass
class Evaluation:
    card: Scorecard
    files: dict[str, Path]
    """Scorecard files written (scorecard.json, scorecard.html, plots)."""


def _job(spec: PilotSpec, bundle: Path, phases, ws: Workspace, isolated: bool) -> SandboxJob:
    r = spec.resources
    return SandboxJob(
        bundle=bundle.read_bytes(), route=get_contract(spec.family).route, phases=phases,
        limits=SandboxLimits(memory_mb=r.memory_mb, max_processes=r.max_processes,
                             cpu_seconds=int(r.wall_time_s * max(1.0, r.cpus)), threads=math.ceil(r.cpus)),
        wall_time_s=r.wall_time_s, startup_timeout_s=r.startup_timeout_s, isolated=isolated, gpu=r.gpus > 0,
        forbidden=sorted({str(ws.data_dir), str(ws.home), str(PROJECT_ROOT / "mlflow")}))


def _write(card: Scorecard, figures: dict, out_dir: Path, title: str) -> dict[str, Path]:
    """Write the report beside `out_dir`, then swap it in: the previous scorecard stays whole until then."""
    staging = out_dir.with_name(out_dir.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    written = write_report(card, figures, staging, title)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return {rel: out_dir / rel for rel in written}


def evaluate_bundle(spec: PilotSpec, bundle: Path, vendor: VendorProfile, *, executor: Executor, ws: Workspace,
                    out_dir: Path, submission: str, split: str = "test", official: bool = True,
                    isolated: bool = True) -> Evaluation:
    """Evaluate `bundle` on `split`. Official runs (the sequestered split) are logged to MLflow."""
    if isolated:
        check_isolation()
    info = inspect_bundle(bundle)
    get_contract(spec.family).check_routes(info.routes, where=str(bundle))
    fam = FAMILIES.get(spec.family)(spec, ws.data_dir)
    dataset_sha256 = fam.dataset_sha256()
    data = fam.load(split)
    result = executor.run(_job(spec, bundle, fam.phases(data), ws, isolated), spec.resources)
    outcome = fam.score(data, result)
    card = build_scorecard(spec, fam, vendor, outcome, result, submission=submission, vendor=vendor.name,
                           bundle_sha256=info.sha256, dataset_sha256=dataset_sha256, harness_version=HARNESS_VERSION,
                           split=split, official=official)
    tracker = Tracker(ws) if official else None
    if tracker:
        card.mlflow_run_id = tracker.start(card, {
            "bundle_sha256": info.sha256, "dataset_sha256": dataset_sha256, "harness_version": HARNESS_VERSION,
            "bento_tag": info.tag, "family": spec.family, "split": split, "vendor": vendor.name,
            "isolated": isolated, "resources": spec.resources.model_dump_json()})
    try:
        files = _write(card, fam.plots(data, outcome) if card.verdict in ("completed", "contract_violation") else {},
                       out_dir, f"{spec.title.en} — {spec.title.ko}")
    except BaseException:
        if tracker:
            tracker.client.set_terminated(card.mlflow_run_id, status="FAILED")
        raise
    if tracker:
        tracker.finish(card.mlflow_run_id, card, files, bundle, result.log)
    else:
        (out_dir / "sandbox.log").write_text(result.log)
    return Evaluation(card=card, files=files)
