"""Promotion: what is served is exactly what was evaluated and approved.

The pilot's registered model `testbed-<pilot>` in MLflow holds every evaluated bundle as a version; the alias
`production` names the one in service. `promote` moves it only when the latest review approves the latest
official evaluation of the submission, every hard gate passed and the registry's bytes still hash to what was
evaluated and reviewed. Every move (promote, rollback, withdraw) is an entry in the pilot's append-only
hash-chained trail `TESTBED_HOME/production/<pilot>.jsonl`, mirrored as registered-model tags
`testbed.production.NNNN` (`workflow.production_trail`). A pilot's moves are serialised by an exclusive lock on
that trail held across the checks, the alias change and the entry, so two operators promoting at once are applied
one after the other.
"""

from __future__ import annotations

import hashlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from evaluation.tracking import MlflowTracker, RunRecord, absent, every_page, registered_model_name
from testbed.config import Workspace
from testbed.errors import AuditError, NotFound, Refused, TestbedError
from workflow.ledger import AuditChain
from workflow.pages import mark_in_service, refresh_scorecard
from workflow.production_trail import ALIAS, left_at, production_chain, replay, trail_version, write_move
from workflow.review import (
    Review,
    ReviewBook,
    official_card,
    official_evaluation,
    person_name,
    record_mismatch,
    reviewed_card,
)
from workflow.submissions import Submission, SubmissionStore

__all__ = ["Approved", "Production", "ALIAS", "trail_version"]

@dataclass
class Approved:
    """A bundle cleared for service: the submission, the evaluation and review behind it, its registry
    version and its verified bytes."""

    submission: Submission
    run: RunRecord
    review: Review
    version: str
    bundle: bytes

    @property
    def sha256(self) -> str:
        return self.review.bundle_sha256


class Production:
    """The production alias of every pilot, its history and its checks (real MLflow registry)."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.tracker = MlflowTracker(ws)
        self.client = self.tracker.client
        self.store, self.book = SubmissionStore(ws), ReviewBook(ws, self.tracker)

    def chain(self, pilot: str) -> AuditChain:
        """The pilot's trail, anchored to its last move as the registered model's tags mirror it."""
        return production_chain(self.client, self.ws.home, pilot)

    # -- checks ------------------------------------------------------------------------------------------------

    def approved(self, submission: str, version: str | None = None) -> Approved:
        """Everything promotion requires of `submission`, or Refused with the reason. With `version`, that
        registry version's bytes are the ones checked (serve, rollback); otherwise the version of its evaluation."""
        sub = self.store.get(submission)
        run = official_evaluation(self.tracker, sub)
        if run is None:
            raise Refused(f"{sub.id} has not been evaluated", fix=f"run `testbed evaluate {sub.id}`, then review it")
        review = self.book.latest(sub.id, run)
        if review is None:
            raise Refused(f"{sub.id} has no review: an evaluator must approve it first",
                          fix=f"`testbed review approve {sub.id} --by NAME --note ... --score ...`")
        if review.run_id != run.run_id:
            raise Refused(f"the latest review of {sub.id} judged run {review.run_id}, but its official evaluation is "
                          f"run {run.run_id}", fix=f"an evaluator must review the new evaluation ({sub.id})")
        if review.decision != "approve":
            raise Refused(f"{sub.id} was rejected by {review.by} at {review.at}: {review.note}",
                          fix="only an approved submission can be promoted")
        card = reviewed_card(official_card(self.tracker, run), review)  # overridden gates count as passed
        mismatch = record_mismatch(card, run, sub)
        if mismatch:
            raise Refused(mismatch, where=f"MLflow run {run.run_id}",
                          fix="do not serve it; restore the run's tags from a backup (`testbed audit` shows more)")
        if not card.passed:
            failed = ", ".join(g.name for g in card.gates if not g.passed)
            raise Refused(f"{sub.id} failed hard gates ({failed}): it cannot be served whatever its review",
                          fix="submit a bundle that passes every gate")
        name = registered_model_name(sub.pilot)
        version = version or self._version_of(name, run.run_id, review.bundle_sha256)
        bundle = self._download(name, version)
        actual = hashlib.sha256(bundle).hexdigest()
        if not actual == review.bundle_sha256 == sub.bundle_sha256:
            raise Refused(f"the bytes of {name} version {version} hash to {actual[:16]}…, but the evaluation and "
                          f"review were of {review.bundle_sha256[:16]}…: the stored bundle was altered",
                          where=f"models:/{name}/{version}",
                          fix="do not serve it; re-submit and re-evaluate the vendor's original bundle")
        return Approved(sub, run, review, version, bundle)

    def review_of(self, submission: str) -> Review | None:
        """The review in force of `submission`'s official evaluation, read against its run's tags as promotion
        reads it (an entry they never recorded left out; AuditError when the trail is damaged)."""
        sub = self.store.get(submission)
        run = official_evaluation(self.tracker, sub)
        return self.book.latest(sub.id, run) if run is not None else None

    def _version_of(self, name: str, run_id: str, sha: str) -> str:
        versions = every_page(self.client.search_model_versions, f"name='{name}'")
        by_run = [v for v in versions if v.run_id == run_id]
        by_hash = [v for v in versions if v.tags.get("testbed.bundle_sha256") == sha]
        chosen = by_run or by_hash
        if not chosen:
            raise Refused(f"no version of {name} holds run {run_id}", fix="re-run `testbed evaluate`")
        return str(max(int(v.version) for v in chosen))

    def _download(self, name: str, version: str) -> bytes:
        """The bytes of the one `.bento` registry version `version` holds (Refused when the store answers that it
        holds none: its stored bundle removed)."""
        import mlflow
        from mlflow.exceptions import MlflowException

        where = f"models:/{name}/{version}"
        with tempfile.TemporaryDirectory(prefix="testbed-promote-") as tmp:
            source = self.client.get_model_version_download_uri(name, version)  # this store's, not MLflow's global
            try:
                path = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp,
                                                                tracking_uri=self.ws.tracking_uri))
            except (MlflowException, FileNotFoundError) as exc:
                if isinstance(exc, MlflowException) and not absent(exc):
                    raise  # the store failing (a server down) is no refusal: a rollback must not skip a version then
                detail = " ".join(str(exc).split())[:200]
                raise Refused(f"the bundle of {name} version {version} cannot be read from the registry "
                              f"({type(exc).__name__}: {detail})", where=where,
                              fix="do not serve it; restore the registry's artifacts from a backup of the artifact "
                                  "store (MLFLOW_TRACKING_URI's), or re-submit and re-evaluate the vendor's original "
                                  "bundle") from None
            files = sorted(path.rglob("*.bento")) if path.is_dir() else [path]
            if len(files) != 1:
                raise Refused(f"{name} version {version} does not hold exactly one .bento", where=where,
                              fix="do not serve it; restore the registry's artifacts from a backup")
            return files[0].read_bytes()

    # -- state -------------------------------------------------------------------------------------------------

    def current_version(self, pilot: str) -> str | None:
        """The version the `production` alias names now (None: nothing in production, or no registered model
        yet). The store failing raises: it never reads as a withdrawal (the watcher would stop serving)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(registered_model_name(pilot), ALIAS).version)
        except MlflowException as exc:
            if absent(exc) or exc.error_code == "INVALID_PARAMETER_VALUE":  # no such model, or no such alias
                return None
            raise

    def history(self, pilot: str) -> list[dict]:
        """Every production move of `pilot`, oldest first (chain verified)."""
        return self.chain(pilot).entries()

    def in_service(self, pilot: str) -> str | None:
        """The version the trail's last move put in production (None: none yet, or withdrawn): the record the
        alias must agree with."""
        return trail_version(self.history(pilot))

    def record_measures(self, pilot: str, summary: dict) -> Path | None:
        """Draw the In service block of the version `testbed monitor` measured (`summary`) on its page, with
        when the trail's moves took it out of production: a server goes on serving the old version until the
        new one has started, and measures taken then must not show it in service again."""
        return refresh_scorecard(self.ws, self.tracker, summary["submission"],
                                 {**summary, "until": left_at(self.history(pilot), summary["submission"])})

    def resolve(self, pilot: str) -> Approved:
        """What `testbed serve` may serve: the alias's version, when the trail's last move put it there, checked
        again like a promotion."""
        version, recorded = self.current_version(pilot), self.in_service(pilot)
        if version is None and recorded is None:
            raise NotFound(f"pilot {pilot} has no production version", where=f"models:/{registered_model_name(pilot)}"
                           f"@{ALIAS}", fix="an operator promotes one: `testbed promote SUBMISSION --by NAME`")
        if version != recorded:  # an alias removed by hand too: the trail still says what was put in production
            raise Refused(f"the production alias names {'version ' + version if version else 'no version'}, but "
                          "the trail's last move put "
                          f"{'version ' + recorded if recorded else 'nothing'} in production: the alias was moved "
                          "outside the testbed, or a move was cut short",
                          where=f"models:/{registered_model_name(pilot)}@{ALIAS}",
                          fix=f"an operator repeats the move (`testbed promote SUBMISSION --by NAME` or "
                          f"`testbed rollback {pilot} --by NAME`); `testbed production {pilot}` shows both")
        submission = self.submission_of(pilot, version)
        if not submission:
            raise Refused(f"version {version} carries no testbed.submission tag", fix="promote with `testbed promote`")
        return self.approved(submission, version)

    def submission_of(self, pilot: str, version: str) -> str | None:
        """The submission whose bundle registry version `version` of `pilot` holds (its `testbed.submission` tag)."""
        return self.client.get_model_version(registered_model_name(pilot), version).tags.get("testbed.submission")

    # -- moves -------------------------------------------------------------------------------------------------

    def promote(self, submission: str, *, by: str, note: str = "") -> tuple[dict | None, Approved]:
        """Move `production` to the submission's version; the trail entry (None when it already was there)."""
        by = _operator(by)
        pilot = self.store.get(submission).pilot
        with self.chain(pilot).locked() as txn:  # checked under the lock: nothing moves in between
            ok = self.approved(submission)
            alias, recorded = self.current_version(pilot), trail_version(txn.entries)
            if alias == recorded == ok.version:
                return None, ok
            entry = self._move(txn, pilot, "promote", ok, by, note, recorded, alias)
        self._pages(txn.entries)
        return entry, ok

    def rollback(self, pilot: str, *, by: str, note: str = "") -> tuple[dict, list[str]]:
        """Move `production` back to the previous version that is still approved (skipping the others, with the
        reasons returned: refused, or its submission or review trail gone or damaged); with none left, withdraw it
        (nothing in production). Returns the entry and skips."""
        by = _operator(by)
        skipped: list[str] = []
        with self.chain(pilot).locked() as txn:  # the trail says what is in service, whatever the alias says
            stack, alias = replay(txn.entries), self.current_version(pilot)
            previous = trail_version(txn.entries)
            if not stack or previous is None:
                raise Refused(f"pilot {pilot} has nothing in production to roll back",
                              fix="promote a submission first: `testbed promote SUBMISSION --by NAME`")
            for earlier in reversed(stack[:-1]):
                if earlier["version"] == previous:
                    continue
                try:
                    target = self.approved(earlier["submission"], earlier["version"])
                    break
                except (Refused, NotFound, AuditError) as why:  # not approved, or no longer shown to be: skipped
                    skipped.append(f"version {earlier['version']} ({earlier['submission']}): {why.problem}")
            else:
                target = None
            entry = self._move(txn, pilot, "rollback", target, by, note, previous, alias)
        self._pages(txn.entries)
        return entry, skipped

    def _pages(self, entries: list[dict]) -> None:
        """The scorecard pages after the trail's last move (`entries[-1]`): the version the move before it had put
        in production says until when it served, the one put in (back) no longer does. The move stands whatever
        happens here (a warning says what to run)."""
        from mlflow.exceptions import MlflowException

        for submission in dict.fromkeys(e["submission"] for e in entries[-2:]):  # the one that left, the one put in
            if not submission:
                continue
            try:
                mark_in_service(self.ws, self.tracker, submission, left_at(entries, submission))
            except (TestbedError, OSError, MlflowException) as exc:
                warnings.warn(f"the scorecard page of {submission} was not updated after the move "
                              f"({' '.join(str(exc).split())[:300]}); `testbed scorecard {submission} --restore` "
                              "draws it again", stacklevel=3)

    def _move(self, txn, pilot: str, action: str, ok: Approved | None, by: str, note: str,
              previous: str | None, alias: str | None) -> dict:
        """Set the alias and append the entry (`production_trail.write_move`), putting `ok` in service (None:
        nothing)."""
        put = None if ok is None else {"version": ok.version, "submission": ok.submission.id, "run_id": ok.run.run_id,
                                       "bundle_sha256": ok.sha256, "review_hash": ok.review.hash}
        return write_move(self.client, txn, pilot, action, put, by, note, previous, alias)


def _operator(by: str) -> str:
    """Who moves production: named in the trail, so never blank (nor able to pass for someone else)."""
    return person_name(by, "--by")
