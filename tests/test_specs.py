"""Pilot specs and vendor profiles: invalid input fails with the file, the field path and the fix."""

import datetime
import os
from pathlib import Path

import pytest
import yaml

from pilots.catalogue import CATALOGUE_DIR
from pilots.vendor import VendorProfile
from testbed.errors import NotFound, SpecError
from testbed.yamlio import load_model
from workflow.catalogue import all_pilots, load_pilot

BIKE = yaml.safe_load((CATALOGUE_DIR / "bike-demand.yaml").read_text())


def write(tmp_path: Path, data, name="spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, allow_unicode=True))
    return path


def test_catalogue_specs_are_valid():
    pilots = all_pilots()
    assert "bike-demand" in pilots
    assert pilots["bike-demand"].dataset.splits["test"].public is False


@pytest.mark.parametrize("change, field, fix_words", [
    (lambda s: s["criteria"]["weights"].update(viability=0.9), "criteria.weights", "sum to 1"),
    (lambda s: s["resources"].update(memory_mb="lots"), "resources.memory_mb", "address-space limit"),
    (lambda s: s.pop("department"), "department", "owning department"),
    (lambda s: s["thresholds"][0].update(metric="accuracy"), "thresholds.0.metric", "mase"),
    (lambda s: s["scenarios"][0].update(name="earthquake"), "scenarios.0.name", "missing_hours"),
    (lambda s: s.update(groups=["district"]), "groups.0", "hour_band"),
    (lambda s: s["task"].update(horizon=0), "task.horizon", "greater than or equal"),
    (lambda s: s.update(family="telepathy"), "family", "forecasting"),
    (lambda s: s["dataset"]["splits"]["test"].update(public=True), "dataset.splits", "public: false"),
    # what a city data officer writing a new pilot gets wrong
    (lambda s: s["dataset"]["splits"]["test"].update(start="2018-08-01T00:00:00"), "dataset.splits",
     "vendors would have seen its items"),
    (lambda s: s["dataset"]["splits"]["test"].pop("start"), "dataset.splits", "overlaps the public"),
    (lambda s: s["dataset"]["splits"]["test"].update(end="2018-09-30T00:00:00"), "dataset.splits",
     "after it ends"),
    (lambda s: s["dataset"]["splits"].update({"../../escaped": {"public": True}}), "dataset.splits",
     "lower-case letters"),
    (lambda s: s["dataset"]["splits"]["test"].update(start="2018-10-01T00:00:00+09:00"), "dataset.splits.test.start",
     "without a time zone"),
    (lambda s: s["dataset"].update(path="../../etc/passwd"), "dataset.path", "inside the data folder"),
    (lambda s: s["task"].update(season=200), "task", "shorter than `task.history`"),
    (lambda s: s["thresholds"][0].update(max=None, min=1.0), "thresholds.0.min", "give `max` for mase"),
    (lambda s: s["thresholds"][0].update(max=float("nan")), "thresholds.0.max", "finite"),
    # a bound outside the metric's values: a gate that never fails (or never passes) loaded silently
    (lambda s: s["thresholds"][0].update(max=-1.0), "thresholds.0.max", "never be met"),
    (lambda s: s["thresholds"][1].update(max=200.0), "thresholds.1.max", "always be met"),  # smape: 0..200
    (lambda s: s["thresholds"].append(dict(s["thresholds"][0])), "thresholds", "more than once"),
    (lambda s: s["scenarios"].append(dict(s["scenarios"][0], seed=2)), "scenarios", "missing_hours given more"),
    (lambda s: s.update(department=""), "department", "owning department"),
    (lambda s: s["task"].update(horizn=24), "task.horizn", "the fields there: data, history, horizon"),
    (lambda s: s["resources"].update(cpus="two"), "resources.cpus", "is CPU cores"),
    # `.inf` passes `gt=0`, then is logged as null in pilot_spec.json, which the audit cannot read back
    (lambda s: s["service_level"].update(p95_latency_ms=float("inf")), "service_level.p95_latency_ms", "finite"),
    (lambda s: s["resources"].update(cpus=float("inf")), "resources.cpus", "finite"),
    # limits a run cannot be given: a wall time past threading's TIMEOUT_MAX killed the watchdog (no limit at all),
    # a share of a CPU of 1e-9 a quota of a microsecond a period (the timeout then the vendor's)
    (lambda s: s["resources"].update(wall_time_s=10**10), "resources.wall_time_s", "less than or equal to 86400"),
    (lambda s: s["resources"].update(cpus=1e-9), "resources.cpus", "greater than or equal to 0.1"),
    (lambda s: s["resources"].update(memory_mb=10**12), "resources.memory_mb", "less than or equal"),
    (lambda s: s["task"].update(mase_floor=float("inf")), "task.mase_floor", "finite"),  # MASE 0 for any forecast
    # a step of no length, or backwards: the data read failed with ZeroDivisionError/IndexError, naming no field
    (lambda s: s["task"]["data"].update(frequency="0h"), "task.data.frequency", "a step forward"),
    (lambda s: s["task"]["data"]["known"].append("demand"), "task.data", "given both as `target`"),  # the truth
    (lambda s: s["task"]["data"].update(frequency="-1h"), "task.data.frequency", "a step forward"),
    # numpy's generators take no negative seed: the bootstrap's failed after the sandbox run (the bundle's verdict
    # became contract_violation), a scenario's when its inputs were built (a traceback)
    (lambda s: s.update(equity={"seed": -1}), "equity.seed", "greater than or equal to 0"),
    (lambda s: s["scenarios"][0].update(seed=-7), "scenarios.0.seed", "greater than or equal to 0"),
    # a review scores goals by text: a goal given twice could not be scored as two (refused as "scored twice")
    (lambda s: s["policy_goals"].append(s["policy_goals"][0]), "policy_goals", "given more than once"),
    (lambda s: s["policy_goals"].append("\u3000 "), "policy_goals.3", "at least 1 character"),  # a blank goal
    (lambda s: s["policy_goals"].append(" " + s["policy_goals"][0]), "policy_goals", "given more than once"),
    # the data folder itself is no data file: it used to be refused at evaluation as "not found"
    (lambda s: s["dataset"].update(path="."), "dataset.path", "names a folder, not a file"),
    (lambda s: s["dataset"].update(path="seoul-bike/./"), "dataset.path", "names a folder, not a file"),
])
def test_invalid_spec_names_file_field_and_fix(tmp_path, change, field, fix_words):
    spec = yaml.safe_load(yaml.safe_dump(BIKE))
    change(spec)
    path = write(tmp_path, spec)
    with pytest.raises(SpecError) as info:
        load_pilot(path)
    message = str(info.value)
    assert str(path) in message and f"`{field}" in message and fix_words in message


def test_a_key_given_twice_is_refused_not_overwritten(tmp_path):
    text = (CATALOGUE_DIR / "bike-demand.yaml").read_text().replace("  horizon: 24", "  horizon: 24\n  horizon: 6")
    with pytest.raises(SpecError, match="'horizon' is given twice"):
        load_pilot(write(tmp_path, text))


def test_a_key_that_yaml_reads_as_no_name_is_told_as_such(tmp_path):
    """`null:` (or `1:`, `true:`) is no field name: "give `None` a value" was the fix given."""
    from pilots.vendor import VendorProfile
    from testbed.config import PROJECT_ROOT
    from testbed.yamlio import load_model

    profile = (PROJECT_ROOT / "examples" / "bike_mlp" / "vendor.yaml").read_text()
    (tmp_path / "vendor.yaml").write_text("null: 1\n" + profile)
    with pytest.raises(SpecError, match="Keys should be strings") as info:
        load_model(tmp_path / "vendor.yaml", VendorProfile)
    assert "name the field" in info.value.fix and "a value" not in info.value.fix


def test_a_mapping_key_that_yaml_reads_as_a_number_is_told_to_be_quoted():
    """Category codes written `101: road` are read by YAML as numbers; the fix given was "give
    `task.categories.101.[key]` a value as the message says", which no value could satisfy."""
    import pydantic

    from evaluation.families.text_classification.data import TextOptions
    from testbed.yamlio import validation_error

    with pytest.raises(pydantic.ValidationError) as raw:
        TextOptions.model_validate({"categories": {101: "road", "102": "water"}})
    error = validation_error("pilot x", TextOptions, raw.value, prefix="task.")
    assert "quote the key at `task.categories.101` ('101': …)" in error.fix, error.fix


def test_yaml_merge_keys_are_read_as_yaml_reads_them(tmp_path):
    """`<<: *anchor` (YAML's merge key, which `yaml.safe_load` reads) takes the anchored mapping's keys, the ones
    written beside it overriding them: it is not a key given twice, nor invalid YAML. A key written twice beside it
    still is."""
    text = (CATALOGUE_DIR / "bike-demand.yaml").read_text()
    train = "    train: {public: true, start: 2017-12-08T00:00:00, end: 2018-08-31T23:00:00}"
    sample = "    sample: {public: true, start: 2018-09-01T00:00:00, end: 2018-09-30T23:00:00}"
    assert train in text and sample in text
    merged = text.replace(train, train.replace("train: {", "train: &public {")).replace(
        sample, "    sample: {<<: *public, start: 2018-09-01T00:00:00, end: 2018-09-30T23:00:00}")
    spec = load_pilot(write(tmp_path, merged))
    assert spec.dataset.splits["sample"] == load_pilot(CATALOGUE_DIR / "bike-demand.yaml").dataset.splits["sample"]
    with pytest.raises(SpecError, match="'start' is given twice"):
        load_pilot(write(tmp_path, merged.replace("{<<: *public, start:", "{<<: *public, start: 2018-09-02, start:")))


def test_a_local_spec_never_replaces_a_catalogued_pilot(tmp_path, monkeypatch):
    """A folder in TESTBED_PILOTS_DIR comes after the built-in catalogue, whatever the names sort as: its file
    claiming a built-in id is the broken one."""
    from workflow.catalogue import get_pilot, scan_pilots

    folder = tmp_path / "a"  # sorts before the catalogue's own path
    folder.mkdir()
    write(folder, dict(BIKE, task={**BIKE["task"], "horizon": 12}), name="bike-demand.yaml")
    monkeypatch.setenv("TESTBED_PILOTS_DIR", str(folder))
    pilots, broken = scan_pilots()
    assert pilots["bike-demand"].task["horizon"] == 24 and get_pilot("bike-demand").task["horizon"] == 24
    assert "already defined by" in str(broken[folder / "bike-demand.yaml"])


def test_a_folder_named_twice_is_read_once_and_no_spec_file_is_left_unread(tmp_path, monkeypatch):
    """The catalogue's own folder, or one folder twice, in TESTBED_PILOTS_DIR made every spec there `already
    defined by` itself; a file ending `.YAML` was silently ignored. A file name that is no pilot id is never
    suggested as one."""
    from workflow.catalogue import scan_pilots

    write(tmp_path, dict(BIKE, id="bike-copy"), name="bike-copy.yaml")
    upper = write(tmp_path, dict(BIKE, id="bike-upper"), name="BIKE-UPPER.YAML")
    spaced = write(tmp_path, dict(BIKE, id="bike-spaced"), name="bike spaced.yml")
    monkeypatch.setenv("TESTBED_PILOTS_DIR", os.pathsep.join([str(tmp_path), str(CATALOGUE_DIR), str(tmp_path)]))
    pilots, broken = scan_pilots()
    assert {"bike-demand", "bike-copy"} <= set(pilots) and set(broken) == {upper, spaced}
    for path in (upper, spaced):
        assert "differs from the file name" in str(broken[path]) and "set id:" not in broken[path].fix


@pytest.mark.parametrize("old, new, words", [
    ("end: 2018-09-30T23:00:00", "end: 2018-09-31T23:00:00", "day is out of range for month"),  # a typo'd date
    ("horizon: 24", "horizon: " + "9" * 5000, "Exceeds the limit"),  # an integer Python will not convert
])
def test_a_yaml_value_that_reads_as_no_value_is_one_broken_spec_with_its_line(tmp_path, monkeypatch, old, new, words):
    """YAML's constructors raise ValueError for a date that does not exist or an integer past 4,300 digits: a
    SpecError naming the file and the line, never a traceback, and the other pilots stay listed. Asked for by its
    id, the pilot is that file's error, whatever the file is named."""
    from workflow.catalogue import get_pilot, scan_pilots

    text = (CATALOGUE_DIR / "bike-demand.yaml").read_text().replace("id: bike-demand", "id: bike-typo")
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1), name="draft.yaml")
    monkeypatch.setenv("TESTBED_PILOTS_DIR", str(tmp_path))
    pilots, broken = scan_pilots()
    assert "bike-demand" in pilots and words in str(broken[path]) and "line " in str(broken[path])
    assert "fix:" in str(broken[path])
    with pytest.raises(SpecError, match=words) as raised:
        get_pilot("bike-typo")
    assert str(path) in str(raised.value)
    with pytest.raises(NotFound, match="1 broken spec file"):
        get_pilot("bike-other")


