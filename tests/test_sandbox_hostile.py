"""The hostile audit's escapes, each a real bundle (made by `bentoml build`) in the real sandbox: contained, with
the verdict the harness observed. Slow; the runs use the inline executor (Ray is not the point here)."""

import json
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from evaluation.tracking_memory import MemoryTracker
from pilots.vendor import VendorProfile
from sandbox.executor import InlineExecutor
from sandbox.isolation import SandboxLimits, check_isolation
from sandbox.runner import Phase, SandboxJob, run_job
from sandbox.uids import uid_range
from testbed.config import PROJECT_ROOT
from workflow.evaluate import evaluate_bundle

pytestmark = pytest.mark.slow

LIMITS = SandboxLimits(memory_mb=1024, max_processes=64, cpu_seconds=300, threads=1, tmp_mb=64, tmp_inodes=2000)
VENDOR = VendorProfile(name="V", headquarters_district="Mapo-gu", seoul_based=True, startup=True,
                       technology_field="other", model_description="x", licence="MIT")


def job(bundle, route, payloads, **kw):
    kw.setdefault("limits", LIMITS)
    kw.setdefault("wall_time_s", 90)
    kw.setdefault("startup_timeout_s", 60)
    return SandboxJob(bundle=bundle.read_bytes(), route=route, phases=[
        Phase(f"p{i}", [json.dumps(p).encode()], [1]) for i, p in enumerate(payloads)], **kw)


def answers(result):
    return [json.loads(p.bodies[0]) if p.bodies[0] else None for p in result.phases.values()]


@pytest.fixture(scope="module", autouse=True)
def isolation_available():
    check_isolation()
    if os.geteuid() != 0:
        pytest.skip("the per-sandbox uids and cgroups need root (CI runs as root)")


@pytest.fixture
def decoy(tmp_path):
    """A root-only (0600) Unix socket of 'another host process': the harness must never talk to it."""
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "other.sock"))
    os.chmod(folder / "other.sock", 0o600)
    server.listen()
    accepted = []

    def serve():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield str(folder / "other.sock"), accepted
    server.close()


def test_no_way_out_and_nothing_left_for_the_next_tenant(built, decoy):
    path, accepted = decoy
    result = run_job(job(built("hostile_escape"), "/attempt", [{"kind": "recon", "arg": path},
                                                               {"kind": "keyring_store"}]))
    recon, stored = answers(result)
    # the channel: whatever it symlinked, the harness used its own socket and answered from the bundle
    assert accepted == [] and recon["redirect"]["/run/testbed"].startswith("denied")
    assert recon["uid"] in uid_range() and recon["io_uring"] == "ENOSYS"
    assert "testbed-run-" not in recon["pid1_cmdline"] and "--ro-bind" not in recon["pid1_cmdline"]
    assert set(recon["etc"]) <= {"passwd", "group", "hosts", "nsswitch.conf", "ld.so.cache", "ld.so.conf",
                                 "ld.so.conf.d", "alternatives", "localtime", "mime.types"}
    # the keyring: the call never runs, the process dies, the harness sees the signal
    assert stored is None and result.verdict == "sandbox_violation" and "system call" in result.reason
    later = run_job(job(built("hostile_escape"), "/attempt", [{"kind": "keyring_read"}]))
    assert later.verdict == "sandbox_violation" and answers(later) == [None]


def test_limits_bound_the_host(built):
    shared = run_job(job(built("hostile_memory"), "/hog", [{"kind": "inodes"}, {"kind": "shared_forks", "mb": 300}]))
    inodes, forks = answers(shared)
    assert inodes["files"] < LIMITS.tmp_inodes and inodes["stopped_by"] == "ENOSPC"
    assert forks["children"] == 8 and shared.verdict == "completed"
    assert 300 < shared.peak_rss_mb < 2 * 300  # shared pages count once (a per-process RSS sum says ~2700)
    memfd = run_job(job(built("hostile_memory"), "/hog", [{"kind": "memfd", "mb": 3 * LIMITS.memory_mb}]))
    assert memfd.verdict == "resource_limit" and "memory" in memfd.reason
    assert memfd.peak_rss_mb <= LIMITS.memory_mb + 1 and memfd.limits["memory"].startswith("cgroup")


