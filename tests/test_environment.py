"""Bundles bring their own dependencies: what a bundle declares is installed (wheels, index only, cached per
requirements hash) outside the sandbox, and only that is importable inside it."""

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from sandbox.bundle import inspect_bundle
from sandbox.environment import COMPLETE, PythonEnvironment, bundle_environment, parse_requirements
from sandbox.isolation import ENV_MOUNT, SandboxLimits, SandboxPaths, bwrap_arguments
from testbed.config import PROJECT_ROOT
from testbed.errors import BundleError, InfrastructureFailure
from tests.conftest import FORECAST_ROUTE, free_port

HARNESS = tuple(f"{n}=={metadata.version(n)}" for n in ("bentoml", "httptools", "uvloop"))


@pytest.mark.parametrize("line", ["git+https://example.org/x.git", "evil @ https://example.org/evil.whl",
                                  "-e .", "--index-url http://127.0.0.1/simple", "./local.whl", "not a requirement!"])
def test_only_plain_index_requirements_are_accepted(line):
    with pytest.raises(BundleError, match="not a package from the index") as exc:
        parse_requirements(f"numpy\n{line}\n", "bundle.bento")
    assert line in str(exc.value) and exc.value.where == "bundle.bento"


def test_the_harness_pins_its_server_packages_and_the_key_ignores_order(tmp_path):
    reqs = parse_requirements("# comment\nbentoml==1.4.0\ntorch==2.15.0 ; python_version >= '3.10'\n\nnumpy\n"
                              "uvloop<0.20\n", "b")
    assert tuple(reqs[-3:]) == HARNESS and "bentoml==1.4.0" not in reqs and "uvloop<0.20" not in reqs
    assert reqs[:-3] == sorted(reqs[:-3]) and "numpy" in reqs
    a = PythonEnvironment(tuple(reqs), tmp_path, "b")
    b = PythonEnvironment(tuple(parse_requirements("numpy\ntorch==2.15.0; python_version>='3.10'", "b")), tmp_path)
    c = PythonEnvironment(tuple(parse_requirements("numpy\ntorch==2.14.0", "b")), tmp_path)
    assert a.key == b.key != c.key and a.prefix == tmp_path / a.key


def test_the_extras_declared_on_a_server_package_are_kept_on_its_pinned_line():
    """`bentoml[io-image]>=1.4` became `bentoml==<pinned>`: the extra's packages (Pillow) were never installed."""
    bentoml, httptools, uvloop = HARNESS
    pinned = bentoml.split("==")[1]
    assert parse_requirements("bentoml[io-image]>=1.4\n", "b") == [f"bentoml[io-image]=={pinned}", httptools, uvloop]
    reqs = parse_requirements("BentoML[io-image] ; python_version >= '3'\nbentoml[grpc,io-image]\nbentoml[aws] ; "
                              "python_version < '3'\nnumpy\n", "b")
    assert reqs == ["numpy", f"bentoml[grpc,io-image]=={pinned}", httptools, uvloop]  # its marker's extras only


def test_declared_requirements_come_from_bento_yaml(fake_bento):
    info = inspect_bundle(fake_bento([FORECAST_ROUTE], requirements="jamo==0.4.1\nbentoml==1.4.39\n"))
    assert bundle_environment(info.manifest, Path("/c"), "b").requirements == ("jamo==0.4.1", *HARNESS)
    bare = inspect_bundle(fake_bento([FORECAST_ROUTE], name="bare"))
    assert bundle_environment(bare.manifest, Path("/c"), "b").requirements == HARNESS
    for image, says in (("foo", "`image` is not a mapping"), ({"python_requirements": ["numpy"]}, "is not text")):
        with pytest.raises(BundleError, match=says):
            bundle_environment({"image": image}, Path("/c"), "b")


def test_a_finished_environment_is_reused_without_building(tmp_path, monkeypatch):
    env = PythonEnvironment(("jamo==0.4.1", *HARNESS), tmp_path)
    env.prefix.mkdir()
    (env.prefix / COMPLETE).write_text("")
    monkeypatch.setattr(PythonEnvironment, "_build", lambda *a: pytest.fail("rebuilt a cached environment"))
    assert env.ensure() == env.prefix


def test_uv_errors_name_the_vendors_package_first(tmp_path):
    env = PythonEnvironment(("jamo==0.4.1", "no-such-pkg", *HARNESS), tmp_path)
    assert env.culprits("Because no-such-pkg was not found and you require bentoml==1.4.39 ...") == ["no-such-pkg"]
    assert env.culprits("network is down") == ["jamo", "no-such-pkg"]


def test_the_sandbox_mounts_the_bundles_environment_and_not_the_harness_venv(tmp_path):
    env = tmp_path / "env"
    env.mkdir()
    (env / "pyvenv.cfg").write_text(f"home = {Path(sys._base_executable).parent}\nversion_info = 3.11\n")
    paths, limits = SandboxPaths(tmp_path, tmp_path), SandboxLimits(512, 64, 10, 1)
    cmd, _ = bwrap_arguments(["python"], paths, limits, python_env=env)
    binds = {(cmd[i + 1], cmd[i + 2]) for i, arg in enumerate(cmd) if arg == "--ro-bind"}
    assert (str(env), str(ENV_MOUNT)) in binds
    assert not any(src == str(Path(sys.prefix).resolve()) for src, _ in binds) or sys.prefix == sys.base_prefix
    assert f"{ENV_MOUNT}/bin:/usr/bin:/bin" in cmd
    default, _ = bwrap_arguments(["python"], paths, limits)  # without one: today's behaviour, the harness's venv
    assert any(arg == str(Path(sys.prefix).resolve()) for arg in default) and str(ENV_MOUNT) not in default



