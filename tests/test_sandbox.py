"""The real sandbox (bubblewrap, cgroups, rlimits, seccomp) with real bundles made by `bentoml build`. Slow."""

import io
import json
import os
import pickle
import re
import socket
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sandbox.isolation import NOBODY, SandboxLimits, check_isolation
from sandbox.runner import Phase, SandboxJob, run_job
from sandbox.uids import uid_range
from testbed.config import PROJECT_ROOT

pytestmark = pytest.mark.slow

LIMITS = SandboxLimits(memory_mb=3072, max_processes=64, cpu_seconds=300, threads=1)


def job(bundle, route, payloads, **kw):
    kw.setdefault("limits", LIMITS)
    kw.setdefault("wall_time_s", 120)
    kw.setdefault("startup_timeout_s", 60)
    return SandboxJob(bundle=bundle.read_bytes(), route=route, phases=[
        Phase("p", [json.dumps(p).encode() for p in payloads], [1] * len(payloads))], **kw)


@pytest.fixture(scope="module", autouse=True)
def isolation_available():
    check_isolation()


@pytest.fixture
def host_server():
    """A TCP server on the host's loopback: the sandbox must not reach it."""
    server = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: server.accept(), daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_sandbox_denies_network_and_harness_files(built, host_server, ws):
    data_file = PROJECT_ROOT / "data" / "seoul-bike" / "SeoulBikeData.csv"
    targets = ["write:/tmp/scratch-is-fine", f"tcp:127.0.0.1:{host_server}", "tcp:1.1.1.1:53", "dns:pypi.org",
               f"read:{data_file}",
               f"list:{PROJECT_ROOT / 'data'}", f"read:{PROJECT_ROOT / 'mlflow' / 'README.md'}", "read:/etc/shadow",
               "write:/usr/lib/evil", "write:/bento/evil", "bigfile:/tmp/fill-the-disk", "write:/run/x",
               "userns:", "thread:", "vsock:", "shm:", "read:service.py", "write:beside-the-code"]
    small_files = SandboxLimits(memory_mb=3072, max_processes=64, cpu_seconds=300, threads=1, tmp_mb=16)
    result = run_job(job(built("probe"), "/probe", [{"targets": targets}], limits=small_files,
                         forbidden=[str(PROJECT_ROOT / "data"), str(PROJECT_ROOT / "mlflow")]))
    answer = json.loads(result.phases["p"].bodies[0])
    assert (answer["uid"] in uid_range() if os.geteuid() == 0 else answer["uid"] == NOBODY)
    assert int(answer["cap_eff"], 16) == 0 and answer["no_new_privs"] == "1"  # README: capabilities, no_new_privs
    if os.geteuid() == 0:  # setpriv's --bounding-set=-all: none to regain (a user namespace keeps its own set)
        assert int(answer["cap_bnd"], 16) == 0
    assert answer["bentofile_env"] is None  # README: bentofile.yaml's `envs` are not applied
    outcome = answer["results"]
    assert outcome.pop("write:/tmp/scratch-is-fine") == "allowed" and outcome.pop("thread:") == "allowed"
    assert outcome.pop("shm:") == "allowed"
    assert outcome.pop("read:service.py") == "allowed"  # it runs in its src/, as under `bentoml serve` (read-only)
    assert all(v.startswith("denied") for v in outcome.values()), outcome
    assert result.verdict == "sandbox_violation" and "network" in result.reason
    assert result.isolated


def test_contract_route_missing_gives_http_errors_not_a_crash(built):
    result = run_job(job(built("probe"), "/forecast", [{"history": [], "future": []}]))
    assert result.verdict == "completed" and result.phases["p"].statuses == [404]


