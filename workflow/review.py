"""City evaluators' reviews: a decision on one exact evaluation, with the policy-fit rubric, kept in an
append-only hash-chained trail per submission (`TESTBED_HOME/reviews/<submission>.jsonl`, see `workflow.ledger`)
and mirrored as tags on the MLflow run it judged. A later review supersedes an earlier one and never erases it;
a review applies only to the evaluation (run id, bundle sha256) it names, so a re-evaluation needs a new one.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from evaluation.decisions import OVERRIDABLE_GATES, apply_review, rubric_percent, score_policy_fit
from evaluation.leaderboard import ALTERED, leaderboard_rows, rank_rows
from evaluation.scorecard import Scorecard
from evaluation.tracking import RunRecord, Tracker, disagreements
from pilots.spec import PilotSpec
from testbed.config import Workspace
from testbed.errors import AuditError, Refused, SpecError
from testbed.text import blank
from workflow.catalogue import get_pilot
from workflow.ledger import Anchor, AuditChain
from workflow.rubric import (
    Claim,
    Decision,
    GoalScore,
    Override,
    RubricFile,
    load_rubric_file,
    parse_score_flags,
    person_name,
    resolve_rubric,
    same_person,
)
from workflow.submissions import Submission, SubmissionStore

__all__ = ["Review", "GoalScore", "Override", "RubricFile", "ReviewBook", "Claim", "parse_score_flags",
           "load_rubric_file", "resolve_rubric", "person_name", "official_evaluation", "review_status", "reviewed_rows",
           "reviewed_card", "official_card", "record_mismatch", "unmet_by"]


class Review(BaseModel):
    """One evaluator decision, as stored in the audit trail (the chain fields are set when it is written)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    submission: str
    """The submission reviewed."""
    pilot: str
    """Its pilot."""
    run_id: str
    """The MLflow run of the exact evaluation judged."""
    bundle_sha256: str
    """sha256 of the bundle that evaluation ran; promotion serves only these bytes."""
    decision: Decision
    """approve or reject."""
    by: str = Field(min_length=1)
    """Who decided (the evaluator's name)."""
    note: str = Field(min_length=1)
    """Why, in the evaluator's words."""
    rubric: list[GoalScore]
    """Every policy goal of the pilot scored 0–4 with a justification."""
    policy_fit: float
    """The rubric as the scorecard's policy-fit criterion: 100 × mean score / 4."""
    overrides: list[Override] = Field(default_factory=list)
    """Gates the evaluator explicitly overrides (name + justification); recorded, not yet used by promotion."""
    confirmed_claims: list[Claim] = Field(default_factory=list)
    """Vendor-profile claims the evaluator verified (seoul_based, startup, technology_field); recorded."""
    at: str
    """When (UTC, ISO 8601)."""
    seq: int | None = None
    """Position in the submission's trail (1 = first review)."""
    prev: str | None = None
    """Hash of the previous entry (64 zeros for the first)."""
    hash: str | None = None
    """sha256 of this entry (see `workflow.ledger`)."""
    replaces: dict[str, Any] | None = None
    """The entry this one took the place of: one the run's tags recorded (`recorded`: its decision, who, when) but
    the trail never held, its recording cut short or the line removed (`workflow.ledger.REPLACES`)."""


def official_evaluation(tracker: Tracker, sub: Submission) -> RunRecord | None:
    """The official evaluation of `sub` (what a review judges; re-evaluations never replace it)."""
    return tracker.official_run(sub.pilot, sub.id)