def test_an_unreadable_spec_file_is_one_broken_spec_not_every_command_refused(tmp_path, monkeypatch):
    """A spec file the testbed cannot read (mode 0600 of another account; simulated, as the tests may run as root)
    is listed as broken with the fix; the other pilots stay usable (every command reads the whole catalogue)."""
    from workflow.catalogue import get_pilot, scan_pilots

    unreadable = write(tmp_path, dict(BIKE, id="bike-copy"), name="bike-copy.yaml")
    read_text = Path.read_text

    def denied(self, *args, **kwargs):
        if self == unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    monkeypatch.setenv("TESTBED_PILOTS_DIR", str(tmp_path))
    pilots, broken = scan_pilots()
    assert "bike-demand" in pilots and get_pilot("bike-demand").id == "bike-demand"
    assert "Permission denied" in str(broken[unreadable]) and "fix:" in str(broken[unreadable])


def test_yaml_syntax_error_is_reported_not_raised_raw(tmp_path):
    path = write(tmp_path, "id: [unclosed\n")
    with pytest.raises(SpecError, match="YAML"):
        load_pilot(path)


VENDOR = {"name": "Acme", "headquarters_district": "Gangnam-gu", "seoul_based": True, "startup": True,
          "technology_field": "computer_vision", "model_description": "x", "licence": "MIT"}