def test_each_sitting_is_a_fresh_sandbox_that_keeps_nothing_of_the_last(built, monkeypatch):
    """The scenario phases go to a sitting of their own (`Phase.sitting`) so that nothing the service was sent
    before can answer them: a new service process in a new sandbox, its `/tmp` and `/dev/shm` empty again. The
    bundle is unpacked once and both sittings serve that tree, which the service cannot write to. Its start is
    timed apart (`restarts_s`), and its output follows the first sitting's in the log."""
    from sandbox import service

    imports, real = [], service.import_bundle
    monkeypatch.setattr(service, "import_bundle", lambda *a, **kw: imports.append(a) or real(*a, **kw))
    marks = ["write:/tmp/seen-before", "write:/dev/shm/seen-before"]
    probe = [json.dumps({"targets": t}).encode() for t in (marks + ["write:/bento/seen-before"],
                                                           [m.replace("write", "read") for m in marks])]
    result = run_job(SandboxJob(bundle=built("probe").read_bytes(), route="/probe", phases=[
        Phase("first", probe[:1], [1]), Phase("again", probe[1:], [1]), Phase("later", probe[1:], [1], sitting=1)],
        limits=LIMITS, wall_time_s=120, startup_timeout_s=60))
    outcome = {name: json.loads(p.bodies[0])["results"] for name, p in result.phases.items()}
    assert result.verdict == "completed", result.reason
    assert outcome["first"].pop("write:/bento/seen-before").startswith("denied: "), outcome["first"]
    assert set(outcome["first"].values()) == {"allowed"} and set(outcome["again"].values()) == {"allowed"}
    assert set(outcome["later"].values()) == {"denied: FileNotFoundError"}, outcome["later"]
    assert len(imports) == 1
    assert len(result.restarts_s) == 1 and 0 < result.restarts_s[0] < 60 and result.startup_s > 0
    assert "--- sitting 1 (a fresh start): first, again ---" in result.log and "--- sitting 2" in result.log


def test_memory_limit_ends_as_resource_limit(built):
    result = run_job(job(built("hog"), "/hog", [{"kind": "memory"}]))
    if result.limits["memory"].startswith("cgroup"):  # the kernel's OOM kill in the sandbox's own cgroup
        assert result.verdict == "resource_limit" and "memory limit" in result.reason
    else:  # an address-space rlimit: MemoryError inside, an HTTP 500 outside; nothing the harness can observe
        assert result.phases["p"].statuses == [500]


def test_process_limit_ends_as_resource_limit(built):
    result = run_job(job(built("hog"), "/hog", [{"kind": "processes"}]))
    if not result.limits["processes"].startswith("cgroup"):
        pytest.skip("no pids cgroup here: forks are refused by RLIMIT_NPROC, which leaves no evidence outside")
    assert result.verdict == "resource_limit" and "process limit" in result.reason


def test_a_bundle_gets_no_more_cpu_than_the_spec_gives_however_many_processes_it_starts(built):
    """Four busy processes for 1.5 s in a sandbox given one CPU: about 1.5 s of CPU time in all (two cores'
    worth, ~3 s, without the quota on this machine), and the run says how often the quota held it back."""
    result = run_job(job(built("hog"), "/hog", [{"kind": "cpu"}], limits=replace(LIMITS, cpus=1)))
    if not result.limits["cpu"].startswith("cgroup"):
        assert os.geteuid() != 0 or not Path("/sys/fs/cgroup/cpu").is_dir(), result.limits
        pytest.skip("no cpu cgroup here (not root, or no cgroup v1 cpu hierarchy): Ray's scheduling only")
    cpu_s, wall_s = map(float, result.phases["p"].bodies[0].decode().split())
    assert cpu_s <= 1.2 * wall_s, (cpu_s, wall_s)
    # the four processes ended within the request, their counters with them: the sandbox's cgroup still counts
    # their CPU as the service's own (else it would pass for other processes' load, and discount its latency)
    phase = result.phases["p"]
    assert phase.sandbox_cpu_s is not None and phase.sandbox_cpu_s >= 0.9 * cpu_s > 2 * sum(phase.cpu_s), \
        (phase.sandbox_cpu_s, cpu_s, phase.cpu_s)
    assert re.search(r"cgroup quota 1 CPU \(throttled in [1-9][0-9]* periods", result.limits["cpu"]), result.limits