def test_what_the_sandbox_mounts_is_never_read_from_the_environment_a_package_wrote(tmp_path):
    """A wheel's `.data/data/` files land at the environment's root, where uv lets one replace `pyvenv.cfg`:
    its `home` once decided which host folder the sandbox mounted as the runtime (a bundle declaring such a
    package read the city's data set from inside, measured with a real sandbox). The runtime is the harness's own
    base interpreter, which every environment is built from."""
    secret = tmp_path / "city-data"
    (secret / "bin").mkdir(parents=True)
    env = tmp_path / "env"
    env.mkdir()
    (env / "pyvenv.cfg").write_text(f"home = {secret / 'bin'}\nversion_info = 3.11\n")
    paths, limits = SandboxPaths(tmp_path, tmp_path), SandboxLimits(512, 64, 10, 1)
    cmd, _ = bwrap_arguments(["python"], paths, limits, python_env=env)
    binds = {cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--ro-bind"}
    assert not any(src == str(secret) or src.startswith(f"{secret}/") for src in binds), binds
    base = Path(sys.base_prefix).resolve()
    assert str(base) in binds or str(base).startswith("/usr")

# -- the real thing: uv, the package index, bubblewrap ---------------------------------------------------------


@pytest.mark.slow
def test_a_bundle_runs_on_its_own_packages_and_sees_none_of_the_harness(built, ws):
    from sandbox.runner import Phase, SandboxJob, run_job

    bundle = built("own_deps")
    env = bundle_environment(inspect_bundle(bundle).manifest, ws.envs, str(bundle))
    assert env.requirements == ("jamo==0.4.1", *HARNESS)
    harness_only = ["torch", "ray", "mlflow", "sklearn", "ultralytics", "evaluation", "sandbox", "testbed"]
    body = json.dumps({"targets": harness_only}).encode()
    job = SandboxJob(bundle=bundle.read_bytes(), route="/probe", phases=[Phase("p", [body], [1])],
                     limits=SandboxLimits(memory_mb=3072, max_processes=64, cpu_seconds=300, threads=1),
                     wall_time_s=120, startup_timeout_s=60, environment=env)
    result = run_job(job)
    assert result.verdict == "completed", result.log[-2000:]
    answer = json.loads(result.phases["p"].bodies[0])
    assert answer["jamo"] == "ㅎㅏㄴㄱㅜㄱㅇㅓ"  # the declared package works inside the sandbox
    assert answer["prefix"] == str(ENV_MOUNT) and answer["env_writable"] is False
    assert answer["imports"] == dict.fromkeys(harness_only, "missing")
    assert answer["server_modules"] == ["httptools", "uvloop"]  # uvicorn's fast parser and loop, in its own env
    assert answer["recorders"] == {"tracing": False, "metrics": False, "access_log": False}  # none can be read
    assert env.ready and (env.prefix / "lib").is_dir()
    # an environment built from other requirements than the bundle's own bento.yaml declares (e.g. read from an
    # altered record beside the stored bundle) is refused before the service is told its tag
    with pytest.raises(BundleError, match="not the one its own bento.yaml declares"):
        run_job(dataclasses.replace(job, bundle=built("probe").read_bytes()))


@pytest.mark.slow
def test_an_uninstallable_package_is_refused_by_name_at_submit_and_in_check(ws, fake_bento, bike_spec):
    from pilots.vendor import VendorProfile
    from sandbox.executor import InlineExecutor
    from testbed.yamlio import load_model
    from workflow.evaluate import evaluate_bundle
    from workflow.submissions import SubmissionStore

    bundle = fake_bento([FORECAST_ROUTE], requirements="numpy\ntestbed-no-such-package-3f9a==1.0\n")
    vendor = PROJECT_ROOT / "examples" / "bike_mlp" / "vendor.yaml"
    with pytest.raises(BundleError, match=r"cannot install the declared package\(s\) testbed-no-such-package-3f9a"):
        SubmissionStore(ws).submit(bike_spec, bundle, vendor)
    assert not ws.submissions.exists() or not any(ws.submissions.iterdir())  # nothing stored
    with pytest.raises(BundleError, match="testbed-no-such-package-3f9a"):
        evaluate_bundle(bike_spec, bundle, load_model(vendor, VendorProfile), executor=InlineExecutor(), ws=ws,
                        out_dir=ws.home / "check", submission="check", split="sample")


def _wheel(folder: Path, name: str, files: dict[str, str], version: str = "0.1") -> Path:
    """A pure-Python wheel holding `files` (path -> text), with its metadata and RECORD."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).decode().rstrip('=')},"
              f"{len(text.encode())}" for path, text in files.items()]
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for member, text in {**files, f"{info}/RECORD": "\n".join([*record, f"{info}/RECORD,,"]) + "\n"}.items():
            whl.writestr(member, text)
    return path


@pytest.mark.slow
def test_no_code_of_a_declared_package_runs_on_the_host_while_its_environment_is_built(tmp_path, monkeypatch):
    """A wheel's `.pth` file is code Python runs at start-up, wherever `site` is imported: building the
    environment (bytecode included) must never start its Python that way on the host."""
    marker = tmp_path / "ran-on-the-host"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "testbedpthprobe", {"testbedpthprobe.py": "VALUE = 1\n",
                                       "testbedpthprobe.pth": f"import os; open({str(marker)!r}, 'a').write('x')\n"})
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))  # as if it were published on the index
    env = PythonEnvironment(("testbedpthprobe==0.1", *HARNESS), tmp_path / "envs")
    prefix = env.ensure()
    assert env.ready and not marker.exists()
    site = next(prefix.glob("lib/python*/site-packages"))
    assert (site / "testbedpthprobe.pth").is_file() and list((site / "__pycache__").glob("testbedpthprobe.*.pyc"))
    assert list((site / "bentoml" / "__pycache__").glob("*.pyc"))  # compiled all the same


@pytest.mark.slow
def test_a_package_cannot_choose_the_standard_library_the_host_compiles_with(tmp_path, monkeypatch):
    """A wheel replacing the environment's `pyvenv.cfg` (uv installs `.data/data/pyvenv.cfg` over it) points its
    `home` at a folder holding a standard library of its choosing, e.g. another environment a package of the same
    vendor filled earlier (its path is in the sandbox's mountinfo): compiling the bytecode with the environment's
    own Python then ran that library's `compileall` on the host, as the harness's user (measured: as root). The
    bytecode is compiled with the harness's own base interpreter, which reads nothing of the environment."""
    import sysconfig

    marker, planted = tmp_path / "ran-on-the-host", tmp_path / "planted"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    lib = planted / "lib" / stdlib.name
    lib.mkdir(parents=True)
    (planted / "bin").mkdir()
    for entry in stdlib.iterdir():
        if entry.name != "compileall.py":
            (lib / entry.name).symlink_to(entry)
    (lib / "compileall.py").write_text(f"open({str(marker)!r}, 'w').write('compiled by the planted library')\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "testbedcfgprobe", {"testbedcfgprobe.py": "VALUE = 1\n", "testbedcfgprobe-0.1.data/data/pyvenv.cfg":
                                       f"home = {planted / 'bin'}\ninclude-system-site-packages = false\n"})
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))  # as if it were published on the index
    monkeypatch.setenv("UV_NO_INDEX", "1")
    env = PythonEnvironment(("testbedcfgprobe==0.1",), tmp_path / "envs")
    prefix = env.ensure()
    assert f"home = {planted / 'bin'}" in (prefix / "pyvenv.cfg").read_text()  # uv did let the package write it
    assert env.ready and not marker.exists()
    site = next(prefix.glob("lib/python*/site-packages"))
    assert list((site / "__pycache__").glob("testbedcfgprobe.*.pyc"))  # compiled all the same


