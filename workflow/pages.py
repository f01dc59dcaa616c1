"""The stored scorecard of a submission as people read it after the evaluation: policy fit from the current
review, and an "In service" block once the version is in production and monitored. Rewritten in place
(each file atomically); the plots of the evaluation are reused as they are."""

from __future__ import annotations

import fcntl
import json
import warnings
from pathlib import Path

from evaluation.report import PLOT_FORMATS, render_html, write_atomic
from evaluation.scorecard import Scorecard
from evaluation.tracking import Tracker
from testbed.config import Workspace
from testbed.jsonio import strict_dumps
from workflow.catalogue import get_pilot
from workflow.review import ReviewBook, official_card, official_evaluation, reviewed_card
from workflow.submissions import SubmissionStore

__all__ = ["refresh_scorecard", "page", "IN_SERVICE", "in_service_block", "mark_in_service"]

IN_SERVICE = "in_service.json"
"""Written beside the scorecard by `testbed monitor`; shown as the page's "In service" block."""
_BLOCK = {"model": str, "version": str, "bundle_sha256": str, "observed_at": str, "window_s": int | float,
          "requests": int, "errors": int, "rows": list}
"""What the page's block reads of a `serving.monitor.summarize` summary."""


def _number(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def in_service_block(folder: Path) -> dict | None:
    """The "In service" summary kept in `folder` (None when there is none, or, with a warning, when it cannot be
    read or is not what `testbed monitor` writes: the page is then drawn without it)."""
    path = folder / IN_SERVICE
    if not path.is_file():
        return None
    try:
        block = json.loads(path.read_bytes())
        if not isinstance(block, dict) or any(not isinstance(block.get(k), t) for k, t in _BLOCK.items()) or any(
                not isinstance(r, dict) or not isinstance(r.get("measure"), str) or not isinstance(r.get("unit"), str)
                or not (_number(r.get("value")) and _number(r.get("target"))) for r in block["rows"]):
            raise ValueError("not the summary `testbed monitor` writes")
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        warnings.warn(f"{path} cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}): the page "
                      "is drawn without its In service block; `testbed monitor PILOT` writes it again", stacklevel=2)
        return None
    return block


def mark_in_service(ws: Workspace, tracker: Tracker, submission: str, until: str | None) -> None:
    """After a production move, the "In service" block of a version the move concerns: `until` (when the move
    took it out of production) for the one that left, None for the one put (back) in. The page is drawn again
    when that changes it; a submission never measured in service (no block) is left as it is."""
    block = in_service_block(SubmissionStore(ws).report_dir(submission))
    if block is not None and block.get("until") != until:
        refresh_scorecard(ws, tracker, submission, {**block, "until": until})


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
        else:
            in_service = in_service_block(folder)
        card = reviewed_card(card, ReviewBook(ws, tracker).latest(sub.id, run))
        write_atomic(folder / "scorecard.json", card.model_dump_json(indent=2).encode())
        return write_atomic(folder / "scorecard.html", page(card, folder, in_service).encode())


def page(card: Scorecard, folder: Path, in_service: dict | None = None) -> str:
    """The HTML page of `card`, with the evaluation's plots kept in `folder`."""
    spec = get_pilot(card.pilot)
    plots = {p.stem: p.read_bytes() for p in sorted((folder / "plots").glob("*")) if p.suffix[1:] in PLOT_FORMATS}
    return render_html(card, plots, f"{spec.title.en} — {spec.title.ko}", in_service=in_service)

