"""Fast checks of the sandbox's defences that need no sandbox: archive format and manifest shape, the sweep of
what killed harnesses left, hostile response bodies, and uid leases."""

import contextlib
import dataclasses
import gzip
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evaluation.families.detection.contract import decode_response as decode_detections
from evaluation.families.forecasting.contract import decode_response as decode_forecast
from evaluation.tracking_memory import MemoryTracker
from pilots.vendor import VendorProfile
from sandbox import host, uids
from sandbox.bundle import inspect_bundle
from sandbox.executor import InlineExecutor
from sandbox.isolation import SandboxLimits
from sandbox.observe import Evidence
from sandbox.runner import PhaseResult, SandboxResult
from testbed.errors import BundleError, ContractViolation, SandboxUnavailable
from tests.conftest import FORECAST_ROUTE, free_port
from workflow.evaluate import evaluate_bundle

VENDOR = VendorProfile(name="V", headquarters_district="Mapo-gu", seoul_based=True, startup=True,
                       technology_field="other", model_description="x", licence="MIT")
NESTED = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b"[[" + b"9" * 400 + b"]]"


def bento(tmp_path, manifest: dict, mode: str = "w:xz", name: str = "x.bento"):
    data = yaml.safe_dump(manifest).encode()
    path = tmp_path / name
    with tarfile.open(path, mode) as tar:
        info = tarfile.TarInfo("./bento.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("mode, words", [("w:gz", "gzip"), ("w:bz2", "bzip2"), ("w", "not a readable")])
def test_only_the_xz_tar_bentoml_writes_is_accepted(tmp_path, mode, words):
    path = bento(tmp_path, {"name": "x", "version": "v1"}, mode)
    with pytest.raises(BundleError, match=words) as info:
        inspect_bundle(path)
    assert "bentoml export" in str(info.value)


def test_a_gzip_bento_is_refused_before_ray_starts(tmp_path, monkeypatch):
    from cli.app import app
    from sandbox import executor

    monkeypatch.setattr(executor.RayExecutor, "__init__", lambda self: pytest.fail("Ray was started"))
    path = tmp_path / "model.bento"
    path.write_bytes(gzip.compress(bento(tmp_path, {"name": "x", "version": "v1"}, "w").read_bytes()))
    result = CliRunner().invoke(app, ["check", "bike-demand", str(path)])
    assert result.exit_code == 2 and "gzip" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("schema", [
    "routes", ["routes"], {"routes": {"forecast": {}}}, {"routes": ["forecast"]}, {"routes": [{"name": 3}]},
    {"routes": [{"name": "forecast", "input": ["history"]}]},
    {"routes": [{"name": "forecast", "input": {"properties": {"history": "tensor"}}}]},
    {"routes": [{"name": "forecast", "input": {"properties": {}, "required": "history"}}]},
])
def test_malformed_routes_are_a_clear_bundle_error(tmp_path, schema):
    with pytest.raises(BundleError, match="schema.routes") as info:
        inspect_bundle(bento(tmp_path, {"name": "x", "version": "v1", "schema": schema}))
    assert "bento.yaml" in str(info.value)


def test_what_a_killed_harness_left_is_swept(tmp_path, monkeypatch):
    monkeypatch.setattr(host.tempfile, "gettempdir", lambda: str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{host.RUN_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{host.RUN_PREFIX}{os.getpid()}-def"
    reused = tmp_path / f"{host.RUN_PREFIX}{os.getpid()}-ghi"  # same pid, folder older than the process
    for folder in (stale, live, reused):
        (folder / "bentoml").mkdir(parents=True)
    old = time.time() - 10 * 24 * 3600
    os.utime(reused, (old, old))
    host.sweep_stale()
    assert not stale.exists() and not reused.exists() and live.exists()


@pytest.mark.parametrize("body", [NESTED, HUGE_INT, b"[[NaN]]", b"\xff\xfe", b'"[[1]]"', b"[[1e999]]"])
def test_hostile_forecasts_are_contract_violations(body):
    with pytest.raises(ContractViolation):
        decode_forecast(body, 1, 1)


@pytest.mark.parametrize("body", [
    NESTED, b"[[" + b'{"label": "car", "score": 1, "box": [0, 0, ' + b"9" * 400 + b", 1]}]]",
    b'[[{"label": "car", "score": ' + b"1" * 400 + b', "box": [0, 0, 1, 1]}]]', b"\x00",
])
def test_hostile_detections_are_contract_violations(body):
    with pytest.raises(ContractViolation):
        decode_detections(body, 1)


class RawBodies(InlineExecutor):
    """An executor whose service answered every request with the same raw bytes."""

    def __init__(self, body: bytes):
        self.body = body

    def run(self, job):
        phases = {p.name: PhaseResult(name=p.name, bodies=[self.body] * len(p.bodies), statuses=[200] * len(p.bodies),
                                      latencies_s=[0.01] * len(p.bodies), items=list(p.items), wall_s=0.1)
                  for p in job.phases}
        return SandboxResult(verdict="completed", reason="", phases=phases, log="", startup_s=0.1, peak_rss_mb=1,
                             isolated=True)


@pytest.mark.parametrize("body", [NESTED, HUGE_INT])
def test_whatever_the_answers_the_evaluation_ends_with_a_verdict_a_scorecard_and_a_run(ws, bike_spec, fake_bento,
                                                                                       body):
    tracker = MemoryTracker()
    ev = evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR, executor=RawBodies(body), ws=ws,
                         out_dir=ws.home / "out", submission="x", tracker=tracker, split="sample")
    assert ev.card.verdict == "contract_violation" and (ws.home / "out" / "scorecard.json").is_file()
    assert [r.status for r in tracker.runs.values()] == ["FINISHED"]


@pytest.mark.skipif(os.geteuid() != 0, reason="uid leases are for root (otherwise a user namespace maps the uid)")
def test_concurrent_sandboxes_get_distinct_uids_given_back_on_release(monkeypatch, tmp_path):
    monkeypatch.setenv("TESTBED_SANDBOX_UIDS", "1700000000-1700000001")
    monkeypatch.setattr(uids, "_lock_dir", lambda: tmp_path)
    first, second = uids.UidLease(), uids.UidLease()
    assert {first.uid, second.uid} == {1700000000, 1700000001}
    with pytest.raises(Exception, match="in use"):
        uids.UidLease()
    first.release()
    third = uids.UidLease()
    assert third.uid == 1700000000
    second.release()
    third.release()


def test_the_sandbox_worker_derives_each_response_media_type_once_and_the_same(monkeypatch):
    import bentoml
    import numpy as np
    from _bentoml_sdk.io_models import IOMixin

    from sandbox.worker import media_types_once

    monkeypatch.setattr(IOMixin, "mime_type", IOMixin.__dict__["mime_type"])  # put back after this test

    @bentoml.service
    class Probe:
        @bentoml.api
        def array(self, x: np.ndarray) -> np.ndarray:
            return x

        @bentoml.api
        def text(self, x: str) -> str:
            return x

        @bentoml.api
        def record(self, x: str) -> dict:
            return {"x": x}

    outputs = [Probe.apis[name].output_spec for name in ("array", "text", "record")]
    derived = [spec.mime_type() for spec in outputs]
    media_types_once()
    assert [spec.mime_type() for spec in outputs * 3] == derived * 3 == [
        "application/json", "text/plain", "application/json"] * 3
    assert IOMixin.mime_type.__func__.cache_info().misses == len(outputs)  # the schemas were built once each


@pytest.mark.parametrize("address, says", [("127.0.0.1:{port}", "no Ray cluster answers at 127.0.0.1:{port}"),
                                           ("ray://127.0.0.1:{port}", "no Ray cluster answers at 127.0.0.1:{port}"),
                                           ("head-node", "is not a Ray cluster address")])
def test_a_wrong_ray_address_is_refused_at_once_with_the_fix(monkeypatch, address, says):
    """`ray.init` retries an address where nothing listens for minutes, logging as it goes; the executor
    checks first and says what to do, before Ray is touched."""
    import ray

    from sandbox.executor import RayExecutor
    from testbed.errors import ResourceUnavailable

    port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", address.format(port=port))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
    with pytest.raises(ResourceUnavailable, match=says.format(port=port)) as info:
        RayExecutor().connect()
    assert "RAY_ADDRESS" in str(info.value) and "unset RAY_ADDRESS" in info.value.fix


def test_a_ray_address_where_a_web_server_answers_is_refused_with_the_fix(monkeypatch):
    """The dashboard's port given for the GCS's (a common slip): ray.init would wait on it for minutes."""
    import http.server
    import threading

    import ray

    from sandbox.executor import RayExecutor
    from testbed.errors import ResourceUnavailable

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{server.server_port}")
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called"))
        with pytest.raises(ResourceUnavailable, match="a web server answers .* not a Ray cluster's GCS") as info:
            RayExecutor().connect()
        assert "8265" in info.value.fix and "6379" in info.value.fix
    finally:
        server.shutdown()
        server.server_close()


def test_a_local_ray_imported_before_the_loopback_setting_is_refused(monkeypatch):
    """A local Ray listens on 127.0.0.1 only when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set before `ray` was
    imported (Ray reads it once, into `ray_constants.ENABLE_RAY_CLUSTER`): imported without it, the executor
    refuses to start one, saying how, and never calls `ray.init`; imported with it, it starts one on loopback."""
    import ray
    from ray._private import ray_constants

    from sandbox.executor import RayExecutor
    from testbed.errors import TestbedError

    class Started(Exception):
        pass

    calls = []

    def init(*args, **kwargs):
        calls.append(kwargs)
        raise Started

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    with pytest.raises(TestbedError, match="every network interface") as info:
        RayExecutor().connect()
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in info.value.fix and not calls
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    with pytest.raises(Started):
        RayExecutor().connect()
    assert [call["address"] for call in calls] == ["local"]


def test_the_files_a_process_opens_are_seen_by_the_kernel_not_reported_by_it(tmp_path):
    """`Opened`: the kernel's record of the files opened under a folder, by any process; folders listed are not
    files opened; a folder beyond its bound goes unseen rather than making the whole "not observed" (which
    would fall back to the static scan), and its bounds are above what an accepted archive holds anyway."""
    from sandbox.bundle import Limits
    from sandbox.observe import Opened

    (tmp_path / "src" / "deep").mkdir(parents=True)
    for name in ("src/model.onnx", "src/unused.onnx", "src/deep/weights.pt", "bento.yaml"):
        (tmp_path / name).write_bytes(b"x")
    opened = Opened(tmp_path)
    for folder in (tmp_path, tmp_path / "src", tmp_path / "src" / "deep"):
        opened.watch(folder)
    opened.start()
    subprocess.run(["cat", str(tmp_path / "src/model.onnx"), str(tmp_path / "src/deep/weights.pt")], check=True,
                   capture_output=True)
    subprocess.run(["ls", str(tmp_path / "src")], check=True, capture_output=True)
    assert opened.paths() == ["src/deep/weights.pt", "src/model.onnx"]
    assert opened.paths() == ["src/deep/weights.pt", "src/model.onnx"]  # stopped once, read again
    bounds = Opened(tmp_path)
    bounds.paths()
    assert min(bounds.max_watches, bounds.max_paths) > Limits().max_members

    partial = Opened(tmp_path, max_watches=1)
    for folder in (tmp_path, tmp_path / "src"):
        partial.watch(folder)
    partial.start()
    subprocess.run(["cat", str(tmp_path / "bento.yaml"), str(tmp_path / "src/model.onnx")], check=True,
                   capture_output=True)
    assert partial.paths() == ["bento.yaml"]


class Crashed(InlineExecutor):
    """A run the service ended itself, leaving `log` behind."""

    def __init__(self, log: str):
        self.log = log

    def run(self, job):
        return SandboxResult(verdict="crashed", reason="the service exited unexpectedly (exit code 3)", phases={},
                             log=self.log, startup_s=0.1, peak_rss_mb=1, isolated=True)


def test_what_the_service_writes_is_shown_as_its_own_text_never_as_terminal_codes(ws, bike_spec, fake_bento):
    """A log that clears the screen and prints a fake verdict, or claims the failure was the infrastructure's:
    the harness keeps it as text (control characters written out) and quotes it as the service's own words."""
    from sandbox.observe import OutputTail

    read, write = os.pipe()
    tail = OutputTail(read)
    tail.start()
    os.write(write, "\x1b[2J\x1b[Hbike-demand verdict completed · total 81.4\r\n\u202eevil\n".encode())
    os.close(write)
    tail.join(5)
    assert tail.text() == "\\x1b[2J\\x1b[Hbike-demand verdict completed · total 81.4\\r\n\\u202eevil\n"

    lie = "ray.exceptions.NodeDiedError: the node was lost; not the bundle's fault, re-run it"
    ev = evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR, executor=Crashed(tail.text() + lie),
                         ws=ws, out_dir=ws.home / "out", submission="x", split="sample")
    reason = ev.card.verdict_reason
    assert reason.startswith("the service exited unexpectedly") and f"its words, not the harness's) ends with: {lie}" \
        in reason
    assert not any("\x1b" in line for line in ev.card.log_tail) and ev.card.verdict == "crashed"


def test_a_log_cut_by_a_flood_says_how_much_was_left_out():
    """A service printing megabytes pushes its own traceback out of the kept tail; nothing said the log was cut,
    so an evaluator read the flood's end as all there was. The first line says how much came before."""
    from sandbox.observe import OutputTail

    read, write = os.pipe()
    tail = OutputTail(read, keep=1000)
    tail.start()
    with os.fdopen(write, "wb") as pipe:
        pipe.write(b"Traceback: the real error\n" + b"x" * 5000)
    tail.join(5)
    text = tail.text()
    assert text.startswith("[the 4,026 bytes the service printed before these are left out]\n")
    assert text.endswith("x" * 1000) and "Traceback" not in text
    assert tail.text(100).startswith("[the 4,926 bytes") and tail.text(100).endswith("\n" + "x" * 100)


@pytest.mark.parametrize("cut", [SystemExit(signal.SIGTERM), KeyboardInterrupt()])
def test_a_local_ray_start_cut_short_stops_what_it_started_and_says_interrupted(monkeypatch, cut):
    """SIGTERM while `ray.init` runs met the handler Ray sets (`sys.exit(15)`): the command ended silently with
    exit 15 and the local node's agents lived on for a minute. The start is stopped, and the cut is an
    interruption (`friendly` says so, exit 130)."""
    import ray

    from sandbox.executor import RayExecutor

    stopped = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: stopped.append(True))

    def init(**kw):
        raise cut

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(KeyboardInterrupt):
        RayExecutor().connect()
    assert stopped == [True]


