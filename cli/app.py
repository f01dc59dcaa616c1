"""`testbed`: the command line for vendors, city evaluators and operators."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from cli import operate
from cli.console import emit_json as _emit_json
from cli.console import err, friendly, out, unwrap_help
from cli.console import warn_unsafe as _warn_unsafe
from cli.pilots import pilots_app
from cli.review import review_app
from testbed.config import Workspace, harness_version
from testbed.errors import NotFound, TestbedError
from testbed.text import printable
from workflow.catalogue import get_pilot
from workflow.submissions import SubmissionStore, load_vendor

__all__ = ["app"]

app = typer.Typer(help="Seoul public-service AI pilot testbed: pilots → sandbox → evaluation → serving.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(pilots_app, name="pilots")
app.add_typer(review_app, name="review")
for command in operate.COMMANDS:  # promote, rollback, production, serve, monitor
    app.command()(command)
UNSAFE_HELP = "Run the bundle WITHOUT the sandbox (trusted code only). Printed loudly, recorded, fails a gate."


@app.command()
@friendly
def submit(pilot: str, bundle: Path, vendor: Path = typer.Option(..., "--vendor", help="Vendor profile YAML."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Validate a .bento against the pilot's contract and store it with the vendor profile; prints its id."""
    from pilots.vendor import VendorProfile
    from testbed.yamlio import load_model

    spec = get_pilot(pilot)
    sub, new = SubmissionStore(Workspace.from_env()).submit(spec, bundle, vendor)  # errors name the profile's file
    if as_json:
        return _emit_json({**sub.model_dump(mode="json"), "new": new})
    if not new:
        err.print(f"these bytes were already submitted (sha256 {sub.bundle_sha256[:12]}…); same submission:")
        if load_model(vendor, VendorProfile) != sub.vendor:
            err.print(f"[yellow]note:[/] {escape(str(vendor))} differs from the profile stored with it, which stays "
                      "(a submission's profile is fixed; submit new bytes to change it)")
    print(sub.id)


@app.command()
@friendly
def check(pilot: str, bundle: Path,
          vendor: Path | None = typer.Option(None, "--vendor", help="Vendor profile YAML (optional)."),
          as_json: bool = typer.Option(False, "--json", help="Print the scorecard JSON."),
          unsafe: bool = typer.Option(False, "--unsafe-no-sandbox", help=UNSAFE_HELP)):
    """Vendor kit: the city's own sandbox and contract checks on the PUBLIC sample. Nothing is logged. Exits 1
    when the bundle would be rejected (the run did not complete, or a hard gate failed), 2 when it cannot be run at
    all (not a .bento, another pilot's bundle, a bad vendor profile…)."""
    from pilots.vendor import VendorProfile
    from sandbox.bundle import inspect_bundle
    from sandbox.executor import RayExecutor
    from workflow.evaluate import evaluate_bundle

    spec, ws = get_pilot(pilot), Workspace.from_env()
    if unsafe:
        _warn_unsafe()
    profile = load_vendor(vendor) if vendor else VendorProfile(
        name="(vendor check)", headquarters_district="outside-seoul", seoul_based=False, startup=False,
        technology_field="other", model_description="not given", licence="not given")
    info = inspect_bundle(bundle)
    image = info.manifest.get("image") if isinstance(info.manifest.get("image"), dict) else {}
    python = str(image.get("python_version") or "")
    if python and python != "3.11":
        err.print(f"[bold yellow]warning:[/] the bundle was built for Python {escape(python[:20])} (bentofile.yaml "
                  "`docker.python_version`); the sandbox runs it on Python 3.11, as the official evaluation will")
    with RayExecutor() as executor:
        with err.status("checking in the sandbox on the public sample…"):
            ev = evaluate_bundle(spec, bundle, profile, executor=executor, ws=ws, split="sample",
                                 isolated=not unsafe, submission=f"check-{info.sha256[:12]}",
                                 out_dir=ws.home / "checks" / f"{pilot}-{info.sha256[:12]}")
        _report(ev.card, ev.files, as_json)  # before a local Ray's shutdown (~1.4 s)
    if not as_json:
        _time_used(ev.card.performance.get("run_s"), spec.resources.wall_time_s)
        if vendor is None:
            out.print("  [dim]local strength scored for a vendor that claims nothing (no --vendor): the total is not "
                      "the one an official evaluation of your profile gives[/]", soft_wrap=True)
    if ev.card.verdict != "completed" or not ev.card.passed:
        raise typer.Exit(1)


def _time_used(used: float | None, limit: float) -> None:
    """The check's share of the pilot's time limit: the official run has the same limit for a split that can be
    larger, so a check that needs much of it warns."""
    if not used:
        return
    tight = used > limit / 3
    out.print(f"  [{'yellow' if tight else 'dim'}]time in the sandbox: {used:.0f} s of the pilot's {limit:g} s limit "
              f"({used / limit:.0%}) on the public sample; the official evaluation sends the sequestered split, which "
              f"can hold several times as many items, through the same phases under the same limit"
              f"{' — make the service faster, or it may time out there' if tight else ''}[/]", soft_wrap=True)


@app.command()
@friendly
def evaluate(submissions: list[str] = typer.Argument(None, help="Submission ids (several: a campaign)."),
             all_pilot: str | None = typer.Option(None, "--all", metavar="PILOT", help="A campaign: every "
                                                  "submission to PILOT without a finished official evaluation."),
             as_json: bool = typer.Option(False, "--json", help="Print the scorecard JSON (campaign: the summary)."),
             unsafe: bool = typer.Option(False, "--unsafe-no-sandbox", help=UNSAFE_HELP),
             reevaluate: bool = typer.Option(False, "--reevaluate", help="Evaluate again although the official "
                                             "evaluation exists; recorded beside it, never replacing it."),
             reason: str | None = typer.Option(None, "--reason", help="Why (required with --reevaluate)."),
             retries: int = typer.Option(2, "--retries", min=0, help="Campaign: retries of a job whose Ray "
                                         "worker or node died (infrastructure, never a bundle's own failure).")):
    """Run a submission in the sandbox on Ray against the sequestered split, score it, log it to MLflow. The
    first evaluation of a submission is its official one (the leaderboard ranks it). Several ids, or --all
    PILOT, run a campaign: every one still without a finished official evaluation, in parallel on Ray."""
    from evaluation.tracking import MlflowTracker
    from sandbox.executor import RayExecutor
    from workflow.evaluate import evaluate_bundle

    submissions = submissions or []
    if reason is not None and not reevaluate:  # an official evaluation takes no reason: it would be dropped
        raise TestbedError("--reason is the reason for a re-evaluation; it goes with --reevaluate",
                           where="testbed evaluate", fix="add --reevaluate to re-evaluate an evaluated submission, or "
                                                         "leave --reason out for its official evaluation")
    if all_pilot and submissions:
        raise TestbedError("give either submission ids or --all PILOT, not both", where="testbed evaluate",
                           fix=f"testbed evaluate --all {all_pilot}, or testbed evaluate {' '.join(submissions)}")
    if all_pilot or len(submissions) > 1:
        if reevaluate:
            raise TestbedError("a campaign evaluates what has no official evaluation; --reevaluate is for one "
                               "submission", where="testbed evaluate",
                               fix="testbed evaluate ID --reevaluate --reason ...")
        from cli.campaign import run

        return run(submissions, all_pilot, as_json, unsafe, retries)
    if not submissions:
        raise TestbedError("nothing to evaluate", where="testbed evaluate",
                           fix="give a submission id (several for a campaign), or --all PILOT")
    submission = submissions[0]
    if reevaluate and not (reason or "").strip():
        raise TestbedError("--reevaluate needs a --reason", where="testbed evaluate",
                           fix=f'testbed evaluate {submission} --reevaluate --reason "WHY"')
    ws = Workspace.from_env()
    store = SubmissionStore(ws)
    sub = store.get(submission)
    if unsafe:
        _warn_unsafe()
    with RayExecutor() as executor:
        with err.status(f"evaluating {sub.id} in the sandbox…"):
            ev = evaluate_bundle(get_pilot(sub.pilot), store.bundle(sub.id), sub.vendor, executor=executor, ws=ws,
                                 tracker=MlflowTracker(ws), out_dir=store.report_dir(sub.id), submission=sub.id,
                                 isolated=not unsafe, reevaluate=reason if reevaluate else None,
                                 vetted=store.vetted(sub.id))
        _report(ev.card, ev.files, as_json)  # before a local Ray's shutdown (~1.4 s)


