"""Tracking: where official evaluations are recorded. `MlflowTracker` is the real one (an experiment per pilot,
a run per evaluation, a registered model per pilot; honours `MLFLOW_TRACKING_URI`, default the SQLite store
under `mlflow/`). `evaluation.tracking_memory.MemoryTracker` is the in-memory double for unit tests. Both
satisfy `Tracker` (`evaluation.records`, what a tracked evaluation is; its names are kept here too), which the
workflow is given, as it is given an executor.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

from evaluation.records import (
    RunRecord,
    Tracker,
    disagreements,
    experiment_name,
    failure_tags,
    flatten,
    missing_artifact,
    official_per_submission,
    outcome_tags,
    registered_model_name,
    run_tags,
)
from evaluation.scorecard import Scorecard
from evaluation.tracking_uri import check_tracking_uri
from testbed.config import Workspace

__all__ = ["Tracker", "RunRecord", "MlflowTracker", "experiment_name", "registered_model_name",
           "flatten", "disagreements", "official_per_submission", "missing_artifact", "every_page", "absent"]


SEARCH_PAGE = 5000
"""Runs or model versions read per query when searching the store (every page is read)."""


def every_page(search, *args, **kw) -> list:
    """Everything a paged MLflow search (`search_runs`, `search_model_versions`) finds, page after page: a store
    answers at most a page a query (MLflow's SQL store 5,000 runs or 10,000 versions, a server perhaps fewer),
    and a search cut short hides what lies past it (the newest official runs, a bundle's registered version)."""
    found, token = [], None
    while True:
        page = search(*args, max_results=SEARCH_PAGE, page_token=token, **kw)
        found += page
        token = page.token
        if not token:
            return found


def absent(exc: BaseException) -> bool:
    """Whether an MLflow error says that what was asked for does not exist (a run's artifact, a registered model),
    rather than that the store failed (unreachable, a 5xx answer): only then may a caller take it as "none"."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


class MlflowTracker:
    """Records evaluations in MLflow: runs, metrics, artifacts, and the bundle as a registered model version."""

    def __init__(self, ws: Workspace):
        self.ws = ws

    @functools.cached_property
    def client(self):
        """The MLflow client, on first use: importing MLflow takes ~2 s, which an evaluation spends while a local
        Ray starts (`workflow.evaluate.evaluate_bundle`)."""
        check_tracking_uri(self.ws.tracking_uri)
        import mlflow

        mlflow.set_tracking_uri(self.ws.tracking_uri)
        return mlflow.MlflowClient(self.ws.tracking_uri)

    def experiment_id(self, pilot: str) -> str:
        from mlflow.exceptions import MlflowException

        name = experiment_name(pilot)
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = (self.ws.artifact_root / pilot).as_uri() if self.ws.artifact_root else None
        try:
            return self.client.create_experiment(name, artifact_location=location, tags={"testbed.pilot": pilot})
        except MlflowException as exc:  # another process (an evaluation finishing at once) created it meanwhile
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        return self.client.get_experiment_by_name(name).experiment_id

    def start(self, card: Scorecard, params: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id(card.pilot), run_name=card.submission, tags=run_tags(card))
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run.info.run_id

    def finish(self, run_id: str, card: Scorecard, files: dict[str, Path], bundle: Path, sandbox_log: str) -> None:
        from mlflow.entities import Metric, RunTag

        try:
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, 0) for k, v in flatten(card).items()]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in outcome_tags(card).items()])
            for rel, path in files.items():
                parent = str(Path(rel).parent)
                self.client.log_artifact(run_id, str(path), None if parent == "." else parent)
            log_file = files["scorecard.json"].parent / "sandbox.log"
            log_file.write_text(sandbox_log)
            self.client.log_artifact(run_id, str(log_file))
            self.client.log_artifact(run_id, str(bundle), "bento")
            if card.evaluation == "official":
                self._register(run_id, card)
            self.client.set_terminated(run_id, status="FINISHED")
        except BaseException:  # Ctrl-C too: a run left RUNNING would look half-done for ever
            self.fail(run_id)
            raise

    def fail(self, run_id: str) -> None:
        self.client.set_terminated(run_id, status="FAILED")

    def record_failure(self, pilot: str, submission: str, vendor: str, reason: str, params: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id(pilot), run_name=submission,
                                     tags=failure_tags(pilot, submission, vendor, reason))
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        self.client.set_terminated(run.info.run_id, status="FAILED")
        return run.info.run_id

    def _register(self, run_id: str, card: Scorecard) -> None:
        from mlflow.exceptions import MlflowException

        name = registered_model_name(card.pilot)
        try:
            self.client.create_registered_model(name, tags={"testbed.pilot": card.pilot},
                                                description=f"Bundles evaluated for pilot {card.pilot}")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        known = every_page(self.client.search_model_versions, f"name='{name}'")
        if any(v.tags.get("testbed.bundle_sha256") == card.bundle_sha256
               and (v.run_id == run_id or self._finished(v.run_id)) for v in known):
            return  # one registered version per bundle hash, however often the bytes are evaluated; one whose
            # run never finished (cut short after registering) does not count: this run gets its own
        source = f"{self.client.get_run(run_id).info.artifact_uri}/bento"
        self.client.create_model_version(name, source=source, run_id=run_id, tags={
            "testbed.submission": card.submission, "testbed.verdict": card.verdict,
            "testbed.passed": str(card.passed).lower(), "testbed.bundle_sha256": card.bundle_sha256})

    def _finished(self, run_id: str | None) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return bool(run_id) and self.client.get_run(run_id).info.status == "FINISHED"
        except MlflowException as exc:
            if absent(exc):  # its run deleted: it counts for nothing
                return False
            raise

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def official_runs(self, pilot: str) -> list[RunRecord]:
        exp = self.client.get_experiment_by_name(experiment_name(pilot))
        if exp is None:
            return []
        runs = every_page(self.client.search_runs, [exp.experiment_id], "tags.`testbed.official` = 'true'",
                          order_by=["attributes.start_time ASC"])  # one page short: they would be made again
        return official_per_submission([
            RunRecord(r.info.run_id, dict(r.data.tags), dict(r.data.metrics), r.info.status, r.info.start_time or 0,
                      dict(r.data.params)) for r in runs])

    def official_run(self, pilot: str, submission: str) -> RunRecord | None:
        return next((r for r in self.official_runs(pilot) if r.tags.get("testbed.submission") == submission), None)

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        from mlflow.exceptions import MlflowException

        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except (MlflowException, OSError) as exc:
            if isinstance(exc, MlflowException) and not absent(exc):
                raise  # the store failing (a server down, a 503) is no missing artifact: nothing is judged on it
            raise missing_artifact(run_id, path, exc) from None

    def metric_history(self, run_id: str, keys: list[str]) -> dict[str, list[float]]:
        """One query a metric (~0.4 ms each on the SQLite store)."""
        return {k: [m.value for m in self.client.get_metric_history(run_id, k)] for k in keys}
