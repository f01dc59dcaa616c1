"""`testbed evaluate` with several submissions (or `--all PILOT`): a campaign on Ray, shown live."""

from __future__ import annotations

import time

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from cli.console import emit_json as _emit_json
from cli.console import err, out
from cli.console import warn_unsafe as _warn_unsafe
from testbed.config import Workspace
from workflow.submissions import SubmissionStore

__all__ = ["run"]

_STATUS = {"queued": "dim", "running": "yellow", "scoring": "blue", "evaluated": "green", "skipped": "cyan",
           "failed": "red"}


def _campaign_table(items, title: str) -> Table:
    table = Table("submission", "status", "verdict", "total", "passed", "retries", "wall s", "run / error",
                  title=title)
    for i in items:
        table.add_row(i.submission, f"[{_STATUS[i.status]}]{i.status}[/]", i.verdict or "",
                      "" if i.total is None else f"{i.total:.1f}",
                      "" if i.passed is None else ("✓" if i.passed else "✗"),
                      str(len(i.retries)) if i.retries else "", f"{i.wall_s:.1f}" if i.wall_s else "",
                      escape(i.error or i.run_id or "")[:90])
    return table


def run(ids: list[str], pilot: str | None, as_json: bool, unsafe: bool, retries: int) -> None:
    """Evaluate `ids` (or every pending submission of `pilot`) in parallel; exit 1 when any failed."""
    from evaluation.tracking import MlflowTracker
    from sandbox.executor import RayExecutor
    from workflow.campaign import CampaignItem, pending_submissions, run_campaign
    from workflow.scoring import ScoringPool, scoring_workers

    ws = Workspace.from_env()
    tracker = MlflowTracker(ws)
    todo, done = pending_submissions(SubmissionStore(ws), tracker, pilot=pilot, ids=ids)
    if unsafe:
        _warn_unsafe()
    shown = {s.id: CampaignItem(s.id) for s in todo} | {s.id: CampaignItem(s.id, status="skipped",
                                                                         error="official evaluation exists")
                                                      for s in done}
    if not todo:  # nothing to place: Ray is not started
        if as_json:
            return _emit_json({"wall_s": 0.0, "items": [vars(i) for i in shown.values()]})
        if done:
            out.print(_campaign_table(shown.values(), f"Campaign{f' · {pilot}' if pilot else ''}: 0 evaluated, "
                                      f"{len(done)} already official (`testbed evaluate ID --reevaluate --reason "
                                      "...` evaluates one again)"))
        else:
            out.print(f"Nothing to evaluate: {pilot} has no submissions yet (`testbed submit`)")
        return
    started = time.monotonic()

    def title() -> str:
        finished = sum(i.status in ("evaluated", "failed") for i in shown.values())
        return (f"Campaign{f' · {pilot}' if pilot else ''}: {finished}/{len(todo)} done · "
                f"{time.monotonic() - started:.0f} s")

    executor = RayExecutor()  # scoring processes beside the driver when the sandboxes run on a cluster:
    scoring = ScoringPool(scoring_workers(len(todo), remote=executor.address is not None))
    with executor, scoring, Live(_campaign_table(shown.values(), title()), console=err, refresh_per_second=2,
                                 transient=True) as live:
        def update(item: CampaignItem) -> None:
            shown[item.submission] = item
            live.update(_campaign_table(shown.values(), title()))

        items = run_campaign(todo, executor=executor, tracker=tracker, ws=ws, retries=retries, isolated=not unsafe,
                             scoring=scoring, on_update=update)
    wall = time.monotonic() - started
    if as_json:
        return _emit_json({"wall_s": wall, "items": [vars(i) for i in shown.values()]})
    out.print(_campaign_table(shown.values(), f"Campaign{f' · {pilot}' if pilot else ''}: {len(items)} evaluated "
                              f"in {wall:.1f} s, {len(done)} already official"))
    if any(i.status == "failed" for i in items):
        raise typer.Exit(1)
