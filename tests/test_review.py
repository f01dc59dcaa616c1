"""Reviews, the audit chain, the policy-fit rubric, batching and the metrics summary, on the test doubles."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import threading
import time
import warnings

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from evaluation.decisions import apply_review, score_policy_fit
from evaluation.leaderboard import leaderboard_table
from evaluation.tracking_memory import MemoryTracker
from serving.batching import Batcher, parse_request
from serving.metrics import ServingMetrics
from serving.monitor import Scrape, quantile, summarize
from testbed.config import PROJECT_ROOT
from testbed.errors import AuditError, NotFound, Refused, SpecError, TestbedError
from tests.conftest import FORECAST_ROUTE, empty_store
from tests.doubles import FakeSandbox
from tests.test_scorecard import last_day
from workflow.catalogue import get_pilot
from workflow.evaluate import evaluate_bundle
from workflow.ledger import AuditChain
from workflow.review import (
    Review,
    ReviewBook,
    parse_score_flags,
    resolve_rubric,
    reviewed_card,
    reviewed_rows,
)
from workflow.submissions import SubmissionStore

GOOD = [{"goal": i, "score": 4 - i, "justification": "because"} for i in (1, 2, 3)]


# -- the audit chain ---------------------------------------------------------------------------------------------

def write_three(path):
    chain = AuditChain(path)
    for i in range(3):
        with chain.locked() as txn:
            txn.append({"note": f"entry {i}"})
    return chain


def test_the_chain_links_every_entry_to_the_previous_one(tmp_path):
    chain = write_three(tmp_path / "t.jsonl")
    entries = chain.entries()
    assert [e["seq"] for e in entries] == [1, 2, 3] and entries[0]["prev"] == "0" * 64
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:], strict=False))


@pytest.mark.parametrize("tamper, words", [
    (lambda lines: [lines[0], lines[1].replace("entry 1", "entry X"), lines[2]], "entry 2 was edited"),
    (lambda lines: [lines[0], lines[2]], "entry 2 does not follow entry 1"),
    (lambda lines: [lines[1], lines[0], lines[2]], "does not follow"),
    # a key given twice: JSON readers keep the last, so the hash still matched while the line read otherwise
    (lambda lines: [lines[0], lines[1].replace('{', '{"note": "entry X", ', 1), lines[2]], "gives `note` twice"),
])
def test_an_edited_removed_or_reordered_entry_is_detected(tmp_path, tamper, words):
    chain = write_three(tmp_path / "t.jsonl")
    lines = chain.path.read_text().splitlines()
    chain.path.write_text("\n".join(tamper(lines)) + "\n")
    with pytest.raises(AuditError, match=words):
        chain.entries()
    with pytest.raises(AuditError), chain.locked():
        pass  # nothing can be appended to a broken chain either


def test_an_edit_that_recomputes_its_own_hash_still_breaks_the_next_link(tmp_path):
    from workflow.ledger import entry_hash

    chain = write_three(tmp_path / "t.jsonl")
    lines = [json.loads(x) for x in chain.path.read_text().splitlines()]
    lines[0]["note"] = "rewritten"
    lines[0]["hash"] = entry_hash(lines[0])
    chain.path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(AuditError, match="entry 2 does not follow entry 1"):
        chain.entries()


def test_a_torn_last_line_is_reported_not_skipped(tmp_path):
    chain = write_three(tmp_path / "t.jsonl")
    chain.path.write_bytes(chain.path.read_bytes()[:-10])
    with pytest.raises(AuditError, match="incomplete"):
        chain.entries()


def test_concurrent_writers_are_serialised(tmp_path):
    chain = AuditChain(tmp_path / "t.jsonl")

    def writer(n):
        for i in range(15):
            with AuditChain(chain.path).locked() as txn:
                txn.append({"writer": n, "i": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e["seq"] for e in chain.entries()] == list(range(1, 91))


def test_a_trail_cut_short_or_replaced_is_detected_against_its_anchor(tmp_path):
    """Cutting the last entries, or writing a whole new chain, keeps every link intact: the anchor (the last entry
    as a mirror recorded it) catches both, and a deleted file too."""
    from workflow.ledger import Anchor

    entries = write_three(tmp_path / "t.jsonl").entries()
    anchor = Anchor(3, entries[-1]["hash"], "the mirror")
    anchored = AuditChain(tmp_path / "t.jsonl", lambda entries: anchor)
    assert anchored.entries() == entries
    lines = anchored.path.read_text().splitlines(keepends=True)
    anchored.path.write_text("".join(lines[:1]))
    with pytest.raises(AuditError, match="entry 3 .* which the mirror recorded, is not in the trail"):
        anchored.entries()
    with pytest.raises(AuditError), anchored.locked():
        pass  # nor appended to: new entries 2 and 3 would hide the cut
    anchored.path.write_text("".join(lines[:2]))  # the mirror one entry ahead: a write cut short, or a cut
    with pytest.raises(AuditError, match="entry 3, which the mirror recorded, was never written"):
        anchored.entries()
    with pytest.warns(UserWarning, match="entry 3, which the mirror recorded, was never written .*takes its place"), \
            anchored.locked() as txn:
        assert [e["seq"] for e in txn.entries] == [1, 2]  # the writer goes on (nothing appended here)
    anchored.path.write_text("".join(lines[:2]))
    anchored.path.unlink()
    for i in range(3):  # a fresh chain of other entries, every link valid
        with AuditChain(anchored.path).locked() as txn:
            txn.append({"note": f"forged {i}"})
    with pytest.raises(AuditError, match="is not in the trail"):
        anchored.entries()
    anchored.path.unlink()  # deleted, or read from another TESTBED_HOME than the decisions were recorded under
    with pytest.raises(AuditError, match="there is no trail here, yet the mirror recorded 3 entries") as info:
        anchored.entries()
    assert "set TESTBED_HOME to the folder the submissions were made in" in info.value.fix


def test_a_file_where_the_trails_folder_should_be_is_named_with_the_fix(tmp_path):
    """`TESTBED_HOME/reviews` a file: the fix said to `chmod` the trail, which mends nothing."""
    (tmp_path / "reviews").write_text("not a folder")
    chain = AuditChain(tmp_path / "reviews" / "sub.jsonl")
    for attempt in (chain.entries, lambda: chain.locked().__enter__()):
        with pytest.raises(AuditError, match="reviews is a file, where a folder is needed") as info:
            attempt()
        assert f"move {tmp_path / 'reviews'} away" in info.value.fix and "chmod" not in info.value.fix


def test_an_entry_written_where_the_mirror_is_one_ahead_keeps_what_it_replaces(tmp_path):
    """The mirror one entry ahead: the next entry takes that place and records the entry it replaces (its seq,
    hash, mirror and what the mirror said of it), within its own hash; a payload cannot set that itself."""
    from workflow.ledger import REPLACES, Anchor

    entries = write_three(tmp_path / "t.jsonl").entries()
    lines = (tmp_path / "t.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "t.jsonl").write_text("".join(lines[:2]))
    lost = Anchor(3, entries[-1]["hash"], "the mirror", "reject by park at noon")
    anchored = AuditChain(tmp_path / "t.jsonl", lambda entries: lost if len(entries) < 3 else Anchor(
        3, entries[-1]["hash"], "the mirror"))
    with pytest.warns(UserWarning, match=r"\(reject by park at noon\), was never written"), anchored.locked() as txn:
        with pytest.raises(ValueError, match="must not set"):
            txn.append({"note": "mine", REPLACES: {"seq": 1}})
        entry = txn.append({"note": "next"})
    assert entry[REPLACES] == {"seq": 3, "hash": entries[-1]["hash"], "mirror": "the mirror",
                               "recorded": "reject by park at noon"}
    assert anchored.entries()[-1] == entry  # whole, chained and hashed with it


def test_an_entry_the_mirror_never_recorded_counts_for_nothing(tmp_path):
    """The chain has no secret: anyone who can write the file can append a well-chained entry (a forged approval
    after a real rejection). The mirror records each entry before the file does, so an entry after the mirror's
    last one is left out of every read, with a warning, and nothing is appended after it."""
    from workflow.ledger import Anchor

    mirror: dict = {}

    def record(entry):
        mirror.update(seq=entry["seq"], hash=entry["hash"])

    chain = AuditChain(tmp_path / "t.jsonl", lambda entries: Anchor(mirror.get("seq", 0), mirror.get("hash", ""),
                                                                     "the mirror"))
    with chain.locked() as txn:
        txn.append({"decision": "reject"}, mirror=record)
    with AuditChain(chain.path).locked() as txn:  # the forger, who can write the file but not the mirror
        txn.append({"decision": "approve"})
    with pytest.warns(UserWarning, match="entry 2 follows the last entry the mirror recorded .entry 1."):
        assert [e["decision"] for e in chain.entries()] == ["reject"]
    with pytest.raises(AuditError, match="nothing is added after them") as info, chain.locked():
        pass
    assert "keep the first 1 line" in info.value.fix

    def failing(entry):
        raise ConnectionError("the tracking server is down")

    fresh = AuditChain(tmp_path / "u.jsonl", lambda entries: Anchor(0, "", "the mirror"))
    with pytest.raises(ConnectionError), fresh.locked() as txn:  # the mirror first: when it fails, nothing is written
        txn.append({"decision": "approve"}, mirror=failing)
    assert fresh.path.read_text() == "" and fresh.entries() == []
    fresh.path.write_text(chain.path.read_text())  # entries where the mirror recorded none: all unconfirmed
    with pytest.warns(UserWarning, match="entries 1–2 .* never recorded"):
        assert fresh.entries() == []


def test_a_well_chained_entry_that_is_not_a_record_is_refused(tmp_path):
    """Content is checked too: a chained `decision: maybe` is an AuditError naming its line, not a traceback."""
    from workflow.review import Review

    chain = AuditChain(tmp_path / "t.jsonl")
    with chain.locked() as txn:
        txn.append({"decision": "maybe"})
    with pytest.raises(AuditError, match="entry 1 is not a valid record") as info:
        AuditChain(chain.path, validate=Review.model_validate).entries()
    assert info.value.where.endswith("t.jsonl:1")
    chain.path.write_text(chain.path.read_text().replace('"maybe"', "NaN"))
    with pytest.raises(AuditError, match="not valid JSON"):
        chain.entries()


# -- the rubric and policy fit -----------------------------------------------------------------------------------

def test_a_refused_name_is_quoted_with_only_its_controls_written_out():
    """The message refusing a name quotes it as typed: Hangul as it is, a control or bidirectional character
    written out once (`\\u202e`, not `\\\\u202e`), so the evaluator sees what to remove."""
    from workflow.rubric import person_name

    with pytest.raises(SpecError) as refused:
        person_name("김지우\u202e\x1b[2J", "--by")
    assert "the name '김지우\\u202e\\x1b[2J' holds control" in str(refused.value), str(refused.value)


def test_a_name_is_at_most_a_hundred_characters():
    """`--by` had no bound: a name of thousands of characters went into every trail line and into the MLflow
    tags mirroring them, which a store with a tag limit refused after the move's checks ("the tracking store
    failed"). It is refused first, saying where a longer text belongs."""
    from workflow.rubric import person_name

    assert person_name(" " + "김" * 100 + " ", "--by") == "김" * 100
    with pytest.raises(SpecError, match="101 characters long, more than 100") as refused:
        person_name("k" * 101, "--by")
    assert refused.value.where == "--by" and "--note" in refused.value.fix


