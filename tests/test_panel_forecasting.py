"""Forecasting driven by the spec alone: a 25-district long-format pilot written as YAML (no new code), strict
data checks, and one bad spec file that never hides the other pilots."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cli.app import app
from evaluation.families import open_family
from pilots.catalogue import CATALOGUE_DIR
from testbed.config import PROJECT_ROOT
from testbed.errors import ContractViolation, SpecError
from tests.doubles import FakeSandbox
from workflow.catalogue import get_pilot, load_pilot, scan_pilots

DISTRICTS = [f"district-{i:02d}" for i in range(25)]
BIKE = yaml.safe_load((CATALOGUE_DIR / "bike-demand.yaml").read_text())


def district_csv(path, hours=24 * 20, drop=None, stack=False):
    """Hourly demand of 25 districts in long format: time, district, demand, temperature, zone."""
    times = pd.date_range("2024-03-01", periods=hours, freq="h")
    rows = []
    for i, name in enumerate(DISTRICTS):
        demand = 100 * (i + 1) + 50 * np.sin(2 * np.pi * times.hour / 24) + np.arange(hours) % 7
        rows.append(pd.DataFrame({"time": times.strftime("%Y-%m-%d %H:%M"), "district": name, "demand": demand,
                                  "temperature": 10 + i / 10, "zone": "north" if i < 12 else "south"}))
    frame = pd.concat(rows, ignore_index=True)
    if drop is not None:
        frame = frame.drop(index=drop)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def district_spec(folder, data_dir, **data_changes):
    import hashlib

    csv = data_dir / "districts" / "demand.csv"
    spec = {**BIKE, "id": "district-demand", "groups": ["district", "zone", "hour_band"],
            "title": {"ko": "자치구별 수요 예측", "en": "Demand per district"},
            "scenarios": [{"name": "missing_hours", "severity": 0.2, "seed": 1}],
            "task": {"data": {"time": "time", "frequency": "h", "target": "demand", "series_keys": ["district"],
                              "calendar": ["hour", "day_of_week"], "known": ["temperature"],
                              "attributes": ["zone"], **data_changes},
                     "history": 48, "horizon": 48, "stride": 24, "season": 24, "batch_size": 64},
            "dataset": {"name": "synthetic districts", "path": "districts/demand.csv", "licence": "CC0",
                        "sha256": hashlib.sha256(csv.read_bytes()).hexdigest(),
                        "splits": {"train": {"public": True, "start": "2024-03-03T00:00:00",
                                             "end": "2024-03-12T23:00:00"},
                                   "sample": {"public": True, "start": "2024-03-13T00:00:00",
                                              "end": "2024-03-15T23:00:00"},
                                   "test": {"public": False, "start": "2024-03-16T00:00:00",
                                            "end": "2024-03-20T23:00:00"}}}}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "district-demand.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    return path


@pytest.fixture
def districts(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    district_csv(data_dir / "districts" / "demand.csv")
    spec_path = district_spec(tmp_path / "pilots", data_dir)
    monkeypatch.setenv("TESTBED_PILOTS_DIR", str(tmp_path / "pilots"))
    monkeypatch.setenv("TESTBED_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))
    return spec_path, data_dir


def test_a_25_district_long_format_pilot_needs_no_new_code(districts, tmp_path):
    spec_path, data_dir = districts
    spec = get_pilot("district-demand")
    fam = open_family(spec, data_dir)
    test = fam.load("test")
    # test targets 03-16 00h .. 03-20 23h, horizon 48, origins every 24 h: 4 origins x 25 districts, none stacked
    assert test.history.shape == (100, 48, 4) and test.future.shape == (100, 48, 3)
    assert sorted(set(test.series[:, 0])) == DISTRICTS
    assert len(set(zip(test.series[:, 0], test.origins, strict=True))) == 100
    csv = pd.read_csv(data_dir / "districts" / "demand.csv")
    one = csv[csv.district == test.series[5, 0]].set_index("time")["demand"]
    origin = test.origins[5]
    expected = one.loc[(origin - pd.Timedelta(hours=48)).strftime("%Y-%m-%d %H:%M"):
                       (origin - pd.Timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")].to_numpy()
    assert np.array_equal(test.history[5, :, 0], expected)  # 48 consecutive hours of that district only
    assert np.array_equal(test.truth[5], one.loc[origin.strftime("%Y-%m-%d %H:%M"):].to_numpy()[:48])

    key = {np.nan_to_num(h[:, 0]).tobytes(): t.tolist() for h, t in zip(test.history, test.truth, strict=True)}

    def oracle_but_district_0_off(route, payload):
        out = []
        for h in np.asarray(payload["history"], dtype=float):
            truth = np.asarray(key[np.nan_to_num(h[:, 0]).tobytes()])
            out.append((truth * (1.5 if h[:, 0].mean() < 150 else 1.0)).tolist())
        return out

    # the timed phases go forward in time: a window's target is in later windows' histories, none sent before it
    fam.phases(test, seed=5)
    sent = [test.origins[rows] for name in ("single_stream", "offline") for rows in fam.plan[name]]
    assert all(len(set(origins)) == 1 for origins in sent) and sorted(o[0] for o in sent) == [o[0] for o in sent]
    assert [len(rows) for rows in fam.plan["offline"]] == [25, 25]  # one request per origin, all its districts
    outcome = fam.score(test, FakeSandbox(oracle_but_district_0_off).run(
        type("J", (), {"phases": fam.phases(test), "route": "/forecast"})))
    assert {f"district={d}" for d in DISTRICTS} | {"zone=north", "zone=south"} <= set(outcome.groups)
    eq = outcome.equity
    off = eq["groups"]["district=district-00"]
    assert off["value"] > 0 and eq["groups"]["district=district-01"]["value"] == 0
    # 4 overlapping windows per district, 120 target hours: 3 blocks of 48 (the resampling units), too small to
    # judge, so the worst judged group is its zone, with an interval
    assert off["units"] == 3 and not off["judged"] and "district=district-00" in eq["too_small"]
    assert eq["worst_group"] == "zone=north" and eq["best_group"] == "zone=south"
    # one district of 12 errs, in 3 of the zone's 36 units: a draw without any of them is about as likely as e^-3,
    # so the 95 % interval of the gap reaches 0 (with the 4 overlapping windows drawn as 4 units it did not)
    assert eq["gap"] > 0 and eq["gap_low"] <= eq["gap"] <= eq["gap_high"]

    runner = CliRunner()
    shown = json.loads(runner.invoke(app, ["pilots", "show", "district-demand", "--json"]).stdout)["contract"]
    assert shown["history_features"] == ["demand", "hour", "day_of_week", "temperature"]
    assert shown["future_features"] == ["hour", "day_of_week", "temperature"] and shown["series_keys"] == ["district"]
    out = tmp_path / "public"
    assert runner.invoke(app, ["pilots", "data", "district-demand", "--out", str(out)]).exit_code == 0
    train = np.load(out / "train.npz")
    assert list(train["history_features"]) == shown["history_features"] and train["series"].shape[1] == 1
    assert max(train["origins"]) < "2024-03-16"


def test_the_city_validates_every_split_before_the_call_opens(districts, monkeypatch):
    """`pilots show` reads no data, `pilots data` the public splits, `check` the sample: a sequestered split that
    cannot be read was found only once a vendor's submission was evaluated. `pilots validate` reads them all."""
    spec_path, data_dir = districts
    monkeypatch.setenv("TESTBED_DATA_DIR", str(data_dir))
    runner = CliRunner()
    result = runner.invoke(app, ["pilots", "validate", "district-demand", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["split"]: r for r in json.loads(result.stdout)["splits"]}
    assert rows["test"]["public"] is False and rows["test"]["items"] > 0 and rows["test"]["requests"] > 0
    assert rows["train"]["requests"] is None  # exported, never sent

    spec = yaml.safe_load(spec_path.read_text())
    spec["dataset"]["splits"]["test"].update(start="2025-03-16T00:00:00", end="2025-03-20T23:00:00")
    spec_path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    assert runner.invoke(app, ["pilots", "data", "district-demand", "--out", str(spec_path.parent / "x")]
                         ).exit_code == 0  # the public splits alone read well
    result = runner.invoke(app, ["pilots", "validate", "district-demand"])
    assert result.exit_code == 2 and "split 'test'" in result.stderr and "fix:" in result.stderr, result.output


@pytest.mark.parametrize("changes, csv_kwargs, words", [
    ({"series_keys": [], "attributes": ["zone", "district"]}, {}, "duplicate timestamp 2024-03-01 00:00:00"),
    ({}, {"drop": [30]}, "gap: district=district-00 has no row for 2024-03-02 06:00:00"),
    ({"known": ["temperature", "rain"]}, {}, "no column 'rain' (`task.data.known`)"),
    ({"calendar": ["hour", "weekday"]}, {}, "derives from the time: hour, day_of_week"),  # the names it derives
    ({"known": ["temperature", "zone"], "attributes": []}, {}, "column 'zone' is not numeric"),
    ({"frequency": "2h"}, {}, "not on the `2h` grid"),
    ({"frequency": "15min"}, {}, "the data's timestamps are 0 days 01:00:00 apart"),
])
def test_the_data_is_checked_strictly(districts, changes, csv_kwargs, words):
    spec_path, data_dir = districts
    district_csv(data_dir / "districts" / "demand.csv", **csv_kwargs)
    spec = load_pilot(district_spec(spec_path.parent, data_dir, **changes))
    with pytest.raises(SpecError) as info:
        open_family(spec, data_dir).load("test")
    assert words in str(info.value) and "fix:" in str(info.value)
    if not changes.get("series_keys", True):
        assert "series_keys" in str(info.value)


@pytest.mark.parametrize("mutate, words", [
    (lambda text: text.replace(",150.0,", ",inf,", 1), "column 'demand' has 1 infinite values"),
    (lambda text: "", "is not a readable CSV"),
    (lambda text: text.splitlines()[0] + "\n", "has no rows"),
    (lambda text: text.replace(",100.0,10.0,", ",lots,10.0,", 1),
     "column 'demand' is not numeric (data row 1: 'lots')"),
    (lambda text: text.replace(",10.0,north", ",,north", 1), "known column 'temperature' has 1 missing values"),
    (lambda text: text.replace(",district-03,", ",,", 1), "series key 'district' is empty in 1 rows"),
    (lambda text: text.replace("2024-03-05 04:00", "2203-03-05 04:00", 1),  # refused before a grid of 1.6M steps
     "data row 101 (2203-03-05 04:00:00) is far from the rest"),
    (lambda text: re.sub(r"(\d{4})-(\d\d)-(\d\d) (\d\d):00", r"\1\2\3\4", text),  # 2024030100: not ns
     "time column 'time' holds numbers (data row 1: 2024030100), not dates"),
])
def test_the_citys_own_bad_data_is_a_spec_error_never_the_vendors(districts, mutate, words):
    """Values the harness would choke on when scoring (an infinite truth made an honest bundle's official run a
    `contract_violation`), and files no reader expects, fail before any bundle runs, naming the data."""
    import hashlib

    spec_path, data_dir = districts
    csv = data_dir / "districts" / "demand.csv"
    csv.write_text(mutate(csv.read_text()))
    spec = yaml.safe_load(spec_path.read_text())
    spec["dataset"]["sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SpecError) as info:
        open_family(load_pilot(spec_path), data_dir).load("test")
    assert words in str(info.value) and "fix:" in str(info.value) and "district-demand" in str(info.value)


def test_a_group_on_measured_values_is_refused_with_the_data(tmp_path):
    """A spec may group by any column it names, and a measured covariate (the bike pilot's temperature, one
    decimal) was accepted: every value became a group, 400-odd of them, each too small to judge, each an MLflow
    metric and a row of the scorecard. Refused when the data is read, naming the field; whole numbers still group."""
    path = tmp_path / "bike-demand.yaml"
    path.write_text(yaml.safe_dump({**BIKE, "groups": ["hour_band", "temperature"]}, allow_unicode=True))
    with pytest.raises(SpecError) as info:
        open_family(load_pilot(path), PROJECT_ROOT / "data").load("test")
    assert "field `groups.1`: column 'temperature' holds measured values" in str(info.value)
    assert "task.data.attributes" in info.value.fix
    path.write_text(yaml.safe_dump({**BIKE, "groups": ["hour_band", "humidity"]}, allow_unicode=True))
    assert "50" in open_family(load_pilot(path), PROJECT_ROOT / "data").load("test").groups["humidity"]


def test_whole_numbers_of_any_size_and_infinities_are_labels(tmp_path):
    """A column of whole numbers is a column of labels, however large (1e20 had failed the whole file: no int64
    holds it) and whatever infinities it holds (which had made it "measured values, e.g. inf")."""
    from evaluation.families.forecasting import SeriesData, read_panel

    path = tmp_path / "panel.csv"
    hours = pd.date_range("2024-01-01", periods=24, freq="h").strftime("%Y-%m-%d %H:%M")
    pd.DataFrame({"time": hours, "y": range(24), "big": [1e20, 2.0] * 12, "edge": [1.0, float("inf")] * 12,
                  "measured": [0.5, float("inf")] * 12}).to_csv(path, index=False)
    data = SeriesData(time="time", frequency="h", target="y", attributes=["big", "edge", "measured"])
    panel = read_panel(path, data, "test")
    assert set(panel.labels["big"][panel.present]) == {"100000000000000000000", "2"}
    assert set(panel.labels["edge"][panel.present]) == {"1", "inf"}
    assert panel.continuous == {"measured"}


def test_a_split_without_a_window_names_the_stride_when_it_is_the_cause(districts):
    """Origins fall every `stride` steps from the data's first timestamp: a stride longer than the split left no
    window, and the fix named only the split's width and task.history / task.horizon (found by trying new pilots)."""
    spec_path, data_dir = districts
    spec = get_pilot("district-demand")
    wide = spec.model_copy(update={"task": {**spec.task, "stride": 24 * 19}})
    with pytest.raises(SpecError, match="with an origin every 456 steps") as info:
        open_family(wide, data_dir).load("test")
    assert "task.stride" in info.value.fix and info.value.where.endswith("dataset.splits.test")


def test_an_adapter_meant_for_another_file_names_the_field(tmp_path):
    """The bike adapter on a tidy file raised pandas' KeyError, quoted under a fix about `task` and `dataset` in
    general (found by trying new pilots): the field is named, with what the adapter reads."""
    from evaluation.families.forecasting import SeriesData, read_panel

    path = tmp_path / "panel.csv"
    hours = pd.date_range("2024-01-01", periods=24, freq="h").strftime("%Y-%m-%d %H:%M")
    pd.DataFrame({"time": hours, "y": range(24)}).to_csv(path, index=False)
    for name in ("uci_seoul_bike", "seoul_subway_hourly"):
        data = SeriesData(time="time", frequency="h", target="y", adapter=name)
        with pytest.raises(SpecError, match=f"`task.data.adapter` {name} cannot reshape panel.csv") as info:
            read_panel(path, data, "test")
        assert "it reads" in info.value.problem and "task.data.adapter" in info.value.fix


def test_series_keys_are_read_as_written(tmp_path):
    """Station codes `007` and `7` are two stations: read as numbers they merged into one, and the error blamed
    duplicate rows the data did not have (found by trying new pilots); `0150` was exported as `150`."""
    from evaluation.families.forecasting import SeriesData, read_panel

    path = tmp_path / "panel.csv"
    hours = pd.date_range("2024-01-01", periods=24, freq="h").strftime("%Y-%m-%d %H:%M")
    pd.DataFrame({"time": [*hours, *hours, *hours], "station": ["007"] * 24 + ["7"] * 24 + ["0150"] * 24,
                  "y": range(72)}).to_csv(path, index=False)
    panel = read_panel(path, SeriesData(time="time", frequency="h", target="y", series_keys=["station"]), "test")
    assert sorted(panel.keys[:, 0]) == ["007", "0150", "7"] and panel.present.all()


def test_a_target_below_zero_needs_the_spec_to_say_so(districts):
    """Forecasts below zero break the contract, so a target that goes below zero (a net flow) is refused until the
    spec sets `task.nonnegative: false`; then negative forecasts are answers like any other."""
    import hashlib

    from evaluation.families.forecasting.contract import decode_response

    spec_path, data_dir = districts
    csv = data_dir / "districts" / "demand.csv"
    frame = pd.read_csv(csv)
    frame["demand"] -= frame["demand"].mean()
    frame.to_csv(csv, index=False)
    spec = yaml.safe_load(spec_path.read_text())
    spec["dataset"]["sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SpecError, match="below zero at") as info:
        open_family(load_pilot(spec_path), data_dir).load("test")
    assert "task.nonnegative" in info.value.where and "`task.nonnegative: false`" in info.value.fix
    spec["task"]["nonnegative"] = False
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    fam = open_family(load_pilot(spec_path), data_dir)
    test = fam.load("test")
    assert (test.truth < 0).any()
    body = json.dumps((-np.ones((2, fam.options.horizon))).tolist()).encode()
    assert (decode_response(body, 2, fam.options.horizon, nonnegative=False) == -1).all()
    with pytest.raises(ContractViolation, match="negative"):
        decode_response(body, 2, fam.options.horizon)


def test_times_with_a_utc_offset_read_on_their_own_clock(districts):
    spec_path, data_dir = districts
    plain = open_family(load_pilot(spec_path), data_dir).load("test")
    csv = data_dir / "districts" / "demand.csv"
    frame = pd.read_csv(csv)
    frame["time"] = frame["time"] + ":00+09:00"
    frame.to_csv(csv, index=False)
    import hashlib

    spec = yaml.safe_load(spec_path.read_text())
    spec["dataset"]["sha256"] = hashlib.sha256(csv.read_bytes()).hexdigest()
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    offset = open_family(load_pilot(spec_path), data_dir).load("test")
    assert np.array_equal(offset.truth, plain.truth) and (offset.origins == plain.origins).all()


def test_a_gap_can_be_skipped_instead(districts):
    spec_path, data_dir = districts
    drop = 24 * 20 * 3 + 24 * 17  # district-03, 2024-03-18 00:00, inside the test period
    district_csv(data_dir / "districts" / "demand.csv", drop=[drop])
    spec = load_pilot(district_spec(spec_path.parent, data_dir, on_gap="skip"))
    test = open_family(spec, data_dir).load("test")
    assert len(test.truth) == 100 - 3 and (test.series[:, 0] == "district-03").sum() == 1


@pytest.mark.parametrize("change, field", [
    ({"groups": ["borough"]}, "groups.0"),
    ({"task": {"data": {"time": "t", "frequency": "fortnightly", "target": "y"}, "history": 4, "horizon": 1}},
     "task.data.frequency"),
    ({"task": {"data": {"time": "t", "frequency": "h", "target": "y", "known": ["y"]}, "history": 4,
               "horizon": 1}}, "task.data"),
    ({"task": {"data": {"time": "t", "frequency": "h", "target": "y", "adapter": "nope"}, "history": 4,
               "horizon": 1}}, "task.data.adapter"),
    ({"task": {"data": {"time": "t", "frequency": "h", "target": "y", "encoding": "klingon"}, "history": 4,
               "horizon": 1}}, "task.data.encoding"),
    ({"task": {"data": {"time": "t", "frequency": "h", "target": "y", "encoding": "rot13"}, "history": 4,
               "horizon": 1}}, "task.data.encoding"),  # a codec, but no text encoding: refused as the spec is read
    ({"task": {"data": {"time": "t", "frequency": "h", "target": "y", "encoding": "undefined"}, "history": 4,
               "horizon": 1}}, "task.data.encoding"),  # text codecs, but no file's encoding
    ({"task": {"data": {"time": "t", "frequency": "h", "target": "y", "encoding": "punycode"}, "history": 4,
               "horizon": 1}}, "task.data.encoding"),
    ({"task": {"data": {"time": "t", "frequency": "h", "target": "y", "encoding": "utf\x008"}, "history": 4,
               "horizon": 1}}, "task.data.encoding"),
    ({"task": {**BIKE["task"], "data": {**BIKE["task"]["data"], "frequency": "D"}}}, "groups.0"),  # hour_band
    ({"groups": ["season", "day_type"], "task": {**BIKE["task"], "data": {**BIKE["task"]["data"], "frequency": "W"}}},
     "groups.1"),
    ({"task": {**BIKE["task"], "stride": 10**30}}, "task.stride"),  # was an OverflowError naming no field
    ({"task": {**BIKE["task"], "single_stream_requests": 10**30}}, "task.single_stream_requests"),
])
def test_spec_errors_name_the_field(tmp_path, change, field):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({**BIKE, **change}, allow_unicode=True))
    with pytest.raises(SpecError) as info:
        load_pilot(path)
    assert f"`{field}" in str(info.value)


def test_one_bad_spec_never_hides_the_other_pilots(tmp_path, monkeypatch):
    folder = tmp_path / "pilots"
    folder.mkdir()
    (folder / "broken-pilot.yaml").write_text(yaml.safe_dump({**BIKE, "id": "broken-pilot", "groups": ["nope"]}))
    (folder / "bike-demand.yaml").write_text(yaml.safe_dump(BIKE, allow_unicode=True))  # a second bike-demand
    (folder / "other-name.yaml").write_text("id: declared-pilot\n" + yaml.safe_dump({**BIKE, "groups": ["nope"]})
                                            .replace("id: bike-demand\n", ""))  # found by the id it declares
    monkeypatch.setenv("TESTBED_PILOTS_DIR", str(folder))
    pilots, broken = scan_pilots()
    assert {"bike-demand", "subway-ridership"} <= set(pilots)
    assert {p.name for p in broken} == {"broken-pilot.yaml", "bike-demand.yaml", "other-name.yaml"}
    runner = CliRunner()
    listed = runner.invoke(app, ["pilots", "list"])
    assert listed.exit_code == 1 and "bike-demand" in listed.stdout  # the others listed, the exit says not all
    assert "broken-pilot.yaml" in listed.stderr and "unknown group 'nope'" in listed.stderr
    assert "already defined" in listed.stderr
    listed = runner.invoke(app, ["pilots", "list", "--json"])
    rows = json.loads(listed.stdout)
    assert listed.exit_code == 1 and any(r["id"] == "broken-pilot" and "unknown group" in r["error"] for r in rows)
    assert runner.invoke(app, ["pilots", "show", "bike-demand"]).exit_code == 0
    shown = runner.invoke(app, ["pilots", "show", "broken-pilot"])
    assert shown.exit_code == 2 and "groups.0" in shown.stderr and "Traceback" not in shown.output
    shown = runner.invoke(app, ["pilots", "show", "declared-pilot"])
    assert shown.exit_code == 2 and "other-name.yaml" in shown.stderr and "no pilot" not in shown.stderr


def test_a_missing_pilots_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_PILOTS_DIR", str(tmp_path / "nowhere"))
    result = CliRunner().invoke(app, ["pilots", "list"])
    assert result.exit_code == 2 and "TESTBED_PILOTS_DIR" in result.stderr and "does not exist" in result.stderr
    assert "fix:" in result.stderr and "Traceback" not in result.output


def test_subway_pilot_reads_the_real_panel():
    from testbed.config import PROJECT_ROOT

    spec = get_pilot("subway-ridership")
    fam = open_family(spec, PROJECT_ROOT / "data")
    sample, test = fam.load("sample"), fam.load("test")
    assert set(sample.origins.strftime("%Y-%m")) == {"2022-09"}
    assert set(test.origins.strftime("%Y-%m")) == {"2022-10", "2022-11"}
    assert fam.panel.keys.shape == (621 * 24, 3) and len(test.truth) > 14000
    gangnam = (test.series == ["2호선", "강남", "18-19"]).all(1)
    raw = pd.read_csv(PROJECT_ROOT / "data" / spec.dataset.path, encoding="cp949")
    row = raw[(raw["사용월"] == 202210) & (raw["호선명"] == "2호선") & (raw["지하철역"] == "강남")]
    assert test.truth[gangnam][0, 0] == row["18시-19시 승차인원"].item()
    assert test.history[gangnam][0, -1, 5] == raw[(raw["사용월"] == 202209) & (raw["호선명"] == "2호선")
                                                  & (raw["지하철역"] == "강남")]["18시-19시 하차인원"].item()


def test_a_pilots_file_is_parsed_once_per_process_until_it_changes(tmp_path):
    csv = district_csv(tmp_path / "data" / "districts" / "demand.csv")
    spec = load_pilot(district_spec(tmp_path / "pilots", tmp_path / "data"))
    first = open_family(spec, tmp_path / "data").panel
    assert open_family(spec, tmp_path / "data").panel is first  # another evaluation: no second parse
    with pytest.raises(ValueError, match="read-only"):
        first.values[0, 0, 0] = 0.0  # shared, so nobody may write into it
    district_csv(csv, hours=24 * 21)  # the file changes (and its spec's sha256 with it): read again
    spec = load_pilot(district_spec(tmp_path / "pilots", tmp_path / "data"))
    again = open_family(spec, tmp_path / "data").panel
    assert again is not first and again.values.shape[1] == first.values.shape[1] + 24


def test_exactness_reads_a_panel_within_its_series_not_its_levels(districts):
    """A forecast as far from the truth as the baseline is reads ~0, though the districts' levels (100 to 2,500)
    give it a pooled R² of 0.99+; any affine copy of the truth still reads 1 (the lookup flag)."""
    spec_path, data_dir = districts
    fam = open_family(get_pilot("district-demand"), data_dir)
    test = fam.load("test")
    noise = np.random.default_rng(0).standard_normal(test.truth.shape)
    rough = test.truth + noise * np.sqrt(np.mean((test.baseline - test.truth) ** 2, axis=1, keepdims=True))
    pooled = np.corrcoef(rough.ravel(), test.truth.ravel())[0, 1] ** 2
    assert pooled > 0.99 and fam.exactness(test, {"clean": rough}) < 0.5
    assert fam.exactness(test, {"clean": 1.5 * test.truth + 7}) == pytest.approx(1.0)
    assert fam.exactness(test, {"clean": np.full_like(test.truth, 100.0)}) is None


def test_the_forecast_plot_puts_each_window_at_its_own_time(districts):
    """Windows that do not follow each other (a stride longer than the horizon, or windows skipped at a gap) are
    drawn at their own times with a break between them, not joined end to end under a "steps from" axis."""
    import matplotlib

    matplotlib.use("Agg")
    from evaluation.families.forecasting.plots import forecast_plots
    from evaluation.family import Outcome

    spec_path, data_dir = districts
    spec = load_pilot(spec_path)
    spec = spec.model_copy(update={"task": {**spec.task, "horizon": 12, "stride": 24}})
    fam = open_family(spec, data_dir)
    test = fam.load("test")
    outcome = Outcome(metrics={}, groups={}, baseline={}, extras={"pred": test.baseline.copy()})
    ax = forecast_plots(fam, test, outcome)["forecast_vs_actual"].axes[0]
    actual = next(line for line in ax.get_lines() if line.get_label() == "actual")
    x, y = actual.get_xdata(), np.asarray(actual.get_ydata(), float)
    when = pd.DatetimeIndex(x)  # the steps' own times
    busiest = test.series[:, 0] == "district-24"
    truth = {t: v for r in np.flatnonzero(busiest) for t, v in
             zip(pd.date_range(test.origins[r], periods=12, freq="h"), test.truth[r], strict=True)}
    drawn = [(t, v) for t, v in zip(when, y, strict=True) if np.isfinite(v)]
    assert len(drawn) == 12 * int(busiest.sum()) and all(truth.get(t) == v for t, v in drawn)
    assert np.isnan(y).sum() == int(busiest.sum()) - 1  # a break between windows 12 h apart
