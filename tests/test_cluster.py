"""A real two-node Ray cluster on loopback: a head started with `ray start --head` and a second node with its
own CPUs, memory and temp folder, both bound to 127.0.0.1; a campaign of six submissions through RAY_ADDRESS with
faults injected: the `testbed` process killed mid-campaign and the campaign resumed with a seventh, slow
submission (no duplicate), then the second node killed with a task on it (machine lost: retried on the head,
recorded), a Ray worker killed (infrastructure: retried, recorded) and the slow bundle's sandbox killed mid-run
(the bundle's run: a verdict, not retried). Every result is logged once, and results came from both nodes.

Why the second node is not `ray start --address`: Ray 2.60's CLI refuses to join a node unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1, and with it set rewrites 127.0.0.1 (as the head's address and as the
node's own) to the eth0 address, where a loopback-only head does not listen. `Cluster.add_node` does what
`ray start --address` does after those two steps (`ray._private.node.Node(..., head=False)`), with the
loopback addresses kept: every listener stays on 127.0.0.1 (checked below). On a real network, nodes join with
`ray start --address HEAD:PORT` as usual."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from testbed.config import PROJECT_ROOT
from tests.conftest import BUNDLES, free_port, make_workspace

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
TASK_TITLES = ("testbed-sandbox-evaluation", "_run_on_node")
SLOW = b"slow-variant"


def _name(proc: psutil.Process) -> str | None:
    with contextlib.suppress(psutil.Error):
        return proc.name()
    return None


# Ray notices a lost node within ~2 s instead of the default ~30 s (the head's health checks of its nodes)
HEALTH = '{"health_check_initial_delay_ms": 1000, "health_check_period_ms": 500, "health_check_timeout_ms": 500, ' \
         '"health_check_failure_threshold": 3}'
NODE = """import sys
from ray._private.node import Node
from ray._private.parameter import RayParams
node = Node(RayParams(gcs_address=sys.argv[1], node_ip_address="127.0.0.1", num_cpus=int(sys.argv[2]),
                      memory=int(sys.argv[4]), temp_dir=sys.argv[3], include_dashboard=False), head=False,
            shutdown_at_exit=False, spawn_reaper=False)