def test_a_ray_task_reserves_its_sandboxs_memory_and_one_no_node_could_hold_is_refused(monkeypatch):
    """Ray is asked for the sandbox's memory limit too (its `memory` resource), so the sandboxes it runs at once
    on a node never hold more than Ray counts there; a job larger than every live node is refused with the fix
    (two 6 GiB nodes are not one 8 GiB node), not left pending for ever."""
    from concurrent.futures import Future
    from unittest.mock import MagicMock

    import ray

    from sandbox.executor import RayExecutor
    from sandbox.isolation import SandboxLimits
    from sandbox.runner import SandboxJob
    from testbed.errors import ResourceUnavailable

    gib, placed = 1 << 30, []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0, "memory": 6.0 * gib}},
                                               {"Alive": True, "Resources": {"CPU": 4.0, "memory": 6.0 * gib}},
                                               {"Alive": False, "Resources": {"CPU": 64.0, "memory": 64.0 * gib}}])

    class Task:
        def options(self, **kw):
            placed.append(kw)
            return self

        def remote(self, job):
            return MagicMock(**{"future.return_value": Future()})

    monkeypatch.setattr(ray, "remote", lambda **kw: lambda fn: Task())

    def job(memory_mb: int) -> SandboxJob:
        return SandboxJob(bundle=b"", route="/forecast", phases=[], wall_time_s=60, startup_timeout_s=60,
                          limits=SandboxLimits(memory_mb=memory_mb, max_processes=64, cpu_seconds=60, threads=1))

    RayExecutor().submit(job(4096))
    assert placed[0]["memory"] == 4096 << 20 and placed[0]["num_cpus"] == 1
    with pytest.raises(ResourceUnavailable, match="8192 MB of memory, the largest Ray node has 6144 MB") as info:
        RayExecutor().submit(job(8192))
    assert "ray start --memory" in info.value.fix and "testbed check" in info.value.fix and len(placed) == 1
    # README: a pilot's `resources.gpus` becomes the task's GPUs, which Ray places on a node that has them
    assert placed[0]["num_gpus"] == 0
    with pytest.raises(ResourceUnavailable, match="the largest Ray node has"):
        RayExecutor().submit(dataclasses.replace(job(1024), gpus=1))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0,
                                                                           "memory": 6.0 * gib}}])
    RayExecutor().submit(dataclasses.replace(job(1024), gpus=1))
    assert placed[-1]["num_gpus"] == 1 and placed[-1]["num_cpus"] == 1


