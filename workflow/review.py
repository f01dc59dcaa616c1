"""City evaluators' reviews: a decision on one exact evaluation, with the policy-fit rubric, kept in an
append-only hash-chained trail per submission (`TESTBED_HOME/reviews/<submission>.jsonl`, see `workflow.ledger`)
and mirrored as tags on the MLflow run it judged. A later review supersedes an earlier one and never erases it;
a review applies only to the evaluation (run id, bundle sha256) it names, so a re-evaluation needs a new one.
"""

from __future__ import annotations

import re
import tempfile
import unicodedata
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from evaluation.decisions import OVERRIDABLE_GATES, RUBRIC_MAX, apply_review, rubric_percent, score_policy_fit
from evaluation.leaderboard import leaderboard_rows
from evaluation.scorecard import Scorecard
from evaluation.tracking import RunRecord, Tracker, disagreements
from pilots.spec import PilotSpec
from testbed.config import Workspace
from testbed.errors import AuditError, Refused, SpecError
from testbed.yamlio import load_model, repeated, validation_error
from workflow.catalogue import get_pilot
from workflow.ledger import Anchor, AuditChain
from workflow.submissions import Submission, SubmissionStore

__all__ = ["Review", "GoalScore", "Override", "RubricFile", "ReviewBook", "Claim", "parse_score_flags",
           "load_rubric_file", "resolve_rubric", "person_name", "official_evaluation", "review_status", "reviewed_rows",
           "reviewed_card", "official_card"]

