"""Untrusted archives: unsafe members are refused before anything is extracted or run."""

import io
import os
import re
import tarfile

import pytest

from evaluation.families import FAMILIES
from sandbox.bundle import Limits, import_bundle, inspect_bundle
from testbed.errors import BundleError, ContractError
from tests.conftest import FORECAST_ROUTE


def archive(tmp_path, members, name="evil.bento"):
    path = tmp_path / name
    with tarfile.open(path, "w:xz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name, data=b"name: x\nversion: y\n"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize("member, words", [
    (file_member("../../etc/cron.d/evil"), "outside the archive"),
    (file_member("/etc/passwd"), "outside the archive"),
    (link_member("src/data", "/work/data"), "link"),
    (link_member("src/model.pt", "../../x", tarfile.LNKTYPE), "link"),
    (file_member("src/" + "a/" * 1100 + "x"), "nested 1101 folders deep"),  # unpacking it raised RecursionError
])
def test_unsafe_members_are_refused(tmp_path, member, words):
    path = archive(tmp_path, [file_member("./bento.yaml"), member])
    with pytest.raises(BundleError, match=words) as info:
        inspect_bundle(path)
    assert str(path) in str(info.value) and "bentoml export" in str(info.value)
    home = tmp_path / "home"  # the import checks each member as it unpacks: refused, and nothing left behind
    with pytest.raises(BundleError, match=words):
        import_bundle(path, home)
    assert [p.name for p in home.rglob("*") if p.is_file()] == []


def negative_member(name):
    info = tarfile.TarInfo(name)
    info.pax_headers = {"size": "-5"}
    return info, None


