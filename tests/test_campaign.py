"""Campaigns (unit level, with the doubles): every pending submission once, a rerun only what is unfinished,
infrastructure failures retried and recorded, a bundle's failure a verdict, a killed driver leaves nothing
that looks finished."""

import errno
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
import yaml

from evaluation.families import open_family
from evaluation.tracking_memory import MemoryTracker
from testbed.errors import InfrastructureFailure, ResourceUnavailable
from tests.conftest import FORECAST_ROUTE
from tests.doubles import FakeSandbox
from tests.test_defensible import LOOKUP_VENDOR, bento, last_day
from workflow.campaign import pending_submissions, run_campaign
from workflow.submissions import SubmissionStore


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    """A retry is placed at once here, unless a test says otherwise (a real campaign waits before each)."""
    import workflow.campaign_driver

    monkeypatch.setattr(workflow.campaign_driver, "RETRY_BACKOFF_S", 0.0)


@pytest.fixture
def subs(ws, tmp_path, bike_spec):
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(yaml.safe_dump(LOOKUP_VENDOR))
    store = SubmissionStore(ws)
    return [store.submit(bike_spec, bento(tmp_path, [FORECAST_ROUTE], name=f"v{i}"), vendor)[0] for i in range(3)]


def test_the_store_vouches_for_the_bytes_it_inspected(ws, subs, monkeypatch):
    """The store keeps the bento.yaml it read at submission: a campaign then does not decompress the archive
    again on the driver (the sandbox's import checks every member as it unpacks anyway)."""
    import sandbox.bundle

    store = SubmissionStore(ws)
    sha, manifest = store.vetted(subs[0].id)
    assert sha == subs[0].bundle_sha256 and f"{yaml.safe_load(manifest)['name']}:" in subs[0].bento_tag
    monkeypatch.setattr(sandbox.bundle, "_open", lambda *a: pytest.fail("decompressed again"))
    items = run_campaign([subs[0]], executor=FakeSandbox(last_day), tracker=MemoryTracker(), ws=ws)
    assert [i.status for i in items] == ["evaluated"]


def test_a_stored_bundle_swapped_after_submission_is_never_evaluated(ws, subs):
    """Other bytes in a submission's place (another vendor's bundle copied over it) are refused, so they never
    get an evaluation under that submission's id."""
    store = SubmissionStore(ws)
    store.bundle(subs[0].id).write_bytes(store.bundle(subs[1].id).read_bytes())
    tracker = MemoryTracker()
    items = run_campaign([subs[0]], executor=FakeSandbox(last_day), tracker=tracker, ws=ws)
    assert items[0].status == "failed" and "is not the one submitted" in items[0].error and tracker.runs == {}


def test_the_bytes_hashed_are_the_bytes_run_and_logged_whatever_the_store_holds_meanwhile(ws, subs, monkeypatch):
    """The stored bundle is copied privately and hashed once: another bundle swapped into its place once it was
    hashed (and put back before the run is recorded) is neither run nor logged."""
    import gc
    import hashlib
    import tempfile
    from pathlib import Path

    import workflow.evaluate

    store = SubmissionStore(ws)
    stored, other = store.bundle(subs[0].id), store.bundle(subs[1].id).read_bytes()
    original = stored.read_bytes()

    def swapped_once_hashed(*args):
        stored.write_bytes(other)
        return open_family(*args)

    class PutBack(FakeSandbox):
        def run(self, job):
            stored.write_bytes(original)
            return super().run(job)

    monkeypatch.setattr(workflow.evaluate, "open_family", swapped_once_hashed)
    tracker, sandbox = MemoryTracker(), PutBack(last_day)
    copies = set(Path(tempfile.gettempdir()).glob("testbed-bundle-*"))
    [item] = run_campaign([subs[0]], executor=sandbox, tracker=tracker, ws=ws)
    gc.collect()
    assert set(Path(tempfile.gettempdir()).glob("testbed-bundle-*")) == copies  # the private copy is gone
    assert item.status == "evaluated"
    assert hashlib.sha256(sandbox.jobs[0].bundle).hexdigest() == subs[0].bundle_sha256
    logged = tracker.runs[item.run_id].artifacts[f"bento/{stored.name}"].read_bytes()
    assert hashlib.sha256(logged).hexdigest() == subs[0].bundle_sha256


class Flaky(FakeSandbox):
    """A placement whose first `failures` submissions die with the machinery (as a killed Ray worker does)."""

    def __init__(self, failures: int, **kw):
        super().__init__(last_day, **kw)
        self.failures, self.submitted = failures, 0

    def submit(self, job):
        self.submitted += 1
        if self.submitted <= self.failures:
            future = Future()
            future.set_exception(InfrastructureFailure("WorkerCrashedError: the worker died", where="Ray"))
            return future
        return super().submit(job)


def test_a_campaign_evaluates_each_pending_submission_once_and_a_rerun_nothing(ws, subs):
    tracker = MemoryTracker()
    store = SubmissionStore(ws)
    first = pending_submissions(store, tracker, pilot="bike-demand").todo
    items = run_campaign(first[:2], executor=FakeSandbox(last_day), tracker=tracker, ws=ws)
    assert [i.status for i in items] == ["evaluated", "evaluated"] and all(i.run_id for i in items)
    todo, done, _ = pending_submissions(store, tracker, pilot="bike-demand")
    assert [s.id for s in todo] == [first[2].id] and len(done) == 2
    run_campaign(todo, executor=FakeSandbox(last_day), tracker=tracker, ws=ws)
    assert pending_submissions(store, tracker, pilot="bike-demand")[0] == []
    official = tracker.official_runs("bike-demand")
    assert sorted(r.tags["testbed.submission"] for r in official) == sorted(s.id for s in subs)
    assert len(tracker.runs) == 3  # nothing evaluated twice
    # listed explicitly, an officially evaluated submission is skipped, not evaluated again
    todo, done, _ = pending_submissions(store, tracker, ids=[subs[0].id, subs[0].id])
    assert todo == [] and [s.id for s in done] == [subs[0].id]


def test_infrastructure_failures_are_retried_and_recorded(ws, subs):
    tracker = MemoryTracker()
    items = run_campaign(subs[:1], executor=Flaky(failures=2), tracker=tracker, ws=ws, retries=2)
    assert items[0].status == "evaluated" and len(items[0].retries) == 2
    run = tracker.runs[items[0].run_id]
    assert run.params["campaign_retries"].count("WorkerCrashedError") == 2 and run.status == "FINISHED"