Claim = Literal["seoul_based", "startup", "technology_field"]
Decision = Literal["approve", "reject"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class GoalScore(_Model):
    goal: str
    """One of the pilot's Seoul policy goals, exactly as the spec words it."""
    score: StrictInt = Field(ge=0, le=RUBRIC_MAX)
    """0 (does not serve the goal) to 4 (fully serves it): a whole number (YAML's `yes` is not one)."""
    justification: str = Field(min_length=1, max_length=2000)
    """Why this score: what in the evidence (scorecard, equity across groups, vendor material) supports it."""


class Override(_Model):
    gate: str = Field(min_length=1)
    """Name of a gate the evaluator explicitly overrides: only `suspected_lookup` (the integrity check on
    public truth) takes an override; every other gate is final."""
    justification: str = Field(min_length=1, max_length=2000)
    """Why the evaluator judges the gate's finding not to disqualify the submission."""


class RubricFile(_Model):
    """`--rubric FILE`: the policy-fit rubric as YAML (goals by number, as `testbed review show` lists them, or
    by their exact text)."""

    scores: list[dict] = Field(min_length=1)
    """One item per policy goal: `{goal: 1, score: 3, justification: "..."}`."""
    overrides: list[Override] = Field(default_factory=list)
    """Gates the evaluator explicitly overrides, each with a justification (each gate once)."""
    confirmed_claims: list[Claim] = Field(default_factory=list)
    """Vendor-profile claims the evaluator verified: seoul_based, startup, technology_field (each once)."""

    @model_validator(mode="after")
    def _once_each(self) -> RubricFile:
        for field, names in (("overrides", [o.gate for o in self.overrides]),
                             ("confirmed_claims", list(self.confirmed_claims))):
            twice = repeated(names)
            if twice:
                raise ValueError(f"`{field}` names {', '.join(twice)} more than once: give each once")
        return self


class Review(_Model):
    """One evaluator decision, as stored in the audit trail (the chain fields are set when it is written)."""

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


def _goal(goals: list[str], ref: object, where: str) -> str:
    if (isinstance(ref, int) and not isinstance(ref, bool)) or (isinstance(ref, str) and ref.isascii()
                                                               and ref.isdigit()):
        if 1 <= int(ref) <= len(goals):
            return goals[int(ref) - 1]
    elif ref in goals:
        return ref
    listing = "; ".join(f"{i}. {g}" for i, g in enumerate(goals, 1))
    raise SpecError(f"unknown policy goal {ref!r}", where=where, fix=f"name a goal by number or exact text: {listing}")


def resolve_rubric(goals: list[str], items: list[dict], where: str) -> list[GoalScore]:
    """Scores given by goal number or text -> one GoalScore per policy goal (`goals`: the pilot's, as the
    evaluation judged recorded them), in their order."""
    scored: dict[str, GoalScore] = {}
    for i, item in enumerate(items):
        goal = _goal(goals, item.get("goal"), f"{where} (score {i + 1})")
        if goal in scored:
            raise SpecError(f"policy goal {goal!r} is scored twice", where=where, fix="score each goal once")
        try:
            scored[goal] = GoalScore.model_validate({**item, "goal": goal})
        except ValidationError as exc:
            raise validation_error(f"{where} (score {i + 1})", GoalScore, exc) from None
    missing = [f"{i}. {g}" for i, g in enumerate(goals, 1) if g not in scored]
    if missing:
        raise SpecError(f"the rubric does not score every policy goal (missing: {'; '.join(missing)})", where=where,
                        fix=f"give a score 0–{RUBRIC_MAX} with a justification for each goal")
    return [scored[g] for g in goals]


def parse_score_flags(flags: list[str]) -> list[dict]:
    """`--score "1=3:justification"` -> `{goal: "1", score: 3, justification: ...}`."""
    items = []
    for flag in flags:
        match = re.fullmatch(r"\s*([^=]+?)\s*=\s*(\d+)\s*:\s*(.+)", flag, re.S)
        if not match:
            raise SpecError(f"cannot read {flag!r}", where="--score",
                            fix='write GOAL=SCORE:JUSTIFICATION, e.g. --score "1=3:rebalances before the peaks"')
        items.append({"goal": match[1], "score": int(match[2]), "justification": match[3].strip()})
    return items


def load_rubric_file(path: Path) -> RubricFile:
    return load_model(path, RubricFile)


def official_evaluation(tracker: Tracker, sub: Submission) -> RunRecord | None:
    """The official evaluation of `sub` (what a review judges; re-evaluations never replace it)."""
    return tracker.official_run(sub.pilot, sub.id)


class ReviewBook:
    """Every review, one audit trail per submission."""

    def __init__(self, ws: Workspace, tracker: Tracker | None = None):
        self.ws, self.root, self.tracker = ws, ws.home / "reviews", tracker
        """`tracker`: where the runs' tags (the trails' mirror) are read when a trail is checked."""

    def chain(self, submission: str, run: RunRecord | None = None, tracker: Tracker | None = None) -> AuditChain:
        """The submission's trail, anchored to the review mirrored in the tags of the run its last review judged
        (`run`'s when there is none yet), read from the tracker (`tracker`, else the book's) once the trail is
        locked; without a tracker, `run`'s tags as they were read, when it is that run. Without `run`, nothing
        anchors it."""
        tracker = tracker or self.tracker
        if run is None:
            return AuditChain(self.root / f"{submission}.jsonl", validate=Review.model_validate)

        def anchor(entries: list[dict]) -> Anchor | None:
            judged = entries[-1]["run_id"] if entries else run.run_id
            tags = tracker.tags(judged) if tracker is not None else run.tags if judged == run.run_id else None
            if tags is None:
                return None
            seq, digest = tags.get("testbed.review.seq"), tags.get("testbed.review.hash")
            mirror = f"MLflow run {judged}'s testbed.review tags"
            if seq is None and digest is None:
                return Anchor(0, "", mirror)
            if not (isinstance(seq, str) and seq.isascii() and seq.isdigit() and int(seq) > 0 and digest):
                raise AuditError(f"{mirror} are malformed (testbed.review.seq {str(seq)[:20]!r})",
                                 where=f"MLflow run {judged}", fix="restore the run's tags from a backup")
            return Anchor(int(seq), digest, mirror)

        return AuditChain(self.root / f"{submission}.jsonl", anchor, Review.model_validate)

    def history(self, submission: str, run: RunRecord | None = None) -> list[Review]:
        """Every review of `submission`, oldest first (the chain verified: AuditError if it was edited or holds
        an entry that is not a review, or, given the official `run`, if the review its tags mirror is missing;
        reviews after that one are left out)."""
        return [Review.model_validate(e) for e in self.chain(submission, run).entries()]

    def latest(self, submission: str, run: RunRecord | None = None) -> Review | None:
        history = self.history(submission, run)
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
        sha = run.params.get("bundle_sha256", sub.bundle_sha256)
        if not (sha == sub.bundle_sha256 == card.bundle_sha256 and card.submission == sub.id):
            raise AuditError(f"the official evaluation found for {sub.id} (MLflow run {run.run_id}) is of "
                             f"{card.submission}, bundle {card.bundle_sha256[:16]}…, not of this submission's bundle "
                             f"{sub.bundle_sha256[:16]}…: the run's tags were altered",
                             where=f"MLflow run {run.run_id}",
                             fix="restore the run's tags from a backup; `testbed audit` shows what differs")
        by, note = person_name(by, "--by"), note.strip()
        if not note:
            raise SpecError("a review needs a note", where="--note", fix='give --note "why" (kept in the audit trail)')
        if by.casefold() == sub.vendor.name.strip().casefold():
            raise Refused(f"{by} is the vendor of {sub.id}: a vendor cannot review its own submission",
                          where="--by", fix="an evaluator of the city reviews it, under their own name")
        review = Review(submission=sub.id, pilot=sub.pilot, run_id=run.run_id, bundle_sha256=sha,
                        decision=decision, by=by, note=note, rubric=goals,
                        policy_fit=round(rubric_percent(g.score for g in goals), 2),
                        overrides=list(overrides), confirmed_claims=list(confirmed_claims),
                        at=datetime.now(UTC).isoformat(timespec="seconds"))

        def mirror(entry: dict) -> None:  # on the run judged, before the trail holds it: both or neither
            tracker.tag(run.run_id, {"testbed.review": decision, "testbed.review.by": by, "testbed.review.at":
                                     entry["at"], "testbed.review.seq": str(entry["seq"]),
                                     "testbed.review.hash": entry["hash"],
                                     "testbed.review.policy_fit": f"{entry['policy_fit']:g}"})

        with self.chain(sub.id, run, tracker).locked() as txn:
            entry = txn.append(review.model_dump(mode="json", exclude={"seq", "prev", "hash"}), mirror=mirror)
        return Review.model_validate(entry)


def person_name(name: str, where: str) -> str:
    """A person's name as a trail keeps it: not blank, and no control or formatting characters (a bidirectional
    override could make it display as someone else's, an escape sequence redraw a terminal's lines)."""
    name = name.strip()
    if not name:
        raise SpecError("the name is empty", where=where, fix=f'give {where} "NAME" (kept in the audit trail)')
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        raise SpecError(f"the name {name.encode('unicode_escape').decode()[:80]!r} holds control or formatting "
                        "characters", where=where, fix="give the name as plain text")
    return name


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


def official_card(tracker: Tracker, run: RunRecord) -> Scorecard:
    """The scorecard of evaluation `run` as logged with it (the record: the copy beside the submission is for
    people), checked against the metrics logged with the run: AuditError when either was altered."""
    where = f"MLflow run {run.run_id} ({run.tags.get('testbed.submission')})"
    with tempfile.TemporaryDirectory(prefix="testbed-card-") as tmp:
        try:
            card = Scorecard.model_validate_json(tracker.download(run.run_id, "scorecard.json", Path(tmp)).read_text())
        except (OSError, KeyError, ValueError) as exc:
            raise AuditError(f"the run's scorecard.json cannot be read ({type(exc).__name__})", where=where,
                             fix="restore the run's artifacts from a backup") from None
    differ = disagreements(card, run.metrics)
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
            row |= {"review": "ALTERED record", "passed": False, "policy_fit": None, "provisional": True}
            continue
        row["review"] = status
        row |= {c: card.criteria[c].score for c in ("deep_learning_fit", "viability", "policy_fit",
                                                    "local_strength_fit")}
        row |= {"total_score": card.total_score, "provisional": card.total_is_provisional, "passed": card.passed}
    rows.sort(key=lambda r: (not r["passed"], r["review"] == "reject", -(r["total_score"] or 0)))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows
