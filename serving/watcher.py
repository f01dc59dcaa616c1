"""The production server's watcher: every `poll_s` it checks the served bundle (dead, stuck, caught trying what
the sandbox forbids) and the pilot's `production` alias (a promotion, a rollback, a withdrawal, a rejection of the
version in service), and starts, swaps or stops what is served accordingly. Only an approved bundle that the
production trail put in service is served; what cannot be confirmed approved is not. `ProductionServer`
inherits it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from sandbox.runner import classify
from testbed.errors import TestbedError, from_tracking_store

if TYPE_CHECKING:
    import threading

    from sandbox.service import SandboxedService
    from serving.proxy import Served
    from workflow.promote import Approved, Production

__all__ = ["Watcher", "observed"]


def observed(service: SandboxedService) -> tuple[str, str]:
    """The verdict an evaluation would give the served bundle now, with its reason, from what the sandbox's
    observers saw (`classify`: the network namespace's kernel counters, the harness paths its audit hook reported,
    a seccomp kill, the memory cgroup's OOM kills, its exit status), read live: `completed` while nothing is
    wrong. A bundle that behaves in evaluation and tries the forbidden in production is caught too. Processes the
    host's OOM killer stopped while the sandbox stayed under its own memory limit are said to be the machine's
    doing, as an evaluation says (`sandbox.runner`), unless it was caught trying the forbidden."""
    code = service.proc.poll() if service.proc else None
    evidence = service.evidence(live=True)
    verdict, reason = classify(returncode=code, timed_out=False, stopped_by_us=False, evidence=evidence)
    if evidence.host_oom_kills and verdict != "sandbox_violation":
        return "infrastructure", (f"the host ran out of memory: the kernel's OOM killer stopped "
                                  f"{evidence.host_oom_kills} process(es) of the sandbox while it stayed under its own "
                                  "memory limit, not the bundle's doing; give this machine more memory or run less "
                                  "beside the service")
    return verdict, reason


class _Refusal(NamedTuple):
    """A version of the alias the watcher refused to serve, checked again after `recheck_s`, or sooner when the
    production trail moves or (`review`) a new review of it is recorded."""

    version: str
    at: float
    """`time.monotonic()` of the refusal."""
    why: str
    moves: int
    """The production trail's length then (-1: it could not be read)."""
    review: tuple[str, str | None] | None = None
    """(its submission, the hash of the review in force then): a new review of it has it checked again at once."""


class Watcher:
    """The watcher's half of `ProductionServer`: `check`, run every `poll_s` by `_watch`."""

    pilot: str
    model: str
    served: Served | None
    reason: str
    production: Production
    poll_s: float
    recheck_s: float
    restart_s: float
    log: Callable[[str], None]
    _refused: _Refusal | None
    """The alias's version the watcher refused, and what would have it checked again before `recheck_s`."""
    _violated: dict[str, str]
    """Versions caught trying what the sandbox forbids (`observed`), and what: never served again by this server,
    whatever the alias says."""
    _stop: threading.Event
    _launch: Callable[[Approved], Served]
    """Start an approved version in the sandbox (raises TestbedError: it cannot be served)."""
    _swap: Callable[..., None]
    """`_swap(new, reason)`: serve `new` (None: nothing, for `reason`) and stop what was served."""
    _crashed: Callable[..., None]
    """`_crashed(served, why)`: `served` died or is stuck: 503 until it is started again."""

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - the watcher must survive a registry hiccup
                self.log(f"could not check the production alias ({exc}); will retry in {self.poll_s:g} s")

    def check(self) -> None:
        """One round of the watcher: notice a dead bundle, a promotion, a rollback, a withdrawal, or a rejection
        of the version in service (an evaluator's latest review of it, or a newer approval that no longer clears
        it, or a review trail that cannot be read: `_cleared`): only an approved bundle that the production trail
        put in service is served. A refused version is checked again when the production trail moves, when a new
        review of it is recorded, or after `recheck_s`."""
        served = self.served
        verdict, violation = observed(served.service) if served else ("completed", "")
        if served and verdict == "sandbox_violation":
            self._violated[served.version] = violation
            self._swap(None, f"version {served.version} was stopped: {violation}")
            self.log(f"SANDBOX VIOLATION by version {served.version} ({served.ok.submission.id}) in production: "
                     f"{violation}; stopped serving it, and this server will not serve it again: /readyz fails and "
                     f"requests get 503 until an operator rolls back (`testbed rollback {self.pilot} --by NAME`) or "
                     "promotes another version")
            return
        if served and not served.crashed and not served.service.alive():
            self._crashed(served)
        elif served and not served.crashed and served.hung():
            self._crashed(served, f"the served bundle (version {served.version}) answered no call for "
                                  f"{time.monotonic() - served.answered_at:.0f} s ({served.timed_out} timed out)")
            served.service.stop(grace_s=0)
        version = self.production.current_version(self.pilot)
        if served and version is not None and version != served.version and not served.crashed:
            why, said = self._cleared(served)  # kept while its successor cannot start: still only while approved
            if why:
                self._swap(None, why)
                self.log(f"{said}: stopped serving it; /readyz fails and requests get 503 until version {version} "
                         "starts")
                served = None
        if version in self._violated:  # never launched again; another version in service stays
            why = f"version {version} was stopped: {self._violated[version]}"
            if not served and self.reason != why:
                self._swap(None, why)
            return
        current = served.version if served else None
        if served and version == current and served.crashed:  # died: started again after restart_s
            if time.monotonic() < served.died_at + self.restart_s:
                return
        elif served and version == current:
            why, said = self._cleared(served)
            if why:
                self._refused = _Refusal(version, time.monotonic(), why, self._moves(),
                                         self._reviewed(served.ok.submission.id))
                self._swap(None, why)
                self.log(f"{said}: stopped serving it; /readyz fails and requests get 503 until an operator rolls "
                         f"back (`testbed rollback {self.pilot} --by NAME`) or promotes another version, or an "
                         "evaluator approves it again (served at the next check)")
            return
        if version is None:
            if served or self._refused:
                self._refused = None
                self._swap(None, f"{self.model} has no production version (withdrawn); waiting for a promotion")
                self.log(f"production of {self.pilot} was withdrawn: stopped serving "
                         f"{'version ' + current if current else 'nothing'}; /readyz fails and requests get 503 "
                         "until an operator promotes a version")
            return
        try:
            moves = self._moves(strict=True)
        except TestbedError as exc:  # the alias moved, and the trail cannot say to what: nothing is served
            why = f"the production trail cannot be read: {exc.problem}"
            self._refused = _Refusal(version, time.monotonic(), why, -1)
            if served or self.reason != why:
                self._swap(None, why)
                self.log(f"{why}; stopped serving {'version ' + current if current else 'nothing'} and starting "
                         f"nothing: /readyz fails and requests get 503 until an operator repeats the move "
                         f"(`testbed production {self.pilot}` says more)")
            return
        refused = self._refused
        if (refused and refused.version == version and refused.moves == moves
                and time.monotonic() < refused.at + self.recheck_s
                and (refused.review is None or self._reviewed(refused.review[0]) == refused.review)):
            return
        try:
            ok = self.production.resolve(self.pilot)
            new = self._launch(ok)
        except TestbedError as exc:  # checked again sooner should its submission get a new review
            self._refused = _Refusal(version, time.monotonic(), exc.problem, moves, self._version_reviewed(version))
            if not served:
                self._swap(None, f"refusing to serve version {version}: {exc.problem}")
            if refused is None or (refused.version, refused.why) != (version, exc.problem):  # said once
                still = f"still serving version {current}" if served and not served.crashed else "nothing is served"
                self.log(f"refusing to serve version {version}: {exc.problem}; {still}")
            return
        if self._moved_meanwhile(version, moves):  # e.g. rolled back while it started: never served, not even briefly
            new.close(drain_s=0)
            self.log(f"version {version} started, but production moved while it did (or the server is stopping): "
                     "not serving it; checking again")
            return
        self._refused = None
        self._swap(new)
        if served and served.crashed and ok.version == current:
            self.log(f"started version {ok.version} ({ok.submission.id}) again after it exited; serving it")
        else:
            self.log(f"now serving {self.model} version {ok.version} ({ok.submission.id}), was "
                     f"{'version ' + current if current else 'nothing'}")

    def _moved_meanwhile(self, version: str, moves: int) -> bool:
        """Whether, since this check read them, the alias or the trail moved or the server began to stop (a
        start takes seconds to minutes); True when the store cannot say."""
        try:
            return (self._stop.is_set() or self.production.current_version(self.pilot) != version
                    or self._moves(strict=True) != moves)
        except Exception:  # noqa: BLE001 - not known to be current: the next check decides
            return True

    def _moves(self, strict: bool = False) -> int:
        """How many moves the production trail holds (it moved: a refused version is checked again); -1 when it
        cannot be read, unless `strict` (then the refusal is raised)."""
        try:
            return len(self.production.history(self.pilot))
        except TestbedError:
            if strict:
                raise
            return -1

    def _version_reviewed(self, version: str) -> tuple[str, str | None] | None:
        """`_reviewed` of the submission registry version `version` holds; None when that cannot be read (the
        refusal is then checked again after `recheck_s`, or when the trail moves)."""
        try:
            submission = self.production.submission_of(self.pilot, version)
        except Exception as exc:  # noqa: BLE001 - the registry failing: the refusal stands as it is
            if not (isinstance(exc, TestbedError) or from_tracking_store(exc)):
                raise
            return None
        return self._reviewed(submission) if submission else None

    def _reviewed(self, submission: str) -> tuple[str, str | None]:
        """(submission, the hash of the review in force of its official evaluation): a new review changes it (the
        hash None when there is none, or it cannot be read)."""
        try:
            latest = self.production.review_of(submission)
        except TestbedError:
            latest = None
        return submission, latest.hash if latest is not None else None

    def _cleared(self, served: Served) -> tuple[str, str]:
        """Why the version in service may no longer be served, and the log line's account of it ("" when it may):
        its latest review rejects it, a newer approval no longer clears it as a promotion checks it (e.g. without
        the override of a gate it failed), or its review trail cannot be read (cut, or the run's tags a review
        ahead of it): what cannot be confirmed approved is not served. A registry hiccup raises (served on)."""
        version = served.version
        try:
            review = self.production.book.latest(served.ok.submission.id, served.ok.run)
            if review is not None and review.decision != "approve":
                return (f"version {version} ({review.submission}) was rejected after its promotion",
                        f"version {version} ({review.submission}) was rejected by {review.by} at {review.at}")
            known = served.ok.review.hash if served.ok.review is not None else None
            if (review.hash if review is not None else None) != known:  # a new review: checked as a promotion is
                served.ok = self.production.approved(served.ok.submission.id, version)
        except TestbedError as exc:
            return (f"version {version} ({served.ok.submission.id}) can no longer be served: {exc.problem}",
                    f"version {version} ({served.ok.submission.id}) can no longer be served ({exc.problem})")
        return "", ""