@pytest.mark.parametrize("kind", ["memory", pytest.param("mlflow", marks=pytest.mark.slow)])
def test_spent_retries_are_recorded_as_a_failed_run_that_is_no_evaluation(ws, subs, bike_spec, kind):
    """Once its retries are spent, the machinery's failure is in the tracking store for operators to see: a
    FAILED run naming each attempt, never official, so nothing ranks, audits or scores it, and a rerun
    evaluates the submission (the failure was not the vendor's)."""
    from evaluation.leaderboard import leaderboard_rows
    from evaluation.tracking import MlflowTracker
    from testbed.errors import NotFound
    from workflow.audit import audit_submission

    tracker = MemoryTracker() if kind == "memory" else MlflowTracker(ws)
    items = run_campaign(subs[:1], executor=Flaky(failures=2), tracker=tracker, ws=ws, retries=1)
    assert items[0].status == "failed" and len(items[0].retries) == 1
    assert "failed on 2 attempt(s), no retry left" in items[0].error and items[0].run_id in items[0].error
    assert "\n  fix: " in items[0].error and "evaluates it again" in items[0].error  # the whole message
    if kind == "memory":
        run = tracker.runs[items[0].run_id]
        status, tags, params = run.status, run.tags, run.params
    else:
        run = tracker.client.get_run(items[0].run_id)
        status, tags, params = run.info.status, run.data.tags, run.data.params
    assert status == "FAILED" and tags["testbed.official"] == "false" and tags["testbed.submission"] == subs[0].id
    assert "WorkerCrashedError" in tags["testbed.failure"] and params["campaign_retries"].startswith("attempt 1: ")
    assert params["campaign_failure"].startswith("attempt 2: WorkerCrashedError")
    store = SubmissionStore(ws)
    assert tracker.official_run("bike-demand", subs[0].id) is None and leaderboard_rows(bike_spec, tracker) == []
    assert store.scorecard(subs[0].id) is None
    with pytest.raises(NotFound, match="no official evaluation to audit"):
        audit_submission(subs[0].id, ws=ws, tracker=tracker)
    todo = pending_submissions(store, tracker, pilot="bike-demand").todo
    assert subs[0].id in [s.id for s in todo]
    items = run_campaign(subs[:1], executor=FakeSandbox(last_day), tracker=tracker, ws=ws)  # the rerun
    assert items[0].status == "evaluated" and tracker.official_run("bike-demand", subs[0].id).run_id == items[0].run_id
    assert [r["run_id"] for r in leaderboard_rows(bike_spec, tracker)] == [items[0].run_id]
    assert audit_submission(subs[0].id, ws=ws, tracker=tracker).ok


@pytest.mark.filterwarnings("ignore:no MLflow store")  # the double keeps no SQLite file there
def test_a_failure_record_the_tracking_store_refuses_fails_that_submission_alone(ws, subs):
    """Spent retries are recorded as a FAILED run; the store refusing that write stopped the whole campaign (the
    others' jobs cancelled, no summary), as a refused evaluation did."""
    from mlflow.exceptions import MlflowException

    class Refusing(MemoryTracker):
        def record_failure(self, *args):
            raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 503")

    class FirstDies(Flaky):
        def submit(self, job):  # the first bundle placed dies with the machinery on each attempt
            self.doomed = getattr(self, "doomed", job.bundle)
            return super().submit(job) if job.bundle == self.doomed else FakeSandbox.submit(self, job)

    tracker = Refusing()
    items = run_campaign(subs, executor=FirstDies(failures=2), tracker=tracker, ws=ws, retries=1)
    [failed] = [i for i in items if i.status == "failed"]
    assert sorted(i.status for i in items) == ["evaluated", "evaluated", "failed"] and len(failed.retries) == 1
    assert "the tracking store failed while recording that the machinery failed on every attempt (attempt 2: " \
           "WorkerCrashedError" in failed.error and "\n  fix: " in failed.error
    assert len(tracker.official_runs("bike-demand")) == 2


def test_a_retry_waits_a_growing_bounded_while(ws, subs, monkeypatch):
    """A retry was placed the moment the machinery's failure returned: a flapping node or cluster spent every
    retry within a second. It now waits `RETRY_BACKOFF_S`, doubled at each retry up to `RETRY_BACKOFF_MAX_S`."""
    import workflow.campaign_driver

    monkeypatch.setattr(workflow.campaign_driver, "RETRY_BACKOFF_S", 0.2)
    monkeypatch.setattr(workflow.campaign_driver, "RETRY_BACKOFF_MAX_S", 0.3)
    placed = []

    class Timed(Flaky):  # when each job is handed over (the double then runs it before `submit` returns)
        def submit(self, job):
            placed.append(time.monotonic())
            return super().submit(job)

    tracker = MemoryTracker()
    [item] = run_campaign(subs[:1], executor=Timed(failures=4), tracker=tracker, ws=ws, retries=4)
    assert item.status == "evaluated" and len(item.retries) == 4
    gaps = [b - a for a, b in zip(placed, placed[1:], strict=False)]
    assert len(gaps) == 4 and gaps[0] >= 0.2 and min(gaps[1:]) >= 0.3, gaps  # 0.2, 0.4, 0.8, 1.6 s: capped
    assert max(gaps) < 1.2, gaps  # never the uncapped 1.6 s
    assert tracker.runs[item.run_id].params["campaign_retries"].count("WorkerCrashedError") == 4


class Later(FakeSandbox):
    """The first job placed dies with the machinery at once; the others' results are given 1 s after they were
    placed, from another thread, as Ray's are."""

    def __init__(self):
        super().__init__(last_day)
        self.submitted = 0

    def submit(self, job):
        self.submitted += 1
        future, answer = Future(), super().submit(job)
        if self.submitted == 1:
            future.set_exception(InfrastructureFailure("NodeDiedError: the node died", where="Ray"))
        else:
            threading.Timer(1.0, future.set_result, [answer.result()]).start()
        return future


def test_the_other_jobs_results_are_collected_while_a_retry_waits(ws, subs, monkeypatch):
    """The wait before a retry holds up that job alone: the campaign collects the others' results meanwhile."""
    import workflow.campaign_driver

    monkeypatch.setattr(workflow.campaign_driver, "RETRY_BACKOFF_S", 2.0)
    placed, collected = [], []

    def updated(item):
        if item.status == "running" and item.submission == subs[0].id:
            placed.append(time.monotonic())
        if item.status == "scoring" and item.submission == subs[1].id:
            collected.append(time.monotonic())

    items = run_campaign(subs[:2], executor=Later(), tracker=MemoryTracker(), ws=ws, retries=1, on_update=updated)
    assert [i.status for i in items] == ["evaluated"] * 2 and len(items[0].retries) == 1
    assert len(placed) == 2 and placed[1] - placed[0] >= 2.0, placed
    assert collected[0] < placed[1], (collected, placed)  # returned 1 s after it was placed, not held up by the wait