@pytest.mark.slow
@pytest.mark.parametrize("poll_s", [0.25, 600], ids=["stopped-while-writing", "ended-before-a-look"])
def test_a_declared_package_cannot_fill_the_hosts_disk(tmp_path, monkeypatch, poll_s):
    """A wheel is a zip: 4 MiB of one held 4 GiB of zeros, which uv unpacked into its cache on the host (on the
    index, 100 MiB of wheel would be about 100 GiB) before the sandbox, and its disk limits, even started. uv is
    stopped once it has written more than the bound for one environment, or refused once it ended between two
    looks (a CI run under load: the whole wheel unpacked, a finished cache entry `uv cache prune` kept); the
    packages it unpacked are removed from its cache (which stays usable), what was cached before stays, and the
    bundle is refused naming its packages."""
    import zipfile

    from sandbox import bounded

    wheels, cache = tmp_path / "wheels", tmp_path / "uv-cache"
    wheels.mkdir()
    _wheel(wheels, "testbedsmall", {"testbedsmall.py": "VALUE = 1\n"})
    bomb = _wheel(wheels, "testbedzipbomb", {"testbedzipbomb.py": "VALUE = 1\n"})
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as whl:  # not in RECORD: uv unpacks it first all the same
        info = zipfile.ZipInfo("testbedzipbomb/weights.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        with whl.open(info, "w") as out:
            for _ in range(256):
                out.write(bytes(1 << 20))
        for decoy in ("x_-0.dist-info", "testbedsmall-0.1.dist-info"):  # names that once steered the clean-up
            whl.writestr(decoy, "")
    assert bomb.stat().st_size < 2 << 20
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))  # as if it were published on the index
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(cache))
    assert PythonEnvironment(("testbedsmall==0.1",), tmp_path / "envs").ensure()  # cached before
    monkeypatch.setattr(bounded, "MAX_BUILD_WRITE_BYTES", 64 << 20)
    monkeypatch.setattr(bounded, "POLL_S", poll_s)
    env = PythonEnvironment(("testbedzipbomb==0.1",), tmp_path / "envs")
    with pytest.raises(BundleError, match="testbedzipbomb") as exc:
        env.ensure()
    assert "more than 64 MiB" in str(exc.value) and not env.ready
    written = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    assert written < 16 << 20, written  # nothing of it is left behind
    assert not list((tmp_path / "envs").glob(".*/env"))  # nor half an environment
    assert list(cache.glob("archive-v*/*/testbedsmall-0.1.dist-info"))  # what was cached before stays
    monkeypatch.setattr(bounded, "MAX_BUILD_WRITE_BYTES", 1 << 30)  # and the cache still works for the package
    assert (env.ensure() / "lib").is_dir()  # (nothing left pointing at what was removed)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small file system (CI runs as root)")
