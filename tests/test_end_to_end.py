"""A real bundle through submission, a real local Ray, the real sandbox and a real MLflow store. Slow."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from evaluation.leaderboard import leaderboard_rows
from evaluation.tracking import MlflowTracker, registered_model_name
from sandbox.executor import RayExecutor
from testbed.config import PROJECT_ROOT
from testbed.errors import ContractError
from tests.conftest import empty_store
from workflow.evaluate import evaluate_bundle
from workflow.submissions import SubmissionStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_executor():
    with RayExecutor() as executor:
        yield executor


def independent_seasonal_naive_mase() -> float:
    """MASE of 'same hour yesterday' on the test split, computed from the raw CSV without the testbed's code."""
    raw = pd.read_csv(PROJECT_ROOT / "data/seoul-bike/SeoulBikeData.csv", encoding="latin-1")
    demand = raw["Rented Bike Count"].to_numpy(float)
    start = pd.Timestamp("2018-10-01") - pd.Timestamp("2017-12-01")
    first, last = int(start.total_seconds() // 3600), len(demand) - 24
    errors = []
    for t in range(first, last + 1, 6):
        history = demand[t - 168:t]
        scale = max(np.mean(np.abs(history[24:] - history[:-24])), 1.0)
        errors.append(np.abs(demand[t:t + 24] - demand[t - 24:t]) / scale)
    return float(np.mean(errors))


def test_baseline_bundle_end_to_end(built, ws, bike_spec, ray_executor):
    store = SubmissionStore(ws)
    vendor = PROJECT_ROOT / "examples/bike_seasonal_naive/vendor.yaml"
    sub, new = store.submit(bike_spec, built("bike_seasonal_naive"), vendor)
    assert new
    ev = evaluate_bundle(bike_spec, store.bundle(sub.id), sub.vendor, executor=ray_executor, ws=ws,
                         tracker=MlflowTracker(ws), out_dir=store.report_dir(sub.id), submission=sub.id)
    card = ev.card
    assert card.verdict == "completed" and card.isolated
    assert set(card.sandbox_limits) >= {"uid", "memory", "processes"}  # how each limit was enforced, on the card
    if __import__("os").geteuid() == 0:
        assert card.sandbox_limits["memory"].startswith("cgroup") and "cgroup" in card.sandbox_limits["processes"]
    assert card.metrics["clean"]["mase"] == pytest.approx(independent_seasonal_naive_mase(), rel=1e-9)
    assert card.retention["missing_hours"] < 1
    assert card.performance["error_rate"] == 0 and card.performance["latency_ms"]["p50"] > 0
    assert card.performance["throughput_items_per_s"] > 0 and card.performance["peak_rss_mb"] > 50

    client = MlflowClient(ws.tracking_uri)
    run = client.get_run(card.mlflow_run_id)
    assert run.data.params["bundle_sha256"] == sub.bundle_sha256
    assert run.data.metrics["clean/mase"] == pytest.approx(card.metrics["clean"]["mase"])
    version = client.search_model_versions(f"name='{registered_model_name('bike-demand')}'")[0]
    assert version.tags["testbed.submission"] == sub.id and version.tags["testbed.verdict"] == "completed"
    bento = client.list_artifacts(run.info.run_id, "bento")
    assert bento and bento[0].file_size == sub.bundle_size
    rows = leaderboard_rows(bike_spec, MlflowTracker(ws))
    assert [r["submission"] for r in rows] == [sub.id]


def test_contract_violation_at_runtime(built, ws, bike_spec, ray_executor):
    ev = evaluate_bundle(bike_spec, built("bad_output"), _vendor(), ws=ws,
                         executor=ray_executor, out_dir=ws.home / "bad", submission="bad", split="sample")
    assert ev.card.verdict == "contract_violation" and "shape" in ev.card.verdict_reason and not ev.card.passed


def test_wrong_api_is_refused_at_submission(built, ws, bike_spec):
    with pytest.raises(ContractError, match="no `forecast` API"):
        SubmissionStore(ws).submit(bike_spec, built("wrong_api"), PROJECT_ROOT / "examples/bike_mlp/vendor.yaml")
    assert not ws.submissions.exists() or not any(ws.submissions.iterdir())


def _vendor():
    from pilots.vendor import VendorProfile
    from testbed.yamlio import load_model

    return load_model(PROJECT_ROOT / "examples/bike_mlp/vendor.yaml", VendorProfile)


def test_the_cli_flow_for_a_vendor_and_an_evaluator(built, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from cli.app import app

    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_store(tmp_path / "mlflow.db"))
    runner, bundle = CliRunner(), str(built("bike_seasonal_naive"))
    check = runner.invoke(app, ["check", "bike-demand", bundle, "--json"])
    card = json.loads(check.stdout)
    assert card["split"] == "sample" and not card["official"] and card["mlflow_run_id"] is None
    assert check.exit_code == 1 and not card["passed"]  # the seasonal naive fails the MASE gate: a CI sees it

    vendor = str(PROJECT_ROOT / "examples/bike_seasonal_naive/vendor.yaml")
    sub_id = runner.invoke(app, ["submit", "bike-demand", bundle, "--vendor", vendor]).stdout.strip()
    evaluated = runner.invoke(app, ["evaluate", sub_id, "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    card = json.loads(evaluated.stdout)
    assert card["submission"] == sub_id and card["split"] == "test" and card["mlflow_run_id"]
    html = tmp_path / "card.html"
    assert runner.invoke(app, ["scorecard", sub_id, "--html", str(html)]).exit_code == 0
    assert sub_id in html.read_text()
    board = json.loads(runner.invoke(app, ["leaderboard", "bike-demand", "--json"]).stdout)
    assert board[0]["submission"] == sub_id and board[0]["mase"] == pytest.approx(card["metrics"]["clean"]["mase"])

    again = runner.invoke(app, ["evaluate", sub_id])  # the official evaluation exists: refused, nothing run
    assert again.exit_code == 2 and "--reevaluate" in again.output
    audit = runner.invoke(app, ["audit", sub_id])
    assert audit.exit_code == 0 and "audit passed" in audit.output, audit.output
    (logged,) = (tmp_path / "artifacts").rglob("predictions.npz")
    with np.load(logged) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez_compressed(logged, **{**arrays, "clean": arrays["clean"] * 1.01})
    tampered = runner.invoke(app, ["audit", sub_id])
    assert tampered.exit_code == 1 and "AUDIT FAILED" in tampered.output


def test_every_listener_of_the_local_ray_is_on_loopback(ray_executor):
    import os

    import psutil

    ray_executor.connect()
    ours = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}  # the Ray this test started
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert len({c.pid for c in listening}) >= 2, "expected gcs_server, raylet and others to listen"
    exposed = [(psutil.Process(c.pid).name(), c.laddr) for c in listening
               if c.laddr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    assert not any(c.laddr.port == 8265 for c in listening)  # no dashboard


def test_a_command_stopped_with_sigterm_unwinds_as_with_ctrl_c_and_stops_its_local_ray():
    """Ray's driver handler exits on SIGTERM without shutting the local Ray down (its processes lingered, a
    `kill` of `testbed evaluate` printed nothing); the testbed takes it as Ctrl-C: said, exit 130, Ray stopped."""
    import signal

    import psutil

    script = """import testbed.config
import os, sys, time, psutil, typer
from cli.console import friendly
from sandbox.executor import RayExecutor

@friendly
def command():
    with RayExecutor() as executor:
        executor.connect()
        print(*[p.pid for p in psutil.Process().children(recursive=True)], flush=True)
        time.sleep(120)

try:
    command()
except typer.Exit as stop:
    sys.exit(stop.exit_code)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    started = [int(pid) for pid in proc.stdout.readline().split()]
    assert started, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted (Ctrl-C or SIGTERM)" in err, err[-3000:]
    _, alive = psutil.wait_procs([p for p in map(_process, started) if p], timeout=30)
    assert not alive, [p.name() for p in alive]


def _process(pid: int):
    import psutil

    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_connecting_leaves_a_warm_worker_on_each_node_for_the_first_evaluation(ray_executor):
    """`RayExecutor.connect` starts a worker on each node that imports the sandbox runner: the first evaluation
    does not wait for a worker process and those imports (~0.5 s). Checked on a fresh Ray, in its own process."""
    script = """import testbed.config
import sys, ray
from sandbox.executor import RayExecutor
with RayExecutor() as executor:
    executor.connect()
    ray.get(executor._warming)
    print("runner imported:", ray.get(ray.remote(lambda: "sandbox.runner" in sys.modules).remote()))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert "runner imported: True" in out.stdout, out.stderr[-3000:]


def test_errors_raised_inside_the_ray_task_reach_the_user_plainly(ray_executor, bike_spec):
    from sandbox.isolation import SandboxLimits
    from sandbox.runner import SandboxJob
    from testbed.errors import BundleError

    job = SandboxJob(bundle=b"not a bento", route="/forecast", phases=[], wall_time_s=30, startup_timeout_s=10,
                     limits=SandboxLimits(memory_mb=1024, max_processes=16, cpu_seconds=30, threads=1))
    with pytest.raises(BundleError, match="not a readable .bento archive") as info:
        ray_executor.run(job)
    assert "Traceback" not in str(info.value)


def test_subway_examples_the_deep_learning_bundle_beats_the_reference(built, ws, ray_executor):
    from pilots.vendor import VendorProfile
    from testbed.yamlio import load_model
    from workflow.catalogue import get_pilot

    spec, cards = get_pilot("subway-ridership"), {}
    for name in ("subway_last_month", "subway_mlp"):
        vendor = load_model(PROJECT_ROOT / "examples" / name / "vendor.yaml", VendorProfile)
        cards[name] = evaluate_bundle(spec, built(name), vendor, executor=ray_executor, ws=ws,
                                      out_dir=ws.home / name, submission=name).card
    ref, dl = cards["subway_last_month"], cards["subway_mlp"]
    assert ref.verdict == dl.verdict == "completed"
    assert ref.metrics["clean"]["mase"] == pytest.approx(ref.baseline["mase"], rel=1e-9)  # = the harness's own
    assert dl.metrics["clean"]["mase"] < 0.9 * ref.metrics["clean"]["mase"] and dl.passed and not ref.passed
    assert dl.criteria["deep_learning_fit"].evidence["beats_baseline"]
    station = dl.equity["keys"]["station"]
    assert station["gap_low"] <= station["gap"] <= station["gap_high"]
    assert all(g["low"] <= g["value"] <= g["high"] for g in dl.equity["groups"].values())
    print({n: (c.metrics["clean"]["mase"], c.metrics["clean"]["smape"], c.total_score) for n, c in cards.items()})
