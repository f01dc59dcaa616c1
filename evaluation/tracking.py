"""Tracking: where official evaluations are recorded. `MlflowTracker` is the real one (an experiment per pilot,
a run per evaluation, a registered model per pilot; honours `MLFLOW_TRACKING_URI`, default the SQLite store
under `mlflow/`). `evaluation.tracking_memory.MemoryTracker` is the in-memory double for unit tests. Both
satisfy `Tracker`, which the workflow is given, as it is given an executor.
"""

from __future__ import annotations

import functools
import hashlib
import math
import posixpath
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from evaluation.scorecard import Scorecard, rescore
from evaluation.tracking_uri import check_tracking_uri
from testbed.config import Workspace
from testbed.errors import AuditError

__all__ = ["Tracker", "RunRecord", "MlflowTracker", "experiment_name", "registered_model_name",
           "flatten", "disagreements", "official_per_submission", "missing_artifact", "every_page", "absent"]


def experiment_name(pilot: str) -> str:
    return f"testbed/{pilot}"


def registered_model_name(pilot: str) -> str:
    return f"testbed-{pilot}"


@dataclass
class RunRecord:
    """One tracked evaluation as the leaderboard reads it back."""

    run_id: str
    tags: dict[str, str]
    """`testbed.*` tags: submission, vendor, pilot, official, evaluation (official, reevaluation, or
    infrastructure_failure: no evaluation, see `Tracker.record_failure`), reason, isolated, verdict, passed,
    failure."""
    metrics: dict[str, float]
    """Flattened scorecard metrics (see `flatten`)."""
    status: str = "RUNNING"
    """RUNNING, FINISHED or FAILED."""
    start_time: int = 0
    """Milliseconds since the epoch."""
    params: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)


class Tracker(Protocol):
    def start(self, card: Scorecard, params: dict[str, str]) -> str:
        """Open a run for `card`; returns its id."""

    def finish(self, run_id: str, card: Scorecard, files: dict[str, Path], bundle: Path, sandbox_log: str) -> None:
        """Log metrics and artifacts, register the bundle, close the run (FAILED if anything fails)."""

    def fail(self, run_id: str) -> None:
        """Close the run as FAILED."""

    def official_runs(self, pilot: str) -> list[RunRecord]:
        """The official evaluation of each submission (re-evaluations never replace it)."""

    def official_run(self, pilot: str, submission: str) -> RunRecord | None:
        """The official evaluation of one submission, or None."""

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        """Copy artifact `path` of a run into folder `dst`; returns the local file (AuditError when the run's
        store lacks it or it cannot be read: `missing_artifact`)."""

    def metric_history(self, run_id: str, keys: list[str]) -> dict[str, list[float]]:
        """Every value logged for each of `keys` in a run, oldest first (one each unless a metric was logged
        again: MLflow then reports the latest)."""

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        """Set tags on an existing run (e.g. the evaluators' decision, mirrored from the audit trail)."""

    def tags(self, run_id: str) -> dict[str, str]:
        """A run's tags as the store holds them now."""

    def record_failure(self, pilot: str, submission: str, vendor: str, reason: str, params: dict[str, str]) -> str:
        """Record an evaluation the machinery could not make (not the bundle's failure) as a FAILED run tagged
        `testbed.failure` (the reason) and never official: nothing ranks, reviews or audits it, and the next
        campaign evaluates the submission again. Returns its id."""


SEARCH_PAGE = 5000
"""Runs or model versions read per query when searching the store (every page is read)."""
MAX_METRIC_NAME = 250
"""Characters of a metric name MLflow stores (its `MAX_ENTITY_KEY_LENGTH`)."""


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


def _group_metric(label: str, metric: str) -> str:
    """`group/NAME/VALUE/METRIC` for a group label `NAME=VALUE`, as MLflow accepts a metric name (letters of any
    script, digits, `_.- :/`, a normal path, at most `MAX_METRIC_NAME` characters). A label that cannot be kept so
    is written flat, cut, with a hash of itself: two groups never share a name (`line=2/3` and `line=2_3`)."""
    parts = label.partition("=")[::2] if "=" in label else (label,)
    name = "/".join(["group", *parts, metric])
    if all(_METRIC_WORD.fullmatch(p) for p in parts) and len(name) <= MAX_METRIC_NAME and \
            posixpath.normpath(name) == name:
        return name
    flat = re.sub(r"[^\w.\- :]", "_", label).replace("..", "_")[:MAX_METRIC_NAME - len(f"group/_0123456789/{metric}")]
    return f"group/{flat}_{hashlib.sha256(label.encode()).hexdigest()[:10]}/{metric}"


_METRIC_WORD = re.compile(r"[\w.\- :]+")
"""What a metric name's part may hold in MLflow (letters of any script, digits, `_.- :`)."""