def test_a_declared_package_that_fills_the_disk_by_itself_is_the_bundles_failure(tmp_path, monkeypatch):
    """A node with less free disk than the write bound: a wheel unpacking past what is free filled the disk,
    and uv's "No space left on device" read as the machine's failure, which a campaign retries and which leaves the
    submission without a verdict for ever. A build that wrote (nearly) all that was free when it started filled
    the disk itself: the bundle is refused naming its packages, and what it unpacked is removed."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(small)]).returncode:
        pytest.skip("no tmpfs can be mounted here (a container without CAP_SYS_ADMIN)")
    try:
        wheels = tmp_path / "wheels"
        wheels.mkdir()
        bomb = _wheel(wheels, "testbeddiskfill", {"testbeddiskfill.py": "VALUE = 1\n"})
        with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as whl, whl.open("testbeddiskfill/w.bin", "w") as out:
            for _ in range(96):
                out.write(bytes(1 << 20))
        monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
        monkeypatch.setenv("UV_NO_INDEX", "1")
        monkeypatch.setenv("UV_CACHE_DIR", str(small / "uv-cache"))
        env = PythonEnvironment(("testbeddiskfill==0.1",), small / "envs")
        with pytest.raises(BundleError, match="testbeddiskfill") as exc:
            env.ensure()
        assert "fill this node's disk" in str(exc.value), str(exc.value)
        assert not env.ready and not list((small / "uv-cache").glob("archive-v*/*"))  # its unpacking removed
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@pytest.mark.slow
def test_a_declared_package_of_empty_folders_or_bloated_bytecode_is_refused(tmp_path, monkeypatch):
    """Bytes written are not all a package costs the host: a 2 MB wheel of 20,000 empty folders took 165 MB and
    40,000 inodes, and constant folding made a module's bytecode hundreds of times its source, both unbounded.
    The environment's files and folders are counted once uv ended, and the bytecode compiler writes on the same
    budget as uv: past either, the bundle is refused and nothing is left behind."""
    import zipfile

    from sandbox import bounded

    wheels, cache = tmp_path / "wheels", tmp_path / "uv-cache"
    wheels.mkdir()
    folders = _wheel(wheels, "testbedfolders", {"testbedfolders.py": "VALUE = 1\n"})
    with zipfile.ZipFile(folders, "a") as whl:
        for n in range(3000):
            whl.writestr(f"testbedfolders/d{n}/", "")
    _wheel(wheels, "testbedfolding", {"testbedfolding.py": "".join(f"c{n} = '{n:05d}' * 800\n" for n in range(6000))})
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(cache))
    monkeypatch.setattr(bounded, "MAX_BUILD_ENTRIES", 2000)
    monkeypatch.setattr(bounded, "MAX_BUILD_WRITE_BYTES", 16 << 20)  # the module's source: 130 kB, its .pyc 24 MB
    for name, problem in [("testbedfolders", "more than 2,000 files and folders"), ("testbedfolding", "16 MiB")]:
        env = PythonEnvironment((f"{name}==0.1",), tmp_path / "envs")
        with pytest.raises(BundleError, match=name) as exc:
            env.ensure()
        assert problem in str(exc.value) and not env.ready
        assert not list((tmp_path / "envs").glob(".*/env"))
    assert not list(cache.glob("archive-v*/*/testbedfolders"))  # what uv unpacked of the folders, removed
    # and of the module stopped while compiling: uv had installed it, so it stayed in uv's cache for good
    assert not list(cache.glob("archive-v*/*/testbedfolding*"))


@pytest.mark.slow
def test_a_wheel_uv_will_not_install_or_nested_past_pythons_recursion_leaves_nothing(tmp_path, monkeypatch):
    """uv unpacks a wheel into its cache before it checks it: one it then refused (`Wheel-Version: 2.0`) left
    48 MiB there for good, and `uv cache prune` kept it. And a chain of 1,100 nested folders made Python's
    recursive `rmtree` raise RecursionError from the clean-up, with the staging folder and the cache entry left
    and no BundleError. Both are refused naming the package, and nothing of them stays."""
    import zipfile

    from sandbox import bounded

    wheels, cache, envs = tmp_path / "wheels", tmp_path / "uv-cache", tmp_path / "envs"
    wheels.mkdir()
    refused = _wheel(wheels, "testbedwheel2", {"testbedwheel2.py": "VALUE = 1\n"})
    with zipfile.ZipFile(refused, "a", zipfile.ZIP_DEFLATED) as whl:
        whl.writestr("testbedwheel2/weights.bin", bytes(16 << 20))
    with zipfile.ZipFile(refused) as whl:  # the same wheel, declaring a version of the format uv does not read
        members = {i.filename: whl.read(i) for i in whl.infolist()}
    members["testbedwheel2-0.1.dist-info/WHEEL"] = members["testbedwheel2-0.1.dist-info/WHEEL"].replace(b"1.0", b"2.0")
    with zipfile.ZipFile(refused, "w", zipfile.ZIP_DEFLATED) as whl:
        for name, data in members.items():
            whl.writestr(name, data)
    deep = _wheel(wheels, "testbeddeep", {"testbeddeep.py": "VALUE = 1\n"})
    with zipfile.ZipFile(deep, "a") as whl:
        whl.writestr("testbeddeep/" + "a/" * 1100 + "x", "")
        for n in range(300):
            whl.writestr(f"testbeddeep/d{n}/", "")
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(cache))
    monkeypatch.setattr(bounded, "MAX_BUILD_ENTRIES", 200)
    for name, problem in [("testbedwheel2", "cannot install"), ("testbeddeep", "more than 200 files and folders")]:
        env = PythonEnvironment((f"{name}==0.1",), envs)
        with pytest.raises(BundleError, match=name) as exc:
            env.ensure()
        assert problem in str(exc.value) and not env.ready
        assert not [p for p in envs.iterdir() if p.name.startswith(".")]  # no staging folder left
        left = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        assert left < 1 << 20 and not list(cache.glob(f"archive-v*/*/{name}")), left


def test_a_build_commands_children_count_while_they_run(tmp_path):
    """A command's writes include its live child processes' (the bytecode compiler's workers): the kernel adds
    a child's to its parent's count only once the parent reaps it, which was after the whole output was written."""
    import subprocess
    import sys
    import time

    from sandbox.bounded import _written

    script = (f"import os, time\nif os.fork() == 0:\n    open({str(tmp_path / 'out')!r}, 'wb').write(bytes(8 << 20))\n"
              "    time.sleep(30)\nelse:\n    time.sleep(30)\n")
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not ((tmp_path / "out").exists() and (tmp_path / "out").stat().st_size == 8 << 20):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _written(parent.pid) >= 8 << 20
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()


def test_uv_gets_only_the_operators_index_network_and_cache_settings(monkeypatch):
    """uv read the operator's whole environment less a few names: `UV_COMPILE_BYTECODE=1` (common in Docker
    images) or a `UV_CONFIG_FILE` saying `compile-bytecode = true` made it compile with the new environment's
    Python with `site` loaded, running a wheel's `.pth` on the host (measured: as root). It is given what it
    needs to reach the index, and bytecode compilation off."""
    from sandbox.uvindex import build_environment

    allowed = {"PATH": "/usr/bin", "HOME": "/root", "UV_CACHE_DIR": "/c", "UV_INDEX_URL": "https://i/simple",
               "UV_EXTRA_INDEX_URL": "https://x/simple", "UV_FIND_LINKS": "/w", "UV_NO_INDEX": "1",
               "UV_OFFLINE": "1", "HTTPS_PROXY": "http://p:3128", "no_proxy": "localhost", "SSL_CERT_FILE": "/ca",
               "LC_ALL": "C.UTF-8", "UV_INDEX_PRIVATE_PASSWORD": "s"}
    refused = {"UV_CONFIG_FILE": "/etc/uv.toml", "UV_LINK_MODE": "symlink", "UV_NO_CACHE": "1",
               "PYTHONPATH": "/x", "PIP_INDEX_URL": "https://e", "VIRTUAL_ENV": "/v", "UV_PYTHON": "/evil/python",
               "UV_OVERRIDE": "/o.txt", "UV_NO_BUILD_ISOLATION": "1", "LD_PRELOAD": "/l.so"}
    for name, value in {**allowed, **refused, "UV_COMPILE_BYTECODE": "1"}.items():
        monkeypatch.setenv(name, value)
    env = build_environment()
    assert {k: env.get(k) for k in allowed} == allowed
    assert not set(refused) & set(env)
    assert env["UV_COMPILE_BYTECODE"] == "0"


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["UV_COMPILE_BYTECODE", "UV_CONFIG_FILE"])
def test_the_operators_uv_settings_cannot_make_the_build_run_a_packages_code(tmp_path, monkeypatch, setting):
    """The `.pth` probe again, with uv told by the operator's environment to compile bytecode itself."""
    marker = tmp_path / "ran-on-the-host"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "testbedpthprobe", {"testbedpthprobe.py": "VALUE = 1\n",
                                       "testbedpthprobe.pth": f"import os; open({str(marker)!r}, 'a').write('x')\n"})
    (tmp_path / "uv.toml").write_text("compile-bytecode = true\n")
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    monkeypatch.setenv(setting, "1" if setting == "UV_COMPILE_BYTECODE" else str(tmp_path / "uv.toml"))
    env = PythonEnvironment(("testbedpthprobe==0.1",), tmp_path / "envs")
    prefix = env.ensure()
    assert env.ready and not marker.exists()
    site = next(prefix.glob("lib/python*/site-packages"))
    assert list((site / "__pycache__").glob("testbedpthprobe.*.pyc"))  # compiled all the same, by the harness


