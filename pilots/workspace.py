"""Where things live. Defaults are project-local; the ecosystem's variables override them.

- `MLFLOW_TRACKING_URI`: tracking store (default: SQLite under `mlflow/`, artifacts in `mlflow/artifacts/`).
- `BENTOML_HOME`: BentoML's store for bundles the testbed builds (default `var/bentoml`).
- `RAY_ADDRESS`: a Ray cluster (default: a local Ray bound to loopback).
- `TESTBED_HOME`: submissions and scorecards (default `var/`).
- `TESTBED_DATA_DIR`: the city's data, including sequestered splits (default `data/`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Workspace", "PROJECT_ROOT", "HARNESS_VERSION"]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HARNESS_VERSION = "0.1.0"

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")


@dataclass(frozen=True)
class Workspace:
    """Resolved locations for one testbed process."""

    home: Path
    """Submissions, scorecards and build staging."""
    data_dir: Path
    """The city's datasets (public and sequestered splits). Never mounted into a sandbox."""
    bentoml_home: Path
    """BentoML store used when the testbed builds bundles itself (demo, examples)."""
    tracking_uri: str
    """MLflow tracking URI."""
    artifact_root: Path | None
    """Artifact folder for new experiments with a local store (beside the database); None for a server."""

    @classmethod
    def from_env(cls) -> Workspace:
        home = Path(os.environ.get("TESTBED_HOME", PROJECT_ROOT / "var")).resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow' / 'mlflow.db'}"
        return cls(
            home=home,
            data_dir=Path(os.environ.get("TESTBED_DATA_DIR", PROJECT_ROOT / "data")).resolve(),
            bentoml_home=Path(os.environ.get("BENTOML_HOME", home / "bentoml")).resolve(),
            tracking_uri=uri,
            artifact_root=_local_artifact_root(uri),
        )

    @property
    def submissions(self) -> Path:
        return self.home / "submissions"


def _local_artifact_root(uri: str) -> Path | None:
    """A local SQLite store keeps its artifacts beside the database (not in `./mlruns` of the current folder)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"
    return None  # a tracking server or file store decides where artifacts go