def test_a_phase_sent_in_parts_reads_as_one():
    """`PhasePlan.phases` sends a phase in parts (one per epoch, between other phases' parts); the runner joins
    them: requests in the order sent, times and CPU added up, the machine's busy share weighted by wall time."""
    first = PhaseResult("offline", [b"a"], [200], [0.1], [3], 1.0, errors=["e1"], cpu_s=[0.1], wait_s=[0.0],
                        machine_busy=0.2, sandbox_cpu_s=0.5, cores=2, request_sandbox_cpu_s=[0.5], cpu_quota=1)
    later = PhaseResult("offline", [None, b"c"], [500, 200], [0.2, 0.3], [1, 2], 3.0, errors=["e2"], cpu_s=[0.2, 0.3],
                        wait_s=[0.1, 0.0], machine_busy=0.6, sandbox_cpu_s=None, cores=2,
                        request_sandbox_cpu_s=[None, 0.2], cpu_quota=1)
    both = first.joined(later)
    assert both.bodies == [b"a", None, b"c"] and both.statuses == [200, 500, 200] and both.items == [3, 1, 2]
    assert both.latencies_s == [0.1, 0.2, 0.3] and both.cpu_s == [0.1, 0.2, 0.3] and both.errors == ["e1", "e2"]
    assert both.wall_s == 4.0 and both.machine_busy == pytest.approx(0.5) and both.sandbox_cpu_s is None
    assert first.joined(first).sandbox_cpu_s == 1.0 and both.request_sandbox_cpu_s == [0.5, None, 0.2]
    # parts shorter than a jiffy have no busy share of their own: the machine's jiffies of all of them add up
    short = [PhaseResult("single_stream", [b"a"], [200], [0.002], [1], 0.002, machine_busy=None, machine_ticks=t)
             for t in [(0, 0), (2, 2), (0, 0), (1, 2), (0, 0)]]
    whole = short[0]
    for part in short[1:]:
        whole = whole.joined(part)
    assert whole.machine_ticks == (3, 4) and whole.machine_busy == 0.75 and whole.wall_s == pytest.approx(0.01)