def test_score_flags_and_rubric_resolution(bike_spec):
    third = bike_spec.policy_goals[2]
    items = parse_score_flags(["1=4:peaks forecast", "2 = 0 : no modal shift shown", f"{third}=2:x"])
    goals = resolve_rubric(bike_spec.policy_goals, items, "--score")
    assert [g.score for g in goals] == [4, 0, 2] and [g.goal for g in goals] == bike_spec.policy_goals
    with pytest.raises(SpecError, match="GOAL=SCORE:JUSTIFICATION"):
        parse_score_flags(["1:4"])
    with pytest.raises(SpecError, match=r"missing: 3\."):
        resolve_rubric(bike_spec.policy_goals, items[:2], "--score")
    with pytest.raises(SpecError, match="unknown policy goal '7'"):
        resolve_rubric(bike_spec.policy_goals, [*items, {"goal": "7", "score": 1, "justification": "x"}], "--score")
    with pytest.raises(SpecError, match="scored twice"):
        resolve_rubric(bike_spec.policy_goals, [*items, items[0]], "--score")
    with pytest.raises(SpecError, match="less than or equal to 4"):
        resolve_rubric(bike_spec.policy_goals, [{**items[0], "score": 5}, *items[1:]], "--score")


@pytest.mark.parametrize("flag, says", [("1=-1:weak", "score '-1' of goal 1 is not a whole number from 0 to 4"),
                                        ("1=4.5:strong", "score '4.5' of goal 1 is not a whole number from 0 to 4"),
                                        ("1=three:x", "score 'three' of goal 1 is not a whole number from 0 to 4"),
                                        ("1=5:x", "score '5' of goal 1 is not a whole number from 0 to 4"),
                                        pytest.param("1=" + "9" * 5000 + ":x", "of goal 1 is not a whole number",
                                                     id="5000 digits"),
                                        ("1=3", "no justification"), ("1=3:  ", "no justification"),
                                        ("1=3:\u200b", "no justification")])
def test_a_score_flag_out_of_range_or_without_justification_says_which(flag, says):
    """`--score 1=-1:...` or `1=4.5:...` (a score out of range) and `1=3` (no justification) were all 'cannot read',
    with the format the evaluator had followed as the fix: the message says what is wrong with the flag."""
    with pytest.raises(SpecError, match=says) as refused:
        parse_score_flags([flag])
    assert refused.value.where == "--score" and "0" in refused.value.fix and "4" in refused.value.fix


@pytest.fixture
def evaluated(ws, bike_spec, fake_bento):
    """A stored submission with one official evaluation in the in-memory tracker."""
    tracker, store = MemoryTracker(), SubmissionStore(ws)
    sub, _ = store.submit(bike_spec, fake_bento([FORECAST_ROUTE]), PROJECT_ROOT / "examples/bike_mlp/vendor.yaml")

    def evaluate(reason=None):
        return evaluate_bundle(bike_spec, store.bundle(sub.id), sub.vendor, executor=FakeSandbox(last_day), ws=ws,
                               tracker=tracker, out_dir=store.report_dir(sub.id), submission=sub.id,
                               reevaluate=reason).card

    return tracker, sub, evaluate, evaluate()


def test_a_claim_the_vendor_did_not_make_cannot_be_confirmed(ws, bike_spec, fake_bento):
    """`--confirm startup` for a vendor that declared `startup: false` was stored as a confirmed claim (earning
    nothing, but on the record as verified)."""
    tracker, store = MemoryTracker(), SubmissionStore(ws)
    vendor = PROJECT_ROOT / "examples/bike_seasonal_naive/vendor.yaml"
    assert "startup: false" in vendor.read_text()
    sub, _ = store.submit(bike_spec, fake_bento([FORECAST_ROUTE]), vendor)
    evaluate_bundle(bike_spec, store.bundle(sub.id), sub.vendor, executor=FakeSandbox(last_day), ws=ws,
                    tracker=tracker, out_dir=store.report_dir(sub.id), submission=sub.id)
    book = ReviewBook(ws, tracker)
    with pytest.raises(SpecError, match="claim.s. startup were not made by the vendor") as refused:
        book.record(tracker, sub.id, "approve", by="kim", note="ok", rubric=GOOD,
                    confirmed_claims=["seoul_based", "startup"])
    assert refused.value.where.startswith("--confirm") and f"testbed review show {sub.id}" in refused.value.fix
    assert book.latest(sub.id) is None  # nothing recorded
    review = book.record(tracker, sub.id, "approve", by="kim", note="ok", rubric=GOOD, confirmed_claims=["seoul_based"])
    assert review.confirmed_claims == ["seoul_based"]


def test_policy_fit_from_the_rubric_makes_the_total_final(evaluated, bike_spec):
    card = evaluated[3]
    weights = bike_spec.criteria.weights.model_dump()
    scored = score_policy_fit(card, {g: 2 for g in bike_spec.policy_goals})
    assert scored.criteria["policy_fit"].score == 50
    assert scored.total_is_provisional  # the vendor's claims still wait for an evaluator's confirmation
    final = apply_review(scored, confirmed_claims=["seoul_based", "startup", "technology_field"])
    assert not final.total_is_provisional
    expected = sum(weights[k] * c.score for k, c in final.criteria.items())
    assert final.total_score == pytest.approx(expected, abs=0.01)
    assert card.total_is_provisional and card.criteria["policy_fit"].score is None  # the input is unchanged
    with pytest.raises(ValueError, match="exactly the pilot's policy goals"):
        score_policy_fit(card, {bike_spec.policy_goals[0]: 4})