def test_without_cgroups_the_sandbox_is_stopped_once_it_holds_more_than_its_memory_limit(built, monkeypatch):
    """Where cgroups are unavailable (not root, cgroup v2 only) each process has its address-space rlimit, and
    forks could hold that many times over: the harness samples what the sandbox holds (its processes'
    proportional share, pages shared by forks once) and stops it past its limit, a `resource_limit` verdict,
    never a death the machinery would be blamed (and retried) for. Forks sharing their pages still pass."""
    from sandbox.host import Cgroups

    monkeypatch.setattr(Cgroups, "available", property(lambda self: False))
    limits = replace(LIMITS, memory_mb=3072)
    apart = run_job(job(built("hostile_memory"), "/hog", [{"kind": "forks_apart", "mb": 1024}], limits=limits))
    assert apart.limits["memory"].startswith("rlimit"), apart.limits
    assert apart.verdict == "resource_limit" and "held" in apart.reason and "stopped" in apart.reason, apart.reason
    shared = run_job(job(built("hostile_memory"), "/hog", [{"kind": "shared_forks", "mb": 400}], limits=limits))
    assert shared.verdict == "completed" and answers(shared) == [{"children": 8, "block_mb": 400}], shared.reason
    assert 400 < shared.peak_rss_mb < 3072  # a per-process RSS sum says ~5000


def test_the_harness_cannot_be_knocked_over(built):
    huge = run_job(job(built("hostile_harness"), "/flood", [{"kind": "huge"}]))
    assert huge.verdict == "contract_violation" and "cap" in huge.reason
    assert huge.phases["p0"].bodies == [None]
    trickle = run_job(job(built("hostile_harness"), "/flood", [{"kind": "trickle"}], wall_time_s=8))
    assert trickle.verdict == "timeout" and trickle.phases["p0"].statuses == [0]  # cut, not waited for


def test_answers_built_to_crash_the_decoder_end_in_a_recorded_verdict(built, ws, bike_spec):
    tracker = MemoryTracker()
    ev = evaluate_bundle(bike_spec, built("hostile_forecaster"), VENDOR, executor=InlineExecutor(), ws=ws,
                         out_dir=ws.home / "out", submission="hostile", tracker=tracker, split="sample")
    assert ev.card.verdict == "contract_violation" and "RecursionError" in ev.card.verdict_reason
    assert (ws.home / "out" / "scorecard.json").is_file()
    assert [r.status for r in tracker.runs.values()] == ["FINISHED"]


def test_verdicts_come_from_what_the_harness_observes(built):
    data = str(PROJECT_ROOT / "data" / "seoul-bike" / "SeoulBikeData.csv")
    erased = run_job(job(built("hostile_liar"), "/lie", [{"kind": "network_then_erase", "arg": data}],
                         forbidden=[str(PROJECT_ROOT / "data")]))
    assert erased.phases["p0"].statuses == [200]
    assert erased.verdict == "sandbox_violation" and "network" in erased.reason
    forged = run_job(job(built("hostile_liar"), "/lie", [{"kind": "forge"}]))
    assert "MemoryError" in forged.log and forged.verdict == "completed"


def test_a_benign_bundle_beside_hostile_ones_is_unaffected(built, ws, bike_spec):
    """Hostile tenants hold every process they may and fill their memory while a benign one is evaluated."""
    hog, memory, benign = built("hog"), built("hostile_memory"), built("bike_seasonal_naive")
    with ThreadPoolExecutor(3) as pool:
        held = pool.submit(run_job, job(hog, "/hog", [{"kind": "processes"}]))
        filled = pool.submit(run_job, job(memory, "/hog", [{"kind": "memfd", "mb": 3 * LIMITS.memory_mb}]))
        ev = pool.submit(evaluate_bundle, bike_spec, benign, VENDOR, executor=InlineExecutor(), ws=ws,
                         out_dir=ws.home / "out", submission="benign", split="sample").result()
        assert held.result().verdict == "resource_limit" and filled.result().verdict == "resource_limit"
    assert ev.card.verdict == "completed" and ev.card.performance["error_rate"] == 0
