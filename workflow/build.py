"""Building vendor bundles the way a vendor does (`bentoml build` + `bentoml export`), for the example bundles
of the demo, the tests and the benchmarks. Every folder in `examples/` with a `bentofile.yaml` and a
`vendor.yaml` is a vendor's bundle for the pilot named in its `bentofile.yaml` labels (`pilot:`). A folder with
a `train.py` is trained first, on the pilot's public training split only, with the Python environment its
`bentofile.yaml` declares (`python.packages`, built like a submitted bundle's):
`<env>/bin/python train.py <public>/train.npz model.pt`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from evaluation.families import open_family
from sandbox.environment import PythonEnvironment, parse_requirements
from testbed.config import PROJECT_ROOT, Workspace
from testbed.errors import BundleError
from workflow.catalogue import get_pilot

__all__ = ["build_bundle", "example_dirs", "pilot_of", "public_training_data", "EXAMPLES"]

EXAMPLES = PROJECT_ROOT / "examples"


def example_dirs() -> list[Path]:
    return sorted(d for d in EXAMPLES.iterdir() if (d / "bentofile.yaml").is_file() and (d / "vendor.yaml").is_file())


def pilot_of(example: Path) -> str | None:
    """The pilot an example bundle is for: the `pilot` label in its bentofile.yaml."""
    return (yaml.safe_load((example / "bentofile.yaml").read_text()).get("labels") or {}).get("pilot")


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BundleError(f"`{' '.join(cmd)}` failed: {(proc.stderr or proc.stdout).strip()[-800:]}", where=str(cwd),
                          fix="fix the example bundle (see the output above)")
    return proc.stdout


def public_training_data(pilot_id: str, ws: Workspace) -> Path:
    """The pilot's public training split in the contract's own format, exported once per workspace."""
    folder = ws.home / "public" / pilot_id
    if not folder.is_dir():
        fam = open_family(get_pilot(pilot_id), ws.data_dir)
        staging = folder.with_name(folder.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        fam.export(fam.load("train"), staging)
        staging.rename(folder)
    return folder


def build_bundle(src: Path, ws: Workspace) -> Path:
    """`bentoml build` + `bentoml export` of an example folder (trained first if it has train.py)."""
    stage = ws.home / "build" / src.name
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(src, stage)
    env = {**os.environ, "BENTOML_HOME": str(ws.bentoml_home), "BENTOML_DO_NOT_TRACK": "true"}
    bin_dir = Path(sys.executable).parent
    if (stage / "train.py").is_file():
        public = public_training_data(pilot_of(src), ws)
        packages = ((yaml.safe_load((src / "bentofile.yaml").read_text()).get("python") or {}).get("packages") or [])
        where = str(src / "bentofile.yaml")
        prefix = PythonEnvironment(tuple(parse_requirements("\n".join(packages), where)), ws.envs, where).ensure()
        _run([str(prefix / "bin" / "python"), "train.py", str(public / "train.npz"), "model.pt"], stage, env)
    tag = _run([str(bin_dir / "bentoml"), "build", ".", "--output", "tag"], stage, env).strip().splitlines()[-1]
    tag = tag.removeprefix("__tag__:")
    target = ws.home / "build" / f"{src.name}.bento"
    target.unlink(missing_ok=True)
    _run([str(bin_dir / "bentoml"), "export", tag, str(target)], stage, env)
    return target
