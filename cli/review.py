"""`testbed review ...`: city evaluators decide on evaluations (policy-fit rubric, append-only audit trail)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from cli.console import emit_json as _emit_json
from cli.console import err, friendly, out, warn_replaced
from evaluation.local_strength import CLAIMS
from testbed.config import Workspace
from testbed.errors import AuditError, TestbedError, from_tracking_store
from testbed.text import cell, printable
from testbed.yamlio import repeated
from workflow.catalogue import all_pilots, get_pilot
from workflow.submissions import SubmissionStore

__all__ = ["review_app"]

review_app = typer.Typer(help="City evaluators: decide on evaluations (policy-fit rubric, append-only audit trail).",
                         no_args_is_help=True)

SCORE_HELP = ('A policy goal\'s score: GOAL=SCORE:JUSTIFICATION, GOAL the number `testbed review show` gives, SCORE '
              '0–4 (repeat for every goal).')
RUN_HELP = "The run judged: only the official evaluation (the default) can be."
CONFIRM_HELP = "A vendor claim the evaluator verified: seoul_based, startup or technology_field (repeatable)."


@review_app.command("list")
@friendly
def review_list(pilot: str | None = typer.Argument(None, help="Only this pilot."),
                everything: bool = typer.Option(False, "--all", help="Also the decided ones."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """What awaits a decision: evaluated submissions without a review of their official evaluation."""
    from evaluation.tracking import MlflowTracker
    from workflow.review import ReviewBook, review_status

    ws = Workspace.from_env()
    tracker = MlflowTracker(ws)
    book = ReviewBook(ws, tracker)
    rows = []
    for spec in ([get_pilot(pilot)] if pilot else all_pilots().values()):
        for run in tracker.official_runs(spec.id):
            sub = run.tags.get("testbed.submission", "")
            try:
                status, review = review_status(book, sub, run)
            except AuditError as exc:  # listed, with the reason: one damaged trail never hides the others
                err.print(f"[bold yellow]warning:[/] {escape(printable(str(exc)))}", highlight=False, soft_wrap=True)
                status, review = "ALTERED trail", None
            if everything or status in ("awaiting", "stale", "ALTERED trail"):
                rows.append({"pilot": spec.id, "submission": sub, "vendor": run.tags.get("testbed.vendor"),
                             "run_id": run.run_id, "gates": "pass" if run.tags.get("testbed.passed") == "true"
                             else "FAILED", "total": run.metrics.get("total_score"), "status": status,
                             "by": review.by if review else None})
    if as_json:
        return _emit_json(rows)
    if not rows:
        out.print("nothing awaits a decision" + ("" if everything else " (--all shows the decided ones)"))
        return
    table = Table("pilot", "submission", "vendor", "gates", "total as evaluated", "status", "run",
                  caption="`testbed leaderboard` shows the totals with the reviews applied")
    for r in rows:
        table.add_row(r["pilot"], r["submission"], cell(r["vendor"] or ""), r["gates"], f"{r['total'] or 0:.2f}",
                      r["status"] + (f" by {cell(r['by'])}" if r["by"] else ""), r["run_id"])
    out.print(table)


@review_app.command("show")
@friendly
def review_show(submission: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """What an evaluator judges: the official evaluation, the pilot's policy goals (numbered) and the decision."""
    from evaluation.tracking import MlflowTracker
    from workflow.review import ReviewBook, official_card, official_evaluation, review_status, reviewed_card

    ws = Workspace.from_env()
    sub = SubmissionStore(ws).get(submission)
    tracker = MlflowTracker(ws)
    spec, run = get_pilot(sub.pilot), official_evaluation(tracker, sub)
    status, review = review_status(ReviewBook(ws, tracker), sub.id, run) if run else ("not evaluated", None)
    card_file = SubmissionStore(ws).report_dir(sub.id) / "scorecard.json"
    reviewed = reviewed_card(official_card(tracker, run), review) if run else None
    card, claims = (reviewed.model_dump(mode="json"), reviewed.confirmable_claims()) if reviewed else ({}, {})
    if as_json:
        return _emit_json({"submission": sub.model_dump(mode="json"), "run_id": run.run_id if run else None,
                           "status": status, "policy_goals": spec.policy_goals,
                           "review": review.model_dump(mode="json") if review else None,
                           "gates": card.get("gates"), "equity": card.get("equity"), "claims": claims})
    out.print(f"[bold]{sub.id}[/] by {cell(sub.vendor.name)} · pilot {sub.pilot} · bundle sha256 {sub.bundle_sha256}")
    if run is None:
        out.print(f"not evaluated yet: `testbed evaluate {sub.id}`")
        return
    out.print(f"official evaluation: run {run.run_id} · verdict {card['verdict']} · gates "
              f"{'passed' if card['passed'] else 'FAILED'} · total {card['total_score']:.2f}"
              f"{' (provisional until reviewed)' if card['total_is_provisional'] else ''}")
    for gate in card.get("gates", []):
        if not gate["passed"]:
            out.print(f"  [red]✗ {escape(gate['name'])}[/]: {escape(printable(gate['detail']))}")
    if card.get("equity"):
        eq = card["equity"]
        out.print(escape(f"equity on {eq.get('metric')}: worst group {eq['worst_group']} ({eq['worst']:.4g}), best "
                         f"{eq['best_group']} ({eq['best']:.4g})" if eq.get("worst_group") else
                         f"equity on {eq.get('metric')}: no worst or best group (no key has two groups measured on "
                         "enough items to judge)"))
    out.print("[bold]Policy goals to score 0–4[/] (--score GOAL=SCORE:JUSTIFICATION, or --rubric FILE):")
    for i, goal in enumerate(spec.policy_goals, 1):
        out.print(f"  {i}. {escape(goal)}")
    out.print("[bold]Vendor claims[/] (--confirm CLAIM for each one verified; only these can count): " +
              (", ".join(f"{name} ({cell(str(c.get('status')))})" for name, c in claims.items()) or "none made"))
    said = f" by {cell(review.by)} at {review.at}: {cell(review.note)}" if review else ""
    out.print(f"decision: [bold]{status}[/]{said}")
    out.print(f"scorecard: {escape(str(card_file.with_suffix('.html')))}", soft_wrap=True)


def _decide(decision: str, submission: str, by: str, note: str, scores: list[str], rubric: Path | None,
            run_id: str | None, as_json: bool, confirm: list[str]) -> None:
    from evaluation.tracking import MlflowTracker
    from testbed.errors import SpecError
    from workflow.pages import refresh_scorecard
    from workflow.review import ReviewBook, load_rubric_file, parse_score_flags, unmet_by

    if bool(scores) == bool(rubric):
        raise SpecError("give the policy-fit rubric either as --score flags or as --rubric FILE", where="review",
                        fix=f"`testbed review show {submission}` lists the goals to score")
    ws = Workspace.from_env()
    SubmissionStore(ws).get(submission)  # before touching MLflow
    extra = load_rubric_file(rubric) if rubric else None
    confirmed = [*(extra.confirmed_claims if extra else ()), *confirm]
    wrong = sorted({c for c in confirmed if c not in CLAIMS} | set(repeated(confirmed)))
    if wrong:
        raise SpecError(f"cannot confirm {', '.join(map(repr, wrong))}: unknown or given twice", where="--confirm",
                        fix=f"confirm each of {', '.join(CLAIMS)} at most once (in --confirm or the rubric file)")
    tracker = MlflowTracker(ws)
    review = ReviewBook(ws).record(
        tracker, submission, decision, by=by, note=note, run_id=run_id,
        rubric=extra.scores if extra else parse_score_flags(scores), where=str(rubric) if rubric else "--score",
        overrides=extra.overrides if extra else (), confirmed_claims=confirmed)
    try:  # the review is recorded: what it leaves unmet is said, never an error (nor a store failing now)
        failing, dropped = unmet_by(tracker, ws, review)
    except Exception as exc:  # noqa: BLE001 - the testbed's own refusals and the tracking store's failures
        if not (isinstance(exc, TestbedError) or from_tracking_store(exc)):
            raise
        failing, dropped = [], []
    page = stale = None
    try:  # the review is recorded: whatever stops the page's refresh, say so and how to mend it
        page = refresh_scorecard(ws, tracker, review.submission)
    except KeyboardInterrupt:
        stale = "interrupted (Ctrl-C or SIGTERM)"
    except Exception as exc:  # noqa: BLE001 - as above: the disk's too
        if not (isinstance(exc, TestbedError | OSError) or from_tracking_store(exc)):
            raise
        stale = " ".join(str(exc).split())[:300]
    if as_json:
        _emit_json(review.model_dump(mode="json"))
    else:
        out.print(f"{'approved' if decision == 'approve' else 'rejected'} {review.submission} (run {review.run_id}) · "
                  f"policy fit {review.policy_fit:.0f} · review #{review.seq} {review.hash[:12]}…")
        if page:
            out.print(f"  scorecard: {escape(str(page))}", soft_wrap=True)
    if failing:
        carried = (f"; the override of {', '.join(dropped)} that review #{review.seq - 1} gave is not carried over: "
                   "give it again under `overrides` in --rubric FILE" if dropped else "")
        err.print(f"[bold yellow]warning:[/] review #{review.seq} approves {review.submission}, but its evaluation "
                  f"still fails hard gate(s) {', '.join(failing)}: promotion refuses it, and a running `testbed "
                  f"serve` stops serving it{carried}", highlight=False, soft_wrap=True)
    if stale:
        err.print(f"[bold yellow]warning:[/] review #{review.seq} is recorded, but the scorecard beside the submission "
                  f"still shows the decision before it ({escape(printable(stale))})\n  fix: `testbed scorecard "
                  f"{review.submission} --restore` rewrites it from the record", highlight=False, soft_wrap=True)
        if stale.startswith("interrupted"):
            raise typer.Exit(130)