def test_an_approval_that_leaves_its_evaluation_failing_a_gate_says_so(ws, bike_spec, fake_bento, tmp_path,
                                                                       monkeypatch):
    """An approval that does not clear its evaluation's failed gates (one without the override of
    `suspected_lookup` that the approval before it gave, e.g. a note corrected with --score flags) printed only
    'approved', while promotion refuses the submission and a running `testbed serve` stops serving it: the
    review says which gates still fail, what that does, and which override was not carried over."""
    from cli.app import app
    from evaluation.families import open_family
    from tests.test_defensible import lookup_handler

    tracker, store = MemoryTracker(), SubmissionStore(ws)
    sub, _ = store.submit(bike_spec, fake_bento([FORECAST_ROUTE]), PROJECT_ROOT / "examples/bike_mlp/vendor.yaml")
    card = evaluate_bundle(bike_spec, store.bundle(sub.id), sub.vendor, executor=FakeSandbox(lookup_handler(
        open_family(bike_spec, PROJECT_ROOT / "data").load("test"))), ws=ws, tracker=tracker,
        out_dir=store.report_dir(sub.id), submission=sub.id).card
    assert [g.name for g in card.gates if not g.passed] == ["suspected_lookup"]
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text(yaml.safe_dump({"scores": GOOD, "overrides": [{"gate": "suspected_lookup",
                                                                      "justification": "a forecast, shown"}]}))
    approve = ["review", "approve", sub.id, "--by", "kim", "--note", "ok"]
    result = CliRunner().invoke(app, [*approve, "--rubric", str(rubric)], terminal_width=300)
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output
    result = CliRunner().invoke(app, [*approve, *(f"--score={g}=3:fine" for g in (1, 2, 3))], terminal_width=300)
    assert result.exit_code == 0 and "approved" in result.stdout, result.output
    said = " ".join(result.stderr.split())
    assert "still fails hard gate(s) suspected_lookup" in said and "promotion refuses it" in said
    assert "override of suspected_lookup that review #1 gave is not carried over" in said and "--rubric" in said
    result = CliRunner().invoke(app, ["review", "reject", sub.id, "--by", "kim", "--note", "no",
                                      *(f"--score={g}=0:no" for g in (1, 2, 3))], terminal_width=300)
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output  # a rejection: nothing to say


def test_a_review_names_the_official_evaluation_and_a_re_evaluation_never_replaces_it(ws, evaluated, bike_spec):
    tracker, sub, evaluate, card = evaluated
    book = ReviewBook(ws)
    review = book.record(tracker, sub.id, "approve", by="kim", note="fine", rubric=GOOD)
    assert review.run_id == card.mlflow_run_id and review.bundle_sha256 == sub.bundle_sha256
    assert review.policy_fit == 50 and review.seq == 1 and review.overrides == [] and review.confirmed_claims == []
    assert tracker.runs[card.mlflow_run_id].tags["testbed.review"] == "approve"
    row = reviewed_rows(bike_spec, tracker, ws)[0]
    assert row["review"] == "approve" and row["policy_fit"] == 50 and not row["provisional"]

    again = evaluate(reason="harness upgrade")
    latest = book.latest(sub.id, tracker.runs[card.mlflow_run_id])
    assert reviewed_card(again, latest) == again  # the review judged the official run: it never applies to this one
    row = reviewed_rows(bike_spec, tracker, ws)[0]  # the official evaluation is still the one ranked and reviewed
    assert row["run_id"] == card.mlflow_run_id and row["review"] == "approve"
    with pytest.raises(Refused, match="is not the official evaluation"):
        book.record(tracker, sub.id, "reject", by="kim", note="x", rubric=GOOD, run_id=again.mlflow_run_id)
    book.record(tracker, sub.id, "reject", by="lee", note="re-checked", rubric=GOOD)
    assert [(r.by, r.decision) for r in book.history(sub.id)] == [("kim", "approve"), ("lee", "reject")]


def test_the_cli_reviews_from_a_rubric_file_and_shows_the_history(ws, evaluated, tmp_path, monkeypatch):
    from cli import app as cli

    tracker, sub, _, _ = evaluated
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    rubric = tmp_path / "rubric.yaml"
    runner = CliRunner()
    for mistake, says in (({"overrides": [{"gate": "suspected_lookup", "justification": "verified"}]},
                           "passed in this evaluation: there is nothing to override"),
                          ({"confirmed_claims": ["startup", "startup"]}, "names startup more than once"),
                          ({"scores": [{**g, "goal": True} for g in GOOD]}, "unknown policy goal True"),
                          ({"scores": [{**g, "score": True} for g in GOOD]}, "score"),
                          ({"scores": [{**g, "justification": " \u200b "} for g in GOOD]}, "(score 1): the "
                           "justification of goal"),
                          ({"overrides": [{"gate": "suspected_lookup", "justification": "  "}]},
                           "justification of the override of suspected_lookup is blank")):
        rubric.write_text(yaml.safe_dump({"scores": GOOD, **mistake}))
        result = runner.invoke(cli.app, ["review", "approve", sub.id, "--by", "kim", "--note", "ok", "--rubric",
                                         str(rubric)])
        assert result.exit_code == 2 and says in result.stderr and "Traceback" not in result.output, result.output
    rubric.write_text(yaml.safe_dump({"scores": GOOD}))
    result = runner.invoke(cli.app, ["review", "reject", sub.id, "--by", "kim", "--note", "\u200b", "--rubric",
                                     str(rubric)])
    assert result.exit_code == 2 and "needs a note" in result.stderr, result.output
    assert ReviewBook(ws).history(sub.id) == []  # nothing recorded by a refused review
    rubric.write_text(yaml.safe_dump({"scores": GOOD, "confirmed_claims": ["seoul_based"]}))
    result = runner.invoke(cli.app, ["review", "approve", sub.id, "--by", "kim", "--note", "ok", "--rubric",
                                     str(rubric), "--json"])
    assert result.exit_code == 0, result.output
    review = json.loads(result.stdout)
    assert review["confirmed_claims"] == ["seoul_based"] and review["overrides"] == []
    card = json.loads((SubmissionStore(ws).report_dir(sub.id) / "scorecard.json").read_text())
    assert card["criteria"]["policy_fit"]["score"] == 50 and not card["total_is_provisional"]

    trail = ws.home / "reviews" / f"{sub.id}.jsonl"
    trail.write_text(trail.read_text().replace('"note": "ok"', '"note": "edited later"'))
    result = runner.invoke(cli.app, ["review", "history", sub.id])
    assert result.exit_code == 2 and "was edited" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(cli.app, ["review", "approve", sub.id, "--by", "kim", "--note", "x"])
    assert result.exit_code == 2 and "--score flags or as --rubric FILE" in result.stderr


def test_decisions_read_the_record_never_the_copy_beside_the_submission(ws, evaluated, bike_spec):
    """The leaderboard, the review and promotion read the scorecard logged with the run, checked against the
    run's metrics: an edited copy beside the submission changes nothing (the audit reports it), an edited record
    is refused, and a review trail cut back to an earlier decision is caught against the run's review tags."""
    from workflow.audit import audit_submission
    from workflow.promote import Production
    from workflow.review import official_card

    tracker, sub, _, card = evaluated
    ReviewBook(ws, tracker).record(tracker, sub.id, "approve", by="kim", note="ok", rubric=GOOD)
    before = reviewed_rows(bike_spec, tracker, ws)[0]
    copy = SubmissionStore(ws).report_dir(sub.id) / "scorecard.json"
    forged = json.loads(copy.read_text())
    for gate in forged["gates"]:
        gate["passed"] = True
    forged["criteria"]["viability"]["score"], forged["total_score"], forged["passed"] = 100.0, 99.0, True
    copy.write_text(json.dumps(forged))
    assert reviewed_rows(bike_spec, tracker, ws)[0] == before
    report = audit_submission(sub.id, ws=ws, tracker=tracker)
    assert [c.name for c in report.mismatches] == ["the scorecard beside the submission (for people)"]

    record = tracker.runs[card.mlflow_run_id].artifacts["scorecard.json"]
    genuine = record.read_text()
    record.write_text(json.dumps(forged | {"mlflow_run_id": card.mlflow_run_id}))
    with pytest.raises(AuditError, match="disagrees with the run's metrics .*criteria/viability"):
        official_card(tracker, tracker.runs[card.mlflow_run_id])
    row = reviewed_rows(bike_spec, tracker, ws)[0]
    assert row["review"] == "ALTERED record" and not row["passed"] and row["rank"] == 1
    assert row["altered"] and row["total_score"] is None  # the forged 99.0 is never shown, nor ranked on
    prod = Production(ws)
    prod.tracker, prod.book = tracker, ReviewBook(ws, tracker)  # the in-memory record
    with pytest.raises(AuditError, match="disagrees with the run's metrics"):  # approved, yet never promoted
        prod.approved(sub.id)
    shown = io.StringIO()  # its gates are not known: "unverified", not "rejected" (= failed a hard gate)
    Console(file=shown, width=400).print(leaderboard_table(bike_spec, [row]))
    assert "unverified" in shown.getvalue() and "rejected" not in shown.getvalue().split("rejected =")[0]
    assert "scorecard against the run's metrics" in {c.name for c in audit_submission(sub.id, ws=ws,
                                                                                       tracker=tracker).mismatches}
    record.write_text(genuine)

    book = ReviewBook(ws)
    book.record(tracker, sub.id, "approve", by="kim", note="fine", rubric=GOOD)
    book.record(tracker, sub.id, "reject", by="lee", note="no", rubric=GOOD)
    book.record(tracker, sub.id, "reject", by="park", note="still no", rubric=GOOD)
    trail = book.chain(sub.id).path
    trail.write_text("".join(trail.read_text().splitlines(keepends=True)[:2]))  # back to an approval, links intact
    run = tracker.runs[card.mlflow_run_id]
    with pytest.raises(AuditError, match="entry 4 .*testbed.review tags recorded, is not in the trail"):
        book.latest(sub.id, run)
    assert reviewed_rows(bike_spec, tracker, ws)[0]["review"] == "ALTERED record"
    with pytest.raises(AuditError):
        book.record(tracker, sub.id, "approve", by="kim", note="again", rubric=GOOD)