def absent(exc: BaseException) -> bool:
    """Whether an MLflow error says that what was asked for does not exist (a run's artifact, a registered model),
    rather than that the store failed (unreachable, a 5xx answer): only then may a caller take it as "none"."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def missing_artifact(run_id: str, path: str, exc: BaseException) -> AuditError:
    """Artifact `path` of a run could not be downloaded: the record lacks it (removed, or its file damaged); the
    store itself answered (the run was found in it)."""
    detail = " ".join(str(exc).split())[:200]
    return AuditError(f"artifact {path} of the run is missing or cannot be read ({type(exc).__name__}: {detail})",
                      where=f"MLflow run {run_id}", fix="restore the run's artifacts from a backup of the artifact "
                      "store (MLFLOW_TRACKING_URI's); `testbed audit SUBMISSION` lists what else differs")


def flatten(card: Scorecard) -> dict[str, float]:
    """The scorecard's numbers as flat metric names (`clean/mase`, `group/hour_band/night/mase`, ...). Per group,
    only the equity metric (the family's primary one): the groups' other metrics are in the run's
    `scorecard.json` artifact. MLflow's SQL store takes ~0.3 ms a metric, and the subway pilot's 570 groups × 4
    metrics cost 0.7 s of every run that way."""
    out = {f"{scenario}/{m}": v for scenario, vals in card.metrics.items() for m, v in vals.items()}
    out |= {f"retention/{k}": v for k, v in card.retention.items()}
    out |= {f"under_load/{m}": v for m, v in card.under_load.items()}
    metric = card.equity.get("metric")
    out |= {_group_metric(g, metric): vals[metric] for g, vals in card.groups.items() if metric in vals}
    out |= {f"latency_ms/{q}": v for q, v in card.performance["latency_ms"].items()}
    out |= {f"service_latency_ms/{q}": v for q, v in card.performance.get("service_latency_ms", {}).items()}
    out |= {f"node_speed/{name}": v["relative"] for name, v in card.performance.get("node_speed", {}).items()
            if isinstance(v, dict) and v.get("relative") is not None}
    out |= {f"criteria/{k}": c.score for k, c in card.criteria.items() if c.score is not None}
    out |= {"throughput_items_per_s": card.performance["throughput_items_per_s"],
            "service_throughput_items_per_s": card.performance.get("service_throughput_items_per_s"),
            "error_rate": card.performance["error_rate"], "startup_s": card.performance["startup_s"],
            "peak_rss_mb": card.performance["peak_rss_mb"], "total_score": card.total_score,
            "passed": float(card.passed)}
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}


def disagreements(card: Scorecard, metrics: dict[str, float]) -> list[str]:
    """Where `card`, its gates and criteria taken as they stand (`rescore`), differs from the `metrics` logged
    with its run: a card altered after the run. The total, derived from them, is left out."""
    mine, out = flatten(rescore(card.model_copy(deep=True))), []
    for key in sorted((set(mine) | set(metrics)) - {"total_score"}):
        ours, logged = mine.get(key), metrics.get(key)
        if ours is None or logged is None:
            if key == "passed" or key.startswith("criteria/"):
                out.append(f"{key} {ours} against {logged}")
        elif not math.isclose(ours, logged, rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"{key} {ours:.6g} against {logged:.6g}")
    return out


def _tags(card: Scorecard) -> dict[str, str]:
    tags = {"testbed.submission": card.submission, "testbed.vendor": card.vendor, "testbed.pilot": card.pilot,
            "testbed.official": str(card.official).lower(), "testbed.isolated": str(card.isolated).lower(),
            "testbed.evaluation": card.evaluation}
    if card.reevaluation_reason:
        tags["testbed.reason"] = card.reevaluation_reason[:5000]
    return tags


def _failure_tags(pilot: str, submission: str, vendor: str, reason: str) -> dict[str, str]:
    return {"testbed.submission": submission, "testbed.vendor": vendor, "testbed.pilot": pilot,
            "testbed.official": "false", "testbed.evaluation": "infrastructure_failure",
            "testbed.failure": reason[:5000]}


def _outcome_tags(card: Scorecard) -> dict[str, str]:
    return {"testbed.verdict": card.verdict, "testbed.passed": str(card.passed).lower()}


def official_per_submission(runs: list[RunRecord]) -> list[RunRecord]:
    """Per submission, its official evaluation: the first finished run tagged `official` (runs from before
    re-evaluations existed have no `testbed.evaluation` tag and count as official). Newest first."""
    first: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: r.start_time):
        if run.status == "FINISHED" and run.tags.get("testbed.official") == "true" and \
                run.tags.get("testbed.evaluation", "official") == "official":
            first.setdefault(run.tags.get("testbed.submission", ""), run)
    return sorted(first.values(), key=lambda r: -r.start_time)


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

        run = self.client.create_run(self.experiment_id(card.pilot), run_name=card.submission, tags=_tags(card))
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run.info.run_id

    def finish(self, run_id: str, card: Scorecard, files: dict[str, Path], bundle: Path, sandbox_log: str) -> None:
        from mlflow.entities import Metric, RunTag

        try:
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, 0) for k, v in flatten(card).items()]
            for i in range(0, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in _outcome_tags(card).items()])
            for rel, path in files.items():
                parent = str(Path(rel).parent)
                self.client.log_artifact(run_id, str(path), None if parent == "." else parent)
            log_file = files["scorecard.json"].parent / "sandbox.log"
            log_file.write_text(sandbox_log)
            self.client.log_artifact(run_id, str(log_file))
            self.client.log_artifact(run_id, str(bundle), "bento")
            if card.evaluation == "official":
                self._register(run_id, card)
        except BaseException:  # Ctrl-C too: a run left RUNNING would look half-done for ever
            self.fail(run_id)
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def fail(self, run_id: str) -> None:
        self.client.set_terminated(run_id, status="FAILED")

    def record_failure(self, pilot: str, submission: str, vendor: str, reason: str, params: dict[str, str]) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id(pilot), run_name=submission,
                                     tags=_failure_tags(pilot, submission, vendor, reason))
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
        if any(v.tags.get("testbed.bundle_sha256") == card.bundle_sha256 for v in known):
            return  # one registered version per bundle hash, however often the bytes are evaluated
        source = f"{self.client.get_run(run_id).info.artifact_uri}/bento"
        self.client.create_model_version(name, source=source, run_id=run_id, tags={
            "testbed.submission": card.submission, "testbed.verdict": card.verdict,
            "testbed.passed": str(card.passed).lower(), "testbed.bundle_sha256": card.bundle_sha256})

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
