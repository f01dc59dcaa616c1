"""The record against a dishonest or careless insider: the audit of damaged or missing artifacts, gates and
criteria recomputed, metrics logged again, the copy beside the submission checked against the record, and one
damaged run never taking the leaderboard down."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from evaluation.scorecard import Scorecard, rescore
from evaluation.tracking import flatten
from evaluation.tracking_memory import MemoryTracker
from testbed.config import PROJECT_ROOT
from testbed.errors import AuditError
from tests.conftest import FORECAST_ROUTE
from tests.doubles import FakeSandbox
from tests.test_scorecard import last_day
from workflow.audit import COPY, STORED, audit_submission
from workflow.evaluate import evaluate_bundle
from workflow.review import reviewed_rows
from workflow.submissions import SubmissionStore


def evaluate(ws, spec, fake_bento, tracker):
    """The seasonal-naive forecast, officially evaluated: it fails the gate `threshold:mase` (1.023 > 1.0)."""
    store = SubmissionStore(ws)
    sub, _ = store.submit(spec, fake_bento([FORECAST_ROUTE]), PROJECT_ROOT / "examples/bike_mlp/vendor.yaml")
    card = evaluate_bundle(spec, store.bundle(sub.id), sub.vendor, executor=FakeSandbox(last_day), ws=ws,
                           tracker=tracker, out_dir=store.report_dir(sub.id), submission=sub.id).card
    assert not card.passed and not next(g for g in card.gates if g.name == "threshold:mase").passed
    return sub, card


@pytest.fixture
def evaluated(ws, bike_spec, fake_bento):
    tracker = MemoryTracker()
    return (tracker, *evaluate(ws, bike_spec, fake_bento, tracker))


@pytest.fixture
def cli(ws, evaluated, monkeypatch):
    """`testbed ARGS...` on the workspace and the in-memory tracker: (exit code, stdout, stderr)."""
    from cli.app import app

    monkeypatch.setenv("TESTBED_HOME", str(ws.home))
    monkeypatch.setattr("evaluation.tracking.MlflowTracker", lambda ws: evaluated[0])

    def invoke(*args):
        result = CliRunner().invoke(app, list(args), terminal_width=250)
        assert "Traceback" not in result.output and "tracking store failed" not in result.output, result.output
        return result.exit_code, result.stdout, result.stderr

    return invoke


def names(report) -> set[str]:
    return {c.name for c in report.mismatches}


# -- damaged artifacts: a failed check, never a traceback -------------------------------------------------------------

@pytest.mark.parametrize("artifact, damage, says", [
    ("scorecard.json", b"garbage", "unreadable (ValidationError"),
    ("predictions.npz", b"garbage", "unreadable (ValueError"),
    ("pilot_spec.json", b"{}", "unreadable (ValidationError"),
    ("predictions.npz", None, "missing or cannot be read"),
    ("bento/bundle.bento", None, "missing or cannot be read"),
    ("scorecard.json", None, "missing or cannot be read"),
])
def test_a_damaged_or_missing_artifact_fails_the_audit_naming_it(ws, evaluated, cli, artifact, damage, says):
    tracker, sub, card = evaluated
    stored = tracker.runs[card.mlflow_run_id].artifacts[artifact]
    if damage is None:
        stored.unlink()
    else:
        stored.write_bytes(damage)
    report = audit_submission(sub.id, ws=ws, tracker=tracker)
    [broken] = [c for c in report.mismatches if c.name == f"artifact {artifact}"]
    assert says in broken.recomputed and not report.ok
    if damage is not None and artifact != "scorecard.json":  # the hash check had found it: it is reported too
        assert {"predictions sha256", "pilot spec sha256"} & names(report)
    if artifact == "bento/bundle.bento":  # the rest is audited all the same
        assert names(report) == {f"artifact {artifact}"} and len(report.checks) > 60
    code, out, _ = cli("audit", sub.id)
    assert code == 1 and "AUDIT FAILED" in out and f"artifact {artifact}" in out


@pytest.mark.parametrize("damage", [b"X", None])
def test_an_altered_or_missing_stored_bundle_of_the_submission_fails_the_audit(ws, evaluated, cli, damage):
    """The submission's own copy (what a re-evaluation runs) is checked too: appended to, the audit passed it with
    `bundle sha256 ✓`, since that line compares the MLflow artifact, what was evaluated."""
    tracker, sub, card = evaluated
    stored = SubmissionStore(ws).bundle(sub.id)
    if damage is None:
        stored.unlink()
    else:
        stored.write_bytes(stored.read_bytes() + damage)
    report = audit_submission(sub.id, ws=ws, tracker=tracker)
    [altered] = report.mismatches
    assert altered.name == STORED and altered.recorded == sub.bundle_sha256 and altered.recomputed != sub.bundle_sha256
    assert ("unreadable" in altered.recomputed) is (damage is None) and len(report.checks) > 60
    code, out, _ = cli("audit", sub.id)
    assert code == 1 and "AUDIT FAILED" in out and "stored bundle" in out


# -- gates and criteria recomputed; metrics logged again --------------------------------------------------------------

def forge(tracker, card, edit) -> None:
    """Rewrite the logged scorecard with `edit`, and log again each metric it changes (MLflow shows the latest)."""
    record = tracker.runs[card.mlflow_run_id].artifacts["scorecard.json"]
    forged = Scorecard.model_validate_json(record.read_text())
    edit(forged)
    rescore(forged)
    record.write_text(forged.model_dump_json())
    logged = tracker.runs[card.mlflow_run_id].metrics
    tracker.log_metrics(card.mlflow_run_id, {k: v for k, v in flatten(forged).items() if logged.get(k) != v})


def test_every_group_label_gets_its_own_metric_name_that_mlflow_accepts(evaluated):
    """A group label is data (a station's name, a category): one MLflow cannot take as a metric name (past 250
    characters, a '/', an empty value) failed the recording after the whole run, and two labels cleaned alike
    shared a metric. Plain labels keep their readable names."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, _validate_metric_name

    _, _, card = evaluated
    metric = card.equity["metric"]
    labels = ["district=Gangnam-gu", "line=2/3", "line=2_3", "x=.", "x=", "a=b=c", "역=강남역 (2호선)",
              "d=" + "가" * 300, "d=" + "가" * 299 + "나", "d=a\x00b", "plain"]
    forged = card.model_copy(update={"groups": {label: {metric: 1.0} for label in labels}})
    names = [k for k in flatten(forged) if k.startswith("group/")]
    assert len(set(names)) == len(labels)
    for name in names:
        _validate_metric_name(name)
        assert len(name) <= MAX_ENTITY_KEY_LENGTH, name
    assert {f"group/district/Gangnam-gu/{metric}", f"group/line/2_3/{metric}", f"group/plain/{metric}"} < set(names)