@pytest.mark.parametrize("prlimit", [True, False], ids=["prlimit", "setrlimit"])
def test_a_build_command_past_its_memory_bound_is_stopped_and_named(monkeypatch, prlimit):
    """The build's commands had no memory bound on the host: a 10 KB wheel holding a 9.5 MiB module made the
    bytecode compiler reach 3.7 GiB RSS. Each command's processes get `MAX_BUILD_MEMORY_BYTES` of data segment,
    and one that ran out is refused naming the bound, not left to a traceback."""
    from sandbox import bounded

    monkeypatch.setattr(bounded, "MAX_BUILD_MEMORY_BYTES", 256 << 20)
    if not prlimit:  # a host without util-linux's `prlimit`
        monkeypatch.setattr(bounded.shutil, "which", lambda *a, **k: None)
    grab = "x = bytearray(1 << 30); print('allocated', len(x))"
    problem, returncode, output = bounded.run_bounded([sys.executable, "-I", "-S", "-c", grab], {}, bounded.Budget())
    assert "allocated" not in output and returncode != 0
    assert "more than 256 MiB of memory" in problem, (problem, output)
    fits = "print(len(bytearray(64 << 20)))"
    problem, returncode, output = bounded.run_bounded([sys.executable, "-I", "-S", "-c", fits], {}, bounded.Budget())
    assert (problem, returncode, output.strip()) == ("", 0, str(64 << 20))


def test_only_an_out_of_memory_says_so_a_failed_compile_quoting_the_words_does_not(tmp_path):
    """A declared wheel holding Python 2 code (`print "warning: out of memory"`) fails to compile, and compileall
    quotes the line: the bundle was refused for memory (a build that passed before the bound). Only lines that
    begin as an out-of-memory's do, and uv's panic when its threads get no stack."""
    from sandbox.bounded import _out_of_memory

    (tmp_path / "py2.py").write_text('except MemoryError, e:\n    print "warning: out of memory"\n')
    compiled = subprocess.run([sys.executable, "-I", "-S", "-m", "compileall", "-q", str(tmp_path)],
                              capture_output=True, text=True)
    assert compiled.returncode == 1 and "MemoryError" in compiled.stdout + compiled.stderr
    assert not _out_of_memory(compiled.stdout + compiled.stderr)
    for said in ["Traceback (most recent call last):\n  ...\nMemoryError", "Sorry: MemoryError: x",
                 "memory allocation of 8589934592 bytes failed", "OSError: [Errno 12] Cannot allocate memory",
                 "thread 'tokio-rt-worker' panicked at x.rs:1:2:\nfailed to initialize global rayon pool: WouldBlock",
                 "thread 'main' panicked at rayon: failed to initialize global rayon pool: WouldBlock"]:
        assert _out_of_memory(said) == ("panicked at x.rs" not in said), said