def test_a_review_is_recorded_whole_or_not_at_all_and_a_forged_one_counts_for_nothing(ws, evaluated, monkeypatch):
    """Everything is checked before the trail is written (the record judged, the reviewer, the run's tags), the
    run's tags first, then the trail; an approval appended by someone who can write the file but not MLflow is
    left out, and the rejection stays in force."""
    tracker, sub, _, card = evaluated
    book, run = ReviewBook(ws, tracker), tracker.runs[card.mlflow_run_id]
    trail = book.chain(sub.id).path
    spaced = "\u3000" + sub.vendor.name.upper().replace(" ", "  ") + " "  # case and spacing set aside
    assert sub.vendor.name.endswith(".")
    plain = sub.vendor.name.lower().rstrip(".").replace(" ", "-", 1) + ","  # and punctuation
    for by, words in ((sub.vendor.name, "cannot review its own submission"), (spaced, "cannot review its own"),
                      (plain, "cannot review its own"),
                      ("Kim\u202eoyuJ", "control or formatting characters"), ("kim\x1b[2K", "control")):
        with pytest.raises(TestbedError, match=words):
            book.record(tracker, sub.id, "approve", by=by, note="mine", rubric=GOOD)
    monkeypatch.setattr(tracker, "tag", lambda *a: (_ for _ in ()).throw(ConnectionError("tracking server down")))
    with pytest.raises(ConnectionError):
        book.record(tracker, sub.id, "approve", by="kim", note="fine", rubric=GOOD)
    assert not trail.exists() or trail.read_text() == ""  # the mirror failed: nothing written either
    monkeypatch.undo()

    book.record(tracker, sub.id, "reject", by="kim", note="privacy", rubric=GOOD)
    forged = Review(**{**book.latest(sub.id, run).model_dump(exclude={"seq", "prev", "hash", "replaces"}),
                       "decision": "approve", "by": "kim", "note": "forged"})
    with AuditChain(trail).locked() as txn:  # the trail file alone, well chained
        txn.append(forged.model_dump(mode="json", exclude={"seq", "prev", "hash", "replaces"}))
    with pytest.warns(UserWarning, match="entry 2 follows the last entry MLflow run .* recorded .entry 1."):
        assert book.latest(sub.id, run).decision == "reject"
    with pytest.raises(AuditError, match="nothing is added after them"):
        book.record(tracker, sub.id, "approve", by="lee", note="fine", rubric=GOOD)
    trail.write_text(trail.read_text().splitlines(keepends=True)[0])  # the forged line cut, as the fix says

    other = tracker.runs[card.mlflow_run_id].tags.copy()
    tracker.runs[card.mlflow_run_id].tags["testbed.review.seq"] = "1.0"
    with pytest.raises(AuditError, match="testbed.review tags are malformed"):
        book.latest(sub.id, run)
    tracker.runs[card.mlflow_run_id].tags = other
    monkeypatch.setattr("workflow.review.SubmissionStore.get", lambda self, i: sub.model_copy(
        update={"bundle_sha256": "f" * 64}))
    with pytest.raises(AuditError, match="run's tags were altered"):  # another submission's evaluation
        book.record(tracker, sub.id, "approve", by="lee", note="fine", rubric=GOOD)
    assert len(trail.read_text().splitlines()) == 1
    monkeypatch.undo()

    spec = get_pilot(sub.pilot)  # the catalogue's goals reworded after the evaluation: the evaluation's count
    reworded = spec.model_copy(update={"policy_goals": [g + "." for g in spec.policy_goals]})
    monkeypatch.setattr("workflow.review.get_pilot", lambda pilot: reworded)
    review = book.record(tracker, sub.id, "approve", by="lee", note="fine", rubric=GOOD)
    assert [g.goal for g in review.rubric] == card.criteria["policy_fit"].evidence["policy_goals"]
    assert reviewed_rows(spec, tracker, ws)[0]["review"] == "approve"


def test_a_trail_that_cannot_be_opened_is_named_with_its_fix_and_nothing_is_recorded(ws, evaluated, monkeypatch):
    """A review trail made read-only (or its folder) reached the CLI as a bare OSError, whose fix told the
    evaluator to give 'a path ... as the option expects' or to correct TESTBED_HOME: the trail is named, the fix
    says to make it writable, and the run's tags are untouched."""
    import errno
    import os

    from cli.app import app

    tracker, sub, _, card = evaluated
    trail = ReviewBook(ws).chain(sub.id).path
    real = os.open

    def read_only(path, flags, *args, **kw):
        if str(path) == str(trail) and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, flags, *args, **kw)

    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    monkeypatch.setattr(os, "open", read_only)
    result = CliRunner().invoke(app, ["review", "approve", sub.id, "--by", "kim", "--note", "ok",
                                      *(f"--score={g}=3:fine" for g in (1, 2, 3))], terminal_width=300)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert str(trail) in result.stderr and "cannot be opened to record" in result.stderr
    assert "make it writable" in result.stderr and "nothing was recorded" in result.stderr
    assert "testbed.review" not in tracker.runs[card.mlflow_run_id].tags


@pytest.mark.parametrize("make", [lambda path: path.mkdir(parents=True),
                                  lambda path: path.parent.mkdir(parents=True) or os.mkfifo(path)],
                         ids=["folder", "fifo"])
def test_a_trail_that_is_not_a_file_is_named_never_a_traceback_or_a_hang(ws, evaluated, monkeypatch, make):
    """A review trail that is a folder (or a named pipe) where the file should be: every read (review history,
    show, list, the audit, the leaderboard) ended in a traceback (IsADirectoryError), or waited for ever on the
    pipe, and a review was told to make it writable. Each says the trail is not a file and how to mend it."""
    from cli.app import app

    tracker, sub, _, _ = evaluated
    make(ReviewBook(ws).chain(sub.id).path)
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    for args, code in ((["review", "history", sub.id], 2), (["review", "show", sub.id], 2),
                       (["review", "list"], 0), (["audit", sub.id], 1), (["leaderboard", "bike-demand"], 0),
                       (["review", "approve", sub.id, "--by", "kim", "--note", "x",
                         *(f"--score={g}=3:x" for g in (1, 2, 3))], 2)):
        result = CliRunner().invoke(app, args, terminal_width=300)
        assert result.exit_code == code and "Traceback" not in result.output, (args, result.output)
        if args[0] == "leaderboard":  # ranked last with a warning (a UserWarning, which pytest keeps)
            assert "ALTERED" in result.output, result.output
            continue
        said = "review trail" if args[0] == "audit" else "restore the file from a backup"  # audit: a failed check
        assert "is not a file" in result.output and said in result.output, args