def test_an_unexpected_error_placing_one_job_fails_it_alone_recorded_and_the_others_are_evaluated(ws, subs):
    """An exception of no TestbedError's from the executor's `submit` (a bug of the harness's, or Ray's own
    failing under it) stopped the whole campaign with a traceback, the jobs placed cancelled. That one now fails
    as the machinery's failure, recorded as a FAILED run, saying what it was and what to do."""

    class Broken(FakeSandbox):
        def submit(self, job):
            if hashlib.sha256(job.bundle).hexdigest() == subs[1].bundle_sha256:
                raise KeyError("CPU")
            return super().submit(job)

    tracker = MemoryTracker()
    items = run_campaign(subs, executor=Broken(last_day), tracker=tracker, ws=ws, retries=2)
    assert [i.status for i in items] == ["evaluated", "failed", "evaluated"]
    failed = items[1]
    assert "KeyError: 'CPU'" in failed.error and failed.run_id in failed.error and "fix: " in failed.error
    assert failed.retries == []  # not the kind of failure a retry mends
    run = tracker.runs[failed.run_id]
    assert run.status == "FAILED" and "KeyError: 'CPU'" in run.params["campaign_failure"]
    assert 'raise KeyError("CPU")' in run.params["campaign_traceback"]  # where it came from, for whoever fixes it
    assert sorted(r.tags["testbed.submission"] for r in tracker.official_runs("bike-demand")) == sorted(
        [subs[0].id, subs[2].id])


def test_an_unexpected_error_of_a_placed_job_fails_it_alone_recorded(ws, subs):
    """The same exception raised by a job's future (a bug of the harness's on the node: `_translate` leaves it
    as it is) failed that item alone already, but unrecorded and with no fix; it is now as when placing it."""
    import ray

    class Buggy(FakeSandbox):
        def submit(self, job):
            if hashlib.sha256(job.bundle).hexdigest() != subs[0].bundle_sha256:
                return super().submit(job)
            future = Future()
            future.set_exception(ray.exceptions.RayTaskError("_run_on_node", "Traceback ...",
                                                             KeyError("phase")).as_instanceof_cause())
            return future

    tracker = MemoryTracker()
    items = run_campaign(subs[:2], executor=Buggy(last_day), tracker=tracker, ws=ws, retries=2)
    assert [i.status for i in items] == ["failed", "evaluated"] and items[0].retries == []
    assert "RayTaskError(KeyError): 'phase'" in items[0].error and items[0].run_id in items[0].error
    assert "fix: " in items[0].error
    assert tracker.runs[items[0].run_id].status == "FAILED"


@pytest.mark.parametrize("where", ["writing", "unpacking"])
def test_a_bundle_larger_than_the_nodes_temporary_space_is_retried_retries_times_then_recorded(ws, subs, where):
    """The node's disk filling while the bundle is written there (`SandboxedService._import`: a raw OSError, the
    Ray task's failure, which `_translate` makes the machinery's) or unpacked (`import_bundle`: `_machine`'s
    InfrastructureFailure): every attempt fails alike, and the campaign places the job `retries` + 1 times in
    all, then records a FAILED run; it never loops."""
    import ray

    from sandbox.bundle import _machine
    from sandbox.executor import _translate

    class Full(FakeSandbox):
        def submit(self, job):
            self.jobs.append(job)
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/tmp/testbed-run-1/bundle.bento")
            cause = full if where == "writing" else _machine(full)
            future = Future()
            future.set_exception(_translate(ray.exceptions.RayTaskError("_run_on_node", "Traceback ...",
                                                                        cause).as_instanceof_cause()))
            return future

    tracker, executor = MemoryTracker(), Full(last_day)
    [item] = run_campaign(subs[:1], executor=executor, tracker=tracker, ws=ws, retries=2)
    assert item.status == "failed" and len(item.retries) == 2 and len(executor.jobs) == 3
    assert "no retry left" in item.error and "No space left on device" in item.error
    assert tracker.runs[item.run_id].status == "FAILED"


def test_a_bundles_own_failure_is_a_verdict_never_retried(ws, subs):
    executor = FakeSandbox(last_day, verdict="crashed")
    items = run_campaign(subs[:1], executor=executor, tracker=MemoryTracker(), ws=ws)
    assert items[0].status == "evaluated" and items[0].verdict == "crashed" and not items[0].passed
    assert items[0].retries == [] and len(executor.jobs) == 1


class Stranding(FakeSandbox):
    """Ray with the only node large enough lost while a job waited for it: Ray keeps such a job pending for ever
    (measured on a two-node loopback cluster: still pending 90 s after the node was killed). As
    `RayExecutor.submit` does, a job placed once no live node is large enough is refused at once. `died`: the
    job was running on that node (its future raises NodeDiedError's `InfrastructureFailure`) rather than
    waiting for it (failed by `fail_stranded`)."""

    def __init__(self, died: bool = False):
        super().__init__(last_day)
        self.waiting: list[Future] = []
        self.died, self.lost, self.placed = died, False, 0

    def submit(self, job):
        if self.lost:
            raise ResourceUnavailable("the pilot asks for 4096 MB of memory, the largest Ray node has 2048 MB of "
                                      "memory", where="Ray at 10.0.0.5:6379",
                                      fix="set RAY_ADDRESS to a cluster with a node that large, or (the city) lower "
                                          "`resources` in the pilot spec")
        self.placed += 1
        self.waiting.append(Future())
        if self.died:
            self.lost = True
            self.waiting[-1].set_exception(InfrastructureFailure("NodeDiedError: the node died", where="Ray"))
        return self.waiting[-1]

    def fail_stranded(self):
        self.lost = True
        for future in self.waiting:
            if not future.done():
                future.set_exception(InfrastructureFailure("no live Ray node has the 4096 MB of memory", where="Ray"))
        self.waiting = []