class ReviewBook:
    """Every review, one audit trail per submission."""

    def __init__(self, ws: Workspace, tracker: Tracker | None = None):
        self.ws, self.root, self.tracker = ws, ws.home / "reviews", tracker
        """`tracker`: where the runs' tags (the trails' mirror) are read when a trail is checked."""

    def chain(self, submission: str, run: RunRecord | None = None, tracker: Tracker | None = None) -> AuditChain:
        """The submission's trail, anchored to the review its official evaluation `run` mirrors in its tags (every
        review judges that run), read from the tracker (`tracker`, else the book's) once the trail is locked, or
        as `run` holds them without one. Never chosen by the file: an entry naming another run is just an
        entry. Without `run`, nothing anchors it."""
        tracker = tracker or self.tracker
        if run is None:
            return AuditChain(self.root / f"{submission}.jsonl", validate=Review.model_validate)

        def anchor(entries: list[dict]) -> Anchor:
            tags = tracker.tags(run.run_id) if tracker is not None else run.tags
            seq, digest = tags.get("testbed.review.seq"), tags.get("testbed.review.hash")
            mirror = f"MLflow run {run.run_id}'s testbed.review tags"
            if not seq and not digest:  # none yet, or taken back after a write that failed
                return Anchor(0, "", mirror)
            if not (isinstance(seq, str) and seq.isascii() and seq.isdigit() and int(seq) > 0 and digest):
                raise AuditError(f"{mirror} are malformed (testbed.review.seq {str(seq)[:20]!r})",
                                 where=f"MLflow run {run.run_id}", fix="restore the run's tags from a backup")
            said = f"{tags.get('testbed.review', '?')} by {tags.get('testbed.review.by', '?')} at " \
                   f"{tags.get('testbed.review.at', '?')}"
            return Anchor(int(seq), digest, mirror, said)

        return AuditChain(self.root / f"{submission}.jsonl", anchor, Review.model_validate)

    def history(self, submission: str, run: RunRecord | None = None, *, strict: bool = False) -> list[Review]:
        """Every review of `submission`, oldest first (the chain verified: AuditError if it was edited or holds
        an entry that is not a review, or, given the official `run`, if the review its tags mirror is missing;
        reviews after that one are left out with a warning, or, `strict`, are an AuditError)."""
        return [Review.model_validate(e) for e in self.chain(submission, run).entries(strict=strict)]

    def latest(self, submission: str, run: RunRecord | None = None, *, strict: bool = False) -> Review | None:
        history = self.history(submission, run, strict=strict)
        return history[-1] if history else None

    def record(self, tracker: Tracker, submission: str, decision: Decision, *, by: str, note: str,
               rubric: list[dict], where: str = "--score", overrides: list[Override] = (),
               confirmed_claims: list[Claim] = (), run_id: str | None = None) -> Review:
        """Judge the official evaluation of `submission` (or refuse: not evaluated, unknown run)."""
        store = SubmissionStore(self.ws)
        sub = store.get(submission)
        spec = get_pilot(sub.pilot)
        run = official_evaluation(tracker, sub)
        if run is None:
            raise Refused(f"submission {sub.id} has no official evaluation to review",
                          fix=f"run `testbed evaluate {sub.id}` first")
        if run_id and run_id != run.run_id:
            raise Refused(f"run {run_id!r} is not the official evaluation of {sub.id} (that is run "
                          f"{run.run_id})", fix="review the official evaluation: leave out --run, or give that run id")
        card = official_card(tracker, run)  # the record judged, checked before anything is written
        goals = resolve_rubric(card.criteria["policy_fit"].evidence.get("policy_goals") or spec.policy_goals,
                               rubric, where)  # the goals of the evaluation judged, whatever the catalogue says now
        refused = sorted({o.gate for o in overrides} - OVERRIDABLE_GATES)
        if refused:
            allowed = ", ".join(sorted(OVERRIDABLE_GATES))
            raise SpecError(f"gate(s) {', '.join(refused)} cannot be overridden", where=where,
                            fix=f"only these gates take an evaluator's override: {allowed}")
        moot = sorted({o.gate for o in overrides} & {g.name for g in card.gates if g.passed})
        if moot:
            raise SpecError(f"gate(s) {', '.join(moot)} passed in this evaluation: there is nothing to override",
                            where=where, fix="leave those out of `overrides`")
        unmade = sorted(set(confirmed_claims) - set(card.confirmable_claims()))
        if unmade:
            raise SpecError(f"claim(s) {', '.join(unmade)} were not made by the vendor, or do not count for this "
                            "pilot: there is nothing to confirm", where="--confirm (or a rubric file's "
                            "confirmed_claims)", fix=f"confirm only claims the scorecard shows as declared (`testbed "
                                                     f"review show {sub.id}`)")
        mismatch = record_mismatch(card, run, sub)
        if mismatch:
            raise AuditError(mismatch, where=f"MLflow run {run.run_id}",
                             fix="restore the run's tags from a backup; `testbed audit` shows what differs")
        by, note = person_name(by, "--by"), note.strip()
        if blank(note):
            raise SpecError("a review needs a note", where="--note", fix='give --note "why" (kept in the audit trail)')
        if same_person(by, sub.vendor.name):
            raise Refused(f"{by} is the vendor of {sub.id}: a vendor cannot review its own submission",
                          where="--by", fix="an evaluator of the city reviews it, under their own name")
        review = Review(submission=sub.id, pilot=sub.pilot, run_id=run.run_id, bundle_sha256=sub.bundle_sha256,
                        decision=decision, by=by, note=note, rubric=goals,
                        policy_fit=round(rubric_percent(g.score for g in goals), 2),
                        overrides=list(overrides), confirmed_claims=list(confirmed_claims),
                        at=datetime.now(UTC).isoformat(timespec="seconds"))

        keys = ("testbed.review", "testbed.review.by", "testbed.review.at", "testbed.review.seq",
                "testbed.review.hash", "testbed.review.policy_fit")
        before: dict[str, str] = {}

        def mirror(entry: dict) -> None:  # on the run judged, before the trail holds it: both or neither
            current = tracker.tags(run.run_id)
            before.update({k: current.get(k, "") for k in keys})  # kept first: a Ctrl-C as the tags' write returns
            tracker.tag(run.run_id, dict(zip(keys, (decision, by, entry["at"], str(entry["seq"]), entry["hash"],
                                                    f"{entry['policy_fit']:g}"), strict=True)))  # still puts them back

        with self.chain(sub.id, run, tracker).locked() as txn:
            try:
                entry = txn.append(review.model_dump(mode="json", exclude={"seq", "prev", "hash"}), mirror=mirror)
            except BaseException:
                if before:  # mirrored, not written: the tags go back to what they were
                    with contextlib.suppress(Exception):  # the store refused the tags themselves: the first error
                        tracker.tag(run.run_id, before)
                raise
        return Review.model_validate(entry)


