"""Shared fixtures. Integration tests use the real thing (bentoml build, Ray, MLflow SQLite, bubblewrap)."""

from __future__ import annotations

import functools
import os
import socket
import tempfile
from pathlib import Path

import pytest

from testbed.config import PROJECT_ROOT, Workspace  # sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER before any ray import

BUNDLES = Path(__file__).parent / "bundles"
EXAMPLES = PROJECT_ROOT / "examples"
ENV_CACHE = Path(os.environ.get("TESTBED_ENVS_DIR") or PROJECT_ROOT / "var" / "envs")
"""Bundles' Python environments, shared by every test and the demo: one per requirements hash, reused."""


def free_port() -> int:
    """A loopback port nothing listens on (once this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def _empty_tracking_store() -> bytes:
    """An MLflow SQLite store with its tables made and nothing recorded, as bytes: a workspace's store starts as
    a copy (MLflow spends ~2 s making a new store's tables, and most integration tests have a store of their own;
    tests of a store that does not exist yet name paths of their own)."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="testbed-empty-store-") as folder:
        db = Path(folder) / "mlflow.db"
        client = mlflow.MlflowClient(f"sqlite:///{db}")
        client.search_experiments()
        client.search_registered_models()
        return db.read_bytes()


def empty_store(db: Path) -> str:
    """The tracking URI of an empty MLflow SQLite store at `db` (made from `_empty_tracking_store` unless there)."""
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        db.write_bytes(_empty_tracking_store())
    return f"sqlite:///{db}"


def make_workspace(root: Path) -> Workspace:
    """A private workspace: its own submissions, BentoML home and MLflow SQLite store (an empty one); the real
    data; the shared cache of bundle environments (keyed by their requirements, so sharing cannot mix them up)."""
    return Workspace(home=root / "home", data_dir=PROJECT_ROOT / "data", bentoml_home=root / "bentoml",
                     tracking_uri=empty_store(root / "mlflow.db"), artifact_root=root / "artifacts",
                     env_cache=ENV_CACHE)


@pytest.fixture(autouse=True)
def shared_env_cache(monkeypatch):
    """`Workspace.from_env()` takes bundles' environments from the one shared cache whatever TESTBED_HOME a test
    sets (under each test's own home, every test submitting a bundle built its environment anew: 10-40 s each)."""
    monkeypatch.setenv("TESTBED_ENVS_DIR", str(ENV_CACHE))


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path)


@pytest.fixture(scope="session")
def build_ws(tmp_path_factory) -> Workspace:
    return make_workspace(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="session")
def built(build_ws):
    """`built("probe")` -> path of a real `.bento` made by `bentoml build` + `bentoml export` (cached)."""
    from workflow.build import build_bundle

    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            src = BUNDLES / name if (BUNDLES / name).is_dir() else EXAMPLES / name
            cache[name] = build_bundle(src, build_ws)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def bike_spec():
    from workflow.catalogue import get_pilot

    return get_pilot("bike-demand")


@pytest.fixture
def fake_bento(tmp_path: Path):
    """A minimal `.bento` archive declaring the given routes (enough for static checks; nothing runs)."""
    import io
    import tarfile

    import yaml

    def make(routes: list[dict], name: str = "fake", version: str = "v1", requirements: str | None = None,
             labels: dict | None = None, python: str | None = None) -> Path:
        manifest = {"name": name, "version": version, "schema": {"routes": routes}, **({"labels": labels} if labels
                                                                                     else {})}
        if requirements is not None:  # what `python.packages` in bentofile.yaml becomes
            manifest["image"] = {"python_requirements": requirements}
        if python is not None:  # what `docker.python_version` becomes
            manifest.setdefault("image", {})["python_version"] = python
        manifest = yaml.safe_dump(manifest).encode()
        path = tmp_path / f"{name}-{version}.bento"
        with tarfile.open(path, "w:xz") as tar:
            info = tarfile.TarInfo("./bento.yaml")
            info.size = len(manifest)
            tar.addfile(info, io.BytesIO(manifest))
        return path

    return make


FORECAST_ROUTE = {"name": "forecast", "input": {"properties": {"history": {"type": "tensor"},
                                                               "future": {"type": "tensor"}},
                                                "required": ["history", "future"]}}


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