@pytest.mark.parametrize("died", [False, True], ids=["waiting", "running"])
def test_a_job_no_live_node_can_run_any_more_fails_and_the_campaign_ends(ws, subs, monkeypatch, died):
    """It waited for ever: the campaign never ended, its table saying `running`. Now the campaign asks the
    executor, while no job returns, to fail such jobs: infrastructure, retried and then recorded as such. Its
    retry is refused at placement (no live node is large enough): that refusal is the lost node's too, never the
    city's `resources` (it was placed before), so the retries are spent and a FAILED run records it; it was a
    plain failure, nothing recorded, whose fix told the city to lower `resources`. The same for a job whose node
    died under it when that node was the only one large enough."""
    import threading

    import workflow.campaign_driver

    monkeypatch.setattr(workflow.campaign_driver, "STRANDED_CHECK_S", 0.1)
    tracker, items, executor = MemoryTracker(), [], Stranding(died)
    runner = threading.Thread(target=lambda: items.extend(run_campaign(
        subs[:1], executor=executor, tracker=tracker, ws=ws, retries=1)), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive(), "the campaign waited for ever on a job no node can run"
    [item] = items
    assert item.status == "failed" and len(item.retries) == 1 and executor.placed == 1
    assert ("NodeDiedError" if died else "no live Ray node") in item.retries[0]
    assert "no retry left" in item.error and "lower `resources`" not in item.error
    assert item.run_id in item.error and "check the Ray nodes" in item.error
    run = tracker.runs[item.run_id]
    assert run.status == "FAILED" and tracker.official_runs("bike-demand") == []
    assert "largest Ray node has 2048 MB" in run.params["campaign_failure"]
    assert run.params["campaign_retries"] == item.retries[0]
    executor.placed, tracker = 0, MemoryTracker()  # no node ever took a job that large: the spec's, not retried
    [item] = run_campaign(subs[1:2], executor=executor, tracker=tracker, ws=ws, retries=1)
    assert item.status == "failed" and item.retries == [] and "lower `resources`" in item.error
    assert executor.placed == 0 and tracker.runs == {}


def test_the_ray_executor_fails_a_waiting_job_that_no_live_node_is_large_enough_for(monkeypatch):
    import ray

    import sandbox.executor

    cancelled = []
    monkeypatch.setattr(ray, "cancel", lambda ref, force: cancelled.append(ref))
    monkeypatch.setattr(sandbox.executor, "_largest_node", lambda: {"CPU": 4.0, "memory": float(6 << 30)})
    executor, big, small = sandbox.executor.RayExecutor(), Future(), Future()
    executor._refs = {big: ("big-task", {"CPU": 1, "GPU": 0, "memory": 8 << 30}),
                      small: ("small-task", {"CPU": 1, "GPU": 0, "memory": 4 << 30})}
    executor.fail_stranded()
    with pytest.raises(InfrastructureFailure, match="no live Ray node has the 8192 MB of memory the job asks for"):
        big.result(timeout=0)
    assert not small.done() and cancelled == ["big-task"] and list(executor._refs) == [small]

    def unreachable():
        raise ConnectionError("GCS not reachable")  # the head busy or restarting: `ray.nodes()` raises

    monkeypatch.setattr(sandbox.executor, "_largest_node", unreachable)
    later = Future()
    executor._refs[later] = ("later-task", {"CPU": 1, "GPU": 0, "memory": 8 << 30})
    executor.fail_stranded()  # neither raises out of the campaign nor fails a job on a question left unanswered
    assert not later.done() and list(executor._refs) == [small, later] and cancelled == ["big-task"]


def test_one_evaluation_waiting_for_a_lost_node_fails_rather_than_waiting_for_ever(monkeypatch):
    """`testbed evaluate ID` (`RayExecutor.run`) waited for ever on a job the nodes left cannot run."""
    import ray

    import sandbox.executor

    executor, waiting = sandbox.executor.RayExecutor(), Future()

    def placed(job):
        executor._refs[waiting] = "task", {"CPU": 1, "GPU": 0, "memory": 8 << 30}
        return waiting

    monkeypatch.setattr(executor, "submit", placed)
    monkeypatch.setattr(sandbox.executor, "STRANDED_CHECK_S", 0.1)
    monkeypatch.setattr(sandbox.executor, "_largest_node", lambda: {"CPU": 4.0, "memory": float(6 << 30)})
    monkeypatch.setattr(ray, "cancel", lambda ref, force: None)
    with pytest.raises(InfrastructureFailure, match="no live Ray node has the 8192 MB of memory"):
        ThreadPoolExecutor(1).submit(executor.run, None).result(timeout=30)


def test_preparation_runs_a_bounded_way_ahead_and_each_evaluation_is_let_go_once_done(ws, subs, monkeypatch):
    """The driver prepared every job at once and kept each (its bundle's bytes, up to 1 GiB, and a private copy
    in the temporary folder) until the campaign returned: its memory grew with the campaign. Now preparation runs
    `PREPARE_AHEAD` jobs ahead of placement, a placed job's bytes are left to the executor (read again from the
    private copy, checked, should it be placed again), and an evaluation is let go once recorded."""
    import gc
    import hashlib
    import tempfile
    import threading
    import weakref
    from pathlib import Path

    import workflow.campaign_driver

    monkeypatch.setattr(workflow.campaign_driver, "PREPARE_AHEAD", 1)
    prepare, index = workflow.campaign_driver.prepare_evaluation, {s.id: i for i, s in enumerate(subs)}
    made, submitted, third_started, began, held = {}, [], threading.Event(), {}, []

    def counting(*args, submission, **kw):
        began[index[submission]] = len(submitted)  # how many jobs were placed when its preparation began
        if index[submission] == 2:
            third_started.set()
        prepared = prepare(*args, submission=submission, **kw)
        made[submission] = weakref.ref(prepared)
        return prepared

    class Counting(Flaky):  # the first job placed dies with the machinery once, and is placed again
        def submit(self, job):
            if not submitted:
                third_started.wait(timeout=1)  # a preparer running ahead unbounded gets to the third meanwhile
            submitted.append(job)
            return super().submit(job)

    def live() -> tuple[int, int]:
        gc.collect()
        return (sum(r() is not None for r in made.values()),
                len(list(Path(tempfile.gettempdir()).glob(f"testbed-bundle-{os.getpid()}-*"))))

    monkeypatch.setattr(workflow.campaign_driver, "prepare_evaluation", counting)
    def updated(item):
        if item.status == "running":  # placed: what the driver still holds of its bytes
            held.append(len(made[item.submission]().job.bundle))
        if item.status == "evaluated":
            seen.append(live())

    seen, executor = [], Counting(failures=1)
    items = run_campaign(subs, executor=executor, tracker=MemoryTracker(), ws=ws, retries=1, on_update=updated)
    assert [i.status for i in items] == ["evaluated"] * 3 and len(items[0].retries) == 1
    assert began[2] >= 1  # the third prepared only once the first was placed
    assert seen[-1] == (1, 1)  # when the last is recorded, only it is held (the others' copies removed too)
    assert held == [0, 0, 0, 0]  # a placed job's bytes are the executor's, not kept in the driver too
    ran = sorted(hashlib.sha256(job.bundle).hexdigest() for job in executor.jobs)  # the retried one's read again
    assert len(executor.jobs) == 3 and ran == sorted(s.bundle_sha256 for s in subs)


def test_a_job_placed_again_runs_only_the_bytes_first_hashed(ws, subs):
    """A retried job's bytes are read again from the evaluation's private copy: other bytes there are refused."""
    import tempfile
    from pathlib import Path

    class Tampered(Flaky):
        def submit(self, job):
            if self.submitted == 0:  # the first attempt dies; meanwhile the copy it was read from changes
                for copy in Path(tempfile.gettempdir()).glob(f"testbed-bundle-{os.getpid()}-*/*"):
                    copy.write_bytes(b"other bytes")
            return super().submit(job)

    tracker = MemoryTracker()
    [item] = run_campaign(subs[:1], executor=Tampered(failures=1), tracker=tracker, ws=ws, retries=1)
    assert item.status == "failed" and "the bundle changed since it was checked" in item.error and tracker.runs == {}


class KilledWhileLogging(MemoryTracker):
    """The driver dies (SIGKILL, power) after opening the run and before finishing it."""

    def finish(self, *args, **kw):
        raise KeyboardInterrupt


def test_a_driver_killed_mid_campaign_leaves_nothing_official_and_resume_makes_no_duplicate(ws, subs):
    tracker = KilledWhileLogging()
    with pytest.raises(KeyboardInterrupt):
        run_campaign(subs[:1], executor=FakeSandbox(last_day), tracker=tracker, ws=ws)
    assert [r.status for r in tracker.runs.values()] == ["RUNNING"]  # opened, never finished: not official
    assert tracker.official_runs("bike-demand") == []
    resumed = MemoryTracker()
    resumed.runs = tracker.runs  # the same store, read by the next `testbed evaluate --all`
    todo = pending_submissions(SubmissionStore(ws), resumed, pilot="bike-demand").todo
    assert subs[0].id in [s.id for s in todo]
    run_campaign(todo, executor=FakeSandbox(last_day), tracker=resumed, ws=ws)
    assert [r.tags["testbed.submission"] for r in resumed.official_runs("bike-demand")].count(subs[0].id) == 1


class StoreGlitch(MemoryTracker):
    """The tracking store refuses one write (a server restarting, a database another writer holds locked)."""

    def __init__(self):
        super().__init__()
        self.refused = 0

    def start(self, card, params):
        from mlflow.exceptions import MlflowException

        if not self.refused:
            self.refused += 1
            raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 503")
        return super().start(card, params)


@pytest.mark.filterwarnings("ignore:no MLflow store")  # the double keeps no SQLite file there
def test_a_write_the_tracking_store_refuses_fails_that_evaluation_alone(ws, subs):
    """It stopped the whole campaign (every other job cancelled, no summary); now the one evaluation fails, saying
    what and how to fix, the others are recorded, and a rerun evaluates it. A store gone altogether still stops
    the campaign at once, naming it, rather than each evaluation waiting on MLflow's retries."""
    import dataclasses

    from testbed.errors import ResourceUnavailable
    from tests.conftest import free_port

    gone = dataclasses.replace(ws, tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ResourceUnavailable, match="no MLflow tracking server answers"):
        run_campaign(subs, executor=FakeSandbox(last_day), tracker=StoreGlitch(), ws=gone)
    tracker = StoreGlitch()
    items = run_campaign(subs, executor=FakeSandbox(last_day), tracker=tracker, ws=ws)
    [failed] = [i for i in items if i.status == "failed"]
    assert sorted(i.status for i in items) == ["evaluated", "evaluated", "failed"]
    assert "the tracking store failed while recording the evaluation (MlflowException: API request" in failed.error
    assert f"MLFLOW_TRACKING_URI={ws.tracking_uri}" in failed.error and "\n  fix: " in failed.error
    assert len(tracker.official_runs("bike-demand")) == 2
    [again] = run_campaign(pending_submissions(SubmissionStore(ws), tracker, pilot="bike-demand").todo,
                           executor=FakeSandbox(last_day), tracker=tracker, ws=ws)
    assert again.submission == failed.submission and again.status == "evaluated"


class ReadGlitch(MemoryTracker):
    """The tracking store fails some reads of a submission's official run (`official_run`'s calls for it, in
    order: "fail" raises as MLflow does when a server restarts, "found" answers an official run another process
    finished meanwhile, anything else reads the store)."""

    def __init__(self, script: dict[str, list[str]]):
        super().__init__()
        self.script = script

    def official_run(self, pilot, submission):
        from types import SimpleNamespace

        from mlflow.exceptions import MlflowException

        steps = self.script.get(submission)
        step = steps.pop(0) if steps else "read"
        if step == "fail":
            raise MlflowException("API request to endpoint /api/2.0/mlflow/runs/search failed with error code 503")
        if step == "found":
            return SimpleNamespace(run_id="elsewhere", metrics={})
        return super().official_run(pilot, submission)


@pytest.mark.filterwarnings("ignore:no MLflow store")  # the double keeps no SQLite file there
def test_a_read_the_tracking_store_fails_fails_that_evaluation_alone(ws, subs):
    """Preparing a job reads the store (is there an official evaluation already?): a failed read there escaped
    as an MlflowException, and the campaign cancelled every placed job and ended with a traceback, no summary.
    So did a failed read while deciding whether an evaluation refused (its bundle swapped; another process
    finished it first) was `skipped` or `failed`. Now that one evaluation fails, saying what and how to fix, and
    the others are evaluated."""
    store = SubmissionStore(ws)
    store.bundle(subs[1].id).write_bytes(store.bundle(subs[2].id).read_bytes())  # refused as it is prepared
    tracker = ReadGlitch({subs[0].id: ["fail"], subs[1].id: ["read", "fail"]})
    items = run_campaign(subs, executor=FakeSandbox(last_day), tracker=tracker, ws=ws)
    assert [i.status for i in items] == ["failed", "failed", "evaluated"]
    assert "the tracking store failed while reading whether it has an official evaluation already " \
           "(MlflowException: API request" in items[0].error and "nothing was evaluated" in items[0].error
    assert f"MLFLOW_TRACKING_URI={ws.tracking_uri}" in items[0].error and "\n  fix: " in items[0].error
    assert "is not the one submitted" in items[1].error
    assert [r.tags["testbed.submission"] for r in tracker.official_runs("bike-demand")] == [subs[2].id]
    tracker = ReadGlitch({subs[0].id: ["read", "found", "fail"]})  # finished elsewhere, then the read fails
    [item] = run_campaign(subs[:1], executor=FakeSandbox(last_day), tracker=tracker, ws=ws)
    assert item.status == "failed" and "already has its official evaluation (MLflow run elsewhere" in item.error
    assert tracker.runs == {}


class Threaded(FakeSandbox):
    """Jobs answered concurrently from threads, as Ray tasks return: results arrive together."""

    def __init__(self):
        super().__init__(last_day)
        self.pool = ThreadPoolExecutor(4)

    def submit(self, job):
        return self.pool.submit(self.run, job)


@pytest.mark.slow
def test_several_evaluations_finishing_at_once_are_all_tracked_in_sqlite_once(ws, subs):
    """The real MLflow SQLite store: evaluations returning together are logged by the driver one after another,
    none lost ("database is locked" never happens), each exactly once."""
    from evaluation.tracking import MlflowTracker

    tracker = MlflowTracker(ws)
    items = run_campaign(subs, executor=Threaded(), tracker=tracker, ws=ws)
    assert [i.status for i in items] == ["evaluated"] * 3
    runs = tracker.client.search_runs([tracker.experiment_id("bike-demand")])
    assert sorted(r.data.tags["testbed.submission"] for r in runs) == sorted(s.id for s in subs)
    assert {r.info.status for r in runs} == {"FINISHED"} and all("total_score" in r.data.metrics for r in runs)


def test_the_campaign_command_evaluates_what_is_pending_and_a_rerun_skips_it(tmp_path, monkeypatch, bike_spec):
    """`testbed evaluate --all PILOT`, with the doubles in place of Ray and MLflow: a summary per submission."""
    import json

    from typer.testing import CliRunner

    import evaluation.tracking
    import sandbox.executor
    from cli.app import app
    from testbed.config import Workspace

    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))
    tracker = MemoryTracker()
    monkeypatch.setattr(evaluation.tracking, "MlflowTracker", lambda ws: tracker)
    monkeypatch.setattr(sandbox.executor, "RayExecutor", lambda: FakeSandbox(last_day))
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(yaml.safe_dump(LOOKUP_VENDOR))
    store = SubmissionStore(Workspace.from_env())
    ids = [store.submit(bike_spec, bento(tmp_path, [FORECAST_ROUTE], name=f"c{i}"), vendor)[0].id for i in range(2)]
    runner = CliRunner()
    first = runner.invoke(app, ["evaluate", "--all", "bike-demand", "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert sorted(i["submission"] for i in summary["items"] if i["status"] == "evaluated") == sorted(ids)
    monkeypatch.setattr(sandbox.executor, "RayExecutor", lambda: pytest.fail("nothing is pending: no Ray"))
    again = runner.invoke(app, ["evaluate", *ids])
    assert again.exit_code == 0 and again.stdout.count("│ skipped ") == 2
    assert "0 evaluated, 0 failed, 2 skipped" in again.stdout
    empty = runner.invoke(app, ["evaluate", "--all", "subway-ridership"])
    assert empty.exit_code == 0 and "subway-ridership has no submissions yet" in empty.stdout
    assert len(tracker.runs) == 2
    refused = runner.invoke(app, ["evaluate", "--all", "bike-demand", "--reevaluate", "--reason", "x"])
    assert refused.exit_code == 2 and "--reevaluate is for one" in refused.stderr


@pytest.fixture
def cli(tmp_path, monkeypatch, bike_spec):
    """`testbed evaluate` with the doubles for MLflow and Ray (`cli.executor`, a FakeSandbox by default), and
    three bike-demand submissions (`cli.ids`)."""
    from typer.testing import CliRunner

    import evaluation.tracking
    import sandbox.executor
    from cli.app import app
    from testbed.config import Workspace

    class Cli:
        tracker, executor = MemoryTracker(), FakeSandbox(last_day)

        def __call__(self, *args: str):
            return CliRunner().invoke(app, ["evaluate", *args])

    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))
    cli = Cli()
    monkeypatch.setattr(evaluation.tracking, "MlflowTracker", lambda ws: cli.tracker)
    monkeypatch.setattr(sandbox.executor, "RayExecutor", lambda: cli.executor)
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(yaml.safe_dump(LOOKUP_VENDOR))
    cli.store = SubmissionStore(Workspace.from_env())
    cli.ids = [cli.store.submit(bike_spec, bento(tmp_path, [FORECAST_ROUTE], name=f"j{i}"), vendor)[0].id
               for i in range(3)]
    return cli


