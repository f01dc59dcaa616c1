"""Where things live, and which harness this is. Defaults are project-local; the ecosystem's variables
override them:

- `MLFLOW_TRACKING_URI`: tracking store (default: SQLite under `mlflow/`, artifacts in `mlflow/artifacts/`).
- `BENTOML_HOME`: BentoML's store for bundles the testbed builds (default `bentoml/` under `TESTBED_HOME`).
- `RAY_ADDRESS`: a Ray cluster (default: a local Ray bound to loopback).
- `TESTBED_HOME`: submissions and scorecards (default `var/`).
- `TESTBED_DATA_DIR`: the city's data, including sequestered splits (default `data/`).
- `TESTBED_ENVS_DIR`: the bundles' own Python environments, one per requirements hash (default `envs/` under
  `TESTBED_HOME`).

Run from a source checkout, "project-local" means the checkout; installed from a wheel (a Ray node), it means
the current folder.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = ["Workspace", "PROJECT_ROOT", "DEFAULT_TRACKING_DB", "DISTRIBUTION", "harness_version"]

DISTRIBUTION = "seoul-ai-testbed"
_SOURCE = Path(__file__).resolve().parent.parent
PROJECT_ROOT = _SOURCE if (_SOURCE / "pyproject.toml").is_file() else Path.cwd()
"""The source checkout holding the packages, or the current folder when they are installed from a wheel."""
DEFAULT_TRACKING_DB = PROJECT_ROOT / "mlflow" / "mlflow.db"
"""The embedded SQLite store used when `MLFLOW_TRACKING_URI` is unset."""

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
if not os.environ.get("RAY_ADDRESS"):
    # A local Ray binds every service to 127.0.0.1 only if this is set before the process first imports `ray`
    # (Ray reads it into a constant at import). Every entry point imports this module first; the executor
    # refuses to start a local Ray that was imported without it.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@functools.cache
def harness_version() -> str:
    """The package version from its metadata, plus the git commit of a source checkout (`+g<sha>`, and
    `.dirty` when files differ from it): a scorecard names exactly the code that produced it."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    if not (_SOURCE / ".git").exists():
        return version
    try:
        sha = subprocess.run(["git", "-C", str(_SOURCE), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(_SOURCE), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha}{'.dirty' if dirty else ''}" if sha else version


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
    env_cache: Path | None = None
    """Bundles' Python environments, one per requirements hash (default: `envs/` under `home`)."""

    @classmethod
    def from_env(cls) -> Workspace:
        # a variable set to nothing counts as unset (Path("") would be the current folder)
        home = Path(os.environ.get("TESTBED_HOME") or PROJECT_ROOT / "var").resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_TRACKING_DB}"
        return cls(
            home=home,
            data_dir=Path(os.environ.get("TESTBED_DATA_DIR") or PROJECT_ROOT / "data").resolve(),
            bentoml_home=Path(os.environ.get("BENTOML_HOME") or home / "bentoml").resolve(),
            tracking_uri=uri,
            artifact_root=_local_artifact_root(uri),
            env_cache=Path(os.environ["TESTBED_ENVS_DIR"]).resolve() if os.environ.get("TESTBED_ENVS_DIR") else None,
        )

    @property
    def submissions(self) -> Path:
        return self.home / "submissions"

    @property
    def envs(self) -> Path:
        """Where bundles' Python environments are built and cached (mounted read-only into a sandbox)."""
        return self.env_cache or self.home / "envs"

    @property
    def harness_locations(self) -> dict[Path, str]:
        """Host folders a sandboxed bundle must never see (they are not mounted; touching them is reported), each
        with the setting that chose it; `sandbox.isolation.hidden_paths` checks them against the sandbox's layout."""
        found = {self.data_dir: "TESTBED_DATA_DIR", self.home: "TESTBED_HOME"}
        if self.tracking_uri.startswith("sqlite:///"):
            found.setdefault(Path(self.tracking_uri.removeprefix("sqlite:///")).resolve().parent,
                             "MLFLOW_TRACKING_URI")
        if self.artifact_root:
            found.setdefault(self.artifact_root, "MLFLOW_TRACKING_URI")
        return found


def _local_artifact_root(uri: str) -> Path | None:
    """A local SQLite store keeps its artifacts beside the database (not in `./mlruns` of the current folder)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"
    return None  # a tracking server or file store decides where artifacts go
