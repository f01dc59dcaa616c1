"""`testbed demo`: the whole job on embedded defaults, as a city operator would run it: build every example
bundle (`workflow.build`), submit it, evaluate it on a local Ray, log it to MLflow, print the leaderboards."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console

from evaluation.families import open_family
from evaluation.leaderboard import leaderboard_rows, leaderboard_table
from evaluation.scorecard import Scorecard
from evaluation.tracking import MlflowTracker
from sandbox.executor import RayExecutor
from testbed.config import Workspace
from workflow.build import build_bundle, example_dirs, pilot_of
from workflow.catalogue import get_pilot
from workflow.evaluate import Evaluation, evaluate_bundle
from workflow.submissions import SubmissionStore

__all__ = ["run_demo"]


def run_demo(out: Console, err: Console, only: list[str] | None = None) -> None:
    started = time.perf_counter()
    ws = Workspace.from_env()
    store = SubmissionStore(ws)
    examples = example_dirs()
    by_pilot: dict[str, list[Path]] = {}
    for ex in examples:
        pilot = pilot_of(ex)
        if not only or pilot in only:
            by_pilot.setdefault(pilot, []).append(ex)
    tracker = MlflowTracker(ws)
    cards = []
    with RayExecutor() as executor:
        for pilot_id, folders in by_pilot.items():
            spec = get_pilot(pilot_id)
            fam = open_family(spec, ws.data_dir)
            out.rule(f"[bold]{pilot_id}[/] · {spec.title.en}")
            for folder in folders:
                t0 = time.perf_counter()
                with err.status(f"building {folder.name} (bentoml build)…"):
                    bundle = build_bundle(folder, ws)
                sub, new = store.submit(spec, bundle, folder / "vendor.yaml")
                out.print(f"built and submitted [bold]{folder.name}[/] → {sub.id}"
                          f"{'' if new else ' (same bytes as before)'}  [{time.perf_counter() - t0:.1f} s]")
                t0 = time.perf_counter()
                official, folder = tracker.official_run(spec.id, sub.id), store.report_dir(sub.id)
                if official is not None:
                    out.print(f"  already evaluated officially (MLflow run {official.run_id}); not re-run "
                              f"(`testbed evaluate {sub.id} --reevaluate --reason ...` to run it again)")
                    if not (folder / "scorecard.json").is_file():
                        continue
                    ev = Evaluation(Scorecard.model_validate_json((folder / "scorecard.json").read_text()),
                                    {"scorecard.html": folder / "scorecard.html",
                                     "scorecard.json": folder / "scorecard.json"})
                else:
                    with err.status(f"evaluating {sub.id} in the sandbox on Ray…"):
                        ev = evaluate_bundle(spec, store.bundle(sub.id), sub.vendor, executor=executor, ws=ws,
                                             tracker=tracker, out_dir=store.report_dir(sub.id), submission=sub.id)
                cards.append(ev)
                out.print(f"  verdict {ev.card.verdict}, {fam.primary_metric} "
                          f"{ev.card.metrics['clean'].get(fam.primary_metric, float('nan')):.4g}, total "
                          f"{ev.card.total_score:.1f}, gates {'passed' if ev.card.passed else 'FAILED'}  "
                          f"[{time.perf_counter() - t0:.1f} s]")
            out.print(leaderboard_table(spec, leaderboard_rows(spec, tracker)))
    out.rule("[bold]Scorecards[/]")
    for ev in cards:
        out.print(f"{ev.card.submission}\n  HTML: {ev.files['scorecard.html']}\n  JSON: {ev.files['scorecard.json']}",
                  soft_wrap=True)
    uri, mlflow_bin = ws.tracking_uri, Path(sys.executable).parent / "mlflow"
    out.print(f"\nMLflow store: {uri}\nOpen the MLflow UI:  make mlflow-ui   (or: {mlflow_bin} ui "
              f"--backend-store-uri {uri} --host 127.0.0.1 --port 5000), then http://127.0.0.1:5000", soft_wrap=True)
    out.print(f"demo finished in {time.perf_counter() - started:.0f} s")
