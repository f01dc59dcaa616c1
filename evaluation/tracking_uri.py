"""The tracking URI checked before MLflow is imported: one that cannot work is refused at once, with the fix
(MLflow itself would create a store in the wrong place, or retry a dead server for minutes)."""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from testbed.config import DEFAULT_TRACKING_DB
from testbed.errors import ResourceUnavailable
from testbed.net import require_listener, speaks_http1

__all__ = ["check_tracking_uri", "TRACKING_SCHEMES", "DRIVERS"]

TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
DRIVERS = {"postgresql": ("psycopg2", "psycopg"), "mysql": ("pymysql", "MySQLdb"), "mssql": ("pyodbc",)}
"""Python drivers SQLAlchemy can use for each database scheme (one is enough)."""
SQLITE_HEADER = b"SQLite format 3\x00"
ANSWER_TIMEOUT_S = 10.0
"""How long a tracking server reached over plain HTTP may take to answer a first request."""


def check_tracking_uri(uri: str) -> None:
    """A tracking URI that cannot work is refused at once, with the fix: an unknown scheme (MLflow's file store
    has no model registry), a SQLite path that is not `sqlite:///PATH`, a folder, a file that is not SQLite or
    in a folder that does not exist (MLflow would create a new, empty store there), a database whose Python
    driver is not installed, a store that cannot be written, a server's address without a host or with a port
    that is no number, a server where nothing listens or nothing answers HTTP (MLflow's client retries it for
    minutes). A new
    SQLite store elsewhere than the project's gets a warning: a misspelt path looks like an empty testbed."""
    url = urlsplit(uri)
    scheme = url.scheme.split("+", 1)[0]
    where = f"MLFLOW_TRACKING_URI={uri}"
    if scheme not in TRACKING_SCHEMES:
        raise ResourceUnavailable(f"{uri!r} is not a tracking URI the testbed can use", where="MLFLOW_TRACKING_URI",
                                  fix="give sqlite:///PATH, postgresql://..., or http(s)://HOST:PORT of a tracking "
                                      "server; unset it to use the project's SQLite store under mlflow/")
    if scheme == "sqlite":
        _check_sqlite(uri, where)
    if scheme in DRIVERS and not any(importlib.util.find_spec(m) for m in DRIVERS[scheme]):
        raise ResourceUnavailable(f"no Python driver for {scheme} is installed ({' or '.join(DRIVERS[scheme])})",
                                  where=where, fix=f"install one into the testbed's venv: `.venv/bin/uv pip install "
                                                   f"--python .venv/bin/python {DRIVERS[scheme][0]}`")
    if url.scheme in ("http", "https"):
        _check_server(url, where)


def _check_server(url: SplitResult, where: str) -> None:
    """A server's address names a host and a port, something listens there and, over plain HTTP, answers."""
    fix = ("start the server (`mlflow server --host 127.0.0.1 --port 5000 ...`) or correct MLFLOW_TRACKING_URI; "
           "unset it to use the project's SQLite store under mlflow/")
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError as exc:  # `:abc`, `:99999`
        raise ResourceUnavailable(f"the server's port is not a port number ({exc})", where=where, fix=fix) from None
    if not url.hostname:
        raise ResourceUnavailable("the server's address names no host", where=where, fix=fix)
    require_listener(url.hostname, port, what="MLflow tracking server", where=where, fix=fix)
    if url.scheme == "http" and not speaks_http1(url.hostname, port, timeout_s=ANSWER_TIMEOUT_S):
        raise ResourceUnavailable(f"something listens at {url.hostname}:{port} but does not answer HTTP within "
                                  f"{ANSWER_TIMEOUT_S:g} s (MLflow's client would wait minutes for each call)",
                                  where=where, fix=fix)


def _check_sqlite(uri: str, where: str) -> None:
    fix = "correct the path: sqlite:////absolute/path/mlflow.db (four slashes) or sqlite:///relative/path.db"
    if not uri.startswith("sqlite:///") or uri == "sqlite:///":
        raise ResourceUnavailable("a SQLite store is named sqlite:///PATH", where=where, fix=fix)
    path = Path(uri[len("sqlite:///"):])
    if not path.parent.is_dir():
        raise ResourceUnavailable(f"the folder of the SQLite store {path} does not exist", where=where,
                                  fix=fix + ", or create the folder for a new store")
    if path.is_dir():
        raise ResourceUnavailable(f"{path} is a folder, not a SQLite file", where=where, fix=fix)
    if path.is_file() and path.stat().st_size and _head(path) != SQLITE_HEADER:
        raise ResourceUnavailable(f"{path} is not a SQLite database", where=where, fix=fix)
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ResourceUnavailable(f"the SQLite store {path} cannot be written (read-only)", where=where,
                                  fix="make the store's file and its folder writable for this user (SQLite writes a "
                                      "journal beside the file), or name another store")
    empty = not path.exists() or not path.stat().st_size  # an empty file becomes a new store as well
    if empty and path.resolve() != DEFAULT_TRACKING_DB.resolve():
        warnings.warn(f"no MLflow store at {path} yet: a new, empty one is created there ({where}); if the testbed "
                      "should have records, the path is wrong", stacklevel=3)


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(len(SQLITE_HEADER))
