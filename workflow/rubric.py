"""What an evaluator gives with a decision: the policy-fit rubric (a score per policy goal, by number or text),
gate overrides, confirmed vendor claims, and their own name, checked before anything is recorded."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from evaluation.decisions import RUBRIC_MAX
from testbed.errors import SpecError
from testbed.text import blank, hidden
from testbed.yamlio import load_model, repeated, validation_error

__all__ = ["Claim", "Decision", "GoalScore", "Override", "RubricFile", "resolve_rubric", "parse_score_flags",
           "load_rubric_file", "person_name", "same_person"]

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

    @model_validator(mode="after")
    def _overrides_justified(self) -> RubricFile:
        """Checked as the evaluator gives them, not as the trail reads its entries back (`Override` itself)."""
        for o in self.overrides:
            if blank(o.justification):
                raise ValueError(f"the justification of the override of {o.gate} is blank: say why, in words")
        return self


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
        if blank(scored[goal].justification):  # checked as given, not as the trail reads entries back
            raise SpecError(f"the justification of goal {goal!r} is blank", where=f"{where} (score {i + 1})",
                            fix="say why, in words: it is kept in the audit trail")
    missing = [f"{i}. {g}" for i, g in enumerate(goals, 1) if g not in scored]
    if missing:
        raise SpecError(f"the rubric does not score every policy goal (missing: {'; '.join(missing)})", where=where,
                        fix=f"give a score 0–{RUBRIC_MAX} with a justification for each goal")
    return [scored[g] for g in goals]


def parse_score_flags(flags: list[str]) -> list[dict]:
    """`--score "1=3:justification"` -> `{goal: "1", score: 3, justification: ...}`."""
    items, example = [], 'e.g. --score "1=3:rebalances before the peaks"'
    for flag in flags:
        match = re.fullmatch(r"\s*([^=]+?)\s*=\s*([^:]*?)\s*(?::(.*))?", flag, re.S)
        if not match:
            raise SpecError(f"cannot read {flag!r}", where="--score",
                            fix=f"write GOAL=SCORE:JUSTIFICATION, SCORE a whole number 0–{RUBRIC_MAX}, {example}")
        goal, score, why = match[1], match[2], (match[3] or "").strip()
        if not re.fullmatch(r"[0-9]{1,4}", score) or int(score) > RUBRIC_MAX:
            raise SpecError(f"score {score!r} of goal {goal} is not a whole number from 0 to {RUBRIC_MAX}",
                            where="--score", fix=f"score each goal 0 (does not serve it) to {RUBRIC_MAX} (fully "
                                                 f"serves it), {example}")
        if blank(why):
            raise SpecError(f"the score of goal {goal} has no justification", where="--score",
                            fix=f"write GOAL=SCORE:JUSTIFICATION (SCORE 0–{RUBRIC_MAX}), {example}")
        items.append({"goal": goal, "score": int(score), "justification": why})
    return items


def load_rubric_file(path: Path) -> RubricFile:
    return load_model(path, RubricFile)


MAX_NAME = 100
"""Characters of a reviewer's or operator's name: every trail line, MLflow tag and registry tag mirroring a move
repeats it (a store with a tag limit refused a long one after the move's checks, as if the store had failed)."""


def person_name(name: str, where: str) -> str:
    """A person's name as a trail keeps it: not blank, and no control or formatting characters (a bidirectional
    override could make it display as someone else's, an escape sequence redraw a terminal's lines)."""
    name = name.strip()
    if not name:
        raise SpecError("the name is empty", where=where, fix=f'give {where} "NAME" (kept in the audit trail)')
    if hidden(name):
        raise SpecError(f"the name {repr(name)[:80]} holds control or formatting characters", where=where,
                        fix="give the name as plain text")
    if len(name) > MAX_NAME:
        raise SpecError(f"the name is {len(name)} characters long, more than {MAX_NAME}", where=where,
                        fix=f"give {where} the person's name (at most {MAX_NAME} characters); notes go in --note")
    return name


def same_person(a: str, b: str) -> bool:
    """Whether two names are written alike once case, compatibility forms (full-width letters, an ideographic
    space), spaces and punctuation are set aside: `Acme  AI` is `ACME AI` and `Acme A.I., Inc.` is `acme ai inc`.
    A best effort, not an identity check."""
    def key(name: str) -> str:
        return "".join(c for c in unicodedata.normalize("NFKC", name).casefold() if c.isalnum())

    return key(a) == key(b)