@review_app.command("approve")
@friendly
def review_approve(submission: str, by: str = typer.Option(..., "--by", help="The evaluator's name."),
                   note: str = typer.Option(..., "--note", help="Why."),
                   score: list[str] = typer.Option(None, "--score", help=SCORE_HELP),
                   rubric: Path | None = typer.Option(None, "--rubric", help="The rubric as YAML (scores, overrides, "
                                                      "confirmed_claims)."),
                   run_id: str | None = typer.Option(None, "--run", help=RUN_HELP),
                   confirm: list[str] = typer.Option(None, "--confirm", help=CONFIRM_HELP),
                   as_json: bool = typer.Option(False, "--json", help="Print the review as JSON.")):
    """Approve the official evaluation of a submission, scoring every policy goal."""
    _decide("approve", submission, by, note, score or [], rubric, run_id, as_json, confirm or [])


@review_app.command("reject")
@friendly
def review_reject(submission: str, by: str = typer.Option(..., "--by", help="The evaluator's name."),
                  note: str = typer.Option(..., "--note", help="Why."),
                  score: list[str] = typer.Option(None, "--score", help=SCORE_HELP),
                  rubric: Path | None = typer.Option(None, "--rubric", help="The rubric as YAML."),
                  run_id: str | None = typer.Option(None, "--run", help=RUN_HELP),
                  confirm: list[str] = typer.Option(None, "--confirm", help=CONFIRM_HELP),
                  as_json: bool = typer.Option(False, "--json", help="Print the review as JSON.")):
    """Reject the official evaluation of a submission, scoring every policy goal."""
    _decide("reject", submission, by, note, score or [], rubric, run_id, as_json, confirm or [])


@review_app.command("history")
@friendly
def review_history(submission: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Every review of a submission (who, when, what, why), after checking the hash chain."""
    from evaluation.tracking import MlflowTracker
    from workflow.review import ReviewBook, official_evaluation

    ws = Workspace.from_env()
    sub = SubmissionStore(ws).get(submission)
    tracker = MlflowTracker(ws)
    history = ReviewBook(ws, tracker).history(submission, official_evaluation(tracker, sub))
    if as_json:
        return _emit_json([r.model_dump(mode="json") for r in history])
    table = Table("#", "at", "by", "decision", "run", "policy fit", "note", "hash", title=f"Reviews of {submission}")
    for r in history:
        table.add_row(str(r.seq), r.at, cell(r.by), r.decision, r.run_id[:12], f"{r.policy_fit:.0f}", cell(r.note),
                      r.hash[:12])
    out.print(table)
    warn_replaced([(r.seq, r.replaces) for r in history], "review")
    out.print(f"hash chain intact, {len(history)} review(s); the last one is in force" if history else "no reviews")