def test_a_bundle_held_back_by_its_quota_is_not_scored_as_if_others_held_it_back(built):
    """50 ms of CPU a request on a quarter of a core: the quota holds each request back (its threads wait for a
    CPU, as Linux counts it), and however busy the machine is, the latency scored is what its quota allows."""
    from evaluation.performance import performance

    result = run_job(replace(job(built("hog"), "/hog", [{"kind": "spin"}] * 8, limits=replace(LIMITS, cpus=0.25)),
                             phases=[Phase("single_stream", [b'{"kind": "spin"}'] * 8, [1] * 8)]))
    if not result.limits["cpu"].startswith("cgroup"):
        pytest.skip("no cpu cgroup here (not root, or no cgroup v1 cpu hierarchy): Ray's scheduling only")
    phase, perf = result.phases["single_stream"], performance(result)
    assert phase.cpu_quota == 0.25 and all(c >= 0.05 for c in phase.request_sandbox_cpu_s), phase.request_sandbox_cpu_s
    assert perf["service_latency_ms"]["p50"] >= 0.9 * 1000 * 0.05 / 0.25, perf
    # the node's speed, timed between these requests with the sandbox frozen (`sandbox.speed`), and before it started
    assert len(phase.speed) >= 3 and perf["node_speed"]["samples_before_start"] == 5, perf["node_speed"]
    assert 0.1 < perf["node_speed"]["single_stream"]["relative"] < 10

def test_crash_on_start(built):
    result = run_job(job(built("crash_on_start"), "/forecast", []))
    assert result.verdict == "crashed" and "corrupt" in result.log


def test_slow_start_times_out(built):
    result = run_job(job(built("slow_start"), "/forecast", [{"history": [], "future": []}], startup_timeout_s=8))
    assert result.verdict == "timeout" and "not ready within 8" in result.reason and result.phases == {}


def test_arrays_travel_in_binary_and_pickle_from_outside_is_refused(built):
    from evaluation.families.forecasting.contract import NPZ, encode_request

    pickled = pickle.dumps({"history": np.zeros((1, 1)), "future": np.zeros((1, 1))})
    result = run_job(SandboxJob(bundle=built("bad_output").read_bytes(), route="/forecast", phases=[
        Phase("npz", [encode_request(np.zeros((2, 4, 3)), np.zeros((2, 5, 2)))], [2], content_type=NPZ),
        Phase("pickle", [pickled], [1], content_type="application/vnd.bentoml+pickle"),
        Phase("bad", [b"not an npz"], [1], content_type=NPZ)], limits=LIMITS, wall_time_s=120, startup_timeout_s=60))
    assert result.verdict == "completed", result.reason
    answer = result.phases["npz"].bodies[0]
    assert answer.startswith(b"\x93NUMPY")
    assert np.array_equal(np.load(io.BytesIO(answer), allow_pickle=False), np.ones((2, 3)))
    assert result.phases["pickle"].statuses == [415] and result.phases["bad"].statuses == [400]


def test_an_archive_the_sandbox_refuses_stops_the_service_it_started_and_leaves_nothing(built, tmp_path):
    """The service's Python starts while the harness unpacks the bundle; when the unpacking refuses the archive
    (here cut short: other bytes than the ones inspected at submission), the service never gets a tag and
    nothing is left: no process, no private folder, no uid lease."""
    import tempfile

    import psutil

    from sandbox.host import RUN_PREFIX
    from testbed.errors import BundleError

    bundle = built("week_mean")
    cut = tmp_path / "cut.bento"
    cut.write_bytes(bundle.read_bytes()[: bundle.stat().st_size * 2 // 3])
    ours = f"{RUN_PREFIX}{os.getpid()}-"
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. multiprocessing's resource tracker
    with pytest.raises(BundleError, match="could not be unpacked"):
        run_job(job(cut, "/forecast", [{"history": [], "future": []}]))
    assert not [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
    assert not list(Path(tempfile.gettempdir()).glob(ours + "*"))
    assert run_job(job(bundle, "/forecast", [])).verdict == "completed"  # the uid lease and cgroups came back
