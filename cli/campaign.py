"""`testbed evaluate` with several submissions (or `--all PILOT`): a campaign on Ray, shown live."""

from __future__ import annotations

import time
from collections import Counter

import typer
from rich.live import Live
from rich.table import Column, Table

from cli.console import emit_json as _emit_json
from cli.console import err, out
from cli.console import warn_unsafe as _warn_unsafe
from testbed.config import Workspace
from testbed.text import cell
from workflow.submissions import SubmissionStore

__all__ = ["run"]

_STATUS = {"queued": "dim", "running": "yellow", "scoring": "blue", "evaluated": "green", "skipped": "cyan",
           "failed": "red"}


def _campaign_table(items, title: str) -> Table:
    """One row per submission; an error whole (where, problem and fix), wrapped, never cut."""
    skipped = any(i.status == "skipped" for i in items)
    table = Table("submission", "status", "verdict", "total", "passed", "retries", "wall s",
                  Column("run / error", overflow="fold"), title=title,
                  caption="skipped: officially evaluated already (`testbed evaluate ID --reevaluate --reason ...` "
                          "evaluates one again)" if skipped else None)
    for i in items:
        table.add_row(i.submission, f"[{_STATUS[i.status]}]{i.status}[/]", i.verdict or "",
                      "" if i.total is None else f"{i.total:.2f}",
                      "" if i.passed is None else ("✓" if i.passed else "✗"),
                      str(len(i.retries)) if i.retries else "", f"{i.wall_s:.1f}" if i.wall_s else "",
                      cell(i.error or i.run_id or ""))
    return table


def _counts(items) -> str:
    n = Counter(i.status for i in items)
    return f"{n['evaluated']} evaluated, {n['failed']} failed, {n['skipped']} skipped"


def run(ids: list[str], pilot: str | None, as_json: bool, unsafe: bool, retries: int) -> None:
    """Evaluate `ids` (or every pending submission of `pilot`) in parallel; exit 1 when any failed (an unreadable
    submission record included)."""
    from evaluation.tracking import MlflowTracker
    from sandbox.executor import RayExecutor
    from workflow.campaign import CampaignItem, pending_submissions, run_campaign
    from workflow.scoring import ScoringPool, scoring_workers

    ws = Workspace.from_env()
    tracker = MlflowTracker(ws)
    todo, done, unreadable = pending_submissions(SubmissionStore(ws), tracker, pilot=pilot, ids=ids)
    if unsafe:
        _warn_unsafe()
    shown = {s.id: CampaignItem(s.id) for s in todo} | {s.id: CampaignItem(s.id, status="skipped",
                                                                         error="official evaluation exists")
                                                      for s in done} | {i.submission: i for i in unreadable}
    name = f"Campaign{f' · {pilot}' if pilot else ''}"
    started, wall = time.monotonic(), 0.0
    if todo:  # otherwise nothing to place: Ray is not started
        def title() -> str:
            finished = sum(shown[s.id].status in ("evaluated", "failed", "skipped") for s in todo)
            return f"{name}: {finished}/{len(todo)} done · {time.monotonic() - started:.0f} s"

        executor = RayExecutor()  # scoring processes beside the driver when the sandboxes run on a cluster:
        scoring = ScoringPool(scoring_workers(len(todo), remote=executor.address is not None))
        with executor, scoring, Live(_campaign_table(shown.values(), title()), console=err, refresh_per_second=2,
                                     transient=True) as live:
            def update(item: CampaignItem) -> None:
                shown[item.submission] = item
                live.update(_campaign_table(shown.values(), title()))

            items = run_campaign(todo, executor=executor, tracker=tracker, ws=ws, retries=retries,
                                 isolated=not unsafe, scoring=scoring, on_update=update)
        shown |= {i.submission: i for i in items}
        wall = time.monotonic() - started
    if as_json:
        _emit_json({"wall_s": wall, "items": [vars(i) for i in shown.values()]})
    elif shown:
        out.print(_campaign_table(shown.values(), f"{name}: {_counts(shown.values())}"
                                  + (f" in {wall:.1f} s" if todo else "")))
    else:
        out.print(f"Nothing to evaluate: {pilot} has no submissions yet (`testbed submit`)")
    if any(i.status == "failed" for i in shown.values()):
        raise typer.Exit(1)