def _cells(text: str) -> str:
    """A printed table's text with its borders and wrapping taken out (a wrapped cell reads as one line)."""
    return " ".join(text.replace("│", " ").split())


def test_a_campaign_with_a_failed_submission_exits_1_and_its_summary_says_what_and_how_to_fix(cli):
    """Under --json too (it exited 0); the title counts evaluated, failed and skipped apart; the error is whole,
    its fix included, in the JSON and in the table."""
    cli.executor = Flaky(failures=1)  # the first job placed dies with the machinery, and is not retried
    first = cli("--all", "bike-demand", "--json", "--retries", "0")
    assert first.exit_code == 1, first.output
    items = {i["submission"]: i for i in json.loads(first.stdout)["items"]}
    assert [i["status"] for i in items.values()].count("evaluated") == 2
    [failed] = [i for i in items.values() if i["status"] == "failed"]
    assert "WorkerCrashedError" in failed["error"] and "\n  fix: check the Ray nodes" in failed["error"]
    cli.executor = Flaky(failures=1)
    again = cli("--all", "bike-demand", "--retries", "0")  # the failed one is evaluated again; it fails again
    assert again.exit_code == 1, again.output
    table = _cells(again.stdout)
    assert "bike-demand: 0 evaluated, 1 failed, 2 skipped in" in table
    assert "fix: check the Ray nodes (`ray status`: lost nodes, memory); a rerun (`testbed evaluate --all " \
           "bike-demand`) evaluates it again" in table
    cli.executor = FakeSandbox(last_day)
    done = cli("--all", "bike-demand", "--json")
    assert done.exit_code == 0 and {i["status"] for i in json.loads(done.stdout)["items"]} == {"evaluated", "skipped"}