def unmet_by(tracker: Tracker, ws: Workspace, review: Review) -> tuple[list[str], list[str]]:
    """For an approval just recorded: the hard gates its evaluation still fails with it applied (promotion refuses
    the submission then, and a running server stops serving it), and the overrides the review before it gave
    that it does not give again (still failing). Nothing for a rejection."""
    if review.decision != "approve":
        return [], []
    run = official_evaluation(tracker, SubmissionStore(ws).get(review.submission))
    if run is None or run.run_id != review.run_id:
        return [], []
    card = reviewed_card(official_card(tracker, run), review)
    failing = [g.name for g in card.gates if not g.passed]
    earlier = [r for r in ReviewBook(ws, tracker).history(review.submission, run) if (r.seq or 0) < (review.seq or 0)]
    given = {o.gate for o in earlier[-1].overrides} if earlier else set()
    return failing, sorted((given - {o.gate for o in review.overrides}) & set(failing))


def review_status(book: ReviewBook, submission: str, run: RunRecord) -> tuple[str, Review | None]:
    """`approve`/`reject` (the latest review judged this run), `stale` (it judged an earlier evaluation) or
    `awaiting` (no review yet), with the review that applies (None unless current)."""
    latest = book.latest(submission, run)
    if latest is None:
        return "awaiting", None
    if latest.run_id != run.run_id:
        return "stale", None
    return latest.decision, latest


