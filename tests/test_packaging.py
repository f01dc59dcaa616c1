"""The repository layout promises: `mlflow/` is a store folder, never a package; one console command."""

import subprocess
import sys
import tomllib

from pilots.workspace import PROJECT_ROOT


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
    assert config["project"]["scripts"]["testbed"] == "pilots.cli:app"