def test_the_memory_bound_only_lowers_the_harness_s_own_limit():
    """`prlimit --data` sets the hard limit too: below 2 GiB on the host (systemd's LimitDATA, `ulimit -d`) it
    was refused and no build command ran at all (every bundle refused, its packages blamed); the bound now takes
    the lower of the two. And uv installs with at most UV_INSTALL_THREADS threads (its default, one per CPU,
    panicked within the bound from ~500)."""
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))\n"
        "from sandbox import bounded\n"
        "print(bounded.run_bounded([sys.executable, '-I', '-S', '-c', 'print(\"ran\")'], {}, bounded.Budget()))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=120)
    assert out.stdout.strip() == "('', 0, 'ran\\n')", out.stdout + out.stderr

    from sandbox.uvindex import UV_INSTALL_THREADS, build_environment

    for asked, used in [("512", UV_INSTALL_THREADS), ("1", "1"), ("x", UV_INSTALL_THREADS), (None, UV_INSTALL_THREADS)]:
        with pytest.MonkeyPatch.context() as mp:
            mp.delenv("UV_CONCURRENT_INSTALLS", raising=False)
            if asked:
                mp.setenv("UV_CONCURRENT_INSTALLS", asked)
            assert build_environment()["UV_CONCURRENT_INSTALLS"] == str(used) and UV_INSTALL_THREADS <= 16


@pytest.mark.slow
def test_a_module_whose_bytecode_takes_gigabytes_to_compile_is_refused(tmp_path, monkeypatch):
    """A wheel of a few kB whose one module is a long list literal: compiling it took ~400 bytes of memory per byte
    of source on the host (9.5 MiB: 3.7 GiB). Past the bound, the bundle is refused naming the package and the
    bound, and nothing of it stays."""
    from sandbox import bounded

    wheels, cache = tmp_path / "wheels", tmp_path / "uv-cache"
    wheels.mkdir()
    _wheel(wheels, "testbedbigsrc", {"testbedbigsrc.py": "X = [" + "0," * 1_000_000 + "]\n"})
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(cache))
    monkeypatch.setattr(bounded, "MAX_BUILD_MEMORY_BYTES", 384 << 20)  # uv itself needs ~250 MiB
    env = PythonEnvironment(("testbedbigsrc==0.1",), tmp_path / "envs")
    with pytest.raises(BundleError, match="testbedbigsrc") as exc:
        env.ensure()
    assert "more than 384 MiB of memory" in str(exc.value) and not env.ready
    assert not list((tmp_path / "envs").glob(".*/env"))


@pytest.mark.parametrize("ends", [False, True], ids=["stopped", "ended"])
def test_a_build_commands_child_processes_end_with_it(tmp_path, monkeypatch, ends):
    """Stopping a command killed only its own process: the bytecode compiler's workers kept running and writing
    (measured: 8 modules compiled, 2 workers still running after the stop, their `.pyc` written 15 s later).
    The command's whole process group ends with it, whether it was stopped or ended leaving children behind."""
    import os
    import time

    from sandbox import bounded

    monkeypatch.setattr(bounded, "BUILD_TIMEOUT_S", 1)
    pid_file = tmp_path / "child"
    script = (f"import os, time\nif os.fork() == 0:\n    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
              f"    time.sleep(60)\nelse:\n    time.sleep({0.5 if ends else 60})\n")
    problem, _, _ = bounded.run_bounded([sys.executable, "-I", "-S", "-c", script], {}, bounded.Budget())
    assert ("took longer" in problem) != ends
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while True:
        try:
            with open(f"/proc/{child}/stat") as stat:
                alive = stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            alive = False
        if not alive:
            break
        if time.monotonic() > deadline:
            os.kill(child, 9)
            pytest.fail("the command's child process outlived it")
        time.sleep(0.05)


def test_an_environment_folder_left_without_its_marker_is_replaced(tmp_path, monkeypatch):
    """A folder left at an environment's place without its `.testbed-complete` marker (an interrupted clean-up)
    made every later `ensure` build again, then fail with a raw `OSError: [Errno 39] Directory not empty`. Only a
    finished environment is ever renamed there, so such a folder is moved aside and the new one takes its place."""
    def build(self, target):
        target.mkdir()
        (target / "new").write_text("")
        (target / COMPLETE).write_text("")

    monkeypatch.setattr(PythonEnvironment, "_build", build)
    env = PythonEnvironment(("jamo==0.4.1", *HARNESS), tmp_path)
    (env.prefix / "lib").mkdir(parents=True)
    (env.prefix / "lib" / "old").write_text("")
    assert env.ensure() == env.prefix and env.ready
    assert (env.prefix / "new").is_file() and not (env.prefix / "lib").exists()
    assert [p.name for p in tmp_path.iterdir()] == [env.key]  # nothing else left behind


# -- whose failure a failed build is: the package index's (the machinery's), or the bundle's -------------------

INDEX_SETTINGS = ("UV_INDEX", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_NO_INDEX",
                  "UV_OFFLINE", "UV_HTTP_RETRIES")