def test_ctrl_c_as_the_review_tags_are_written_takes_them_back(ws, evaluated, monkeypatch):
    """Ctrl-C as the run's tags are written (the store has committed them; the trail has not the line yet): the
    tags are put back, so the trail and its mirror still agree and reads go on, never one review ahead."""
    tracker, sub, _, card = evaluated
    real = tracker.tag

    def tag_then_interrupted(run_id, tags):
        real(run_id, tags)
        if tags.get("testbed.review.seq"):
            raise KeyboardInterrupt

    monkeypatch.setattr(tracker, "tag", tag_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        ReviewBook(ws).record(tracker, sub.id, "approve", by="kim", note="fine", rubric=GOOD)
    monkeypatch.undo()
    run = tracker.runs[card.mlflow_run_id]
    assert not run.tags.get("testbed.review.seq") and ReviewBook(ws, tracker).history(sub.id, run) == []
    assert ReviewBook(ws).record(tracker, sub.id, "reject", by="kim", note="no", rubric=GOOD).seq == 1


def test_ctrl_c_while_the_trails_line_is_written_keeps_the_review_and_its_mirror(ws, evaluated, monkeypatch, request):
    """Ctrl-C while the trail's line is written and flushed (the run's tags already hold it): held back until the
    lock is released, then raised, so the review is recorded in both, never a line the mirror was taken back from
    (which would count for nothing and block every later review until cut by hand)."""
    import os
    import signal
    import threading
    from types import SimpleNamespace

    # Ctrl-C raises KeyboardInterrupt, as in a `testbed` started from a terminal: a process started with SIGINT
    # ignored (a background job of a non-interactive shell, as two CI runs here were) keeps it ignored, and then
    # there is no Ctrl-C to hold back
    request.addfinalizer(functools.partial(signal.signal, signal.SIGINT,
                                           signal.signal(signal.SIGINT, signal.default_int_handler)))
    tracker, sub, _, card = evaluated
    interrupting = SimpleNamespace(**{n: getattr(os, n) for n in (
        "write", "lseek", "read", "open", "close", "O_RDWR", "O_APPEND", "O_CREAT", "O_RDONLY", "O_NONBLOCK",
        "SEEK_SET", "SEEK_END", "fstat", "set_blocking", "ftruncate")})
    main = threading.main_thread().ident  # delivered there, during the write, whichever threads the process has
    interrupting.fsync = lambda fd: (signal.pthread_kill(main, signal.SIGINT), os.fsync(fd))
    monkeypatch.setattr("workflow.ledger.os", interrupting)
    with pytest.raises(KeyboardInterrupt):
        ReviewBook(ws).record(tracker, sub.id, "approve", by="kim", note="fine", rubric=GOOD)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C handled as before afterwards
    run = tracker.runs[card.mlflow_run_id]
    assert run.tags["testbed.review.seq"] == "1" and run.tags["testbed.review"] == "approve"
    assert [r.decision for r in ReviewBook(ws, tracker).history(sub.id, run)] == ["approve"]
    assert ReviewBook(ws).record(tracker, sub.id, "reject", by="kim", note="no", rubric=GOOD).seq == 2


def test_a_page_that_cannot_be_redrawn_after_a_move_leaves_the_move_standing(ws, monkeypatch):
    """The move is recorded before the pages are drawn: a tracking store failing then (an MLflow error, not only
    the testbed's own or the disk's) is a warning saying what to run, never a failed move that was recorded."""
    from mlflow.exceptions import MlflowException

    from workflow.promote import Production

    def failing(*args):
        raise MlflowException("the tracking server restarted")

    monkeypatch.setattr("workflow.promote.mark_in_service", failing)
    with pytest.warns(UserWarning, match=r"page of sub-a was not updated .*testbed scorecard sub-a --restore"):
        Production(ws)._pages([{"submission": "sub-a", "at": "t1"}, {"submission": "sub-b", "at": "t2"}])


def test_ctrl_c_as_a_production_moves_tag_is_written_takes_it_back(ws, monkeypatch):
    """Ctrl-C as the registry's `testbed.production.NNNN` tag is written, before the trail's line: the tag is taken
    back, so `testbed production`, promotion and serving still read the trail (never a move one ahead)."""
    from mlflow import MlflowClient

    from workflow.promote import Production

    prod = Production(ws)
    MlflowClient(ws.tracking_uri).create_registered_model("testbed-bike-demand")
    real = prod.client.set_registered_model_tag

    def tag_then_interrupted(name, key, value):
        real(name, key, value)
        raise KeyboardInterrupt

    monkeypatch.setattr(prod.client, "set_registered_model_tag", tag_then_interrupted)
    with pytest.raises(KeyboardInterrupt), prod.chain("bike-demand").locked() as txn:
        prod._move(txn, "bike-demand", "rollback", None, "lee", "", "1", None)
    monkeypatch.undo()
    tags = MlflowClient(ws.tracking_uri).get_registered_model("testbed-bike-demand").tags
    assert not [k for k in tags if k.startswith("testbed.production.")], tags
    assert prod.history("bike-demand") == []


def test_a_rollback_goes_back_only_through_the_versions_promoted_since_the_last_withdrawal():
    """The README's rule: a withdrawal (a rollback to nothing) starts the rollback history anew, so a rollback
    after it and one promotion withdraws again, whatever was approved before."""
    from workflow.production_trail import replay as _stack

    def move(action, version):
        return {"action": action, "version": version}

    moves = [move("promote", "1"), move("promote", "2"), move("promote", "3"), move("rollback", "2")]
    assert [e["version"] for e in _stack(moves)] == ["1", "2"]
    moves += [move("rollback", "1"), move("rollback", None), move("promote", "4")]
    assert [e["version"] for e in _stack(moves)] == ["4"]  # nothing earlier to go back to: rollback withdraws


@pytest.mark.parametrize("why", [AuditError("entry 1 was edited: its content no longer matches its hash",
                                            where="reviews/bike-demand-000000000002.jsonl:1"),
                                 NotFound("no submission 'bike-demand-000000000002'")])
def test_a_rollback_skips_an_earlier_version_that_cannot_be_confirmed_approved(ws, monkeypatch, why):
    """Rollback skips an earlier version that is no longer approved, but one whose review trail was damaged or
    whose submission was removed stopped the whole rollback (AuditError, NotFound): the version in service could
    not be taken out. Such a version is skipped with its reason like any refused one."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from workflow.promote import Production

    prod, client = Production(ws), MlflowClient(ws.tracking_uri)
    client.create_registered_model("testbed-bike-demand")
    for _ in range(3):
        client.create_model_version("testbed-bike-demand", source=str(ws.home))

    def ok(version):
        return SimpleNamespace(version=version, submission=SimpleNamespace(id=f"bike-demand-00000000000{version}"),
                               run=SimpleNamespace(run_id="r" * 32), sha256="ab" * 32,
                               review=SimpleNamespace(hash="c" * 64))

    with prod.chain("bike-demand").locked() as txn:  # three promotions, as `promote` records them
        for previous, version in ((None, "1"), ("1", "2"), ("2", "3")):
            prod._move(txn, "bike-demand", "promote", ok(version), "lee", "", previous, previous)

    def approved(submission, version):
        if version == "2":
            raise why
        return ok(version)

    monkeypatch.setattr(prod, "approved", approved)
    entry, skipped = prod.rollback("bike-demand", by="park")
    assert entry["version"] == "1" and entry["previous_version"] == "3" and prod.current_version("bike-demand") == "1"
    assert len(skipped) == 1 and skipped[0].startswith("version 2 (bike-demand-000000000002): ")
    assert why.problem in skipped[0]


def test_a_tracking_store_that_fails_is_never_read_as_none(ws, monkeypatch):
    """A tracking server down (a 503, connection refused) was read as "no registered model" and "no alias": the
    production trail's entries then looked "never recorded" (forged: cut them, said the fix) and the watcher
    withdrew the version in service; a scorecard that could not be downloaded was "missing", and rollback
    skipped an approved version for it. Only MLflow's "does not exist" reads as none; the store failing raises,
    so the command fails saying so and nothing moves."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from evaluation.tracking import MlflowTracker
    from workflow.promote import Production

    prod, client = Production(ws), MlflowClient(ws.tracking_uri)
    assert prod.current_version("bike-demand") is None and prod.history("bike-demand") == []  # none: truly none
    client.create_registered_model("testbed-bike-demand")
    assert prod.current_version("bike-demand") is None  # a model without the alias: none

    def down(*args, **kwargs):
        raise MlflowException("API request failed: 503 Service Unavailable", error_code="TEMPORARILY_UNAVAILABLE")

    for method in ("get_model_version_by_alias", "get_registered_model"):
        monkeypatch.setattr(prod.client, method, down)
    with pytest.raises(MlflowException, match="503"):
        prod.current_version("bike-demand")
    with pytest.raises(MlflowException, match="503"):
        prod.history("bike-demand")
    tracker = MlflowTracker(ws)
    monkeypatch.setattr(tracker.client, "download_artifacts", down)
    with pytest.raises(MlflowException, match="503"):
        tracker.download("r" * 32, "scorecard.json", ws.home / "dl")


def test_a_registry_version_whose_bundle_is_gone_is_refused_naming_it(ws):
    """A registry version whose stored bundle was removed made promote, serve and rollback fail with MLflow's own
    error, which the CLI reports as 'the MLflow tracking store failed: check MLFLOW_TRACKING_URI' (the store was
    fine), and rollback stop rather than skip that version. It is a refusal naming the version and the fix."""
    from mlflow import MlflowClient

    from workflow.promote import Production

    prod, client = Production(ws), MlflowClient(ws.tracking_uri)
    client.create_registered_model("testbed-bike-demand")
    client.create_model_version("testbed-bike-demand", source=str(ws.home / "removed"))
    (ws.home / "empty").mkdir(parents=True)
    client.create_model_version("testbed-bike-demand", source=str(ws.home / "empty"))
    with pytest.raises(Refused, match="bundle of testbed-bike-demand version 1 cannot be read") as refused:
        prod._download("testbed-bike-demand", "1")
    assert refused.value.where == "models:/testbed-bike-demand/1" and "backup" in refused.value.fix
    with pytest.raises(Refused, match="does not hold exactly one .bento") as refused:
        prod._download("testbed-bike-demand", "2")
    assert refused.value.where == "models:/testbed-bike-demand/2"  # not a temporary folder already gone


def test_production_warns_of_a_rejection_a_forged_approval_appended_to_the_trail_would_hide(ws, evaluated,
                                                                                            monkeypatch):
    """`testbed production` read the review of the version in service without its run's tags: an approval
    appended to the trail file after the rejection (never recorded in MLflow) hid the warning that the version in
    service was rejected. It reads the review in force as promotion and serving do."""
    from cli.app import app
    from workflow.promote import Production as Real

    tracker, sub, _, card = evaluated
    book = ReviewBook(ws, tracker)
    book.record(tracker, sub.id, "reject", by="kim", note="privacy", rubric=GOOD)
    forged = Review(**{**book.latest(sub.id, tracker.runs[card.mlflow_run_id]).model_dump(
        exclude={"seq", "prev", "hash"}), "decision": "approve", "by": "kim", "note": "forged"})
    with AuditChain(book.chain(sub.id).path).locked() as txn:
        txn.append(forged.model_dump(mode="json", exclude={"seq", "prev", "hash"}))

    class Production:  # the registry's side; the review trail and the tracker are the real ones
        def __init__(self, ws):
            self.ws, self.tracker, self.store, self.book = ws, tracker, SubmissionStore(ws), book
            self.review_of = lambda submission: Real.review_of(self, submission)

        def current_version(self, pilot):
            return "1"

        def history(self, pilot):
            return [{"seq": 1, "at": "2026-12-02T18:00:00+00:00", "action": "promote", "version": "1",
                     "submission": sub.id, "by": "Lee", "previous_version": None, "note": ""}]

    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("workflow.promote.Production", Production)
    # the forged entry, named and left out, with what lets reviews be recorded again
    with pytest.warns(UserWarning, match="never recorded there.*left out; no entry can follow until they are cut"):
        result = CliRunner().invoke(app, ["production", "bike-demand"], terminal_width=200)
    assert result.exit_code == 0 and "was rejected by kim" in result.stderr, result.output


def test_the_production_trails_mirror_is_its_highest_numbered_move_past_9999(ws):
    """The registry's move tags are `testbed.production.NNNN`: sorted as text, move 10000 came before move 9999,
    so from the 10000th move on the mirror's last entry read as 9999 and every later move was refused (an entry
    the mirror never recorded)."""
    from types import SimpleNamespace

    from workflow.promote import Production

    tags = {f"testbed.production.{seq:04d}": json.dumps({"hash": f"{seq:064x}"}) for seq in (1, 9999, 10000)}
    prod = Production.__new__(Production)
    prod.ws, prod.client = ws, SimpleNamespace(get_registered_model=lambda name: SimpleNamespace(tags=tags))
    anchor = prod.chain("bike-demand").anchor([])
    assert (anchor.seq, anchor.hash) == (10000, f"{10000:064x}") and "testbed.production.10000" in anchor.mirror


def test_names_and_notes_people_give_are_shown_as_written_never_read_as_markup(ws, evaluated, monkeypatch):
    """Rich markup in a reviewer's name or note (or a vendor's name) is text: shown literally, never styling, and
    never a crash of the listing for everyone."""
    from cli import app as cli

    tracker, sub, _, _ = evaluated
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    runner = CliRunner()
    scores = [arg for i in range(len(GOOD)) for arg in ("--score", f"{i + 1}=2:[bold]fine[/]")]
    result = runner.invoke(cli.app, ["review", "approve", sub.id, "--by", "Evil [/]", "--note", "[red]x[/]", *scores,
                                     "--confirm", "startup", "--confirm", "startup"])
    assert result.exit_code == 2 and "'startup': unknown or given twice" in result.stderr, result.output
    result = runner.invoke(cli.app, ["review", "approve", sub.id, "--by", "Evil [/]", "--note", "[red]x[/]", *scores,
                                     "--confirm", "seoul_based"])
    assert result.exit_code == 0, result.output
    assert ReviewBook(ws).latest(sub.id).confirmed_claims == ["seoul_based"]
    for args in (["review", "history", sub.id], ["review", "list", "--all"], ["review", "show", sub.id]):
        result = runner.invoke(cli.app, args, terminal_width=200)
        assert result.exit_code == 0 and "Evil [/]" in result.stdout, (args, result.output)
    assert "[red]x[/]" in runner.invoke(cli.app, ["review", "history", sub.id], terminal_width=200).stdout
    result = runner.invoke(cli.app, ["review", "approve", sub.id, "--by", "kim", *scores,
                                     "--note", "fine\n│ 9 │ Director Choi │ approve\x1b[2K"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(cli.app, ["review", "history", sub.id], terminal_width=250).stdout
    assert "\x1b" not in shown and "\\x1b[2K" in shown and "fine ⏎ │ 9 │" in shown  # one cell, codes written out
    tracker.runs[sub_run(tracker, sub.id)].tags["testbed.vendor"] = "Evil Corp [/]"
    result = runner.invoke(cli.app, ["leaderboard", "bike-demand"], terminal_width=250)
    assert result.exit_code == 0 and "Evil Corp [/]" in result.stdout, result.output


def test_review_show_and_list_write_a_note_or_vendor_names_terminal_codes_out(ws, evaluated, monkeypatch):
    """The screens an evaluator decides from (`review show`, `review list`) write terminal codes out as the history
    does: a vendor's name (stored before names were checked) or a note that clears the screen, sets the window
    title or redraws a line is shown as text, on one line."""
    from cli import app as cli

    tracker, sub, _, _ = evaluated
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    evil = "Evil\x1b]0;owned\x07\x1b[2J Co"
    record = SubmissionStore(ws).root / sub.id / "submission.json"
    data = json.loads(record.read_text())
    data["vendor"]["name"] = evil
    record.write_text(json.dumps(data))
    tracker.runs[sub_run(tracker, sub.id)].tags["testbed.vendor"] = evil
    runner = CliRunner()
    scores = [arg for i in range(len(GOOD)) for arg in ("--score", f"{i + 1}=2:fine")]
    result = runner.invoke(cli.app, ["review", "reject", sub.id, "--by", "kim", *scores,
                                     "--note", "no\x1b[2K\ngates passed"])
    assert result.exit_code == 0, result.output
    for args in (["review", "show", sub.id], ["review", "list", "--all"]):
        shown = runner.invoke(cli.app, args, terminal_width=250).stdout
        assert "\x1b" not in shown and "\x07" not in shown and "\\x1b[2J" in shown, (args, shown)
    shown = runner.invoke(cli.app, ["review", "show", sub.id], terminal_width=250).stdout
    assert "no\\x1b[2K ⏎ gates passed" in shown, shown


def test_review_show_names_no_worst_group_where_none_was_judged(ws, bike_spec, fake_bento, monkeypatch):
    """A run that crashed measured no group: `review show` said "worst group None (0), best None (0)", a perfect
    error on a run that answered nothing."""
    from cli import app as cli

    tracker, store = MemoryTracker(), SubmissionStore(ws)
    sub, _ = store.submit(bike_spec, fake_bento([FORECAST_ROUTE]), PROJECT_ROOT / "examples/bike_mlp/vendor.yaml")

    def crashed(route, payload):
        raise RuntimeError("no answer")

    evaluate_bundle(bike_spec, store.bundle(sub.id), sub.vendor, executor=FakeSandbox(crashed, "crashed"), ws=ws,
                    tracker=tracker, out_dir=store.report_dir(sub.id), submission=sub.id)
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    shown = CliRunner().invoke(cli.app, ["review", "show", sub.id], terminal_width=250).stdout
    assert "equity on mase: no worst or best group (no key has two groups measured on enough items to judge)" in shown
    assert "None" not in shown, shown
    # the claims an evaluator may confirm, as `--confirm`'s refusal tells them to look here
    assert "Vendor claims (--confirm CLAIM" in shown and "seoul_based (declared, unverified)" in shown, shown

def _store_down():
    from mlflow.exceptions import MlflowException

    return MlflowException("API request failed: 503 Service Unavailable", error_code="TEMPORARILY_UNAVAILABLE")


@pytest.mark.parametrize("stop, code, says", [(KeyboardInterrupt, 130, "interrupted (Ctrl-C or SIGTERM)"),
                                               (OSError(28, "No space left on device"), 0, "No space left"),
                                               (_store_down(), 0, "503 Service Unavailable")])
def test_a_review_whose_page_refresh_is_stopped_says_it_is_recorded_and_how_to_mend_the_page(
        ws, evaluated, monkeypatch, stop, code, says):
    """Ctrl-C (or a full disk, or the tracking store failing) after the review is recorded, while the page beside
    the submission is redrawn: the evaluator is told the review is recorded and how to rewrite the page, never
    left with a silent exit or an error (the page, still showing the decision before, would fail the audit until
    restored; told "the tracking store failed", an evaluator would record the review again)."""
    from cli import app as cli

    tracker, sub, _, _ = evaluated
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)

    def cut(*args, **kwargs):
        raise stop

    monkeypatch.setattr("workflow.pages.refresh_scorecard", cut)
    scores = [arg for i in range(len(GOOD)) for arg in ("--score", f"{i + 1}=2:fine")]
    result = CliRunner().invoke(cli.app, ["review", "reject", sub.id, "--by", "kim", "--note", "no", *scores])
    assert result.exit_code == code and says in result.stderr, result.output
    assert "review #1 is recorded" in result.stderr and f"testbed scorecard {sub.id} --restore" in result.stderr
    assert "rejected " in result.stdout and "Traceback" not in result.output
    assert [r.decision for r in ReviewBook(ws).history(sub.id)] == ["reject"]


def test_a_review_recorded_while_the_store_fails_reads_as_recorded(ws, evaluated, monkeypatch):
    """The tracking store failing after the review is recorded, while the gates it leaves unmet are read: the
    command said "error: the MLflow tracking store failed" (exit 2), and an evaluator retrying recorded the review
    twice. It says what was recorded, exit 0."""
    from cli import app as cli

    tracker, sub, _, _ = evaluated
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)

    def down(*args, **kwargs):
        raise _store_down()

    monkeypatch.setattr("workflow.review.unmet_by", down)
    scores = [arg for i in range(len(GOOD)) for arg in ("--score", f"{i + 1}=2:fine")]
    result = CliRunner().invoke(cli.app, ["review", "approve", sub.id, "--by", "kim", "--note", "ok", *scores])
    assert result.exit_code == 0 and "approved " in result.stdout and "Traceback" not in result.output, result.output
    assert [r.decision for r in ReviewBook(ws).history(sub.id)] == ["approve"]


@pytest.mark.parametrize("damage", [b"{", b"\xff\xfe", b"[1]", b'{"rows": 5}',
                                    b'{"model": "m", "version": "3", "bundle_sha256": "ab", "observed_at": "now", '
                                    b'"window_s": 1, "requests": 1, "errors": 0, "rows": [{"measure": "p95", '
                                    b'"value": "fast", "unit": "ms", "target": 1}]}'])
def test_a_damaged_in_service_block_never_stops_a_review_or_a_restore(ws, evaluated, monkeypatch, damage):
    """`in_service.json` (what `testbed monitor` keeps beside the scorecard) damaged or edited: a review was
    recorded, then ended in a traceback (JSONDecodeError, UnicodeDecodeError, a template's UndefinedError), and
    `scorecard --restore` could not rewrite the page. The page is drawn without that block, with a warning naming
    the file and how to write it again."""
    from cli.app import app

    tracker, sub, _, _ = evaluated
    block = SubmissionStore(ws).report_dir(sub.id) / "in_service.json"
    block.write_bytes(damage)
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    for args in (["review", "approve", sub.id, "--by", "kim", "--note", "x", *(f"--score={g}=3:x" for g in (1, 2, 3))],
                 ["scorecard", sub.id, "--restore"], ["scorecard", sub.id, "--html", str(ws.home / "card.html")]):
        with pytest.warns(UserWarning, match="in_service.json cannot be read .* `testbed monitor"):
            result = CliRunner().invoke(app, args, terminal_width=250)
        assert result.exit_code == 0 and "Traceback" not in result.output, (args, result.output)
    assert ReviewBook(ws).latest(sub.id).decision == "approve"
    page = (SubmissionStore(ws).report_dir(sub.id) / "scorecard.html").read_text()
    assert "approve" in page and "Served in production" not in page

    from testbed.jsonio import strict_dumps  # what monitor writes, with nothing measured (nulls): kept and shown

    metrics = ServingMetrics("bike-demand")
    metrics.serving("3", submission=sub.id, bundle_sha256="ab" * 32, run_id="r")
    block.write_text(strict_dumps(summarize(get_pilot("bike-demand"), Scrape(metrics.exposition().decode(),
                                                                             at=time.time() + 1))))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert CliRunner().invoke(app, ["scorecard", sub.id, "--restore"]).exit_code == 0
    assert "Served in production" in (SubmissionStore(ws).report_dir(sub.id) / "scorecard.html").read_text()


def test_one_damaged_review_trail_never_hides_what_else_awaits_a_decision(ws, evaluated, bike_spec, fake_bento,
                                                                          monkeypatch):
    """`review list` with one submission's trail edited: that one is listed as altered, with the reason, and the
    others are still listed (as the leaderboard ranks an altered record last rather than failing for all)."""
    from cli import app as cli

    tracker, sub, _, _ = evaluated
    store = SubmissionStore(ws)
    other, _ = store.submit(bike_spec, fake_bento([FORECAST_ROUTE], name="other"),
                            PROJECT_ROOT / "examples/bike_seasonal_naive/vendor.yaml")
    evaluate_bundle(bike_spec, store.bundle(other.id), other.vendor, executor=FakeSandbox(last_day), ws=ws,
                    tracker=tracker, out_dir=store.report_dir(other.id), submission=other.id)
    ReviewBook(ws).record(tracker, sub.id, "approve", by="kim", note="fine", rubric=GOOD)
    trail = ws.home / "reviews" / f"{sub.id}.jsonl"
    trail.write_text(trail.read_text().replace('"note": "fine"', '"note": "edited"'))
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    result = CliRunner().invoke(cli.app, ["review", "list", "bike-demand", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["submission"]: r["status"] for r in json.loads(result.stdout)}
    assert rows == {sub.id: "ALTERED trail", other.id: "awaiting"}, rows
    assert f"{trail}:1" in result.stderr and "was edited" in result.stderr


def test_review_list_shows_what_awaits_a_decision_and_all_shows_the_decided_too(ws, evaluated, monkeypatch):
    """README (`testbed review list`): the list is what awaits a decision, so an approved submission leaves it;
    `--all` shows the decided ones too, with their decision and who made it."""
    from cli import app as cli

    tracker, sub, _, _ = evaluated
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    runner = CliRunner()

    def listed(*args: str) -> dict[str, tuple[str, str | None]]:
        result = runner.invoke(cli.app, ["review", "list", "bike-demand", *args, "--json"])
        assert result.exit_code == 0, result.output
        return {r["submission"]: (r["status"], r["by"]) for r in json.loads(result.stdout)}

    assert listed() == listed("--all") == {sub.id: ("awaiting", None)}
    result = runner.invoke(cli.app, ["review", "approve", sub.id, "--by", "kim", "--note", "ok",
                                     *(f"--score={g}=3:x" for g in (1, 2, 3))])
    assert result.exit_code == 0, result.output
    assert listed() == {}  # decided: nothing awaits
    assert listed("--all") == {sub.id: ("approve", "kim")}


def sub_run(tracker, submission: str) -> str:
    return next(r.run_id for r in tracker.runs.values() if r.tags["testbed.submission"] == submission)


# -- serving pieces ----------------------------------------------------------------------------------------------

def test_batching_merges_concurrent_requests_and_isolates_a_bad_one():
    calls = []

    def call(body: bytes, items: int):
        payload = json.loads(body)
        calls.append(items)
        if "bad" in payload["history"]:
            return 400, b'{"error": "bad"}'
        return 200, json.dumps([[h] for h in payload["history"]]).encode()

    async def main():
        batcher = Batcher(call, ["history", "future"], max_items=64, concurrency=1)
        jobs = [batcher.submit({"history": [i, i], "future": [0, 0]}, 2) for i in range(20)]
        jobs.append(batcher.submit({"history": ["bad"], "future": [0]}, 1))
        return await asyncio.gather(*jobs)

    results = asyncio.run(main())
    assert [json.loads(body) for _, body in results[:20]] == [[[i], [i]] for i in range(20)]
    assert results[20][0] == 400 and all(status == 200 for status, _ in results[:20])
    assert len(calls) < 21 + 21 and max(calls) > 2  # merged calls happened
    assert parse_request(b'{"history": [1], "future": []}', ["history", "future"]).startswith("the inputs")


def test_the_metrics_summary_counts_exactly_what_was_observed(bike_spec):
    m = ServingMetrics("bike-demand")
    m.serving("3", submission="s", bundle_sha256="ab" * 32, run_id="r")
    for seconds in [0.02] * 90 + [0.2] * 10:
        m.observe("3", 200, seconds)
    m.observe("3", 500, 0.1)
    m.observe("3", 400, 0.01)
    m.observe("2", 200, 0.01)  # an earlier version does not count for the one in service
    summary = summarize(bike_spec, Scrape(m.exposition().decode(), at=time.time() + 10))
    assert summary["requests"] == 101 and summary["errors"] == 1 and summary["version"] == "3"
    assert summary["client_errors"] == 1  # a client's bad request: counted apart, never in the error rate
    rows = {r["measure"]: r for r in summary["rows"]}
    assert rows["error rate"]["value"] == pytest.approx(1 / 101) and rows["error rate"]["met"] is True
    assert 10 < rows["latency p50"]["value"] <= 25 and 150 < rows["latency p99"]["value"] <= 200
    assert quantile({0.1: 0, 0.2: 10, float("inf"): 10}, 0.5) == pytest.approx(0.15)


def test_the_metrics_summary_across_a_server_restart_is_since_the_restart(bike_spec):
    """Two readings with a restart between them: the counters began again, so their differences were negative
    (an error rate of -1.0 and negative requests); the figures are then since the new start."""
    readings = []
    for ok, failed in ((90, 10), (9, 1)):  # the server before the restart, then after
        m = ServingMetrics("bike-demand")
        m.serving("3", submission="s", bundle_sha256="ab" * 32, run_id="r")
        for status in [200] * ok + [500] * failed:
            m.observe("3", status, 0.02)
        readings.append(Scrape(m.exposition().decode(), at=time.time() + 10 * len(readings)))
        time.sleep(0.01)  # the second server starts later
    summary = summarize(bike_spec, readings[1], readings[0])
    assert summary["requests"] == 10 and summary["errors"] == 1
    assert {r["measure"]: r["value"] for r in summary["rows"]}["error rate"] == pytest.approx(0.1)


def test_monitor_shows_the_live_service_when_its_page_cannot_be_updated(ws, monkeypatch):
    """`testbed monitor` reads a service over HTTP, so it is run from another machine or workspace too: there the
    served submission is unknown, and monitor failed with 'no submission ...' (exit 2) without showing the
    measures it read. The measures are shown and the page that was not updated is a warning with its reason."""
    from cli.app import app

    metrics = ServingMetrics("bike-demand")
    metrics.serving("3", submission="bike-demand-0123456789ab", bundle_sha256="ab" * 32, run_id="r")
    for _ in range(10):
        metrics.observe("3", 200, 0.02)
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ws.tracking_uri)  # this test's own store (the trail's registry)
    monkeypatch.setattr("serving.monitor.scrape", lambda url, pilot: Scrape(metrics.exposition().decode(),
                                                                           at=time.time() + 10))
    result = CliRunner().invoke(app, ["monitor", "bike-demand", "--window", "0"], terminal_width=250)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "version 3 (bike-demand-0123456789ab)" in result.stdout and "error rate" in result.stdout
    assert "scorecard page was not updated" in result.stderr and "no submission" in result.stderr

    metrics.serving(None)  # withdrawn: said so, not Python's None
    result = CliRunner().invoke(app, ["monitor", "bike-demand", "--window", "0"], terminal_width=250)
    assert result.exit_code == 1 and "no version in service · NOT READY" in result.stdout, result.output
    assert "None" not in result.output


@pytest.mark.parametrize("args, words", [
    (["promote", "bike-demand-000", "--by", "lee"], "no submission"),
    pytest.param(["rollback", "bike-demand", "--by", "lee"], "nothing in production to roll back",
                 marks=pytest.mark.slow),  # these two create a real MLflow store (a few seconds)
    pytest.param(["serve", "bike-demand"], "bike-demand has no production version", marks=pytest.mark.slow),
    (["review", "show", "bike-demand-000"], "no submission"),
    (["review", "approve", "bike-demand-000", "--by", "kim", "--note", "x", "--score", "1=3:x"], "no submission"),
])
def test_operator_mistakes_are_one_clear_line(args, words, tmp_path, monkeypatch):
    from cli.app import app

    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_store(tmp_path / "mlflow.db"))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and words in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.output