# -- an OOM kill: the sandbox's own memory limit (the bundle's), or the host out of memory (the machinery's) ----

MIB = 1 << 20
UNLIMITED = "9223372036854771712\n"


def _cgroups(tmp_path, monkeypatch, memory_mb: int, counters: dict[str, int]) -> host.Cgroups:
    """A sandbox's cgroups on folders standing in for the kernel's (`memory.memsw.*` there: swap accounting on),
    then `counters` written to its memory group as the kernel would have them after the run."""
    def make(ctl: str, name: str):
        group = tmp_path / ctl / name
        group.mkdir(parents=True)
        if ctl == "memory":
            (group / "memory.memsw.limit_in_bytes").write_text(UNLIMITED)
        return group

    monkeypatch.setattr(host, "_make_group", make)
    cgroups = host.Cgroups("1-test", memory_mb, 64)
    memory = cgroups.paths["memory"]
    kills = counters.pop("oom_kill")
    (memory / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n")
    for name, value in counters.items():
        (memory / f"memory.{name}").write_text(f"{value}\n")
    return cgroups


def _service(cgroups: host.Cgroups):
    from sandbox.isolation import SandboxLimits
    from sandbox.service import SandboxedService

    service = SandboxedService(b"", SandboxLimits(memory_mb=512, max_processes=64, cpu_seconds=60, threads=1))
    service._cgroups = cgroups
    return service


@pytest.mark.parametrize("measured", [
    # measured (kernel 6.18, cgroup v1): a process allocating 200 MiB in a group limited to 64 MiB. With the memory
    # and memory+swap limits both set (as `Cgroups` sets them), the kernel refused the memory+swap charge first and
    # counted no failure at all: both failcnt 0, only the peak at the limit says it was reached
    {"failcnt": 0, "memsw.failcnt": 0, "max_usage_in_bytes": 64 * MIB, "memsw.max_usage_in_bytes": 64 * MIB},
    # ... with the memory limit only (no swap accounting): the memory counter's refusals
    {"failcnt": 81, "memsw.failcnt": 0, "max_usage_in_bytes": 64 * MIB, "memsw.max_usage_in_bytes": 64 * MIB + 256},
], ids=["memory+swap-limit", "memory-limit-only"])
def test_an_oom_kill_at_the_sandboxs_own_memory_limit_is_the_bundles(tmp_path, monkeypatch, measured):
    from sandbox.runner import classify

    cgroups = _cgroups(tmp_path, monkeypatch, 64, {"oom_kill": 1, **measured})
    evidence = _service(cgroups).evidence()
    assert evidence.oom_kills == 1
    verdict, reason = classify(returncode=137, timed_out=False, stopped_by_us=False, evidence=evidence)
    assert verdict == "resource_limit" and "memory limit reached" in reason


def test_without_a_memory_cgroup_what_the_processes_hold_together_is_watched_and_stopped_past_the_limit():
    """Without cgroups each process has only its own address-space rlimit: forks holding 80 MiB each pass it, but
    together (240 MiB) pass a 150 MiB limit. The watch stops them once (the sandbox's processes killed) and the
    verdict is `resource_limit`, not a crash, nor a host OOM the machinery would be blamed for."""
    from sandbox.observe import Watch
    from sandbox.runner import classify

    hold = ("import os, time\n"
            "for _ in range(3):\n"
            "    if os.fork() == 0:\n"
            "        block = bytearray(80 << 20)\n"
            "        block[::4096] = b'\\1' * len(block[::4096])\n"
            "        time.sleep(30)\n"
            "        os._exit(0)\n"
            "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", hold], start_new_session=True)
    stopped = []
    watch = Watch(proc.pid, sample_memory=True, limit=150 << 20,
                  over=lambda: stopped.append(True) or os.killpg(proc.pid, signal.SIGKILL))
    watch.start()
    try:
        proc.wait(timeout=20)
    finally:
        watch.stop.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert stopped == [True] and watch.over_limit > 150 << 20 and watch.peak >= watch.over_limit
    verdict, reason = classify(returncode=-9, timed_out=False, stopped_by_us=False, isolated=False,
                               evidence=Evidence(memory_over_mb=watch.over_limit / 2**20))
    assert verdict == "resource_limit" and "memory limit reached" in reason and "MiB" in reason