print(node.node_id)
"""
MEMORY = str(6 << 30)
"""Each node's Ray `memory` (bytes), as a real node's would be: room for one bike-demand sandbox (4096 MB, which
each task reserves) whatever this machine has free when the test starts."""


class Cluster:
    """A Ray head and worker nodes on 127.0.0.1, each with its own temp folder; only this cluster's processes
    are ever stopped."""

    def __init__(self):
        self.port, self.temp = free_port(), tempfile.mkdtemp(prefix="rt", dir="/tmp")
        self.nodes: dict[str, str] = {}
        """Worker node id -> its temp folder."""
        # `ray start --head` defaults to token auth, clients to none: the same mode on both sides
        self.env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"127.0.0.1:{self.port}"
        self.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                  "--include-dashboard", "false", "--temp-dir", self.temp, "--num-cpus", "1", "--memory", MEMORY,
                  "--disable-usage-stats", "--system-config", HEALTH])

    def run(self, argv: list[str]) -> str:
        try:
            return subprocess.run(argv, env=self.env, check=True, capture_output=True, text=True,
                                  timeout=120).stdout
        except BaseException:
            self.stop()
            raise

    def add_node(self, cpus: int) -> str:
        """A second Ray node joining the head, with its own CPUs, memory and temp folder, on loopback; its node id."""
        temp = tempfile.mkdtemp(prefix="rn", dir=self.temp)
        node_id = self.run([sys.executable, "-c", NODE, self.address, str(cpus), temp, MEMORY]).strip().splitlines()[-1]
        self.nodes[node_id] = temp
        return node_id

    @staticmethod
    def _lineage_mentions(proc: psutil.Process, marks: tuple[str, ...]) -> bool:
        """The process's command line, or an ancestor's (a worker's raylet), names one of `marks`."""
        try:
            for p in [proc, *proc.parents()]:
                line = " ".join(p.cmdline())
                if any(m in line for m in marks):
                    return True
        except psutil.Error:
            pass
        return False

    def ours(self, proc: psutil.Process) -> bool:
        return self._lineage_mentions(proc, (self.temp, self.address, f"port={self.port}"))

    def on_node(self, proc: psutil.Process, node_id: str) -> bool:
        return self._lineage_mentions(proc, (self.nodes[node_id],))

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

    def named(self, name: str) -> list[psutil.Process]:
        return [p for p in psutil.process_iter() if _name(p) == name and self.ours(p)]

    def kill_node(self, node_id: str) -> None:
        """The machine lost: SIGKILL the node's raylet and everything under it (workers, sandboxes)."""
        doomed = [p for p in psutil.process_iter() if self.on_node(p, node_id)]
        for p in doomed:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(doomed, timeout=10)

    def stop(self) -> None:
        """SIGKILL this cluster's processes by id (gcs_server and raylet ignore SIGTERM); never `ray stop`,
        which would stop every Ray on the machine."""
        mine = [p for p in psutil.process_iter() if self.ours(p) and p.pid != os.getpid()]
        for p in mine:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(mine, timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        c.second = c.add_node(cpus=1)
        yield c
    finally:
        import ray

        ray.shutdown()
        c.stop()


def test_both_nodes_of_the_loopback_cluster_listen_on_loopback_only(cluster):
    ours = [p for p in psutil.process_iter() if cluster.ours(p)]
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
                 and c.pid in {p.pid for p in ours}]
    raylets = {c.pid for c in listening if psutil.Process(c.pid).name() == "raylet"}
    assert len(raylets) == 2, "expected the head's and the second node's raylet to listen"
    exposed = [(psutil.Process(c.pid).name(), c.laddr) for c in listening
               if c.laddr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, f"the cluster listens beyond loopback: {exposed}"


def variant(root: Path, name: str, n: int, delay_s: float = 0) -> Path:
    """Bundle `name` built again with another description: other bytes, another vendor's submission. With
    `delay_s`, its API first sleeps that long on each request (a long run, to be killed mid-way)."""
    from workflow.build import build_bundle

    src = root / f"{name}_v{n}"
    shutil.copytree(BUNDLES / name, src)
    bentofile = src / "bentofile.yaml"
    bentofile.write_text(bentofile.read_text().replace('description: "', f'description: "(variant {n}) ', 1))
    if delay_s:  # and it names its process SLOW (PR_SET_NAME), for the test to find its sandbox
        service = src / "service.py"
        text = service.read_text().replace("import numpy as np", "import ctypes\nimport time\n\nimport numpy as np\n\n"
                                           f"ctypes.CDLL(None).prctl(15, {SLOW!r}, 0, 0, 0)", 1)
        service.write_text(text.replace("        days = ", f"        time.sleep({delay_s})\n        days = ", 1))
    return build_bundle(src, make_workspace(root / "build"))


def tracked(tracker) -> list:
    try:
        return tracker.official_runs("bike-demand")
    except Exception:  # noqa: BLE001 - the store is being written by the driver; read again
        return []


def kill_once(find, stop: threading.Event, killed: list, after_s: float = 0) -> None:
    """Background fault: SIGKILL the first process `find()` lists, once it has lived `after_s`; a sandboxed
    process is killed with its sandbox (the outermost bubblewrap)."""
    while not stop.is_set():
        for p in find():
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE and time.time() - p.create_time() >= after_s:
                    p = next((a for a in reversed(p.parents()) if a.name() == "bwrap"), p)
                    p.send_signal(signal.SIGKILL)
                    killed.append(p.pid)
                    return
        time.sleep(0.1)


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

    # 1. the `testbed` process, killed once two results are tracked (one from each node: two tasks start at once)
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
        while len(tracked(tracker)) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert driver.poll() is None, log.read_text()[-2000:]
        driver.send_signal(signal.SIGKILL)  # mid-campaign: other tasks running, maybe a run half-written
    finally:
        driver.kill()
        driver.wait()
    killed_driver_runs = len(tracker.official_runs("bike-demand"))
    todo, done, _ = pending_submissions(store, tracker, pilot="bike-demand")
    assert 2 <= len(done) < 6 and len(todo) + len(done) == 6

    slow = variant(tmp_path, "week_mean", 9, delay_s=0.06)  # submitted now, so the resumed campaign runs it
    ids.append(store.submit(bike_spec, slow, vendor)[0].id)
    todo = pending_submissions(store, tracker, pilot="bike-demand").todo

    # 2. the resumed campaign: the second node lost with a task on it, then a Ray worker, then a sandbox killed
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    deadline = time.monotonic() + 60  # Ray stops the dead driver's tasks; wait so the faults hit ours
    while cluster.workers(TASK_TITLES) and time.monotonic() < deadline:
        time.sleep(0.5)
    stop, node_lost, killed_worker, killed_sandbox = threading.Event(), [], [], []

    def faults():
        while not stop.is_set() and not node_lost:
            if any(cluster.on_node(p, cluster.second) for p in cluster.workers(TASK_TITLES)):
                cluster.kill_node(cluster.second)
                node_lost.append(cluster.second)
            time.sleep(0.2)
        kill_once(lambda: cluster.workers(TASK_TITLES), stop, killed_worker)
        time.sleep(1)  # the killed worker's sandboxes go with it (bubblewrap's --die-with-parent)
        # the slow bundle's sandbox, mid-run: its 81 requests take over 4 s once it is up, so a kill 1.5 s after
        # its service process started lands during the start-up or the requests, never after the last answer
        kill_once(lambda: cluster.named(SLOW.decode()), stop, killed_sandbox, after_s=1.5)

    fault = threading.Thread(target=faults, daemon=True)
    fault.start()
    try:
        with RayExecutor() as executor:
            items = run_campaign(todo, executor=executor, tracker=tracker, ws=ws, retries=3)
    finally:
        stop.set()
        fault.join()
    assert node_lost and killed_worker and killed_sandbox
    assert all(i.status == "evaluated" for i in items), [(i.submission, i.status, i.error) for i in items]
    retries = [r for i in items for r in i.retries]
    assert len(retries) >= 2, retries  # the lost node's task and the killed worker's, each retried once at least
    assert all(any(k in r for k in ("WorkerCrashedError", "NodeDiedError", "died")) for r in retries), retries
    slow_item = next(i for i in items if i.submission == ids[-1])
    assert slow_item.verdict == "crashed", slow_item  # the killed sandbox: a verdict, never retried
    assert all(i.node != cluster.second for i in items)  # nothing ran on the lost node once it was gone

    # every submission has exactly one official evaluation, each result logged once, from both nodes
    official = tracker.official_runs("bike-demand")
    assert sorted(r.tags["testbed.submission"] for r in official) == sorted(ids) and killed_driver_runs >= 2
    runs = tracker.client.search_runs([tracker.experiment_id("bike-demand")], max_results=100)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["testbed.submission"] for r in finished) == sorted(ids)
    recorded = {r.data.params["campaign_retries"] for r in finished if r.data.params.get("campaign_retries") != "none"}
    assert sum(line.count("attempt ") for line in recorded) == len(retries), recorded  # each retry recorded
    nodes = {r.data.params.get("ray_node") for r in finished}
    assert cluster.second in nodes and len(nodes) == 2, nodes  # each run names the Ray node that ran its sandbox
