"""`testbed demo`: the whole job on embedded defaults, as a city operator would run it.

Every folder in `examples/` with a `bentofile.yaml` and a `vendor.yaml` is a vendor's bundle for the pilot
named in its `bentofile.yaml` labels (`pilot:`). A folder with a `train.py` is trained first, on the pilot's
public training split only: `python train.py <public>/train.npz model.pt`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console

from pilots.catalogue import get_pilot
from pilots.errors import BundleError
from pilots.submissions import SubmissionStore
from pilots.workspace import PROJECT_ROOT, Workspace

__all__ = ["run_demo", "build_bundle", "example_dirs", "pilot_of", "public_training_data"]

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
    from evaluation.families import FAMILIES

    folder = ws.home / "public" / pilot_id
    if not folder.is_dir():
        spec = get_pilot(pilot_id)
        fam = FAMILIES.get(spec.family)(spec, ws.data_dir)
        fam.dataset_sha256()
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
        _run([sys.executable, "train.py", str(public / "train.npz"), "model.pt"], stage, env)
    tag = _run([str(bin_dir / "bentoml"), "build", ".", "--output", "tag"], stage, env).strip().splitlines()[-1]
    tag = tag.removeprefix("__tag__:")
    target = ws.home / "build" / f"{src.name}.bento"
    target.unlink(missing_ok=True)
    _run([str(bin_dir / "bentoml"), "export", tag, str(target)], stage, env)
    return target


def run_demo(out: Console, err: Console, only: list[str] | None = None) -> None:
    from evaluation.evaluate import evaluate_bundle
    from evaluation.families import FAMILIES
    from evaluation.leaderboard import leaderboard_rows, leaderboard_table
    from sandbox.executor import RayExecutor

    started = time.perf_counter()
    ws = Workspace.from_env()
    store = SubmissionStore(ws)
    examples = example_dirs()
    by_pilot: dict[str, list[Path]] = {}
    for ex in examples:
        pilot = pilot_of(ex)
        if not only or pilot in only:
            by_pilot.setdefault(pilot, []).append(ex)
    executor = RayExecutor()
    cards = []
    try:
        for pilot_id, folders in by_pilot.items():
            spec = get_pilot(pilot_id)
            fam = FAMILIES.get(spec.family)(spec, ws.data_dir)
            fam.dataset_sha256()
            out.rule(f"[bold]{pilot_id}[/] · {spec.title.en}")
            for folder in folders:
                t0 = time.perf_counter()
                with err.status(f"building {folder.name} (bentoml build)…"):
                    bundle = build_bundle(folder, ws)
                sub, new = store.submit(spec, bundle, folder / "vendor.yaml")
                out.print(f"built and submitted [bold]{folder.name}[/] → {sub.id}"
                          f"{'' if new else ' (same bytes as before)'}  [{time.perf_counter() - t0:.1f} s]")
                t0 = time.perf_counter()
                with err.status(f"evaluating {sub.id} in the sandbox on Ray…"):
                    ev = evaluate_bundle(spec, store.bundle(sub.id), sub.vendor, executor=executor, ws=ws,
                                         out_dir=store.report_dir(sub.id), submission=sub.id)
                cards.append(ev)
                out.print(f"  verdict {ev.card.verdict}, {fam.primary_metric} "
                          f"{ev.card.metrics['clean'].get(fam.primary_metric, float('nan')):.4g}, total "
                          f"{ev.card.total_score:.1f}, gates {'passed' if ev.card.passed else 'FAILED'}  "
                          f"[{time.perf_counter() - t0:.1f} s]")
            out.print(leaderboard_table(spec, leaderboard_rows(spec, ws)))
    finally:
        executor.shutdown()
    out.rule("[bold]Scorecards[/]")
    for ev in cards:
        out.print(f"{ev.card.submission}\n  HTML: {ev.files['scorecard.html']}\n  JSON: {ev.files['scorecard.json']}",
                  soft_wrap=True)
    uri, mlflow_bin = ws.tracking_uri, Path(sys.executable).parent / "mlflow"
    out.print(f"\nMLflow store: {uri}\nOpen the MLflow UI:  make mlflow-ui   (or: {mlflow_bin} ui "
              f"--backend-store-uri {uri} --host 127.0.0.1 --port 5000), then http://127.0.0.1:5000", soft_wrap=True)
    out.print(f"demo finished in {time.perf_counter() - started:.0f} s")
