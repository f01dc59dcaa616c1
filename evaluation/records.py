"""What a tracked evaluation is, whatever keeps it: the `Tracker` protocol the workflow is given, the
`RunRecord` read back, the run's tags and flat metric names (`flatten`), the check of a scorecard against the
metrics logged with it (`disagreements`), and which run of a submission is its official one. `evaluation.tracking`
keeps them in MLflow, `evaluation.tracking_memory` in memory."""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from evaluation.scorecard import Scorecard, rescore
from testbed.errors import AuditError

__all__ = ["Tracker", "RunRecord", "experiment_name", "registered_model_name", "flatten", "disagreements",
           "official_per_submission", "missing_artifact", "run_tags", "failure_tags", "outcome_tags"]


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


MAX_METRIC_NAME = 250
"""Characters of a metric name MLflow stores (its `MAX_ENTITY_KEY_LENGTH`)."""


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


def run_tags(card: Scorecard) -> dict[str, str]:
    tags = {"testbed.submission": card.submission, "testbed.vendor": card.vendor, "testbed.pilot": card.pilot,
            "testbed.official": str(card.official).lower(), "testbed.isolated": str(card.isolated).lower(),
            "testbed.evaluation": card.evaluation}
    if card.reevaluation_reason:
        tags["testbed.reason"] = card.reevaluation_reason[:5000]
    return tags


def failure_tags(pilot: str, submission: str, vendor: str, reason: str) -> dict[str, str]:
    return {"testbed.submission": submission, "testbed.vendor": vendor, "testbed.pilot": pilot,
            "testbed.official": "false", "testbed.evaluation": "infrastructure_failure",
            "testbed.failure": reason[:5000]}


def outcome_tags(card: Scorecard) -> dict[str, str]:
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