def _publish(simple: Path, wheel: Path) -> None:
    """`wheel` on the local simple index (PEP 503 folders) `simple`."""
    project = simple / wheel.name.split("-")[0].replace("_", "-")
    project.mkdir(parents=True, exist_ok=True)
    wheel.rename(project / wheel.name)
    links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted(project.glob("*.whl")))
    (project / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """A working local package index (`UV_INDEX_URL=file://...`, uv's cache private): the harness's server
    packages at its exact versions (stand-ins without dependencies), `testbedpkg` 0.1, and `testbedwheel2`, a
    wheel of a format uv does not read. Returns the index's folder."""
    for name in INDEX_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    simple, wheels = tmp_path / "simple", tmp_path / "built"
    wheels.mkdir()
    for line in HARNESS:
        name, version = line.split("==")
        _publish(simple, _wheel(wheels, name, {f"{name}_standin.py": ""}, version))
    _publish(simple, _wheel(wheels, "testbedpkg", {"testbedpkg.py": "VALUE = 1\n"}))
    unreadable = _wheel(wheels, "testbedwheel2", {"testbedwheel2.py": "VALUE = 1\n"})
    with zipfile.ZipFile(unreadable) as whl:
        members = {i.filename: whl.read(i) for i in whl.infolist()}
    members["testbedwheel2-0.1.dist-info/WHEEL"] = members["testbedwheel2-0.1.dist-info/WHEEL"].replace(b"1.0", b"2.0")
    with zipfile.ZipFile(unreadable, "w") as whl:
        for member, data in members.items():
            whl.writestr(member, data)
    _publish(simple, unreadable)
    (simple / "testbedsdist").mkdir()
    (simple / "testbedsdist" / "testbedsdist-0.1.tar.gz").write_bytes(b"not built: --no-build")
    (simple / "testbedsdist" / "index.html").write_text('<a href="testbedsdist-0.1.tar.gz">testbedsdist-0.1.tar.gz</a>')
    monkeypatch.setenv("UV_INDEX_URL", simple.as_uri())
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    return simple


@contextlib.contextmanager
def _answering(status: int):
    """A loopback HTTP server answering every request with `status`; yields its URL."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("declared, says", [
    ("testbed-no-such-package-3f9a==1.0", "testbed-no-such-package-3f9a was not found in the package registry"),
    ("testbedpkg==9.9", "there is no version of testbedpkg==9.9"),
    ("testbedsdist", "testbedsdist==0.1 has no usable wheels"),
    ("testbedwheel2", "The wheel is invalid"),
], ids=["no-such-package", "no-such-version", "source-only", "unreadable-wheel"])
def test_a_package_a_working_index_cannot_install_is_the_bundles_error(local_index, tmp_path, declared, says):
    """What the bundle declared and the index does not have (or has in a form uv refuses) stays the vendor's
    BundleError, naming the package: the index served the harness's own packages all the same."""
    env = PythonEnvironment((declared, *HARNESS), tmp_path / "envs", "bundle.bento")
    with pytest.raises(BundleError) as exc:
        env.ensure()
    name = declared.split("==")[0]
    assert exc.value.problem.startswith(f"cannot install the declared package(s) {name}: ")
    assert says in exc.value.problem
    assert exc.value.where == "bundle.bento" and not env.ready


@pytest.mark.parametrize("broken", ["missing-local-index", "missing-wheel-folder", "refused", "server-error",
                                    "not-an-index", "listed-wheel-missing", "page-unreadable"])
def test_a_broken_package_index_is_the_machinerys_failure_not_the_bundles(local_index, tmp_path, monkeypatch, broken):
    """A package index that cannot be read (its folder missing, its server refusing or failing, not an index at
    all, a file it lists missing or unreadable) made every bundle's build fail with the vendor's BundleError,
    its packages blamed: a missing local index even reads, in uv's words, as the vendor's package "not found in
    the package registry". It is the machinery's InfrastructureFailure (a campaign retries it), naming the
    setting to check."""
    stack, setting = contextlib.ExitStack(), "UV_INDEX_URL"
    if broken == "missing-local-index":
        monkeypatch.setenv("UV_INDEX_URL", (tmp_path / "no-such-index").as_uri())
    elif broken == "missing-wheel-folder":
        monkeypatch.setenv("UV_FIND_LINKS", str(tmp_path / "no-such-folder"))
        setting = "UV_FIND_LINKS"
    elif broken == "refused":
        monkeypatch.setenv("UV_INDEX_URL", f"http://127.0.0.1:{free_port()}/simple")
        monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    elif broken in ("server-error", "not-an-index"):
        monkeypatch.setenv("UV_INDEX_URL", stack.enter_context(_answering(500 if broken == "server-error" else 404)))
        monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    elif broken == "listed-wheel-missing":
        next((local_index / "testbedpkg").glob("*.whl")).unlink()
    else:
        (local_index / "testbedpkg" / "index.html").unlink()
        (local_index / "testbedpkg" / "index.html").mkdir()
    env = PythonEnvironment(("testbedpkg==0.1", *HARNESS), tmp_path / "envs", "bundle.bento")
    with stack, pytest.raises(InfrastructureFailure) as exc:
        env.ensure()
    assert setting in exc.value.where and "package index" in exc.value.problem, str(exc.value)
    assert "check" in exc.value.fix and setting in exc.value.fix and "retries" in exc.value.fix
    assert not env.ready and not [p for p in (tmp_path / "envs").iterdir() if p.name.startswith(".")]


NOT_FOUND = ("error: No solution found when resolving dependencies",
             "  cause: Because x was not found in the package registry and you require x==1.0, we can conclude that "
             "your requirements are unsatisfiable.")
UV_SAID_INDEX = {  # uv 0.13.9's own words (measured), when the index or the machine failed
    "no such host": ["error: Failed to fetch: http://mirror.invalid/simple/x/",
                     "  cause: error sending request for url (http://mirror.invalid/simple/x/)",
                     "  cause: client error (Connect)", "  cause: dns error",
                     "  cause: failed to lookup address information: Name or service not known"],
    "TLS": ["error: Failed to fetch: https://pypi.org/simple/x/",
            "  cause: error sending request for url (https://pypi.org/simple/x/)", "  cause: client error (Connect)",
            "  cause: invalid peer certificate: UnknownIssuer", "",
            "hint: Consider enabling use of system TLS certificates with the `--system-certs` command-line flag"],
    "retried": ["error: Request failed after 3 retries in 9.9s",
                "  cause: Failed to fetch: http://127.0.0.1:1/simple/x/",
                "  cause: error sending request for url (http://127.0.0.1:1/simple/x/)",
                "  cause: client error (Connect)", "  cause: tcp connect error",
                "  cause: Connection refused (os error 111)"],
    "a wheel's download": ["error: Failed to download `x==1.0`",
                           "  cause: Failed to fetch: https://files.example/x-1.0-py3-none-any.whl",
                           "  cause: HTTP status server error (503 Service Unavailable) for url (...)"],
    "timeout": ["error: Failed to download `torch==2.5.0`",
                "  cause: Failed to download distribution due to network timeout. Try increasing UV_HTTP_TIMEOUT "
                "(current value: 30s)."],
    "forbidden": [*NOT_FOUND, "", "hint: An index (http://127.0.0.1:8080/simple) returned a 403 Forbidden error. "
                                  "Check that the index URL is correct and the credentials are valid."],
    "credentials": [*NOT_FOUND, "", "hint: An index URL (http://127.0.0.1:8080/simple) could not be queried due to a "
                                    "lack of valid authentication credentials (401 Unauthorized)"],
    "a local index's file": ["error: failed to open file `/srv/index/simple/x/x-0.1-py3-none-any.whl`: No such file or "
                             "directory (os error 2)"],
    "a disk failing": ["error: Failed to install: x-0.1-py3-none-any.whl (x==0.1)",
                       "  cause: failed to read from file `/var/cache/uv/archive-v0/abc/x.py`: Input/output error "
                       "(os error 5)"],
    "a disk full": ["error: Failed to download `x==0.1`", "  cause: Failed to extract archive: /srv/wheels/x.whl",
                    "  cause: I/O operation failed during extraction",
                    "  cause: No space left on device (os error 28)"],
}
UV_SAID_BUNDLE = {  # ... and when the package the bundle declared is at fault
    "no such package": [*NOT_FOUND],
    "offline, not cached": ["error: No solution found when resolving dependencies",
                            "  cause: Because x was not found in the cache and you require x==1.0, we can conclude "
                            "that your requirements are unsatisfiable.", "",
                            "hint: Packages were unavailable because the network was disabled. When the network is "
                            "disabled, registry packages may only be read from the cache."],
    "conflict": ["error: No solution found when resolving dependencies",
                 "  cause: Because you require bentoml<1.0 and bentoml==1.4.0, we can conclude that your requirements "
                 "are unsatisfiable."],
    "broken wheel": ["error: No solution found when resolving dependencies",
                     "  cause: Because x==0.1 has an invalid package format and only x==0.1 is available, we can "
                     "conclude that all versions of x cannot be used.", "",
                     "hint: The structure of `x` (v0.1) was invalid:", "  Failed to read from zip file"],
    "name too long": ["error: Failed to download `x==0.1`", "  cause: Failed to extract archive: /srv/wheels/x.whl",
                      "  cause: I/O operation failed during extraction",
                      f"  cause: failed to create file `/var/cache/uv/.tmp/x/{'a' * 300}.py`: File name too long "
                      "(os error 36)"],
    # a wheel's file names quoting uv's words: uv replaces their control characters, and the line goes on after them
    "a name saying a fetch failed": ["error: Failed to download `x==0.1`",
                                     "  cause: Failed to extract archive: /srv/wheels/x.whl",
                                     "  cause: Archive contains unacceptable filename: x/a\ufffd  cause: Failed to "
                                     "fetch: http://x/\ufffd.py"],
    "a name saying a disk failed": ["error: Failed to download `x==0.1`",
                                    "  cause: I/O operation failed during extraction",
                                    f"  cause: failed to create directory `/var/cache/uv/.tmp/x/{'a' * 300} Input`: "
                                    "Input/output error (os error 5)`: File name too long (os error 36)"],
}


@pytest.mark.parametrize("said", list(UV_SAID_INDEX), ids=list(UV_SAID_INDEX))
def test_uv_s_words_for_a_failed_index_or_machine_are_the_machinerys(said):
    from sandbox.uvindex import index_trouble

    local = {"UV_INDEX_URL": "file:///srv/index/simple", "UV_FIND_LINKS": "/srv/wheels"}
    assert index_trouble("\n".join(UV_SAID_INDEX[said]), local) == "\n".join(UV_SAID_INDEX[said])


@pytest.mark.parametrize("said", list(UV_SAID_BUNDLE), ids=list(UV_SAID_BUNDLE))
def test_uv_s_words_for_a_package_it_cannot_have_stay_the_bundles(said):
    from sandbox.uvindex import index_trouble

    local = {"UV_INDEX_URL": "file:///srv/index/simple", "UV_FIND_LINKS": "/srv/wheels"}
    assert index_trouble("\n".join(UV_SAID_BUNDLE[said]), local) is None
    # a file missing is the index's only where it is a file of the index
    assert index_trouble("\n".join(UV_SAID_INDEX["a local index's file"]), {"UV_INDEX_URL": "file:///x"}) is None


def test_an_index_failure_names_the_settings_without_their_credentials(local_index, tmp_path, monkeypatch):
    """The operator's index URL may carry its credentials: the error names the setting and the host, never them."""
    with _answering(500) as url:
        monkeypatch.setenv("UV_INDEX_URL", url.replace("http://", "http://reader:s3cret@"))
        monkeypatch.setenv("UV_HTTP_RETRIES", "0")
        env = PythonEnvironment(("testbedpkg==0.1", *HARNESS), tmp_path / "envs", "bundle.bento")
        with pytest.raises(InfrastructureFailure) as exc:
            env.ensure()
    assert "s3cret" not in str(exc.value) and f"UV_INDEX_URL={url.replace('http://', 'http://***@')}" in str(exc.value)
    monkeypatch.delenv("UV_INDEX_URL")
    from sandbox.uvindex import build_environment, index_settings

    assert index_settings(build_environment()) == "none set: PyPI"