def test_every_new_verb_has_help():
    from cli.app import app

    for verb in (["review", "list"], ["review", "show"], ["review", "approve"], ["review", "reject"],
                 ["review", "history"], ["promote"], ["production"], ["rollback"], ["serve"], ["monitor"]):
        result = CliRunner().invoke(app, [*verb, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout


def test_the_trail_cannot_choose_its_mirror_and_a_write_cut_short_is_taken_back_or_replaced(ws, evaluated,
                                                                                             monkeypatch):
    """The mirror is the official run's tags, whatever run the file's last line names; a write that fails after
    the tags were set puts them back; a mirror one entry ahead (killed between the two) is refused on reads and
    the next review takes its place."""
    import errno
    import os

    from workflow.ledger import CutShort

    tracker, sub, evaluate, card = evaluated
    book, run = ReviewBook(ws, tracker), tracker.runs[card.mlflow_run_id]
    trail = book.chain(sub.id).path
    book.record(tracker, sub.id, "reject", by="kim", note="privacy", rubric=GOOD)
    again = evaluate(reason="harness upgrade")  # a run no review was ever mirrored on
    forged = Review(**{**book.latest(sub.id, run).model_dump(exclude={"seq", "prev", "hash"}),
                       "run_id": again.mlflow_run_id, "decision": "approve", "note": "forged"})
    with AuditChain(trail).locked() as txn:
        txn.append(forged.model_dump(mode="json", exclude={"seq", "prev", "hash"}))
    with pytest.warns(UserWarning, match="entry 2 follows"):
        assert book.latest(sub.id, run).decision == "reject"  # the file named another run: still the official's
    trail.write_text(trail.read_text().splitlines(keepends=True)[0])

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(AuditError, match="could not be written .No space left"):
        book.record(tracker, sub.id, "approve", by="lee", note="fine", rubric=GOOD)
    monkeypatch.undo()
    assert run.tags["testbed.review.seq"] == "1" and run.tags["testbed.review"] == "reject"  # taken back
    assert len(trail.read_text().splitlines()) == 1
    before, write = trail.read_bytes(), os.write
    for name, broken in (("write", lambda fd, data: write(fd, data[:40])),  # a part of the line, then the disk full
                         ("fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))):
        monkeypatch.setattr(os, name, broken)  # the line (or part of it) is on disk when the error comes
        with pytest.raises(AuditError, match="could not be written"):
            book.record(tracker, sub.id, "approve", by="lee", note="fine", rubric=GOOD)
        monkeypatch.undo()
        assert trail.read_bytes() == before and run.tags["testbed.review.seq"] == "1"  # all or nothing

    tracker.tag(run.run_id, {"testbed.review.seq": "2", "testbed.review.hash": "ab" * 32})  # killed in between
    with pytest.raises(CutShort, match="entry 2, which .* was never written"):
        book.latest(sub.id, run)
    assert book.record(tracker, sub.id, "approve", by="lee", note="fine", rubric=GOOD).seq == 2
    assert book.latest(sub.id, run).decision == "approve"


def test_a_rejection_cut_from_the_trail_stays_on_record_in_the_review_that_takes_its_place(ws, evaluated,
                                                                                          monkeypatch):
    """The run's tags one review ahead of the trail is a recording cut short, or the trail's last line removed
    by hand, and the next review takes that place. A rejection removed that way then left no trace once an
    approval was written in its place (found in review: `review history` said "hash chain intact" and the audit
    passed). The new entry keeps what the tags recorded of the one it replaces, and `review history` warns."""
    from typer.testing import CliRunner

    from cli import app as cli

    tracker, sub, _, card = evaluated
    book, run = ReviewBook(ws, tracker), tracker.runs[card.mlflow_run_id]
    book.record(tracker, sub.id, "approve", by="kim", note="fine", rubric=GOOD)
    rejected = book.record(tracker, sub.id, "reject", by="park", note="privacy", rubric=GOOD)
    trail = book.chain(sub.id).path
    trail.write_text(trail.read_text().splitlines(keepends=True)[0])  # the rejection's line removed by hand
    with pytest.warns(UserWarning, match=r"entry 2, which .* recorded \(reject by park at .*\), was never written"):
        approved = book.record(tracker, sub.id, "approve", by="choi", note="fine", rubric=GOOD)
    assert approved.seq == 2 and approved.replaces["seq"] == 2 and approved.replaces["hash"] == rejected.hash
    assert approved.replaces["recorded"] == f"reject by park at {rejected.at}"
    assert book.history(sub.id, run)[-1].replaces == approved.replaces  # in the chain: hashed with the entry
    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: tracker)
    shown = CliRunner().invoke(cli.app, ["review", "history", sub.id])
    assert shown.exit_code == 0 and "review #2 took the place of entry 2" in shown.stderr, shown.output
    assert "(reject by park at" in shown.stderr and "restore the file from a backup" in shown.stderr


def test_two_reviews_at_once_leave_the_page_of_the_later_one(ws, evaluated, monkeypatch):
    """Each refresh of the copy reads the review in force under a lock: a slow refresh of the first review cannot
    overwrite the page of a second review recorded meanwhile."""
    import workflow.pages
    from workflow.pages import refresh_scorecard

    tracker, sub, _, _ = evaluated
    book, apply, slowed = ReviewBook(ws, tracker), workflow.pages.reviewed_card, threading.Event()

    def slow_first(*args, **kw):
        if not slowed.is_set():
            slowed.set()
            time.sleep(1.0)  # the first refresh, having read its review, is slow while the second is recorded
        return apply(*args, **kw)

    monkeypatch.setattr(workflow.pages, "reviewed_card", slow_first)
    book.record(tracker, sub.id, "approve", by="kim", note="fine", rubric=GOOD)
    first = threading.Thread(target=refresh_scorecard, args=(ws, tracker, sub.id))
    first.start()
    slowed.wait(5)
    book.record(tracker, sub.id, "reject", by="lee", note="no", rubric=GOOD)
    refresh_scorecard(ws, tracker, sub.id)
    first.join()
    copy = SubmissionStore(ws).scorecard(sub.id)
    assert copy.criteria["policy_fit"].evidence["decision"] == "reject"
