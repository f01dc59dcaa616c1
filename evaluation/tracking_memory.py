"""The in-memory `Tracker`: the test double for the MLflow boundary. It records what `MlflowTracker` would (runs,
tags, metrics with their history, artifacts' copies, registered versions), in memory and a temporary folder."""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
import weakref
from pathlib import Path

from evaluation.records import (
    RunRecord,
    failure_tags,
    flatten,
    missing_artifact,
    official_per_submission,
    outcome_tags,
    run_tags,
)
from evaluation.scorecard import Scorecard

__all__ = ["MemoryTracker"]


class MemoryTracker:
    """The in-memory Tracker for unit tests: records what the MLflow one would, in `runs` and `versions`."""

    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.versions: list[dict[str, str]] = []
        self.history: dict[str, dict[str, list[float]]] = {}
        """Run id -> metric -> every value logged, oldest first (`log_metrics` adds to it, as MLflow would)."""
        self._ids = itertools.count(1)
        self._store = Path(tempfile.mkdtemp(prefix="testbed-memory-"))
        """Where the artifacts' copies are kept; removed with the tracker."""
        weakref.finalize(self, shutil.rmtree, self._store, True)

    def start(self, card: Scorecard, params: dict[str, str]) -> str:
        run_id = f"memory-{next(self._ids)}"
        self.runs[run_id] = RunRecord(run_id, run_tags(card), {}, params={k: str(v) for k, v in params.items()},
                                      start_time=time.time_ns() // 1_000_000 + len(self.runs))
        return run_id

    def finish(self, run_id: str, card: Scorecard, files: dict[str, Path], bundle: Path, sandbox_log: str) -> None:
        run = self.runs[run_id]
        run.metrics, run.status = flatten(card), "FINISHED"
        self.history[run_id] = {k: [v] for k, v in run.metrics.items()}
        run.tags |= outcome_tags(card)
        store = self._store / run_id  # copies, as MLflow keeps: not the files
        store.mkdir()
        run.artifacts = {name: Path(shutil.copy(path, store / name.replace("/", "_")))
                         for name, path in {**files, "bento/" + bundle.name: bundle}.items()}
        if card.evaluation == "official" and not any(v["pilot"] == card.pilot and
                                                     v["bundle_sha256"] == card.bundle_sha256 for v in self.versions):
            self.versions.append({"pilot": card.pilot, "run_id": run_id, "bundle_sha256": card.bundle_sha256})

    def fail(self, run_id: str) -> None:
        self.runs[run_id].status = "FAILED"

    def official_runs(self, pilot: str) -> list[RunRecord]:
        return official_per_submission([r for r in self.runs.values() if r.tags.get("testbed.pilot") == pilot])

    def official_run(self, pilot: str, submission: str) -> RunRecord | None:
        return next((r for r in self.official_runs(pilot) if r.tags.get("testbed.submission") == submission), None)

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        try:
            return Path(shutil.copyfile(self.runs[run_id].artifacts[path], dst / Path(path).name))
        except (KeyError, OSError) as exc:
            raise missing_artifact(run_id, path, exc) from None

    def metric_history(self, run_id: str, keys: list[str]) -> dict[str, list[float]]:
        logged = self.history.get(run_id, {})
        return {k: list(logged.get(k, [])) for k in keys}

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        """Log `metrics` again on a finished run (what someone with write access to MLflow can do)."""
        for k, v in metrics.items():
            self.history.setdefault(run_id, {}).setdefault(k, []).append(v)
        self.runs[run_id].metrics |= metrics

    def tag(self, run_id: str, tags: dict[str, str]) -> None:
        self.runs[run_id].tags |= tags

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(self.runs[run_id].tags)

    def record_failure(self, pilot: str, submission: str, vendor: str, reason: str, params: dict[str, str]) -> str:
        run_id = f"memory-{next(self._ids)}"
        self.runs[run_id] = RunRecord(run_id, failure_tags(pilot, submission, vendor, reason), {}, "FAILED",
                                      time.time_ns() // 1_000_000 + len(self.runs),
                                      {k: str(v) for k, v in params.items()})
        return run_id