def test_an_oom_kill_while_the_sandbox_stayed_under_its_limit_is_the_machinerys(tmp_path, monkeypatch):
    """The kernel's `oom_kill` counts the group's processes "killed by any kind of OOM killer": the host's own,
    out of memory as a whole, or a group's above the sandbox's (measured: a process of a group limited to 512 MiB
    under one limited to 64 MiB, killed at 64 MiB, counted by its own group with failcnt 0). Its verdict was
    `resource_limit`, "memory limit reached", against the vendor, the sandbox far under its limit. It is the
    machinery's failure (a campaign retries it); while serving, it is not counted as the sandbox's limit."""
    from types import SimpleNamespace

    from sandbox.runner import _Sitting, classify
    from testbed.errors import InfrastructureFailure

    measured = {"oom_kill": 1, "failcnt": 0, "memsw.failcnt": 0, "max_usage_in_bytes": 64 * MIB + 249856,
                "memsw.max_usage_in_bytes": 64 * MIB + 249856}
    service = _service(_cgroups(tmp_path, monkeypatch, 512, measured))
    job = SimpleNamespace(isolated=True, startup_timeout_s=30.0,
                          limits=SandboxLimits(memory_mb=512, max_processes=64, cpu_seconds=60, threads=1))

    def sitting(returncode: int = 137) -> _Sitting:
        return _Sitting(names=["clean"], first=True, startup_s=1.0, ready=True, charged_s=2.0, timed_out=False,
                        returncode=returncode, stopped_by_us=False, peak=service.peak_rss_mb, limits={},
                        evidence=service.evidence(), log="")

    assert (service.evidence().oom_kills, service.evidence().host_oom_kills) == (0, 1)
    with pytest.raises(InfrastructureFailure, match="out of memory") as exc:
        sitting().verdict(job)
    assert "peak 64 MiB of its 512 MiB" in exc.value.problem and "retries" in exc.value.fix
    live = service.evidence(live=True)  # serving reads it live: a crash it restarts, never the sandbox's limit
    assert (live.oom_kills, live.host_oom_kills) == (0, 1)
    assert classify(returncode=137, timed_out=False, stopped_by_us=False, evidence=live)[0] != "resource_limit"
    # a sandbox caught trying what it forbids keeps that verdict: the host out of memory (which a bundle might
    # try to bring about) never hides it behind a retry
    for caught in ({"harness_paths": ["/etc/testbed"]}, {"returncode": 128 + signal.SIGSYS}):
        service._reports = type("Reports", (), {"hits": caught.get("harness_paths", [])})()
        assert sitting(caught.get("returncode", 137)).verdict(job)[0] == "sandbox_violation"
    # without the host's kill, the same sitting is the bundle's crash, recorded as usual
    memory = service._cgroups.paths["memory"]
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    service._reports = None
    assert sitting().verdict(job)[0] == "crashed"


