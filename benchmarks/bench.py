"""`make bench`: wall time of each example's evaluation, and the harness overhead.

For every example bundle: the official evaluation (sandbox on a local Ray, MLflow) is timed end to end, then
the same model is loaded in-process (trusted examples only: no sandbox) and given the very same request
bodies, to compare single-stream latency and batch time. Then the best forecasting bundle is approved,
promoted and served (`benchmarks/serving_bench.py`): a steady request rate for 60 s, and the throughput with and
without adaptive batching. Two sandboxed runs of the first forecasting example at once are compared with one
alone (throughput on the machine's cores), and campaigns of 1, 2 and 6 submissions of it are timed
(`benchmarks/campaign_bench.py`). Writes benchmarks/report.md and report.json, whose `targets` list
each goal of issue 11 next to its measured value.
Usage: python benchmarks/bench.py [--pilot ID ...] [--no-serving] [--rate REQ_PER_S] [--repeat N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def in_process(pilot: str, bundle: Path, home: Path) -> dict | None:
    """Time the bundle's API called directly, in a fresh interpreter (no HTTP, no sandbox), on the same bodies.
    It runs on the harness's Python: None (and a note) for a bundle that needs packages only its own
    environment has."""
    env = {**os.environ, "BENTOML_HOME": str(home)}
    if not home.exists():
        subprocess.run([sys.executable, "-m", "bentoml", "import", str(bundle)], env=env, check=True,
                       capture_output=True)
    proc = subprocess.run([sys.executable, __file__, "--in-process", pilot, str(bundle)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"no in-process figures for {bundle.name}: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure_in_process(pilot: str, bundle: Path) -> None:
    """Child process of `in_process`: load the imported bundle and time the contract's API. The load counts
    from `import bentoml` (first thing here, as in the sandbox's fresh interpreter) to the service instance."""
    t0 = time.perf_counter()
    import bentoml

    import_s = time.perf_counter() - t0

    from evaluation.families import open_family
    from sandbox.bundle import inspect_bundle
    from testbed.config import Workspace
    from workflow.catalogue import get_pilot

    spec = get_pilot(pilot)
    fam = open_family(spec, Workspace.from_env().data_dir)
    sent = fam.phases(fam.load("test"))  # a phase may be sent in parts (forecasting: one per origin)
    bodies: dict[str, list[bytes]] = {}
    for part in sent:
        bodies.setdefault(part.name, []).extend(part.bodies)
    offline_items = sum(k for q in sent if q.name == "offline" for k in q.items)
    tag = inspect_bundle(bundle).tag
    t0 = time.perf_counter()
    instance = bentoml.load(tag)()
    load_s = import_s + time.perf_counter() - t0
    api = getattr(instance, fam.contract.api)

    def call(body: bytes) -> float:
        if fam.content_type == "application/x-testbed-npz":  # binary arrays, as the sandbox's worker reads them
            with np.load(io.BytesIO(body), allow_pickle=False) as npz:
                payload = {name: npz[name] for name in npz.files}
        else:
            payload = json.loads(body)
        kwargs = {k: np.asarray(v) if "tensor" in fam.contract.inputs[k] else v for k, v in payload.items()}
        start = time.perf_counter()
        api(**kwargs)
        return time.perf_counter() - start

    call(bodies["single_stream"][0])  # warm-up, as the sandbox's readiness check is
    single = [call(b) for b in bodies["single_stream"]]
    offline = sum(call(b) for b in bodies["offline"])
    every_phase = sum(call(b) for p in sent for b in p.bodies)
    from asgi_probe import app_single_p50_ms  # beside this file

    app_p50 = app_single_p50_ms(bentoml.load(tag), fam.contract.route,
                                bodies["single_stream"], fam.content_type)
    print(json.dumps({"load_s": load_s, "single_p50_ms": 1000 * float(np.percentile(single, 50)),
                      "single_p90_ms": 1000 * float(np.percentile(single, 90)), "total_s": load_s + every_phase,
                      "offline_items_per_s": offline_items / offline, "app_single_p50_ms": app_p50}))


GOALS = {"evaluation_forecasting": 1.5, "evaluation_detection": 1.1, "per_request": 2.0, "startup_beyond_load_s": 1.5,
         "concurrent_throughput": 1.8}


def targets(rows: list[dict], concurrency: dict | None) -> list[dict]:
    """Each target of issue 11 next to its goal: `{name, value, goal, met}` (goals are ceilings, except the
    concurrent throughput, a floor)."""
    out = []

    def add(name: str, value: float, goal: float, floor: bool = False) -> None:
        out.append({"name": name, "value": round(value, 3), "goal": f"{'≥' if floor else '≤'} {goal:g}",
                    "met": bool(value >= goal if floor else value <= goal)})

    for r in rows:
        if "inprocess_total_s" not in r:  # no in-process figures to compare with
            continue
        family = {"forecasting": "forecasting", "detection": "detection"}.get(r["family"])
        if family:
            add(f"evaluation ÷ in-process, {r['example']}", r["overhead_ratio_evaluation"],
                GOALS[f"evaluation_{family}"])
        add(f"per request ÷ in-process (single-stream p50), {r['example']}", r["overhead_ratio_single_p50"],
            GOALS["per_request"])
        add(f"sandbox start-up beyond the model's load (s), {r['example']}", r["startup_beyond_load_s"],
            GOALS["startup_beyond_load_s"])
    if concurrency:
        add(f"two concurrent evaluations on {concurrency['cores']} cores ÷ one (throughput), "
            f"{concurrency['example']}", concurrency["speedup"], GOALS["concurrent_throughput"], floor=True)
    return out


def concurrent_runs(spec, fam, bundle: Path, ws, example: str) -> dict:
    """Throughput of two sandboxed runs of the same job at once (threads, InlineExecutor) against one alone."""
    from concurrent.futures import ThreadPoolExecutor

    from sandbox.bundle import inspect_bundle
    from sandbox.environment import bundle_environment
    from sandbox.executor import InlineExecutor
    from workflow.evaluate import sandbox_job

    env = bundle_environment(inspect_bundle(bundle).manifest, ws.envs, where=str(bundle))
    job = sandbox_job(spec, fam, bundle, fam.load("test"), ws, True, environment=env)
    executor = InlineExecutor()
    executor.run(job)  # warm: the environment is built, the page cache holds the bundle
    t0 = time.perf_counter()
    assert executor.run(job).verdict == "completed"
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        verdicts = [r.verdict for r in pool.map(executor.run, [job, job])]
    two = time.perf_counter() - t0
    return {"example": example, "cores": os.cpu_count(), "one_s": one, "two_s": two, "verdicts": verdicts,
            "speedup": 2 * one / two}


def med(values) -> float:
    return float(np.median(values))


def measure(spec, folder: Path, fam, bundle: Path, sub, *, executor, ws, store, tracker, home: Path,
            repeat: int) -> tuple[object, dict]:
    """The submission's official evaluation and `repeat - 1` re-evaluations, each followed by an in-process run
    (interleaved, so the VM's drift reaches both sides alike); the row gives medians, and the ratios' ranges over
    the pairs. Returns the official scorecard and the row."""
    from workflow.evaluate import evaluate_bundle

    pilot, walls, perfs, locals_, card = spec.id, [], [], [], None
    for i in range(repeat):
        t0 = time.perf_counter()
        ev = evaluate_bundle(spec, store.bundle(sub.id), sub.vendor, executor=executor, ws=ws, tracker=tracker,
                             out_dir=store.report_dir(sub.id), submission=sub.id, vetted=store.vetted(sub.id),
                             reevaluate="bench: repeated measurement" if i else None)
        walls.append(time.perf_counter() - t0)
        perfs.append(ev.card.performance)
        card = card or ev.card
        local = in_process(pilot, bundle, home)
        if local is not None:
            locals_.append(local)
    row = {"pilot": pilot, "example": folder.name, "family": fam.name, "verdict": card.verdict,
           fam.primary_metric: card.metrics["clean"].get(fam.primary_metric), "runs": repeat,
           "evaluation_wall_s": med(walls), "sandbox_startup_s": med([p["startup_s"] for p in perfs])}
    if len(locals_) != repeat:
        return card, row
    sandbox_p50 = med([p["latency_ms"]["p50"] for p in perfs])
    sandbox_offline = med([p["throughput_items_per_s"] for p in perfs])
    local = {key: med([run[key] for run in locals_]) for key in locals_[0]}
    ratios = [wall / run["total_s"] for wall, run in zip(walls, locals_, strict=True)]
    row.update({
        "peak_rss_mb": med([p["peak_rss_mb"] for p in perfs]),
        "sandbox_single_p50_ms": sandbox_p50, "sandbox_single_p90_ms": med([p["latency_ms"]["p90"] for p in perfs]),
        "sandbox_offline_items_per_s": sandbox_offline,
        "inprocess_single_p50_ms": local["single_p50_ms"], "inprocess_single_p90_ms": local["single_p90_ms"],
        "bentoml_app_single_p50_ms": local["app_single_p50_ms"],
        "sandbox_single_p50_beyond_bentoml_app": sandbox_p50 / local["app_single_p50_ms"],
        "inprocess_offline_items_per_s": local["offline_items_per_s"], "inprocess_load_s": local["load_s"],
        "overhead_ratio_single_p50": sandbox_p50 / local["single_p50_ms"],
        "overhead_ratio_offline": local["offline_items_per_s"] / max(1e-9, sandbox_offline),
        "inprocess_total_s": local["total_s"], "overhead_ratio_evaluation": med(ratios),
        "overhead_ratio_evaluation_range": f"{min(ratios):.2f}–{max(ratios):.2f}",
        "startup_beyond_load_s": med([p["startup_s"] - run["load_s"] for p, run in zip(perfs, locals_, strict=True)]),
    })
    return card, row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pilot", action="append")
    parser.add_argument("--no-serving", action="store_true", help="Skip the serving benchmark.")
    parser.add_argument("--rate", type=float, default=50, help="Steady request rate of the serving benchmark.")
    parser.add_argument("--repeat", type=int, default=3, help="Evaluations (and in-process runs) per example.")
    parser.add_argument("--in-process", nargs=2, metavar=("PILOT", "BUNDLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        return _measure_in_process(args.in_process[0], Path(args.in_process[1]))
    root = Path(tempfile.mkdtemp(prefix="testbed-bench-"))
    os.environ.update(TESTBED_HOME=str(root / "home"), MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
                      BENTOML_HOME=str(root / "bentoml"))
    from evaluation.families import open_family
    from evaluation.tracking import MlflowTracker
    from sandbox.executor import RayExecutor
    from testbed.config import Workspace
    from workflow.build import build_bundle, example_dirs, pilot_of
    from workflow.catalogue import get_pilot
    from workflow.submissions import SubmissionStore

    ws = Workspace.from_env()
    store, tracker = SubmissionStore(ws), MlflowTracker(ws)
    rows, servable, first_forecaster = [], [], None
    with RayExecutor() as executor:
        t0 = time.perf_counter()
        executor.connect()
        ray_init_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        tracker.client  # noqa: B018 - MLflow's import, once per process (as Ray's start), not in the first row
        mlflow_import_s = time.perf_counter() - t0
        for folder in example_dirs():
            pilot = pilot_of(folder)
            if args.pilot and pilot not in args.pilot:
                continue
            spec = get_pilot(pilot)
            fam = open_family(spec, ws.data_dir)
            bundle = build_bundle(folder, ws)
            sub, _ = store.submit(spec, bundle, folder / "vendor.yaml")
            card, row = measure(spec, folder, fam, bundle, sub, executor=executor, ws=ws, store=store,
                                tracker=tracker, home=root / f"inproc-{folder.name}", repeat=args.repeat)
            if fam.name == "forecasting" and card.passed:
                servable.append((card.total_score, spec, sub.id))
            if fam.name == "forecasting" and first_forecaster is None:
                first_forecaster = (spec, fam, bundle, folder.name)
            rows.append(row)
            print(json.dumps(row), flush=True)
    concurrency = concurrent_runs(*first_forecaster[:3], ws, first_forecaster[3]) if first_forecaster else None
    driver = campaign = None
    if first_forecaster:
        from driver_bench import driver_scoring  # beside this file

        spec, _, bundle, example = first_forecaster
        driver = driver_scoring(spec, bundle, ws, tracker, example)
        from campaign_bench import campaign_walls  # beside this file

        campaign = campaign_walls(spec, bundle, ws, example)
    serving = None
    if servable and not args.no_serving:
        from serving_bench import serving_benchmark  # beside this file (its folder is on sys.path)

        _, spec, sub_id = max(servable, key=lambda x: x[0])
        serving = serving_benchmark(ws, spec, sub_id, rate=args.rate)
    report = {"machine": f"{platform.node()} · {os.cpu_count()} cores · {platform.python_version()}",
              "ray_init_s": ray_init_s, "mlflow_import_s": mlflow_import_s, "targets": targets(rows, concurrency),
              "rows": rows, "concurrency": concurrency, "driver": driver, "campaign": campaign, "serving": serving}
    (HERE / "report.json").write_text(json.dumps(report, indent=2))
    lines = ["# Benchmark report", "",
             f"Machine: {report['machine']}. Local Ray start: {ray_init_s:.1f} s. MLflow's import: "
             f"{mlflow_import_s:.1f} s (both once per process, before the first evaluation is timed).", "",
             "Sandbox numbers are measured through the whole harness (Ray task → bubblewrap → BentoML over a Unix "
             "socket); in-process numbers call the same model's API directly on the same request bodies. "
             f"Each example: {args.repeat} evaluations (the official one, then re-evaluations), each followed by "
             "an in-process run; the figures are medians, `overhead_ratio_evaluation_range` the ratio's range "
             "over those pairs.",
             "`overhead_ratio_evaluation` = official evaluation wall time (bundle import, sandbox start, every "
             "phase, scoring, report, MLflow) / in-process load + every phase. The in-process load runs in a "
             "fresh interpreter from `import bentoml` to the service instance, as the sandbox's does. "
             "`bentoml_app_single_p50_ms`: the same single-stream requests through BentoML's own app in-process "
             "(no socket, no sandbox; `benchmarks/asgi_probe.py`); `sandbox_single_p50_beyond_bentoml_app` is what "
             "the harness adds to BentoML's own serving path.",
             "", "## Targets (issue 11)", "",
             "| target | value | goal | met |", "|---|---|---|---|"]
    lines += [f"| {t['name']} | {t['value']:.3g} | {t['goal']} | {'yes' if t['met'] else '**no**'} |"
              for t in report["targets"]]
    if concurrency:
        lines += ["", f"Concurrency: one sandboxed run of {concurrency['example']} alone {concurrency['one_s']:.2f} s, "
                  f"two at once {concurrency['two_s']:.2f} s ({concurrency['verdicts']})."]
    if driver:
        lines += ["", f"Campaign driver: {driver['runs']} finished runs of {driver['example']} concluded (scoring, "
                  f"figures, MLflow) in {driver['alone_s']:.2f} s by the driver alone, {driver['pooled_s']:.2f} s with "
                  f"{driver['workers']} scoring processes ({driver['speedup']:.2f}×; {driver['fallbacks']} left to the "
                  "driver)."]
    if campaign:
        from campaign_bench import campaign_markdown

        lines += campaign_markdown(campaign)
    lines += ["", "## Every example", ""]
    keys = list(max(rows, key=len)) if rows else []
    lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "–"))
                                       for k in keys) + " |")
    if serving:
        from serving_bench import serving_markdown

        lines += serving_markdown(serving)
    (HERE / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'report.md'}")


if __name__ == "__main__":
    main()