def test_one_evaluation_whose_ray_worker_died_says_to_run_it_again(cli):
    """Outside a campaign nothing retries the machinery's failure: its fix said `nothing to do: a campaign retries
    it`, where the only ones who read it (`testbed evaluate ID`, `testbed check`) had no evaluation and no retry."""
    import ray

    from sandbox.executor import _translate

    class Crashing(FakeSandbox):
        def run(self, job):
            raise _translate(ray.exceptions.WorkerCrashedError())

    cli.executor = Crashing(last_day)
    result = cli(cli.ids[0])
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.stderr.split())
    assert "WorkerCrashedError" in text and "fix: nothing was recorded: run the command again" in text
    assert "nothing to do" not in text and cli.tracker.runs == {}


def test_the_harness_failing_on_its_node_is_the_machinerys_failure():
    """A disk full or no memory left on the node under the testbed's harness (a bundle's own failures are verdicts
    inside the result) reached the caller as an unexplained `RayTaskError(OSError)`: a campaign never retried it
    and said nothing of the node. It is now the machinery's failure, naming its cause; a bug of the harness's
    (any other exception) stays what it is."""
    import errno

    import ray

    from sandbox.executor import _translate

    def raised(cause):
        return ray.exceptions.RayTaskError("_run_on_node", "Traceback ...", cause).as_instanceof_cause()

    full = _translate(raised(OSError(errno.ENOSPC, "No space left on device")))
    assert isinstance(full, InfrastructureFailure) and "[Errno 28] No space left on device" in full.problem
    assert "free disk" in full.fix and "run the command again" in full.fix
    assert isinstance(_translate(raised(MemoryError())), InfrastructureFailure)
    bug = raised(KeyError("phase"))
    assert _translate(bug) is bug