def _memory_cgroups() -> bool:
    """Whether this machine gives sandboxes memory cgroups (root, cgroup v1) whose `oom_control` counts kills."""
    try:
        return os.geteuid() == 0 and "oom_kill " in (host._own_group("memory") / "memory.oom_control").read_text()
    except OSError:
        return False


def _entering(cgroups: host.Cgroups):
    """A `preexec_fn` putting the child into `cgroups`, as the sandbox's first process puts itself."""
    def enter() -> None:
        for procs in cgroups.procs_files:
            with open(procs, "w") as file:
                file.write(str(os.getpid()))
    return enter


def _hog(cgroups: host.Cgroups) -> int:
    """Exit status of a process allocating 200 MiB in `cgroups`."""
    return subprocess.run([sys.executable, "-I", "-S", "-c", "bytearray(200 << 20)"], preexec_fn=_entering(cgroups),
                          capture_output=True, timeout=60).returncode


@pytest.mark.skipif(not _memory_cgroups(), reason="needs root and cgroup v1 memory groups that count OOM kills")
def test_the_kernel_tells_an_oom_kill_at_the_sandboxs_limit_from_one_above_it(monkeypatch):
    """The real kernel, within 64 MiB: a process allocating past its sandbox's own limit; and one whose sandbox
    stays under its limit inside a group out of memory at 64 MiB (standing for the host: the OOM killer then acts
    for another than the sandbox's group, as it does for the whole host's). Both count one OOM kill in the
    sandbox's group; only the first is its limit."""
    own = host.Cgroups(f"{os.getpid()}-oom-own", 64, 16)
    try:
        assert own.available and _hog(own) == -signal.SIGKILL
        assert (own.oom_kills(), own.host_oom_kills()) == (1, 0)
    finally:
        own.remove()
    above = host._own_group("memory") / "testbed" / f"{os.getpid()}-oom-above"
    above.mkdir(parents=True)
    (above / "memory.limit_in_bytes").write_text(str(64 << 20))
    real = host._own_group
    monkeypatch.setattr(host, "_own_group", lambda ctl: above if ctl == "memory" else real(ctl))
    under = host.Cgroups(f"{os.getpid()}-oom-under", 512, 16)
    try:
        assert under.available and _hog(under) == -signal.SIGKILL
        assert (under.oom_kills(), under.host_oom_kills()) == (0, 1)
    finally:
        under.remove()
        for group in (above / "testbed", above):
            host._rmdir(group)