def test_the_audit_recomputes_every_gate_and_catches_a_failing_one_shown_passing(ws, evaluated):
    tracker, sub, card = evaluated

    def passing(c):
        for gate in c.gates:
            gate.passed, gate.detail = True, gate.detail.replace("1.023", "0.98")
    forge(tracker, card, passing)
    report = audit_submission(sub.id, ws=ws, tracker=tracker)
    assert names(report) == {"gate threshold:mase", "passed (every gate)", "every metric logged once", COPY}
    [gate] = [c for c in report.mismatches if c.name == "gate threshold:mase"]
    assert gate.recorded.startswith("passed") and gate.recomputed == "FAILED: 1.023 (max 1.0)"
    [relogged] = [c for c in report.mismatches if c.name == "every metric logged once"]
    assert "passed logged 2 times (0, 1)" in relogged.recomputed
    from workflow.review import official_card  # what the leaderboard, reviews and promotion read

    with pytest.raises(AuditError, match="passed logged again after the run"):
        official_card(tracker, tracker.runs[card.mlflow_run_id])


def test_the_audit_recomputes_the_measured_criteria_and_a_removed_gate(ws, evaluated, cli):
    tracker, sub, card = evaluated
    assert audit_submission(sub.id, ws=ws, tracker=tracker).scored_by is None  # scored by the harness auditing

    def generous(c):
        c.criteria["viability"].score = 100.0
        c.gates = [g for g in c.gates if g.name != "consistent_under_load"]
        c.harness_version = "0.1+gold"
    forge(tracker, card, generous)
    report = audit_submission(sub.id, ws=ws, tracker=tracker)
    assert names(report) == {"criteria/viability", "gate consistent_under_load", "every metric logged once", COPY}
    assert next(c for c in report.mismatches if c.name == "gate consistent_under_load").recorded == "absent"
    assert report.scored_by == "0.1+gold"  # a formula changed since could explain a difference: the CLI says so
    code, out, _ = cli("audit", sub.id)
    assert code == 1 and "harness 0.1+gold scored this run" in " ".join(out.split())


# -- the copy beside the submission ---------------------------------------------------------------------------------

