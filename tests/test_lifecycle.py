"""Review -> promotion -> production serving with the real MLflow store, the real sandbox and real bundles. Slow.

The tests of this module share one workspace and run in order: refusals first, then promotion, serving,
rollback and withdrawal, concurrent promotions, and a served bundle that dies."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import bentoml
import httpx
import numpy as np
import pytest
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from evaluation.tracking import MlflowTracker, registered_model_name
from sandbox.bundle import inspect_bundle
from sandbox.environment import bundle_environment
from sandbox.executor import InlineExecutor
from serving.monitor import scrape, summarize
from serving.server import ProductionServer, running
from testbed.config import PROJECT_ROOT
from testbed.errors import NotFound, Refused
from tests.conftest import BUNDLES, free_port, make_workspace
from workflow.build import build_bundle
from workflow.evaluate import evaluate_bundle
from workflow.ledger import AuditChain
from workflow.promote import Production
from workflow.review import ReviewBook
from workflow.submissions import SubmissionStore

pytestmark = pytest.mark.slow
MODEL = registered_model_name("bike-demand")
GOOD = [{"goal": i, "score": 3, "justification": "serves it"} for i in (1, 2, 3)]


class World:
    def __init__(self, root: Path, built, spec):
        self.ws, self.spec = make_workspace(root), spec
        self.store, self.tracker = SubmissionStore(self.ws), MlflowTracker(self.ws)
        self.book, self.prod = ReviewBook(self.ws), Production(self.ws)
        self.client = MlflowClient(self.ws.tracking_uri)
        self.good = self.submit(built("week_mean"), "bike_mlp")  # passes the gates; builds in seconds
        self.other = self.submit(self.variant(root, "week_mean"), "bike_mlp")  # a second vendor's passing bundle
        self.naive = self.submit(built("bike_seasonal_naive"), "bike_seasonal_naive")
        for sub_id in (self.good, self.other, self.naive):
            self.evaluate(sub_id)

    def variant(self, root: Path, name: str) -> Path:
        """The same service as bundle `name`, built again under another name: other bytes, other submission."""
        src = root / f"{name}_variant"
        shutil.copytree(BUNDLES / name, src)
        bentofile = src / "bentofile.yaml"
        bentofile.write_text(bentofile.read_text().replace('description: "', 'description: "(variant) ', 1))
        return build_bundle(src, self.ws)

    def submit(self, bundle: Path, example: str) -> str:
        return self.store.submit(self.spec, bundle, PROJECT_ROOT / "examples" / example / "vendor.yaml")[0].id

    def evaluate(self, sub_id: str):
        sub = self.store.get(sub_id)
        return evaluate_bundle(self.spec, self.store.bundle(sub_id), sub.vendor, executor=InlineExecutor(), ws=self.ws,
                               tracker=self.tracker, out_dir=self.store.report_dir(sub_id), submission=sub_id).card

    def review(self, sub_id: str, decision: str = "approve", **kw):
        return self.book.record(self.tracker, sub_id, decision, by="kim", note="checked", rubric=GOOD, **kw)


@pytest.fixture(scope="module")
def world(tmp_path_factory, built, bike_spec):
    return World(tmp_path_factory.mktemp("lifecycle"), built, bike_spec)


def metrics(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, parsed by prometheus_client: (name, sorted labels) -> value."""
    text = httpx.get(url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def count(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def test_every_refusal_leaves_the_registry_and_the_trails_untouched(world, fake_bento):
    w = world
    with pytest.raises(NotFound, match="no submission"):
        w.prod.promote("bike-demand-000000000000", by="op")
    unevaluated = w.store.submit(w.spec, fake_bento([{"name": "forecast", "input": {"properties": {
        "history": {"type": "tensor"}, "future": {"type": "tensor"}}}}]),
        PROJECT_ROOT / "examples/bike_mlp/vendor.yaml")[0].id
    with pytest.raises(Refused, match="has not been evaluated"):
        w.prod.promote(unevaluated, by="op")
    with pytest.raises(Refused, match="no official evaluation to review"):
        w.review(unevaluated)
    with pytest.raises(Refused, match="is not the official evaluation"):
        w.review(w.good, run_id="0" * 32)  # a run that does not exist
    assert w.book.history(w.good) == []
    with pytest.raises(Refused, match="no review"):
        w.prod.promote(w.good, by="op")
    w.review(w.good, "reject")
    with pytest.raises(Refused, match="rejected by kim"):
        w.prod.promote(w.good, by="op")
    w.review(w.naive)  # an evaluator's approval does not lift a hard gate
    with pytest.raises(Refused, match=r"failed hard gates \(threshold:mase\)"):
        w.prod.promote(w.naive, by="op")

    w.review(w.good)  # supersedes the rejection, which stays in the history
    assert [r.decision for r in w.book.history(w.good)] == ["reject", "approve"]
    version = w.prod.approved(w.good).version
    stored = next(Path(urlparse(w.client.get_model_version(MODEL, version).source).path).glob("*.bento"))
    original = stored.read_bytes()
    stored.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit flipped in the registry's copy
    try:
        with pytest.raises(Refused, match="the stored bundle was altered"):
            w.prod.promote(w.good, by="op")
    finally:
        stored.write_bytes(original)
    assert w.prod.current_version("bike-demand") is None and w.prod.history("bike-demand") == []


def test_promote_serve_roll_back_and_withdraw_without_a_restart(world):
    w = world
    first, _ = w.prod.promote(w.good, by="op-lee", note="first")
    assert w.prod.current_version("bike-demand") == first["version"]
    logs: list[str] = []
    server = ProductionServer(w.ws, "bike-demand", poll_s=3600, log=logs.append)  # checked by hand below
    history, future = np.random.default_rng(0).random((1, 168, 13)), np.random.default_rng(1).random((1, 24, 12))
    with running(server) as url:
        assert httpx.get(url + "/readyz").status_code == 200
        declared = inspect_bundle(w.store.bundle(w.good)).manifest  # on the environment its evaluation ran on
        assert server.served.service.python_env == bundle_environment(declared, w.ws.envs, "test").prefix
        with bentoml.SyncHTTPClient(url) as client:
            for _ in range(7):
                assert client.forecast(history=history, future=future).shape == (1, 24)
        for _ in range(2):
            assert httpx.post(url + "/forecast", content=b"{not json").status_code == 400
        samples = metrics(url)
        v1 = first["version"]
        assert count(samples, "testbed_requests_total", model_version=v1, outcome="ok") == 7
        assert count(samples, "testbed_requests_total", model_version=v1, outcome="client_error") == 2
        assert count(samples, "testbed_request_duration_seconds_count", model_version=v1) == 9
        info = next(dict(ls) for (n, ls) in samples if n == "testbed_bundle_info")
        assert info["bundle_sha256"] == w.store.get(w.good).bundle_sha256 and info["model_version"] == v1
        summary = summarize(w.spec, scrape(url))  # what `testbed monitor` shows
        assert summary["requests"] == 7 and summary["client_errors"] == 2 and summary["errors"] == 0
        assert summary["submission"] == w.good
        assert "In service" in w.prod.record_measures("bike-demand", summary).read_text()

        with pytest.raises(Refused, match="no review"):
            w.prod.promote(w.other, by="op-lee")
        w.review(w.other)
        second, _ = w.prod.promote(w.other, by="op-park", note="a second approved vendor")
        assert second["previous_version"] == v1 and second["version"] != v1
        page = w.store.report_dir(w.good) / "scorecard.html"  # its In service block had gone on saying it served
        assert f"no longer in service</span> Served in production until {second['at']}" in page.read_text()
        w.prod.record_measures("bike-demand", summarize(w.spec, scrape(url)))  # still v1 until the server checks
        assert f"no longer in service</span> Served in production until {second['at']}" in page.read_text()
        server.check()
        assert server.served.version == second["version"] and server.ready
        assert httpx.post(url + "/forecast", json={"history": history.tolist(), "future": future.tolist()}
                          ).status_code == 200

        back, skipped = w.prod.rollback("bike-demand", by="op-park", note="undo")
        assert back["version"] == v1 and not skipped
        assert "no longer in service" not in page.read_text() and "Served in production as" in page.read_text()
        server.check()
        assert server.served.version == v1
        gone, _ = w.prod.rollback("bike-demand", by="op-park")
        assert gone["version"] is None and w.prod.current_version("bike-demand") is None
        assert f"Served in production until {gone['at']}" in page.read_text()
        server.check()
        assert httpx.get(url + "/readyz").status_code == 503
        assert httpx.post(url + "/forecast", json={"history": [], "future": []}).status_code == 503
        assert count(metrics(url), "testbed_requests_total", outcome="unavailable") == 1
    assert [(e["action"], e["version"]) for e in w.prod.history("bike-demand")] == [
        ("promote", v1), ("promote", second["version"]), ("rollback", v1), ("rollback", None)]
    tags = w.client.get_registered_model(MODEL).tags
    assert sorted(k for k in tags if k.startswith("testbed.production.")) == [
        f"testbed.production.{i:04d}" for i in range(1, 5)]
    assert any("withdrawn" in line for line in logs)


def test_concurrent_promotions_are_applied_one_after_the_other(world):
    w = world
    results, errors = [], []

    def operator(name: str) -> None:
        try:
            results.append(Production(w.ws).promote(w.good, by=name)[0])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=operator, args=(f"op-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    written = [e for e in results if e is not None]
    assert len(written) == 1  # the others found it already in production
    history = w.prod.history("bike-demand")  # verified chain
    assert history[-1] == written[0] and w.prod.current_version("bike-demand") == written[0]["version"]


def test_a_served_bundle_that_dies_fails_readiness_and_answers_503(world):
    logs: list[str] = []
    server = ProductionServer(world.ws, "bike-demand", poll_s=3600, log=logs.append)
    with running(server) as url:
        os.killpg(server.served.service.proc.pid, signal.SIGKILL)
        server.served.service.proc.wait(timeout=10)
        server.check()
        assert httpx.get(url + "/readyz").status_code == 503
        answer = httpx.post(url + "/forecast", json={"history": [[[0] * 13] * 168], "future": [[[0] * 12] * 24]})
        assert answer.status_code == 503 and "exited" in answer.json()["error"]
        assert httpx.get(url + "/healthz").status_code == 200
    crashed = [line for line in logs if "exited" in line]
    assert len(crashed) == 1 and "503" in crashed[0] and "testbed serve bike-demand" in crashed[0]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_testbed_serve_stopped_with_sigterm_or_ctrl_c_stops_its_sandbox_says_so_and_exits_130(world, stop):
    """`kill` of `testbed serve` (a service manager's stop) or Ctrl-C: the sandbox is stopped and the command says
    so and exits 130. Before, uvicorn's handlers ended the process on SIGTERM on the spot (status -15, nothing
    said, the sandbox's cgroups left behind) and on Ctrl-C quietly with status 0."""
    import psutil

    w, port = world, free_port()
    env = {**os.environ, "TESTBED_HOME": str(w.ws.home), "MLFLOW_TRACKING_URI": w.ws.tracking_uri,
           "BENTOML_HOME": str(w.ws.bentoml_home), "TESTBED_ENVS_DIR": str(w.ws.envs)}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("testbed")), "serve", "bike-demand", "--port",
                             str(port)], env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                    break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()  # ended before it was ready: say why, not "no such process"
        sandbox = psutil.Process(proc.pid).children(recursive=True)
        assert sandbox, "not ready in 120 s"
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "stopped by Ctrl-C or SIGTERM: the service and its sandbox are down" in err
    assert "run the command again" not in err, err[-3000:]  # how a service is stopped, not a command cut short
    _, alive = psutil.wait_procs(sandbox, timeout=30)
    assert not alive, [p.name() for p in alive]
    assert not list(Path("/sys/fs/cgroup").glob(f"*/testbed/{proc.pid}-*")), "the sandbox's cgroups were left"


def test_serving_a_pilot_with_no_production_version_is_a_clear_error(tmp_path):
    with pytest.raises(NotFound, match="bike-demand has no production version") as info:
        ProductionServer(make_workspace(tmp_path), "bike-demand").start()
    assert "testbed promote" in info.value.fix


def test_a_rejection_after_promotion_stops_serving_and_a_cut_trail_is_refused(world, monkeypatch):
    """A running server stops serving the version in service once an evaluator rejects it, and `testbed
    production` warns; the production trail, cut back by one move (its links intact), is refused against the
    registry's mirror tags."""
    from typer.testing import CliRunner

    from cli.app import app
    from testbed.errors import AuditError

    w = world
    w.review(w.good)
    w.prod.promote(w.good, by="op-lee")
    for name, value in (("TESTBED_HOME", w.ws.home), ("MLFLOW_TRACKING_URI", w.ws.tracking_uri),
                        ("BENTOML_HOME", w.ws.bentoml_home)):
        monkeypatch.setenv(name, str(value))
    logs: list[str] = []
    server = ProductionServer(w.ws, "bike-demand", poll_s=3600, log=logs.append)
    try:
        with running(server) as url:
            server.check()
            assert server.ready  # approved: checking again changes nothing
            w.review(w.good, "reject")
            server.check()
            assert httpx.get(url + "/readyz").status_code == 503 and not server.ready
            answer = httpx.post(url + "/forecast", json={"history": [[[0] * 13] * 168], "future": [[[0] * 12] * 24]})
            assert answer.status_code == 503 and "rejected" in answer.json()["error"]
            server.check()  # stays stopped: the alias did not move
            assert server.served is None
            monitored = CliRunner().invoke(app, ["monitor", "bike-demand", "--url", url, "--window", "0"])
            assert monitored.exit_code == 1 and "NOT READY" in monitored.stdout, monitored.output
            w.review(w.good)  # approved again: served again at the next check, not only after `recheck_s`
            assert server.recheck_s >= 30
            server.check()
            assert server.ready and httpx.get(url + "/readyz").status_code == 200
        stopped = [line for line in logs if "was rejected by kim" in line]
        assert len(stopped) == 1 and "testbed rollback bike-demand" in stopped[0]
        w.review(w.good, "reject")
        result = CliRunner().invoke(app, ["production", "bike-demand"], terminal_width=200)
        assert result.exit_code == 0 and "was rejected by kim" in result.stderr, result.output
    finally:
        w.review(w.good)  # approved again, for the tests after this one
    trail = w.prod.chain("bike-demand").path
    whole = trail.read_text()
    lines = whole.splitlines(keepends=True)
    try:
        if len(lines) > 1:  # two or more cut: refused
            trail.write_text("".join(lines[:-2]))
            with pytest.raises(AuditError, match="is not in the trail"):
                w.prod.history("bike-demand")
        trail.write_text("".join(lines[:-1]))  # one short: a move cut short, or its entry cut
        with pytest.raises(AuditError, match="was never written to the trail"):
            w.prod.history("bike-demand")
    finally:
        trail.write_text(whole)
    moves = w.prod.history("bike-demand")
    with AuditChain(trail).locked() as txn:  # a well-chained move written to the file alone, registry untouched
        txn.append({**{k: v for k, v in moves[-1].items() if k not in ("seq", "prev", "hash")}, "by": "forger"})
    try:
        with pytest.warns(UserWarning, match="never recorded there"):
            assert w.prod.history("bike-demand") == moves  # left out
        with pytest.raises(AuditError, match="nothing is added after them"):
            w.prod.rollback("bike-demand", by="op-park")
    finally:
        trail.write_text(whole)
    with AuditChain(trail).locked() as txn:  # one with a valid chain but no move in it
        txn.append({"action": "promote", "version": "1"})
    try:
        with pytest.raises(AuditError, match="not a valid record of this trail"):
            w.prod.history("bike-demand")
    finally:
        trail.write_text(whole)
    assert w.prod.history("bike-demand") == moves


def test_serving_follows_the_trail_not_an_alias_moved_outside_the_testbed(world):
    """The trail is the record: an alias moved by hand in MLflow (or left behind by a promotion cut short) is not
    served, a rollback goes back from what the trail has in service, and repeating a move puts both in
    agreement."""
    w = world
    good = w.prod.promote(w.good, by="op-lee")[1].version
    other = w.prod.promote(w.other, by="op-lee")[0]["version"]
    logs: list[str] = []
    server = ProductionServer(w.ws, "bike-demand", poll_s=3600, log=logs.append, recheck_s=0)
    with running(server) as url:
        w.client.set_registered_model_alias(MODEL, "production", good)  # by hand, in MLflow
        with pytest.raises(Refused, match="moved outside the testbed"):
            w.prod.resolve("bike-demand")
        server.check()
        assert server.served.version == other and httpx.get(url + "/readyz").status_code == 200
        assert any("moved outside the testbed" in line and f"still serving version {other}" in line for line in logs)

        back, _ = w.prod.rollback("bike-demand", by="op-park")  # from the trail's version, not the alias's
        assert back["version"] == good and back["previous_version"] == other
        server.check()
        assert server.served.version == good

        w.client.set_registered_model_alias(MODEL, "production", other)  # as a promotion cut short leaves it
        entry, _ = w.prod.promote(w.other, by="op-lee")
        assert entry is not None and entry["version"] == other  # recorded, not "already in production"
        server.check()
        assert server.served.version == other and w.prod.in_service("bike-demand") == other

    w.client.delete_registered_model_alias(MODEL, "production")  # removed by hand: not "no production version"
    with pytest.raises(Refused, match="names no version, but the trail's last move put version") as info:
        w.prod.resolve("bike-demand")
    assert "repeats the move" in info.value.fix
    w.client.set_registered_model_alias(MODEL, "production", other)


def test_promote_warns_when_the_submissions_own_stored_bundle_was_altered(world, monkeypatch):
    """Production serves the registry's copy, checked against the review; the submission's own copy (what a
    re-evaluation runs) altered is said at promotion, where it passed unremarked."""
    from typer.testing import CliRunner

    from cli.app import app

    w = world
    for name, value in (("TESTBED_HOME", w.ws.home), ("MLFLOW_TRACKING_URI", w.ws.tracking_uri),
                        ("BENTOML_HOME", w.ws.bentoml_home), ("TESTBED_ENVS_DIR", w.ws.envs)):
        monkeypatch.setenv(name, str(value))
    stored = w.store.bundle(w.other)
    original = stored.read_bytes()
    for altered in (False, True):
        stored.write_bytes(original + b"X" if altered else original)
        try:
            result = CliRunner().invoke(app, ["promote", w.other, "--by", "op-lee"], terminal_width=300)
        finally:
            stored.write_bytes(original)
        assert result.exit_code == 0 and "already in production" in result.stdout, result.output
        assert ("stored bundle" in result.stderr and "is not the one submitted" in result.stderr) is altered
