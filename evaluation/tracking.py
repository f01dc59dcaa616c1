"""MLflow: an experiment per pilot, a run per evaluation, a registered model per pilot.

Honours `MLFLOW_TRACKING_URI`; the default is the SQLite store under `mlflow/`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from evaluation.scorecard import Scorecard
from pilots.workspace import Workspace

__all__ = ["Tracker", "experiment_name", "registered_model_name"]


def experiment_name(pilot: str) -> str:
    return f"testbed/{pilot}"


def registered_model_name(pilot: str) -> str:
    return f"testbed-{pilot}"


def _flatten(card: Scorecard) -> dict[str, float]:
    out = {f"{scenario}/{m}": v for scenario, vals in card.metrics.items() for m, v in vals.items()}
    out |= {f"retention/{k}": v for k, v in card.retention.items()}
    out |= {f"group/{g.replace('=', '/')}/{m}": v for g, vals in card.groups.items() for m, v in vals.items()}
    out |= {f"latency_ms/{q}": v for q, v in card.performance["latency_ms"].items()}
    out |= {f"criteria/{k}": c.score for k, c in card.criteria.items() if c.score is not None}
    out |= {"throughput_items_per_s": card.performance["throughput_items_per_s"],
            "error_rate": card.performance["error_rate"], "startup_s": card.performance["startup_s"],
            "peak_rss_mb": card.performance["peak_rss_mb"], "total_score": card.total_score,
            "passed": float(card.passed)}
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}


class Tracker:
    def __init__(self, ws: Workspace):
        self.ws = ws
        mlflow.set_tracking_uri(ws.tracking_uri)
        self.client = mlflow.MlflowClient(ws.tracking_uri)

    def experiment_id(self, pilot: str) -> str:
        name = experiment_name(pilot)
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = (self.ws.artifact_root / pilot).as_uri() if self.ws.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location, tags={"testbed.pilot": pilot})

    def start(self, card: Scorecard, params: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id(card.pilot), run_name=card.submission, tags={
            "testbed.submission": card.submission, "testbed.vendor": card.vendor, "testbed.pilot": card.pilot,
            "testbed.official": str(card.official).lower(), "testbed.isolated": str(card.isolated).lower()})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run.info.run_id

    def finish(self, run_id: str, card: Scorecard, files: dict[str, Path], bundle: Path, sandbox_log: str) -> None:
        """Log metrics, artifacts and the bundle; register the bundle as a model version."""
        try:
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, 0) for k, v in _flatten(card).items()]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
            self.client.log_batch(run_id, tags=[RunTag("testbed.verdict", card.verdict),
                                                RunTag("testbed.passed", str(card.passed).lower())])
            for rel, path in files.items():
                parent = str(Path(rel).parent)
                self.client.log_artifact(run_id, str(path), None if parent == "." else parent)
            log_file = files["scorecard.json"].parent / "sandbox.log"
            log_file.write_text(sandbox_log)
            self.client.log_artifact(run_id, str(log_file))
            self.client.log_artifact(run_id, str(bundle), "bento")
            self._register(run_id, card)
        except Exception:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def _register(self, run_id: str, card: Scorecard) -> None:
        name = registered_model_name(card.pilot)
        try:
            self.client.create_registered_model(name, tags={"testbed.pilot": card.pilot},
                                                description=f"Bundles evaluated for pilot {card.pilot}")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/bento"
        self.client.create_model_version(name, source=source, run_id=run_id, tags={
            "testbed.submission": card.submission, "testbed.verdict": card.verdict,
            "testbed.passed": str(card.passed).lower(), "testbed.bundle_sha256": card.bundle_sha256})

    def leaderboard_runs(self, pilot: str) -> list:
        """Latest official run per submission, newest first."""
        exp = self.client.get_experiment_by_name(experiment_name(pilot))
        if exp is None:
            return []
        runs = self.client.search_runs([exp.experiment_id], "tags.`testbed.official` = 'true'",
                                       order_by=["attributes.start_time DESC"], max_results=1000)
        latest = {}
        for run in runs:
            if run.info.status == "FINISHED":
                latest.setdefault(run.data.tags.get("testbed.submission"), run)
        return list(latest.values())