@pytest.mark.skipif(not (_memory_cgroups() and (host.CGROUP_ROOT / "freezer").is_dir()),
                    reason="needs root and the cgroup v1 freezer")
def test_a_paused_sandbox_runs_nothing_and_still_dies_when_killed():
    """What the node's speed is timed under (`sandbox.speed`): four threads spinning in the sandbox's groups use
    no CPU while it is paused, run again after, and a sandbox removed while paused is thawed to die."""
    cgroups = host.Cgroups(f"{os.getpid()}-pause", 64, 16)
    code = ("import threading\ndef spin():\n    while True: pass\n"
            "for _ in range(4): threading.Thread(target=spin).start()")
    spinner = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], preexec_fn=_entering(cgroups))
    try:
        def used_in(seconds: float) -> float:
            before = cgroups.cpu_used_s()
            time.sleep(seconds)
            return cgroups.cpu_used_s() - before

        def runs() -> bool:  # the spinners get CPU within a few looks (a busy CI machine shares its cores)
            return any(used_in(0.2) > 0.05 for _ in range(10))

        assert runs()
        with cgroups.paused() as frozen:
            assert frozen and used_in(0.2) < 0.01
        assert runs()
        with cgroups.paused() as frozen:
            cgroups.remove()
            assert spinner.wait(timeout=5) == -signal.SIGKILL
    finally:
        spinner.kill()
        cgroups.remove()


@pytest.mark.skipif(not (_memory_cgroups() and (host.CGROUP_ROOT / "freezer").is_dir()),
                    reason="needs root and the cgroup v1 freezer")