@app.command()
@friendly
def audit(submission: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Recompute every metric and gate of a submission's official scorecard from its logged predictions, the
    logged pilot spec and the sequestered labels; exit 1 when anything differs (e.g. a tampered prediction
    artifact; one missing or unreadable is named)."""
    from evaluation.tracking import MlflowTracker
    from workflow.audit import audit_submission

    ws = Workspace.from_env()
    report = audit_submission(submission, ws=ws, tracker=MlflowTracker(ws))
    if as_json:
        _emit_json({"submission": report.submission, "run_id": report.run_id, "ok": report.ok,
                    "scored_by": report.scored_by, "checks": [vars(c) for c in report.checks]})
    else:
        table = Table("check", "recorded", "recomputed", "", title=f"Audit · {submission} · run {report.run_id}")
        shown = report.mismatches or report.checks[:3] + report.checks[-3:]
        for c in shown:
            table.add_row(c.name, escape(str(c.recorded)[:70]), escape(str(c.recomputed)[:70]),
                          "[green]✓[/]" if c.ok else "[red]✗[/]")
        out.print(table)
        if report.ok:
            out.print(f"[green]audit passed[/]: all {len(report.checks)} checks recomputed from the logged predictions "
                      "and the sequestered labels match the scorecard")
        else:
            out.print(f"[red]AUDIT FAILED[/]: {len(report.mismatches)} of {len(report.checks)} checks differ")
            if report.scored_by:
                out.print(f"  note: harness {escape(report.scored_by)} scored this run and {escape(harness_version())} "
                          "audited it: a difference may be a formula changed since; audit with that version checked "
                          "out to tell", soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


def _report(card, files, as_json: bool) -> None:
    if as_json:
        print(card.model_dump_json(indent=2))
        return
    colour = "green" if card.passed else "red"
    out.print(f"[bold]{card.submission}[/] verdict [bold]{card.verdict}[/] · gates "
              f"[{colour}]{'passed' if card.passed else 'FAILED'}[/] · total {card.total_score:.2f}"
              f"{' (provisional)' if card.total_is_provisional else ''}")
    if card.evaluation == "reevaluation":
        out.print(f"  re-evaluation ({escape(printable(card.reevaluation_reason or ''))}); the official evaluation "
                  "stays ranked")
    for gate in card.gates:
        if not gate.passed:
            out.print(f"  [red]✗ {gate.name}[/]: {escape(printable(gate.detail))}", soft_wrap=True)
    if card.log_tail:
        out.print("  last lines of sandbox.log:")
        for line in card.log_tail[-8:]:
            out.print(f"    {escape(printable(line[:300]))}{'…' if len(line) > 300 else ''}", highlight=False,
                      soft_wrap=True)  # the bundle's own output: its terminal codes written out, never obeyed
    out.print(f"  scorecard: {escape(str(files['scorecard.html']))}\n  json:      "
              f"{escape(str(files['scorecard.json']))}", soft_wrap=True)
    if card.mlflow_run_id:
        out.print(f"  MLflow run: {card.mlflow_run_id}")


@app.command()
@friendly
def scorecard(submission: str,
              html: Path | None = typer.Option(None, "--html", help="Draw the card's HTML page to this path."),
              as_json: bool = typer.Option(False, "--json", help="Print the scorecard JSON."),
              restore: bool = typer.Option(False, "--restore", help="Rewrite the copy beside the submission "
                                           "(JSON and HTML) from the MLflow record.")):
    """Show the official scorecard of a submission: the copy beside it, checked against the MLflow record (the
    record is shown, with a warning, where the copy differs or cannot be read)."""
    from evaluation.tracking import MlflowTracker
    from workflow.record import verified_scorecard

    ws = Workspace.from_env()
    if restore:
        from workflow.pages import refresh_scorecard

        SubmissionStore(ws).get(submission)
        written = refresh_scorecard(ws, MlflowTracker(ws), submission)
        if written is None:
            raise NotFound(f"submission {submission} has no official evaluation in MLflow to restore from",
                           fix=f"run `testbed evaluate {submission}`")
        err.print(f"rewrote {escape(str(written.with_name('scorecard.json')))} and {escape(written.name)} from the "
                  "MLflow record", soft_wrap=True)
    shown = verified_scorecard(ws, MlflowTracker(ws), submission)
    if shown.warning:
        err.print(f"[bold yellow]warning:[/] {escape(shown.warning)}", highlight=False, soft_wrap=True)
    card, folder = shown.card, shown.folder
    if html:  # drawn from the card shown (the record, or a copy that agrees with it), never the page beside it
        from workflow.pages import in_service_block, page

        in_service = in_service_block(folder)
        html.parent.mkdir(parents=True, exist_ok=True)
        try:
            html.write_text(page(card, folder, in_service), encoding="utf-8")
        except OSError as exc:  # a write that fails part-way (a full disk) says nothing of the file: name it
            raise OSError(exc.errno, exc.strerror, str(html)) from None
        err.print(f"wrote {escape(str(html))}", soft_wrap=True)
    if as_json:
        print(card.model_dump_json(indent=2))
    elif not html:
        _report(card, {"scorecard.html": folder / "scorecard.html", "scorecard.json": folder / "scorecard.json"},
                False)


@app.command()
@friendly
def leaderboard(pilot: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Rank a pilot's evaluated submissions (from MLflow, with the evaluators' reviews): gates first, then total."""
    from evaluation.leaderboard import leaderboard_table
    from evaluation.tracking import MlflowTracker
    from workflow.review import reviewed_rows

    ws = Workspace.from_env()
    rows = reviewed_rows(get_pilot(pilot), MlflowTracker(ws), ws)
    if as_json:
        return _emit_json(rows)
    out.print(leaderboard_table(get_pilot(pilot), rows))


@app.command()
@friendly
def demo(pilot: list[str] = typer.Option(None, "--pilot", help="Only this pilot's examples (repeatable).")):
    """Build the example bundles, submit them, evaluate them on a local Ray, and print the leaderboards."""
    from cli.demo import run_demo

    run_demo(out, err, pilot or None)


unwrap_help(app)

if __name__ == "__main__":  # `python -m cli.app` is the `testbed` command too
    app()
