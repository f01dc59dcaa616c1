"""The stored scorecard of a submission as people read it after the evaluation: policy fit from the current
review, and an "In service" block once the version is in production and monitored. Rewritten in place
(each file atomically); the plots of the evaluation are reused as they are."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

from evaluation.report import PLOT_FORMATS, render_html, write_atomic
from evaluation.scorecard import Scorecard
from evaluation.tracking import Tracker
from testbed.config import Workspace
from testbed.jsonio import strict_dumps
from workflow.catalogue import get_pilot
from workflow.review import ReviewBook, official_card, official_evaluation, reviewed_card
from workflow.submissions import SubmissionStore

__all__ = ["refresh_scorecard", "page", "IN_SERVICE"]

IN_SERVICE = "in_service.json"
"""Written beside the scorecard by `testbed monitor`; shown as the page's "In service" block."""


def refresh_scorecard(ws: Workspace, tracker: Tracker, submission: str, in_service: dict | None = None
                      ) -> Path | None:
    """Rewrite the submission's scorecard.json/html from its official evaluation as logged (`official_card`)
    with its current review (and `in_service`, kept for later refreshes); returns the HTML path, or None when it
    has no official evaluation."""
    store = SubmissionStore(ws)
    sub = store.get(submission)
    folder, run = store.report_dir(sub.id), official_evaluation(tracker, sub)
    if run is None:
        return None
    card = official_card(tracker, run)
    folder.mkdir(parents=True, exist_ok=True)  # a copy removed by hand is written again
    with open(folder / ".refresh.lock", "w") as lock:  # refreshes one at a time, each from the review read now:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two reviews at once end with the later one's page, never the earlier
        if in_service is not None:
            write_atomic(folder / IN_SERVICE, strict_dumps(in_service, indent=2).encode())
        elif (folder / IN_SERVICE).is_file():
            in_service = json.loads((folder / IN_SERVICE).read_text())
        card = reviewed_card(card, ReviewBook(ws, tracker).latest(sub.id, run))
        write_atomic(folder / "scorecard.json", card.model_dump_json(indent=2).encode())
        return write_atomic(folder / "scorecard.html", page(card, folder, in_service).encode())


def page(card: Scorecard, folder: Path, in_service: dict | None = None) -> str:
    """The HTML page of `card`, with the evaluation's plots kept in `folder`."""
    spec = get_pilot(card.pilot)
    plots = {p.stem: p.read_bytes() for p in sorted((folder / "plots").glob("*")) if p.suffix[1:] in PLOT_FORMATS}
    return render_html(card, plots, f"{spec.title.en} — {spec.title.ko}", in_service=in_service)