def test_a_corrupt_copy_is_reported_and_the_record_audited_and_shown(ws, evaluated, cli):
    tracker, sub, card = evaluated
    copy = SubmissionStore(ws).report_dir(sub.id) / "scorecard.json"
    copy.write_text(copy.read_text()[:100])
    report = audit_submission(sub.id, ws=ws, tracker=tracker)
    assert names(report) == {COPY} and "unreadable" in report.mismatches[0].recomputed
    assert len(report.checks) > 60  # the record audited all the same
    code, out, err = cli("scorecard", sub.id)
    assert code == 0 and "copy is unreadable" in err and "showing the MLflow record" in err and "--restore" in err
    assert f"total {card.total_score:.2f}" in out and "FAILED" in out
    page = ws.home / "[bold]pages[/]" / "page.html"  # drawn from the record; a path printed as it is, not as markup
    code, out, err = cli("scorecard", sub.id, "--html", str(page))
    assert code == 0 and f"{card.total_score:.2f}" in page.read_text() and f"wrote {page}" in " ".join(err.split())
    code, _, err = cli("scorecard", sub.id, "--html", "/dev/full")  # a write that fails part-way names the file
    assert code == 2 and "error: /dev/full: No space left on device" in err, err
    code, _, err = cli("scorecard", sub.id, "--restore")
    assert code == 0 and "rewrote" in err and "warning" not in err
    assert Scorecard.model_validate_json(copy.read_text()).total_score == card.total_score
    assert audit_submission(sub.id, ws=ws, tracker=tracker).ok

    copy.write_text("{")  # and with the record out of reach: the copy's error, with the fix
    tracker.runs[card.mlflow_run_id].artifacts["scorecard.json"].unlink()
    code, _, err = cli("scorecard", sub.id)
    assert code == 2 and "scorecard copy is unreadable" in err and "record cannot be read" in err
    assert "artifact scorecard.json" in err and "testbed audit" in err


def test_a_review_the_runs_tags_never_recorded_fails_the_audit(ws, evaluated, cli):
    """A well-chained approval appended to the review trail by someone who can write the file (after a rejection)
    counts for nothing, but `testbed audit` only warned and passed (exit 0): a forged entry is a failed check
    naming it, the rest still audited."""
    from workflow.ledger import AuditChain
    from workflow.review import Review, ReviewBook

    tracker, sub, card = evaluated
    code, _, err = cli("review", "reject", sub.id, "--by", "kim", "--note", "privacy", *(
        f"--score={g}=1:weak" for g in (1, 2, 3)))
    assert code == 0, err
    passed = audit_submission(sub.id, ws=ws, tracker=tracker)
    trail = [c for c in passed.checks if c.name == "review trail"]  # a passing audit says the trail was checked
    assert passed.ok and [c.recomputed for c in trail] == ["intact; latest decision: reject by kim"]
    book = ReviewBook(ws, tracker)
    forged = Review(**{**book.latest(sub.id, tracker.runs[card.mlflow_run_id]).model_dump(
        exclude={"seq", "prev", "hash"}), "decision": "approve", "note": "forged"})
    with AuditChain(book.chain(sub.id).path).locked() as txn:  # the file alone, well chained
        txn.append(forged.model_dump(mode="json", exclude={"seq", "prev", "hash"}))
    report = audit_submission(sub.id, ws=ws, tracker=tracker)
    assert names(report) == {"review trail"} and len(report.checks) > 60
    assert "entry 2 follows the last entry" in report.mismatches[0].recomputed
    code, out, _ = cli("audit", sub.id)
    assert code == 1 and "review trail" in out and "AUDIT FAILED" in out