def test_valid_vendor_profile(tmp_path):
    profile = load_model(write(tmp_path, VENDOR), VendorProfile)
    assert profile.seoul_based and profile.technology_field == "computer_vision"


@pytest.mark.parametrize("change, words", [
    ({"headquarters_district": "Busan"}, "neither a Seoul district"),
    ({"seoul_based": False}, "seoul_based is False"),
    ({"technology_field": "blockchain"}, "technology_field"),
    ({"licence": ""}, "licence"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_vendor_profile(tmp_path, change, words):
    path = write(tmp_path, {**VENDOR, **change}, "vendor.yaml")
    with pytest.raises(SpecError) as info:
        load_model(path, VendorProfile)
    assert str(path) in str(info.value) and words in str(info.value) and "fix:" in str(info.value)


def test_an_unknown_district_is_named_as_the_field_with_its_fix_not_as_fields_that_disagree(tmp_path):
    """A misspelt district is a wrong value of `headquarters_district`, not two fields that disagree: the message
    names the field and its fix says what to give (with the spelling meant, for a mere difference of case)."""
    path = write(tmp_path, {**VENDOR, "headquarters_district": "gangnam-gu"}, "vendor.yaml")
    with pytest.raises(SpecError) as info:
        load_model(path, VendorProfile)
    problem, fix = str(info.value).split("\n  fix: ")
    assert "field `headquarters_district`" in problem and "'Gangnam-gu'" in problem, problem
    assert "agree" not in fix and "outside-seoul" in fix, fix


@pytest.mark.parametrize("value", ["[" * 100_000 + "]" * 100_000, "{a: " * 30_000 + "1" + "}" * 30_000])
def test_yaml_nested_past_pythons_recursion_is_refused_with_the_fix(tmp_path, value):
    """A few hundred KiB of brackets nest past Python's recursion limit in YAML's parser: a SpecError naming the
    file, never a RecursionError traceback (exit 1) from submit, check or the catalogue."""
    path = write(tmp_path, f"name: {value}\n", "vendor.yaml")
    with pytest.raises(SpecError) as info:
        load_model(path, VendorProfile)
    assert str(path) in str(info.value) and "nested too deeply" in str(info.value) and "fix:" in str(info.value)


def test_every_file_of_a_manifest_dataset_is_verified(tmp_path):
    import shutil

    from evaluation.families import open_family
    from testbed.config import PROJECT_ROOT
    from workflow.catalogue import get_pilot

    spec = get_pilot("cctv-road-users")
    data = tmp_path / "data"
    shutil.copytree(PROJECT_ROOT / "data" / "coco-street", data / "coco-street")
    assert open_family(spec, data).dataset_sha256 == spec.dataset.sha256
    image = sorted((data / "coco-street" / "images").iterdir())[3]
    image.write_bytes(image.read_bytes()[:-1] + b"\x00")  # one byte of one image
    with pytest.raises(SpecError, match=f"{image.name} is missing or differs"):
        open_family(spec, data)
    import hashlib

    shutil.copyfile(PROJECT_ROOT / "data" / "coco-street" / "images" / image.name, image)
    manifest = data / "coco-street" / "SHA256SUMS"  # an entry reaching outside the dataset's folder
    manifest.write_text(manifest.read_text() + f"{'0' * 64}  ../../outside.csv\n")
    moved = spec.model_copy(update={"dataset": spec.dataset.model_copy(
        update={"sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()})})
    with pytest.raises(SpecError, match="with FILE inside its folder"):
        open_family(moved, data)


def test_a_data_path_that_is_a_folder_a_dead_link_or_missing_says_which_naming_the_field(tmp_path):
    from evaluation.families import open_family
    from workflow.catalogue import get_pilot

    spec = get_pilot("bike-demand")
    data = tmp_path / "data"
    (data / "seoul-bike" / "SeoulBikeData.csv").mkdir(parents=True)
    with pytest.raises(SpecError, match=r"`dataset.path`: .*SeoulBikeData.csv is a folder, not a data file"):
        open_family(spec, data)
    (data / "seoul-bike" / "SeoulBikeData.csv").rmdir()
    (data / "seoul-bike" / "SeoulBikeData.csv").symlink_to("SeoulBikeData.csv")  # a loop
    with pytest.raises(SpecError, match="is a link that leads to no file") as info:
        open_family(spec, data)
    assert "point the link at the data file" in str(info.value)
    (data / "seoul-bike" / "SeoulBikeData.csv").unlink()
    with pytest.raises(SpecError, match=r"`dataset.path`: data file .* not found") as info:
        open_family(spec, data)
    assert "TESTBED_DATA_DIR" in str(info.value)


def test_gpu_runs_limit_writable_memory_not_address_space():
    from sandbox.isolation import SandboxLimits, SandboxPaths, sandbox_command

    limits = SandboxLimits(memory_mb=1024, max_processes=8, cpu_seconds=10, threads=1)
    paths = SandboxPaths(Path("/tmp"), Path("/tmp"))  # no cgroups: rlimits bound memory
    assert f"--as={1 << 30}" in sandbox_command(paths, limits, 3)
    gpu = sandbox_command(paths, limits, 3, gpu=True)
    assert f"--data={1 << 30}" in gpu and not any(a.startswith("--as=") for a in gpu)
    # README: CPU time bounded by RLIMIT_CPU (SIGXCPU at the limit, SIGKILL 5 s later), open files by RLIMIT_NOFILE
    for command in (sandbox_command(paths, limits, 3), gpu):
        assert "--cpu=10:15" in command and "--nofile=4096" in command and "--core=0" in command


PETITIONS = yaml.safe_load((CATALOGUE_DIR / "petition-routing.yaml").read_text())
CCTV = yaml.safe_load((CATALOGUE_DIR / "cctv-road-users.yaml").read_text())


@pytest.mark.parametrize("base, split, field, fix_words", [
    # a dated family ignores `members`: such a sequestered split spanned the whole file, public splits included
    (BIKE, {"public": False, "members": "test"}, "dataset.splits.test.members", "cuts its splits by date"),
    (PETITIONS, {"public": False, "members": "test"}, "dataset.splits.test.members", "cuts its splits by date"),
    (PETITIONS, {"public": True, "members": "sample"}, "dataset.splits.sample.members", "`start` and `end`"),
    # the detection family reads only `members`: a dated split failed at evaluation with "no list None"
    (CCTV, {"public": False, "truth_public": True, "start": "2020-01-01T00:00:00"}, "dataset.splits.test",
     "split `members`: the key"),
    # both: the overlap check judged by `members` alone
    (BIKE, {"public": False, "members": "test", "start": "2018-10-01T00:00:00"}, "dataset.splits",
     "not both"),
])
def test_a_split_of_the_wrong_kind_for_its_family_is_refused(tmp_path, base, split, field, fix_words):
    spec = yaml.safe_load(yaml.safe_dump(base))
    name = "sample" if split["public"] else "test"
    spec["dataset"]["splits"][name] = split
    path = write(tmp_path, spec)
    with pytest.raises(SpecError) as info:
        load_pilot(path)
    message = str(info.value)
    assert str(path) in message and f"`{field}" in message and fix_words in message


def test_text_splits_that_share_a_day_are_refused(tmp_path):
    """The text family cuts splits by whole days (its time column is a date): a public split ending at midnight
    and a sequestered one starting later that day passed the spec's time overlap check, yet both held that day's
    petitions (vendors had part of the test split)."""
    spec = yaml.safe_load(yaml.safe_dump(PETITIONS))
    spec["dataset"]["splits"]["test"]["start"] = "2020-09-30T09:00:00"
    path = write(tmp_path, spec)
    with pytest.raises(SpecError) as info:
        load_pilot(path)
    message = str(info.value)
    assert str(path) in message and "`dataset.splits.test`" in message and "2020-09-30" in message


def test_a_split_ending_on_a_date_alone_holds_that_whole_day(tmp_path):
    """`end: 2018-11-30` reads as the whole day, as people mean it: it was that day's midnight, so the bike
    pilot's test split silently lost its last 23 hours of targets."""
    from evaluation.families import open_family
    from testbed.config import PROJECT_ROOT

    spec = yaml.safe_load(yaml.safe_dump(BIKE))
    spec["dataset"]["splits"]["test"]["end"] = datetime.date(2018, 11, 30)  # as YAML reads `end: 2018-11-30`
    by_date = load_pilot(write(tmp_path, spec))
    assert by_date.dataset.splits["test"].end == datetime.datetime(2018, 11, 30, 23, 59, 59)
    spec["dataset"]["splits"]["test"]["end"] = "2018-11-30"  # quoted: the same
    assert load_pilot(write(tmp_path, spec, "quoted.yaml")).dataset.splits["test"].end.hour == 23
    exact = load_pilot(CATALOGUE_DIR / "bike-demand.yaml")
    count = lambda s: len(open_family(s, PROJECT_ROOT / "data").load("test").truth)  # noqa: E731
    assert count(by_date) == count(exact)


@pytest.mark.parametrize("test_end, refused", [("2018-10-31T23:00:00", True), ("2018-10-20T23:00:00", False)])
def test_a_public_forecasting_split_whose_history_reaches_into_a_sequestered_one_is_refused(tmp_path, test_end,
                                                                                           refused):
    """A public split after a sequestered one: its windows' history (`task.history` steps before each origin) held
    the sequestered split's targets, so the exported public windows handed vendors part of the test truth. Refused
    unless the public split starts at least `history` steps after the sequestered one ends."""
    spec = yaml.safe_load(yaml.safe_dump(BIKE))
    spec["dataset"]["splits"]["test"].update(start="2018-10-01T00:00:00", end=test_end)
    spec["dataset"]["splits"]["sample"].update(start="2018-11-01T00:00:00", end="2018-11-30T23:00:00")
    path = write(tmp_path, spec)
    if not refused:
        assert load_pilot(path).dataset.splits["sample"].start.month == 11
        return
    with pytest.raises(SpecError) as info:
        load_pilot(path)
    message = str(info.value)
    assert str(path) in message and "`dataset.splits.sample`" in message and "history" in message