def reviewed_card(card: Scorecard, review: Review | None) -> Scorecard:
    """`card` with the review applied when `review` judged this very evaluation (policy fit from its rubric, the
    gates it overrides, the vendor claims it confirmed); unchanged otherwise."""
    if review is None or review.run_id != card.mlflow_run_id:
        return card
    card = score_policy_fit(card, {g.goal: g.score for g in review.rubric}, evidence={
        "decision": review.decision, "reviewed_by": review.by, "reviewed_at": review.at, "note": review.note,
        "justifications": {g.goal: g.justification for g in review.rubric}, "review_hash": review.hash})
    return apply_review(card, overrides={o.gate: o.justification for o in review.overrides},
                        confirmed_claims=review.confirmed_claims)


def record_mismatch(card: Scorecard, run: RunRecord, sub: Submission) -> str | None:
    """Why the official evaluation found for `sub` (by the run's tags) is not of `sub`'s bundle, or None: its
    logged scorecard and its `bundle_sha256` param must name `sub` and the bytes it submitted."""
    if run.params.get("bundle_sha256", sub.bundle_sha256) == sub.bundle_sha256 == card.bundle_sha256 \
            and card.submission == sub.id:
        return None
    return (f"the official evaluation found for {sub.id} (MLflow run {run.run_id}) is of {card.submission}, bundle "
            f"{card.bundle_sha256[:16]}…, not of this submission's bundle {sub.bundle_sha256[:16]}…: the run's "
            "tags were altered")


def official_card(tracker: Tracker, run: RunRecord) -> Scorecard:
    """The scorecard of evaluation `run` as logged with it (the record: the copy beside the submission is for
    people), checked against the metrics logged with the run, whose decisive ones (passed, total, criteria) were
    each logged once: AuditError when either was altered."""
    where = f"MLflow run {run.run_id} ({run.tags.get('testbed.submission')})"
    with tempfile.TemporaryDirectory(prefix="testbed-card-") as tmp:
        try:
            card = Scorecard.model_validate_json(tracker.download(run.run_id, "scorecard.json", Path(tmp)).read_text())
        except (OSError, KeyError, ValueError) as exc:
            raise AuditError(f"the run's scorecard.json cannot be read ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())[:120]})", where=where,
                             fix="restore the run's artifacts from a backup") from None
    decisive = [k for k in run.metrics if k in ("passed", "total_score") or k.startswith("criteria/")]
    relogged = sorted(k for k, values in tracker.metric_history(run.run_id, decisive).items() if len(values) > 1)
    differ = [f"{k} logged again after the run" for k in relogged] + disagreements(card, run.metrics)
    if differ or card.mlflow_run_id != run.run_id:
        raise AuditError(f"the scorecard logged with the run disagrees with the run's metrics "
                         f"({'; '.join(differ[:3]) or 'another run id'}): the record was altered", where=where,
                         fix="restore the run's artifacts and metrics from a backup; `testbed audit "
                             f"{run.tags.get('testbed.submission')}` recomputes what it can")
    return card


def reviewed_rows(spec: PilotSpec, tracker: Tracker, ws: Workspace) -> list[dict]:
    """The leaderboard with the evaluators' decisions: each official scorecard with its current review applied
    (policy fit, overrides, confirmed claims), totals and gates recomputed, ranked again."""
    book = ReviewBook(ws, tracker)
    runs = {r.run_id: r for r in tracker.official_runs(spec.id)}
    rows = leaderboard_rows(spec, tracker, list(runs.values()))
    for row in rows:
        run = runs[row["run_id"]]
        try:
            status, review = review_status(book, row["submission"], run)
            card = reviewed_card(official_card(tracker, run), review)
        except AuditError as exc:  # ranked last, with the reason: one altered record never hides the others
            warnings.warn(str(exc), stacklevel=2)
            row |= {"review": ALTERED, "altered": True, "passed": False, "policy_fit": None, "provisional": True,
                    "total_score": None}  # its logged total may be the altered number
            continue
        row["review"] = status
        row |= {c: card.criteria[c].score for c in ("deep_learning_fit", "viability", "policy_fit",
                                                    "local_strength_fit")}
        row |= {"total_score": card.total_score, "provisional": card.total_is_provisional, "passed": card.passed}
    return rank_rows(spec, rows, then=lambda r: (r["review"] == "reject",))
