"""A real Ray cluster started with `ray start --head` on loopback, a campaign of six submissions through
RAY_ADDRESS with faults injected: the `testbed` process killed mid-campaign and the campaign resumed (no
duplicate), a Ray worker killed (infrastructure: retried, recorded), a sandbox killed (the bundle's run: a
verdict, not retried). Every result is logged once.

One node, two CPUs: a second `ray start --address 127.0.0.1:PORT` cannot join a loopback-only head on this
stack (with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 `ray start --address` refuses multi-node; without it Ray
rewrites 127.0.0.1 to the eth0 address, where the loopback head does not listen)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from testbed.config import PROJECT_ROOT
from tests.conftest import BUNDLES, make_workspace

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
TASK_TITLES = ("testbed-sandbox-evaluation", "_run_on_node")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A Ray head on 127.0.0.1 with its own temp folder; only its own processes are ever stopped."""

    def __init__(self):
        self.port, self.temp = free_port(), tempfile.mkdtemp(prefix="rt", dir="/tmp")
        # `ray start --head` defaults to token auth, clients to none: the same mode on both sides
        self.env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"127.0.0.1:{self.port}"
        self.cli("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                 "--include-dashboard", "false", "--temp-dir", self.temp, "--num-cpus", "2",
                 "--disable-usage-stats")

    def cli(self, *args: str) -> None:
        try:
            subprocess.run([RAY, *args], env=self.env, check=True, capture_output=True, timeout=120)
        except BaseException:
            self.stop()
            raise

    def ours(self, proc: psutil.Process) -> bool:
        """A process of this cluster: its command line, or an ancestor's (a worker's raylet), names our temp
        folder or port."""
        try:
            for p in [proc, *proc.parents()]:
                line = " ".join(p.cmdline())
                if self.temp in line or self.address in line or f"port={self.port}" in line:
                    return True
        except psutil.Error:
            pass
        return False

    def workers(self, titles: tuple[str, ...]) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter():
            try:
                line = " ".join(p.cmdline())
                if any(t in line for t in titles) and self.ours(p):
                    found.append(p)
            except psutil.Error:
                continue
        return found

    def stop(self) -> None:
        """SIGKILL this cluster's processes by id (gcs_server and raylet ignore SIGTERM); never `ray stop`,
        which would stop every Ray on the machine."""
        mine = [p for p in psutil.process_iter() if self.ours(p) and p.pid != os.getpid()]
        for p in mine:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(mine, timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        import ray

        ray.shutdown()
        c.stop()


def variant(root: Path, name: str, n: int) -> Path:
    """Bundle `name` built again with another description: other bytes, another vendor's submission."""
    from workflow.build import build_bundle

    src = root / f"{name}_v{n}"
    shutil.copytree(BUNDLES / name, src)
    bentofile = src / "bentofile.yaml"
    bentofile.write_text(bentofile.read_text().replace('description: "', f'description: "(variant {n}) ', 1))
    return build_bundle(src, make_workspace(root / "build"))


def tracked(tracker) -> list:
    try:
        return tracker.official_runs("bike-demand")
    except Exception:  # noqa: BLE001 - the store is being written by the driver; read again
        return []


def kill_once(cluster: Cluster, titles: tuple[str, ...], stop: threading.Event, killed: list, avoid: set[int]) -> None:
    """Background fault: SIGKILL the first matching process of the cluster (not in `avoid`)."""
    while not stop.is_set():
        for p in cluster.workers(titles):
            if p.pid not in avoid and not any(a.pid in avoid for a in p.parents()):
                p.send_signal(signal.SIGKILL)
                killed.append(p.pid)
                return
        time.sleep(0.2)


def test_a_campaign_on_a_ray_cluster_survives_faults_and_logs_each_result_once(
        cluster, built, bike_spec, tmp_path, monkeypatch):
    from evaluation.tracking import MlflowTracker
    from sandbox.executor import RayExecutor
    from workflow.campaign import pending_submissions, run_campaign
    from workflow.submissions import SubmissionStore

    root = tmp_path / "ws"
    ws = make_workspace(root)
    store = SubmissionStore(ws)
    vendor = PROJECT_ROOT / "examples/bike_mlp/vendor.yaml"
    bundles = [built("week_mean"), built("bike_seasonal_naive"),
               *(variant(tmp_path, "week_mean", n) for n in range(4))]
    ids = [store.submit(bike_spec, b, vendor)[0].id for b in bundles]
    assert len(set(ids)) == 6

    # 1. the `testbed` process, killed once its first result is tracked
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": cluster.address,
           "MLFLOW_TRACKING_URI": ws.tracking_uri,
           "TESTBED_HOME": str(ws.home), "TESTBED_ENVS_DIR": str(ws.envs), "BENTOML_HOME": str(ws.bentoml_home)}
    tracker = MlflowTracker(ws)
    tracker.experiment_id("bike-demand")  # the store created (migrated) before a second process opens it
    log = tmp_path / "driver.log"
    with log.open("wb") as sink:
        driver = subprocess.Popen([str(Path(sys.executable).with_name("testbed")), "evaluate", "--all",
                                   "bike-demand"], env=env, cwd=PROJECT_ROOT, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 400
        while not tracked(tracker) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
        assert driver.poll() is None, log.read_text()[-2000:]
        driver.send_signal(signal.SIGKILL)  # mid-campaign: other tasks running, maybe a run half-written
    finally:
        driver.kill()
        driver.wait()
    killed_driver_runs = len(tracker.official_runs("bike-demand"))
    todo, done = pending_submissions(store, tracker, pilot="bike-demand")
    assert 1 <= len(done) < 6 and len(todo) + len(done) == 6

    # 2. the resumed campaign, with a Ray worker and then a sandbox killed under it
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    deadline = time.monotonic() + 60  # Ray stops the dead driver's tasks; wait so the fault hits ours
    while cluster.workers(TASK_TITLES) and time.monotonic() < deadline:
        time.sleep(0.5)
    stop, killed_worker, killed_sandbox = threading.Event(), [], []

    def faults():
        kill_once(cluster, TASK_TITLES, stop, killed_worker, set())
        kill_once(cluster, ("bwrap",), stop, killed_sandbox, set(killed_worker))

    fault = threading.Thread(target=faults, daemon=True)
    fault.start()
    try:
        with RayExecutor() as executor:
            items = run_campaign(todo, executor=executor, tracker=tracker, ws=ws, retries=2)
    finally:
        stop.set()
        fault.join()
    assert killed_worker and killed_sandbox
    assert all(i.status == "evaluated" for i in items), [(i.submission, i.status, i.error) for i in items]
    retried = [i for i in items if i.retries]
    assert retried and all("WorkerCrashedError" in r or "died" in r for i in retried for r in i.retries)
    assert sum(i.verdict != "completed" for i in items) >= 1  # the killed sandbox: a verdict, never retried

    # every submission has exactly one official evaluation, each result logged once
    official = tracker.official_runs("bike-demand")
    assert sorted(r.tags["testbed.submission"] for r in official) == sorted(ids) and killed_driver_runs >= 1
    runs = tracker.client.search_runs([tracker.experiment_id("bike-demand")], max_results=100)
    finished = [r.data.tags["testbed.submission"] for r in runs if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(ids)
    recorded = {r.data.params["campaign_retries"] for r in runs if r.data.params.get("campaign_retries") != "none"
                and r.info.status == "FINISHED"}
    assert any("WorkerCrashedError" in line for line in recorded)
    # each run names the Ray node that ran its sandbox
    assert all(r.data.params.get("ray_node") for r in runs if r.info.status == "FINISHED")
