"""The repository layout promises: rooms whose imports only point down, no cycles, `mlflow/` a store folder and
never a package, one console command, and a wheel that works without the source tree (what a Ray node gets)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from testbed.config import PROJECT_ROOT

ROOMS = ["testbed", "sandbox", "pilots", "evaluation", "workflow", "serving", "cli"]
"""Bottom to top: a module may import its own room and the rooms below it, never one above."""


def modules() -> dict[str, Path]:
    found = {}
    for room in ROOMS:
        for path in sorted((PROJECT_ROOT / room).rglob("*.py")):
            parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def first_party_imports(path: Path, name: str) -> set[str]:
    """Modules of the project that `path` imports (absolute or relative), at any depth of the file."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in out if m.split(".")[0] in ROOMS}


def test_every_import_points_down_the_house():
    upward = []
    for name, path in modules().items():
        mine = ROOMS.index(name.split(".")[0])
        for target in first_party_imports(path, name):
            if ROOMS.index(target.split(".")[0]) > mine:
                upward.append(f"{name} imports {target}")
    assert not upward, "imports that point up the house:\n" + "\n".join(sorted(upward))


def test_no_import_cycles_between_modules():
    mods = modules()
    graph = {name: {t for t in first_party_imports(path, name) if t in mods and t != name}
             for name, path in mods.items()}
    # a package's __init__ importing its own children (plugin discovery) is containment, not a cycle
    graph = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node}->{nxt}")
            elif nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_room_test_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from workflow.evaluate import evaluate_bundle\nimport cli.app\n")
    assert first_party_imports(bad, "sandbox.bad") == {"workflow.evaluate", "workflow.evaluate.evaluate_bundle",
                                                       "cli.app"}


def test_mlflow_folder_is_not_a_package():
    assert (PROJECT_ROOT / "mlflow").is_dir()
    assert not (PROJECT_ROOT / "mlflow" / "__init__.py").exists()


def test_import_mlflow_is_the_library_even_from_the_project_root():
    code = "import mlflow, sys; print(mlflow.__file__); print(hasattr(mlflow, 'MlflowClient'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    path, has_client = out.stdout.split()
    assert "site-packages" in path and has_client == "True"


def test_ruff_treats_mlflow_as_third_party_and_console_script_exists():
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert "mlflow" in config["tool"]["ruff"]["lint"]["isort"]["known-third-party"]
    assert config["project"]["scripts"] == {"testbed": "cli.app:app"}
    assert config["tool"]["ruff"]["lint"]["isort"]["known-first-party"] == ROOMS


def test_harness_version_names_the_package_and_the_commit():
    from testbed.config import harness_version

    version = harness_version()
    assert version.startswith(config_version())
    if (PROJECT_ROOT / ".git").exists() and shutil.which("git"):
        sha = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        assert f"+g{sha}" in version


def config_version() -> str:
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.slow
def test_the_wheel_works_without_the_source_tree(tmp_path):
    """Build the wheel from a copy of the sources, install it (no deps: they come from this venv's site-packages,
    without the editable install) into a fresh virtualenv, then import every module and run the CLI elsewhere."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, src / name)
    for room in ROOMS:
        shutil.copytree(PROJECT_ROOT / room, src / room, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    deps = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    Path(site, "deps.pth").write_text(deps + "\n")  # a plain path: the editable install's .pth is not processed
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([uv, "pip", "install", "--python", py, "--no-deps", "-q", wheel], check=True, capture_output=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    names = sorted(modules())
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    mod = importlib.import_module(name)\n"
            f"    assert {str(PROJECT_ROOT)!r} not in (mod.__file__ or ''), (name, mod.__file__)\n"
            "print('imported', len(sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TESTBED_PILOTS_DIR")}
    imported = subprocess.run([py, "-I", "-c", code], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert imported.returncode == 0, imported.stderr[-3000:]
    listed = subprocess.run([venv / "bin" / "testbed", "pilots", "list", "--json"], cwd=elsewhere,
                            capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert {"bike-demand", "cctv-road-users"} <= {p["id"] for p in __import__("json").loads(listed.stdout)}


def test_make_mlflow_ui_opens_the_store_mlflow_tracking_uri_names(tmp_path):
    """`make mlflow-ui` opened the project's SQLite store whatever MLFLOW_TRACKING_URI named: a user with their own
    store got a UI on another, perhaps empty, one. It opens the one named, else the project's (`mlflow` stubbed)."""
    stub = tmp_path / "mlflow"
    stub.write_text('#!/bin/sh\necho "$@"\n')
    stub.chmod(0o755)

    def opened(**env: str) -> str:
        environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | env
        return subprocess.run(["make", "-s", "-o", "setup", "mlflow-ui", f"BIN={tmp_path}"], cwd=PROJECT_ROOT,
                              env=environ, capture_output=True, text=True, check=True).stdout

    assert "--backend-store-uri sqlite:///mlflow/mlflow.db " in opened()
    city = "sqlite:////srv/stores/city.db"
    assert f"--backend-store-uri {city} " in opened(MLFLOW_TRACKING_URI=city)