def test_scorecard_shows_the_record_when_the_copy_was_edited(ws, evaluated, cli):
    tracker, sub, card = evaluated
    copy = SubmissionStore(ws).report_dir(sub.id) / "scorecard.json"
    forged = json.loads(copy.read_text())
    for gate in forged["gates"]:
        gate["passed"] = True
    forged["passed"], forged["total_score"] = True, 97.5
    copy.write_text(json.dumps(forged))
    code, out, err = cli("scorecard", sub.id)
    assert code == 0 and "DIFFERS from the MLflow record" in err and "total_score 97.5 against" in err
    assert "97.5" not in out and "gates FAILED" in out and "threshold:mase" in out
    code, out, err = cli("scorecard", sub.id, "--json")
    assert code == 0 and json.loads(out)["total_score"] == card.total_score and "DIFFERS" in err

    page = SubmissionStore(ws).report_dir(sub.id) / "scorecard.html"
    page.write_text(page.read_text().replace("threshold:mase", "threshold:forged"))
    forged = json.loads(card.model_dump_json())  # a detail alone, anywhere in the card, differs too
    forged["gates"][0]["detail"] = "edited by hand"
    copy.write_text(json.dumps(forged))
    code, out, err = cli("scorecard", sub.id, "--html", str(ws.home / "edited.html"))
    assert code == 0 and "gates/0/detail edited by hand against" in err
    exported = (ws.home / "edited.html").read_text()
    assert "threshold:mase" in exported and "threshold:forged" not in exported and "edited by hand" not in exported

    copy.write_text(card.model_dump_json())  # as the record: shown as it is, without a word
    code, out, err = cli("scorecard", sub.id)
    assert code == 0 and "warning" not in err and f"total {card.total_score:.2f}" in out

    tracker.runs.clear()  # a store that does not hold the run: the copy is shown, said to be unverified
    code, out, err = cli("scorecard", sub.id)
    assert code == 0 and "UNVERIFIED" in err and "holds no official evaluation" in err


# -- the real MLflow store ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_in_mlflow_a_missing_artifact_is_named_and_a_relogged_metric_caught(ws, bike_spec, fake_bento, recwarn):
    """MLflow raises its own exception for a missing artifact: that run's row is left off the leaderboard as an
    altered record (the others stay), and the audit names the artifact; the store is not blamed."""
    from mlflow.entities import Metric

    from evaluation.tracking import MlflowTracker

    tracker = MlflowTracker(ws)
    sub, card = evaluate(ws, bike_spec, fake_bento, tracker)
    assert audit_submission(sub.id, ws=ws, tracker=tracker).ok
    tracker.client.log_batch(card.mlflow_run_id, metrics=[Metric("passed", 1.0, 2**40, 0)])
    report = audit_submission(sub.id, ws=ws, tracker=tracker)
    assert "every metric logged once" in names(report)

    artifacts = ws.artifact_root / "bike-demand" / card.mlflow_run_id / "artifacts"
    (artifacts / "scorecard.json").unlink()
    [row] = reviewed_rows(bike_spec, tracker, ws)
    assert row["review"] == "ALTERED record" and not row["passed"]
    assert any("artifact scorecard.json of the run is missing" in str(w.message) for w in recwarn.list)
    (artifacts / "predictions.npz").unlink()
    report = audit_submission(sub.id, ws=ws, tracker=tracker)
    assert {"artifact scorecard.json", "artifact predictions.npz"} <= names(report)
    assert np.all([c.ok for c in report.checks if c.name in ("bundle sha256", "pilot spec sha256")])


@pytest.mark.slow
def test_a_run_cut_short_after_registering_its_bundle_leaves_the_next_official_run_its_own_version(
        ws, bike_spec, fake_bento):
    """An evaluation stopped (Ctrl-C, the store failing) after its bundle was registered but before its run was
    FINISHED left the registry's one version for that bundle naming the FAILED run, with its verdict: the official
    run that followed found the hash registered and added none, so promotion served a version of a run that does
    not count. A version counts only when its run finished."""
    from evaluation.tracking import MlflowTracker, registered_model_name

    tracker = MlflowTracker(ws)
    real, cut = tracker.client.set_terminated, []

    def cut_short(run_id, status=None, **kw):
        if status == "FINISHED" and not cut:
            cut.append(run_id)
            raise KeyboardInterrupt
        return real(run_id, status=status, **kw)

    tracker.client.set_terminated = cut_short
    with pytest.raises(KeyboardInterrupt):
        evaluate(ws, bike_spec, fake_bento, tracker)
    assert tracker.client.get_run(cut[0]).info.status == "FAILED"
    sub, card = evaluate(ws, bike_spec, fake_bento, tracker)
    assert card.mlflow_run_id != cut[0]
    versions = tracker.client.search_model_versions(f"name='{registered_model_name('bike-demand')}'")
    assert card.mlflow_run_id in [v.run_id for v in versions if v.tags["testbed.bundle_sha256"] == card.bundle_sha256]
    again = evaluate_bundle(bike_spec, SubmissionStore(ws).bundle(sub.id), sub.vendor, executor=FakeSandbox(last_day),
                            ws=ws, tracker=tracker, out_dir=ws.home / "again", submission=sub.id,
                            reevaluate="harness upgrade").card
    assert again.evaluation != "official"
    assert len(tracker.client.search_model_versions(f"name='{registered_model_name('bike-demand')}'")) == 2