def test_a_sandbox_a_killed_harness_left_frozen_is_thawed_and_swept():
    """The harness died while the sandbox was paused: its groups (named after its dead pid) stay frozen, and
    only a thaw lets the kill through. The next harness's sweep does both."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    cgroups = host.Cgroups(f"{dead.pid}-frozen", 64, 16)
    spinner = subprocess.Popen([sys.executable, "-I", "-S", "-c", "while True: pass"], preexec_fn=_entering(cgroups))
    try:
        (cgroups.paths["freezer"] / "freezer.state").write_text("FROZEN")
        host.sweep_stale()
        assert spinner.wait(timeout=5) == -signal.SIGKILL
        assert not any(group.exists() for group in cgroups.paths.values())
    finally:
        spinner.kill()
        cgroups.remove()


class _Starts:
    """Stand-in for `SandboxedService` in `run_job`: each start is ready after the next of `ready_after` seconds
    (None: never ready, still running), and answers nothing (the phases here carry no request)."""

    def __init__(self, ready_after):
        self.ready_after, self.started = list(ready_after), []

    def __call__(self, *args, **kwargs):
        fake, delay = self, self.ready_after.pop(0)

        class Service:
            returncode, stopped_by_us, peak_rss_mb, enforcement, proc, cpu_quota = None, True, 1.0, {}, None, 0.0

            def __enter__(self):
                fake.started.append(time.monotonic())
                return self

            def __exit__(self, *exc):
                return None

            def wait_ready(self, timeout):
                time.sleep(min(timeout, delay) if delay is not None else timeout)
                return time.monotonic() if delay is not None and delay <= timeout else None

            def alive(self):
                return True

            def stop(self, grace_s=0):
                return None

            def channel(self, **kw):
                return type("Channel", (), {"close": lambda self: None})()

            def cpu_used_s(self):
                return None

            def paused(self):
                return contextlib.nullcontext(False)

            def evidence(self):
                return Evidence()

            def log_tail(self):
                return ""

        return Service()


def test_a_later_sittings_start_is_not_charged_to_the_wall_time_limit(monkeypatch):
    """The README's promise: the scenarios' fresh start is bounded by the startup timeout alone, not by what the
    first sitting left of the wall-time limit; the first start is charged."""
    from sandbox import runner
    from sandbox.runner import Phase, SandboxJob, run_job

    def job(wall, startup=5.0):
        return SandboxJob(bundle=b"", route="/x", phases=[Phase("clean", [], []), Phase("typos", [], [], sitting=1)],
                          limits=SandboxLimits(memory_mb=64, max_processes=8, cpu_seconds=10, threads=1),
                          wall_time_s=wall, startup_timeout_s=startup, isolated=False)

    starts = _Starts([0.2, 1.0])  # the second start alone takes longer than the whole limit
    monkeypatch.setattr(runner, "SandboxedService", starts)
    result = run_job(job(wall=0.6))
    assert result.verdict == "completed", result.reason
    assert len(starts.started) == 2 and result.restarts_s[0] >= 1.0 and set(result.phases) == {"clean", "typos"}
    monkeypatch.setattr(runner, "SandboxedService", _Starts([1.0]))  # the first start is charged
    assert run_job(job(wall=0.6)).verdict == "timeout"
    monkeypatch.setattr(runner, "SandboxedService", _Starts([0.1, None]))
    late = run_job(job(wall=5.0, startup=0.5))
    assert late.verdict == "timeout"
    assert late.reason == "the service was not ready within 0.5 s when started afresh for typos"
    assert set(late.phases) == {"clean"}


def test_the_harness_folders_are_those_the_sandbox_neither_shows_nor_has_of_its_own(tmp_path):
    """A harness folder inside what every sandbox mounts (the host's /usr, the Python runtime) could be read by a
    bundle; one holding the sandbox's own folders (/, /tmp, /opt) would make a bundle's own files read as reaching
    for the harness. Both are refused naming the setting; a folder of the testbed's own is kept."""
    from sandbox.isolation import hidden_paths

    fine = {tmp_path / "home": "TESTBED_HOME", Path("/srv/city/data"): "TESTBED_DATA_DIR"}
    assert hidden_paths(fine) == sorted(str(p) for p in fine)
    for path, setting, words in [
        (Path("/tmp"), "MLFLOW_TRACKING_URI", "sqlite:////tmp/testbed/mlflow.db"),
        (Path("/"), "TESTBED_DATA_DIR", "holds the sandbox's own"),
        (Path("/dev"), "TESTBED_HOME", "holds the sandbox's own /dev"),
        (Path("/usr/local/share/data"), "TESTBED_DATA_DIR", "inside /usr, which every sandbox mounts"),
        (Path(sys.base_prefix).resolve() / "data", "TESTBED_DATA_DIR", "which every sandbox mounts"),
    ]:
        with pytest.raises(SandboxUnavailable, match=words) as info:
            hidden_paths({**fine, path: setting})
        assert info.value.where == setting and "unset it" in info.value.fix


@pytest.mark.parametrize("setting, words", [
    ("abc", "not a range"), ("5-3", "not a range"), ("1-99999999999", "not a range"), ("1-4294967295", "not a range"),
    ("0-10", r"0 \(root\)"), ("65534-65534", r"65534 \(nobody\)")])
def test_a_sandbox_uid_range_that_is_malformed_or_holds_an_account_is_refused(monkeypatch, setting, words):
    """A leased uid has its processes killed: a range holding root or another account would kill them."""
    monkeypatch.setenv("TESTBED_SANDBOX_UIDS", setting)
    with pytest.raises(SandboxUnavailable, match=words) as info:
        uids.uid_range()
    assert info.value.where == "TESTBED_SANDBOX_UIDS" and "unset it" in info.value.fix
    monkeypatch.setenv("TESTBED_SANDBOX_UIDS", "")  # set to nothing: the default
    assert uids.uid_range() == range(1_600_000_000, 1_600_004_096)
    monkeypatch.setenv("TESTBED_SANDBOX_UIDS", " 1700000000 - 1700000001 ")
    assert uids.uid_range() == range(1_700_000_000, 1_700_000_002)


def test_a_location_variable_set_to_nothing_counts_as_unset(monkeypatch):
    from testbed.config import PROJECT_ROOT, Workspace

    for name in ("TESTBED_HOME", "TESTBED_DATA_DIR", "BENTOML_HOME", "MLFLOW_TRACKING_URI", "TESTBED_ENVS_DIR"):
        monkeypatch.setenv(name, "")
    ws = Workspace.from_env()
    assert ws.home == (PROJECT_ROOT / "var").resolve() and ws.data_dir == (PROJECT_ROOT / "data").resolve()
    assert ws.bentoml_home == ws.home / "bentoml" and ws.envs == ws.home / "envs"