def test_the_inline_executor_says_so_as_ray_does(monkeypatch):
    """The test double for Ray (the job run in this process) gave the harness's OSError as it was: a campaign
    driven through it recorded a broken evaluation, where through Ray the same failure is retried."""
    import errno

    import sandbox.executor

    def disk_full(job):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sandbox.executor, "run_job", disk_full)
    future = sandbox.executor.InlineExecutor().submit(None)
    with pytest.raises(InfrastructureFailure, match="harness failed on this machine .*No space left") as failed:
        future.result(timeout=0)
    assert "free disk" in failed.value.fix and failed.value.where == "this machine"
    monkeypatch.setattr(sandbox.executor, "run_job", lambda job: {}[job])  # a bug of the harness's: as it is
    with pytest.raises(KeyError):
        sandbox.executor.InlineExecutor().run("phase")


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EDQUOT", "EIO"])
def test_the_nodes_disk_failing_while_the_bundle_unpacks_is_the_machinerys_failure(ws, subs, tmp_path, monkeypatch,
                                                                                  errno_name):
    """The node's disk filling (or its quota, or the disk failing) while the sandbox unpacked the bundle was a
    BundleError telling the vendor to re-export it: neither retried nor the machinery's. It is now an
    InfrastructureFailure (the archive is within its limits before anything is written), which a campaign
    retries; an error of the archive's own while unpacking stays the bundle's."""
    import errno
    import tarfile

    from sandbox.bundle import import_bundle
    from testbed.errors import BundleError

    failing = [getattr(errno, errno_name)]
    extract = tarfile.TarFile.extract

    def disk(self, *args, **kw):
        if failing:
            code = failing.pop()
            raise OSError(code, os.strerror(code), "/tmp/ray/session/bentoml/.import-x/models/m/model.pkl")
        return extract(self, *args, **kw)

    class Unpacking(FakeSandbox):  # unpacks the job's bundle as the sandbox service does on its node
        def run(self, job):
            path, home = tmp_path / f"job{len(self.jobs)}.bento", tmp_path / f"home{len(self.jobs)}"
            path.write_bytes(job.bundle)
            import_bundle(path, home)
            return super().run(job)

    monkeypatch.setattr(tarfile.TarFile, "extract", disk)
    executor = Unpacking(last_day)
    [item] = run_campaign(subs[:1], executor=executor, tracker=MemoryTracker(), ws=ws, retries=1)
    assert item.status == "evaluated" and len(item.retries) == 1 and len(executor.jobs) == 1
    assert os.strerror(getattr(errno, errno_name)) in item.retries[0] and "re-export" not in item.retries[0]
    failing.append(errno.EINVAL)  # not the machine's: the bundle's, as before
    with pytest.raises(BundleError, match="could not be unpacked"):
        import_bundle(SubmissionStore(ws).bundle(subs[0].id), tmp_path / "again")


def test_an_unreadable_submission_record_fails_alone_and_the_others_are_evaluated(cli):
    broken = cli.store.root / cli.ids[1] / "submission.json"
    broken.write_text("{not json")
    todo, done, unreadable = pending_submissions(cli.store, cli.tracker, pilot="bike-demand")
    assert sorted(s.id for s in todo) == sorted([cli.ids[0], cli.ids[2]]) and done == []
    assert [i.submission for i in unreadable] == [cli.ids[1]] and unreadable[0].status == "failed"
    assert pending_submissions(cli.store, cli.tracker, pilot="subway-ridership").unreadable == []  # another pilot's
    result = cli("--all", "bike-demand", "--json")
    assert result.exit_code == 1, result.output
    items = {i["submission"]: i for i in json.loads(result.stdout)["items"]}
    assert items[cli.ids[0]]["status"] == items[cli.ids[2]]["status"] == "evaluated"
    assert items[cli.ids[1]]["status"] == "failed" and str(broken) in items[cli.ids[1]]["error"]
    assert "fix: restore the file from a backup" in items[cli.ids[1]]["error"]
    named = cli(cli.ids[1], cli.ids[0])  # named ones too; the evaluated one is skipped
    assert named.exit_code == 1 and "0 evaluated, 1 failed, 1 skipped" in _cells(named.stdout)
    assert "Traceback" not in named.output