def folder_member(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


@pytest.mark.parametrize("members", [
    [file_member("src"), file_member("src/a")],  # a file, then a member inside it
    [folder_member("src/x"), file_member("src/x")],  # a folder, then a file of the same name
    [file_member("src/x"), folder_member("src/x")],  # a file, then a folder of the same name
    [file_member("models/weights.pt")],  # BentoML keeps each model in models/NAME/
    [file_member("src/" + "n" * 300)],  # a name longer than any file system takes
    [negative_member("src/p")],  # a size of -5 (it counted against the unpacked limit as a subtraction)
], ids=["file-then-member-inside", "folder-then-file", "file-then-folder", "file-in-models", "long-name",
        "negative-size"])
def test_members_that_cannot_be_unpacked_as_bentoml_lays_a_bundle_out_are_refused_at_submission(tmp_path, members):
    """These passed the submission's check and then failed every evaluation as "could not be unpacked", naming
    the sandbox's private copy instead of the vendor's file."""
    path = archive(tmp_path, [file_member("./bento.yaml", b"name: svc\nversion: v1\n"), *members])
    with pytest.raises(BundleError, match="cannot be unpacked as BentoML lays a bundle out") as info:
        inspect_bundle(path)
    assert str(path) in str(info.value) and "fix:" in str(info.value)
    with pytest.raises(BundleError, match="cannot be unpacked as BentoML lays a bundle out"):
        import_bundle(path, tmp_path / "home")
    assert [p.name for p in (tmp_path / "home").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("manifest, words", [
    (b"name: svc\nversion: latest\n", "`version` is 'latest'"),  # BentoML's own pointer: it failed the import
    (b"name: MyModel\nversion: v1\n", "`name` is 'MyModel'"),
    (b"name: \xeb\xaa\xa8\xeb\x8d\xb8\nversion: v1\n", "`name` is '\ubaa8\ub378'"),
    (b"name: -x\nversion: v1\n", "`name` is '-x'"),
    (b"name: " + b"a" * 64 + b"\nversion: v1\n", "`name` is 'aaaa"),
    (b"version: v1\n", "`name` is missing"),
    (b"name: svc\nversion: 3\n", "`version` is 3"),
    (b"", "not a mapping"), (b"- name: svc\n", "not a mapping"),
    (b"name: svc\nversion: v1\nlabels: {x: '" + b"y" * (1 << 20) + b"'}\n", "larger than 1 MiB"),
])
def test_a_manifest_whose_tag_bentoml_cannot_take_is_refused_naming_the_field(tmp_path, manifest, words):
    path = archive(tmp_path, [file_member("./bento.yaml", manifest)])
    with pytest.raises(BundleError, match=re.escape(words)) as info:
        inspect_bundle(path)
    assert str(path) in str(info.value) and "fix:" in str(info.value)
    with pytest.raises(BundleError, match=re.escape(words)):
        import_bundle(path, tmp_path / "home")


def test_a_member_as_deep_as_the_limit_is_accepted_and_one_folder_deeper_refused(tmp_path):
    """`Limits.max_depth` counts the folders a member is in (`src/` included): 64 is allowed, 65 is not."""
    depth = Limits().max_depth
    deepest = "src/" + "a/" * (depth - 1) + "x"
    path = archive(tmp_path, [file_member("./bento.yaml", b"name: svc\nversion: v1\n"),
                              file_member(deepest, b"ok")], name="deep.bento")
    assert inspect_bundle(path).tag == "svc:v1"
    assert import_bundle(path, tmp_path / "home") == "svc:v1"
    assert (tmp_path / "home" / "bentos" / "svc" / "v1" / deepest).read_bytes() == b"ok"
    path = archive(tmp_path, [file_member("./bento.yaml", b"name: svc\nversion: v1\n"),
                              file_member("src/" + "a/" * depth + "x")], name="deeper.bento")
    with pytest.raises(BundleError, match=f"nested {depth + 1} folders deep \\(at most {depth}\\)"):
        inspect_bundle(path)
    with pytest.raises(BundleError, match=f"nested {depth + 1} folders deep"):
        import_bundle(path, tmp_path / "home2")


def test_a_cut_archive_is_refused_whole(tmp_path):
    big = bytes(range(256)) * 4000
    path = archive(tmp_path, [file_member("./bento.yaml", b"name: svc\nversion: v1\n"), file_member("./src/a", big),
                              file_member("./src/b", big[::-1])], name="cut.bento")
    path.write_bytes(path.read_bytes()[:path.stat().st_size * 2 // 3])
    for check in (inspect_bundle, lambda p: import_bundle(p, tmp_path / "home")):
        with pytest.raises(BundleError, match="not a readable .bento archive|could not be unpacked"):
            check(path)
    assert [p.name for p in (tmp_path / "home").rglob("*") if p.is_file()] == []


def test_an_archive_cut_inside_its_bento_yaml_is_refused_with_the_fix(tmp_path):
    """Cut while `bento.yaml` itself is read (here its only member): a BundleError naming the file, never the
    decompressor's EOFError (which the CLI showed as a bare "Aborted." with exit 1, a check's "rejected")."""
    manifest = b"name: svc\nversion: v1\n# " + bytes(range(256)) * 400 + b"\n"
    path = archive(tmp_path, [file_member("./bento.yaml", manifest)], name="cut.bento")
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(BundleError, match="not a readable .bento archive") as info:
        inspect_bundle(path)
    assert str(path) in str(info.value) and "bentoml export" in str(info.value)


@pytest.mark.parametrize("line", [b"creation_time: 2024-02-30 10:00:00\n", b"size: " + b"9" * 5000 + b"\n"])
def test_a_manifest_value_that_reads_as_no_value_is_a_malformed_manifest(tmp_path, line):
    """YAML's constructors raise ValueError for a date that does not exist or an integer past 4,300 digits: in a
    vendor's bento.yaml that is a BundleError naming the file, never a traceback (exit 1) from submit or check."""
    path = archive(tmp_path, [file_member("./bento.yaml", b"name: svc\nversion: v1\n" + line)])
    with pytest.raises(BundleError, match="bento.yaml is malformed") as info:
        inspect_bundle(path)
    assert str(path) in str(info.value) and "fix:" in str(info.value)


def test_a_highly_compressible_member_is_read_in_linear_time(tmp_path):
    """64 MB of zeros is a 10 KB archive: xz hands them over in one block, and reading that block in tarfile's
    stream mode is quadratic (a minute); the archive is read through a file object instead (a fraction of a
    second)."""
    import time

    class Zeros(io.RawIOBase):
        def __init__(self, size):
            self.left = size

        def readable(self):
            return True

        def readinto(self, buf):
            n = min(len(buf), self.left)
            buf[:n] = bytes(n)
            self.left -= n
            return n

    path = tmp_path / "zeros.bento"
    with tarfile.open(path, "w:xz") as tar:
        info, data = file_member("./bento.yaml", b"name: svc\nversion: v1\n")
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("./src/zeros.bin")
        info.size = 64 << 20
        tar.addfile(info, io.BufferedReader(Zeros(info.size)))
    started = time.monotonic()
    assert inspect_bundle(path).tag == "svc:v1"
    import_bundle(path, tmp_path / "home")
    assert time.monotonic() - started < 15


def test_size_limits(tmp_path):
    path = archive(tmp_path, [file_member("./bento.yaml"), file_member("big", b"x" * 5000)])
    with pytest.raises(BundleError, match="limit"):
        inspect_bundle(path, Limits(max_archive_bytes=100))
    with pytest.raises(BundleError, match="unpacks to more than") as info:
        inspect_bundle(path, Limits(max_unpacked_bytes=1000))
    assert "make the bundle smaller" in info.value.fix


def test_the_member_limit_counts_files_and_folders_and_the_defaults_are_the_readmes(tmp_path):
    folder = tarfile.TarInfo("src")
    folder.type = tarfile.DIRTYPE
    members = [file_member("./bento.yaml"), (folder, None), file_member("src/a", b""), file_member("src/b", b"")]
    with pytest.raises(BundleError, match="more than 3 files and folders"):
        inspect_bundle(archive(tmp_path, members), Limits(max_members=3))
    with pytest.raises(BundleError, match="no bento.yaml"):  # within the limit: read on, to the next check
        inspect_bundle(archive(tmp_path, members[1:], "three.bento"), Limits(max_members=3))
    assert Limits() == Limits(1 << 30, 4 << 30, 20_000, 64)  # README: 1 GiB, 4 GiB unpacked, 20,000 files, 64 deep


def test_not_a_bento(tmp_path):
    junk = tmp_path / "junk.bento"
    junk.write_bytes(b"not an archive")
    with pytest.raises(BundleError, match="not a readable"):
        inspect_bundle(junk)
    with pytest.raises(BundleError, match="no bento.yaml"):
        inspect_bundle(archive(tmp_path, [file_member("readme.txt")]))
    with pytest.raises(BundleError, match="no such file"):
        inspect_bundle(tmp_path / "missing.bento")
    os.mkfifo(tmp_path / "piped.bento")  # e.g. `testbed check PILOT <(cat model.bento)`: it exists, and is no file
    with pytest.raises(BundleError, match="a pipe or a device, not a .bento file") as info:
        inspect_bundle(tmp_path / "piped.bento")
    assert "no such file" not in str(info.value) and "a copy of the .bento" in str(info.value)


def test_manifest_tag_and_hash(fake_bento):
    info = inspect_bundle(fake_bento([FORECAST_ROUTE]))
    assert info.tag == "fake:v1" and len(info.sha256) == 64 and info.routes[0]["name"] == "forecast"


@pytest.mark.parametrize("route, words", [
    ({**FORECAST_ROUTE, "name": "predict"}, "no `forecast` API"),
    ({"name": "forecast", "input": {"properties": {"history": {"type": "tensor"}}}}, "lacks the input `future`"),
    ({"name": "forecast", "input": {"properties": {"history": {"type": "string"}, "future": {"type": "tensor"}}}},
     "declared as 'string'"),
    ({**FORECAST_ROUTE, "input": {**FORECAST_ROUTE["input"], "required": ["history", "future", "api_key"]}},
     "api_key"),
])
def test_contract_mismatch_is_refused(fake_bento, route, words):
    path = fake_bento([route])
    with pytest.raises(ContractError, match=words):
        FAMILIES.get("forecasting").contract.check_routes(inspect_bundle(path).routes, where=str(path))


def test_an_error_quoting_a_bundle_keeps_to_a_readable_length(fake_bento):
    """A declared input type of 500 KB was quoted whole: a 500 KB error (5,000 route names: 790 KB)."""
    from testbed.errors import MAX_PART_CHARS

    huge = {"name": "forecast", "input": {"properties": {"history": {"type": "x" * 500_000}, "future": {}}}}
    path = fake_bento([huge, *({"name": f"r{i:05d}" + "y" * 150} for i in range(2000))])
    with pytest.raises(ContractError, match="declared as 'xxx") as info:
        FAMILIES.get("forecasting").contract.check_routes(inspect_bundle(path).routes, where=str(path))
    assert len(str(info.value)) < 3 * MAX_PART_CHARS and "more characters left out" in str(info.value)
    assert str(path) in str(info.value) and "fix:" in str(info.value)


def test_a_bundle_labelled_for_another_pilot_is_refused(fake_bento):
    """Both forecasting pilots take the same API: the pilot a bundle's labels name tells them apart."""
    contract = FAMILIES.get("forecasting").contract
    contract.check_bundle(inspect_bundle(fake_bento([FORECAST_ROUTE])), "subway-ridership")  # no label: routes only
    contract.check_bundle(inspect_bundle(fake_bento([FORECAST_ROUTE], labels={"pilot": "bike-demand"})), "bike-demand")
    with pytest.raises(ContractError, match=r"label `pilot` is \['bike-demand'\], not a pilot id") as info:
        contract.check_bundle(inspect_bundle(fake_bento([FORECAST_ROUTE], labels={"pilot": ["bike-demand"]})),
                              "bike-demand")
    assert "label it `pilot: bike-demand`" in info.value.fix
    with pytest.raises(ContractError, match="for the pilot 'bike-demand'.*not 'subway-ridership'") as info:
        contract.check_bundle(inspect_bundle(fake_bento([FORECAST_ROUTE], labels={"pilot": "bike-demand"})),
                              "subway-ridership")
    assert "correct that label" in info.value.fix
    with pytest.raises(ContractError, match="no `forecast` API") as info:
        contract.check_bundle(inspect_bundle(fake_bento([{**FORECAST_ROUTE, "name": "x"}])), "subway-ridership")
    assert "testbed pilots show subway-ridership" in info.value.fix


def test_import_lays_the_bundle_out_as_bentoml_import_does(tmp_path, monkeypatch):
    """The harness unpacks the archive itself (no BentoML, no vendor code): the bento under bentos/NAME/VERSION
    with a `latest` file, its models moved to the home's model store, the folders BentoML expects, and file
    modes without setuid or group/other write bits."""
    setuid = file_member("./src/service.py", b"print('hi')\n")
    setuid[0].mode = 0o4777
    path = archive(tmp_path, [file_member("./bento.yaml", b"name: svc\nversion: v1\n"), setuid,
                              file_member("./models/detector/abc/model.yaml", b"name: detector\n"),
                              file_member("./models/detector/latest", b"abc")], name="ok.bento")
    home = tmp_path / "home"
    import subprocess

    def no_process(*args, **kwargs):
        raise AssertionError(f"the import started a process: {args[:1]}")

    monkeypatch.setattr(subprocess, "Popen", no_process)  # no `bentoml import`, nothing of the bundle's runs
    assert import_bundle(path, home) == "svc:v1"
    bento = home / "bentos" / "svc" / "v1"
    assert (bento / "bento.yaml").read_bytes() == b"name: svc\nversion: v1\n"
    assert (home / "bentos" / "svc" / "latest").read_text() == "v1"
    assert (home / "models" / "detector" / "abc" / "model.yaml").is_file() and not (bento / "models").exists()
    assert all((home / d).is_dir() for d in ("envs", "tmp"))
    assert (bento / "src" / "service.py").stat().st_mode & 0o7022 == 0
    assert [p.name for p in home.iterdir() if p.name.startswith(".import-")] == []


def test_vetted_bytes_are_not_decompressed_again_and_other_bytes_are(tmp_path, monkeypatch):
    """What a store recorded at submission (sha256, bento.yaml) spares a second pass over the same bytes; any
    other bytes at that path are inspected in full."""
    import sandbox.bundle

    path = archive(tmp_path, [file_member("./bento.yaml", b"name: svc\nversion: v1\n")], name="ok.bento")
    first = inspect_bundle(path)
    vetted = (first.sha256, first.manifest_bytes)
    with monkeypatch.context() as m:
        m.setattr(sandbox.bundle, "_open", lambda *a: pytest.fail("the archive was decompressed again"))
        again = inspect_bundle(path, vetted=vetted)
    assert (again.tag, again.manifest, again.sha256) == (first.tag, first.manifest, first.sha256)
    archive(tmp_path, [file_member("./bento.yaml"), file_member("../escape")], name="ok.bento")  # replaced
    with pytest.raises(BundleError, match="outside the archive"):
        inspect_bundle(path, vetted=vetted)


def _alias_bomb(levels: int = 9) -> bytes:
    """A few hundred bytes of YAML whose nested aliases expand to 10**levels strings."""
    lines = ['a0: &a0 "lol"']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return ("\n".join(lines) + f"\nname: x\nversion: y\nmodule: *a{levels}\n").encode()


def test_yaml_aliases_that_expand_without_bound_are_refused_quickly(tmp_path):
    """A bundle's YAML is read for its routes (bento.yaml) and models (model.yaml): aliases nested to a billion
    nodes are refused (the archive) or unreadable (the model), without walking or printing the expansion."""
    import time

    from sandbox.artifacts import scan_models

    bomb = _alias_bomb()
    assert len(bomb) < 600
    start = time.perf_counter()
    with pytest.raises(BundleError, match="bento.yaml is malformed.*aliases expand it"):
        inspect_bundle(archive(tmp_path, [file_member("bento.yaml", bomb)]))
    bundle = archive(tmp_path, [file_member("bento.yaml"), file_member("models/m/v1/model.yaml", bomb)], "m.bento")
    (found,) = scan_models(bundle)
    assert found.framework == "unknown" and "unreadable" in found.summary and len(found.summary) < 200
    assert time.perf_counter() - start < 5


def test_the_private_copies_of_a_killed_evaluation_are_removed_by_the_next_one(tmp_path, monkeypatch):
    """A process killed mid-evaluation (SIGKILL: its cleanup never runs) left every private copy it held, a
    whole bundle each, in the temporary directory for good; the next copy made removes those of dead processes,
    never one a live process holds."""
    import subprocess
    import sys
    import tempfile

    from sandbox.bundle import sha256_file
    from sandbox.copies import private_copy
    from testbed.config import PROJECT_ROOT

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    stored = tmp_path / "bundle.bento"
    stored.write_bytes(b"a bundle")
    killed = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                               "from sandbox.copies import private_copy; from pathlib import Path; "
                               "private_copy(Path(sys.argv[2]), sys.argv[3], 's'); print(flush=True); "
                               "import time; time.sleep(60)", str(PROJECT_ROOT), str(stored), sha256_file(stored)],
                              stdout=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    killed.stdout.readline()
    killed.kill()
    killed.wait()
    [orphan] = (tmp_path / "tmp").iterdir()
    mine = private_copy(stored, sha256_file(stored), "s")
    assert not orphan.exists() and mine.parent.exists()
    theirs = private_copy(stored, sha256_file(stored), "s")  # a live process's copy (this one's) is kept
    assert mine.exists() and theirs.exists()


def test_a_bundle_without_its_services_code_is_refused_at_submission(tmp_path):
    """A bundle whose `src/` lost the module `bento.yaml`'s `service` names was accepted, stored with an id, and
    found out only in a sandbox (a FileNotFoundError's traceback in the log tail): it is refused, naming it."""
    manifest = b"name: svc\nversion: v1\nservice: service:Forecaster\n"
    bare = archive(tmp_path, [file_member("./bento.yaml", manifest), file_member("./README.md", b"x")], "bare.bento")
    with pytest.raises(BundleError, match=r"`service` is 'service:Forecaster', and the archive holds no "
                                          r"src/service.py") as refused:
        inspect_bundle(bare)
    assert "bentoml build" in refused.value.fix
    whole = archive(tmp_path, [file_member("./bento.yaml", manifest), file_member("./src/service.py", b"")], "ok.bento")
    assert inspect_bundle(whole).tag == "svc:v1"
    package = archive(tmp_path, [file_member("./bento.yaml", manifest.replace(b"service:F", b"app.service:F")),
                                 file_member("./src/app/service/__init__.py", b"")], "package.bento")
    assert inspect_bundle(package).tag == "svc:v1"

