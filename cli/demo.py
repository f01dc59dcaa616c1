"""`testbed demo`: the whole job on embedded defaults, as a city operator would run it: build every example
bundle (`workflow.build`), submit it, evaluate it on a local Ray, log it to MLflow, print the leaderboards.
Then the rest of the lifecycle on the forecasting pilot: a demo evaluator approves the better bundle and
rejects the reference, the operator promotes, serves it (sandbox + Prometheus), sends real requests with
BentoML's own client, reads `/metrics`, is refused a second promotion, rolls back and stops the service."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import bentoml
from rich.console import Console
from rich.markup import escape

from evaluation.families import open_family
from evaluation.leaderboard import leaderboard_rows, leaderboard_table
from evaluation.tracking import MlflowTracker
from sandbox.executor import RayExecutor
from serving.monitor import scrape, summarize
from serving.server import ProductionServer, running
from testbed.config import Workspace
from testbed.errors import Refused
from workflow.build import build_bundle, example_dirs, pilot_of
from workflow.catalogue import get_pilot
from workflow.evaluate import Evaluation, evaluate_bundle
from workflow.pages import refresh_scorecard
from workflow.promote import Production
from workflow.review import ReviewBook, reviewed_rows
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
            out.rule(f"[bold]{pilot_id}[/] · {escape(spec.title.en)}")
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
                    card = store.scorecard(sub.id)
                    if card is None:
                        continue
                    ev = Evaluation(card, {"scorecard.html": folder / "scorecard.html",
                                           "scorecard.json": folder / "scorecard.json"})
                else:
                    with err.status(f"evaluating {sub.id} in the sandbox on Ray…"):
                        ev = evaluate_bundle(spec, store.bundle(sub.id), sub.vendor, executor=executor, ws=ws,
                                             tracker=tracker, out_dir=store.report_dir(sub.id), submission=sub.id,
                                             vetted=store.vetted(sub.id))
                cards.append(ev)
                out.print(f"  verdict {ev.card.verdict}, {fam.primary_metric} "
                          f"{ev.card.metrics['clean'].get(fam.primary_metric, float('nan')):.4g}, total "
                          f"{ev.card.total_score:.2f}, gates {'passed' if ev.card.passed else 'FAILED'}  "
                          f"[{time.perf_counter() - t0:.1f} s]")
            out.print(leaderboard_table(spec, leaderboard_rows(spec, tracker)))
            mine = [ev for ev in cards if ev.card.pilot == pilot_id]
            if spec.family == "forecasting" and len(mine) >= 2:
                t0 = time.perf_counter()
                _review_promote_serve(out, ws, tracker, pilot_id, mine)
                out.print(f"[dim]review → promotion → serving → rollback in {time.perf_counter() - t0:.1f} s[/]")
    out.rule("[bold]Scorecards[/]")
    for ev in cards:
        out.print(f"{ev.card.submission}\n  HTML: {escape(str(ev.files['scorecard.html']))}\n  JSON: "
                  f"{escape(str(ev.files['scorecard.json']))}",
                  soft_wrap=True)
    uri, mlflow_bin = escape(ws.tracking_uri), escape(str(Path(sys.executable).parent / "mlflow"))
    out.print(f"\nMLflow store: {uri}\nOpen the MLflow UI:  make mlflow-ui   (or: {mlflow_bin} ui "
              f"--backend-store-uri {uri} --host 127.0.0.1 --port 5000), then http://127.0.0.1:5000", soft_wrap=True)
    out.print(f"demo finished in {time.perf_counter() - started:.0f} s")


def _review_promote_serve(out: Console, ws: Workspace, tracker: MlflowTracker, pilot: str,
                          evaluated: list[Evaluation]) -> None:
    spec = get_pilot(pilot)
    ranked = sorted(evaluated, key=lambda ev: (not ev.card.passed, -ev.card.criteria["deep_learning_fit"].score))
    better, reference = ranked[0].card, ranked[-1].card
    out.rule(f"[bold]{pilot}[/] · evaluator review, promotion and production serving")
    book = ReviewBook(ws)
    equity = better.equity
    # the demo evaluator checked the vendors' registrations: what each claims holds
    book.record(tracker, better.submission, "approve", by="demo-evaluator",
                confirmed_claims=list(better.confirmable_claims()),
                note=f"beats the {better.baseline.get('name')} reference (skill "
                     f"{better.criteria['deep_learning_fit'].evidence['skill_over_baseline']:.0%}); all gates pass",
                rubric=[{"goal": i, "score": 3, "justification": f"worst group {equity.get('worst_group')} still "
                         f"within the thresholds" if i == len(spec.policy_goals) else "forecasts the peaks the goal "
                         "depends on, one day ahead"} for i in range(1, len(spec.policy_goals) + 1)])
    book.record(tracker, reference.submission, "reject", by="demo-evaluator",
                confirmed_claims=list(reference.confirmable_claims()),
                note="the reference has no skill over the non-deep-learning baseline: not a candidate",
                rubric=[{"goal": i, "score": 1, "justification": "repeats yesterday: misses weather-driven changes"}
                        for i in range(1, len(spec.policy_goals) + 1)])
    for card in (better, reference):
        refresh_scorecard(ws, tracker, card.submission)
    out.print(f"demo-evaluator approved {better.submission} and rejected {reference.submission}")
    out.print(leaderboard_table(spec, reviewed_rows(spec, tracker, ws)))

    prod = Production(ws)
    entry, ok = prod.promote(better.submission, by="demo-operator", note="demo")
    out.print(f"promoted {ok.submission.id}: testbed-{pilot} version {ok.version} is in production "
              f"(bundle sha256 {ok.sha256[:16]}…)")
    try:
        prod.promote(reference.submission, by="demo-operator")
    except Refused as why:
        out.print(f"promotion of {reference.submission} refused: {escape(why.problem)}")

    fam = open_family(spec, ws.data_dir)
    inputs = fam.inputs(fam.load("sample"))
    names = list(fam.contract.inputs)
    server = ProductionServer(ws, pilot, poll_s=0.5, log=lambda line: out.print(f"[dim]serve: {escape(line)}[/]"))
    with running(server) as url:
        client = bentoml.SyncHTTPClient(url)
        sent = 20
        for i in range(sent):
            getattr(client, fam.contract.api)(**{n: arr[i:i + 1] for n, arr in zip(names, inputs, strict=True)})
        client.close()
        summary = summarize(spec, scrape(url))
        out.print(f"served {sent} requests through bentoml.SyncHTTPClient at {url}; /metrics reports "
                  f"{summary['requests']} requests ({summary['errors']} failed), version {summary['version']}, "
                  f"bundle sha256 {summary['bundle_sha256'][:16]}…")
        out.print("  " + " · ".join(f"{r['measure']} {r['value']:.3g} {r['unit']}" for r in summary["rows"]))
        page = refresh_scorecard(ws, tracker, ok.submission.id, summary)
        out.print(f"  in-service section added to {escape(str(page))}", soft_wrap=True)
        entry, _ = prod.rollback(pilot, by="demo-operator", note="demo rollback")
        out.print(f"rolled back: production is {'version ' + entry['version'] if entry['version'] else 'withdrawn'}"
                  f" (was {entry['previous_version']})")
        deadline = time.monotonic() + 30
        while server.served is not None and server.served.version == ok.version and time.monotonic() < deadline:
            time.sleep(0.2)  # the server picks the change up by itself (it polls the alias)
        ready = server.ready
        out.print(f"the running service noticed without a restart: /readyz "
                  f"{'serves version ' + server.served.version if ready else 'answers 503'}")
    out.print("service stopped")