def test_a_submission_record_that_is_no_file_fails_alone_and_the_others_are_evaluated(ws, subs):
    """A folder (or anything else not a readable file) where a record belongs is listed by `ids()`, but `get()`
    said `no submission 'X' (known: X, ...)`, a NotFound that refused the whole `--all` campaign."""
    from testbed.errors import AuditError

    store, tracker = SubmissionStore(ws), MemoryTracker()
    broken = store.root / subs[1].id / "submission.json"
    broken.unlink()
    broken.mkdir()
    with pytest.raises(AuditError, match="the stored submission record cannot be read") as info:
        store.get(subs[1].id)
    assert str(broken) in str(info.value) and "fix: restore the file from a backup" in str(info.value)
    todo, done, unreadable = pending_submissions(store, tracker, pilot="bike-demand")
    assert sorted(s.id for s in todo) == sorted([subs[0].id, subs[2].id]) and done == []
    assert [i.submission for i in unreadable] == [subs[1].id] and str(broken) in unreadable[0].error
    items = run_campaign(todo, executor=FakeSandbox(last_day), tracker=tracker, ws=ws)
    assert [i.status for i in items] == ["evaluated", "evaluated"]


def test_submitting_again_over_an_unreadable_record_or_a_stray_folder_is_a_clear_error(ws, subs, tmp_path, bike_spec):
    """Submitting a bundle whose place holds a folder instead of its record, or a folder with no record at all,
    failed with a raw OSError (renaming the staged submission onto a folder that is not empty)."""
    from testbed.errors import AuditError

    store, vendor = SubmissionStore(ws), tmp_path / "vendor.yaml"
    record = store.root / subs[1].id / "submission.json"
    record.unlink()
    record.mkdir()
    with pytest.raises(AuditError, match="the stored submission record cannot be read"):
        store.submit(bike_spec, bento(tmp_path, [FORECAST_ROUTE], name="v1"), vendor)
    shutil.rmtree(record)
    with pytest.raises(AuditError, match="is in the way") as info:
        store.submit(bike_spec, bento(tmp_path, [FORECAST_ROUTE], name="v1"), vendor)
    assert str(store.root / subs[1].id) in str(info.value) and "move it out" in str(info.value)
    assert store.submit(bike_spec, bento(tmp_path, [FORECAST_ROUTE], name="v0"), vendor)[1] is False  # the others


def test_one_evaluation_prints_its_scorecard_before_the_executor_shuts_down(tmp_path, monkeypatch, bike_spec):
    """`testbed evaluate ID`: the scorecard reaches the user before a local Ray's shutdown (~1.4 s) begins."""
    import json
    import sys

    from typer.testing import CliRunner

    import evaluation.tracking
    import sandbox.executor
    from cli.app import app
    from testbed.config import Workspace

    printed_before_shutdown = []

    class Recording(FakeSandbox):
        def shutdown(self):
            sys.stdout.flush()
            printed_before_shutdown.append(sys.stdout.buffer.getvalue())

    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(evaluation.tracking, "MlflowTracker", lambda ws: MemoryTracker())
    monkeypatch.setattr(sandbox.executor, "RayExecutor", lambda: Recording(last_day))
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(yaml.safe_dump(LOOKUP_VENDOR))
    sub, _ = SubmissionStore(Workspace.from_env()).submit(bike_spec, bento(tmp_path, [FORECAST_ROUTE]), vendor)
    result = CliRunner().invoke(app, ["evaluate", sub.id, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(printed_before_shutdown[0])["submission"] == sub.id


@pytest.mark.slow
def test_runs_scored_in_worker_processes_get_the_scorecards_the_driver_gives(ws, subs, monkeypatch):
    """With scoring processes the driver only records: the runs' metrics (total included) and predictions are
    what the driver computes itself, and each run is recorded once."""
    import workflow.evaluate
    from workflow.scoring import ScoringPool

    alone = MemoryTracker()
    [here] = run_campaign(subs[:1], executor=FakeSandbox(last_day), tracker=alone, ws=ws)
    expected = alone.runs[here.run_id]
    monkeypatch.setattr(workflow.evaluate, "assess", lambda *a: pytest.fail("scored by the driver, not a worker"))
    pooled = MemoryTracker()
    with ScoringPool(2) as scoring:
        items = run_campaign(subs[1:], executor=Threaded(), tracker=pooled, ws=ws, scoring=scoring)
    assert [i.status for i in items] == ["evaluated"] * 2 and len(pooled.runs) == 2
    for item in items:
        run = pooled.runs[item.run_id]
        assert run.status == "FINISHED" and run.metrics == expected.metrics and run.metrics["total_score"] > 0
        assert run.params["predictions_sha256"] == expected.params["predictions_sha256"]
        assert json.loads(run.artifacts["scorecard.json"].read_text())["mlflow_run_id"] == item.run_id


@pytest.mark.slow
def test_a_scoring_process_that_dies_costs_time_not_the_evaluation(ws, subs):
    from workflow.scoring import ScoringPool

    tracker = MemoryTracker()
    with ScoringPool(1) as scoring:
        scoring.ready()
        for pid in list(scoring._pool._processes):
            os.kill(pid, signal.SIGKILL)
        items = run_campaign(subs[:1], executor=FakeSandbox(last_day), tracker=tracker, ws=ws, scoring=scoring)
    assert items[0].status == "evaluated" and tracker.runs[items[0].run_id].status == "FINISHED"


def test_scoring_processes_only_where_the_driver_has_cores_to_spare():
    from workflow.scoring import scoring_workers

    assert scoring_workers(48, remote=False, cpus=16) == 0  # a local Ray's sandboxes use this machine's cores
    assert scoring_workers(48, remote=True, cpus=16) == 8 and scoring_workers(6, remote=True, cpus=2) == 1
    assert scoring_workers(1, remote=True, cpus=16) == 0  # one evaluation: nothing to overlap


@pytest.mark.slow
def test_scoring_processes_die_with_a_killed_driver(tmp_path):
    """A driver killed with SIGKILL leaves no scoring process behind (they would wait for work for ever)."""
    import subprocess
    import sys
    import time

    import psutil

    from testbed.config import PROJECT_ROOT

    script = tmp_path / "driver.py"
    script.write_text("import os, sys, time\n"
                      f"sys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
                      "if __name__ == '__main__':\n"
                      "    from workflow.scoring import ScoringPool\n"
                      "    pool = ScoringPool(1)\n"
                      "    pool.ready()\n"
                      "    print(*pool._pool._processes, flush=True)\n"
                      "    time.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(driver.stdout.readline())
        assert psutil.pid_exists(worker)
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 10
    while psutil.pid_exists(worker) and psutil.Process(worker).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the scoring process outlived its driver"
        time.sleep(0.1)
