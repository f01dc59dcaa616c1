"""The forecasting family: windows, metrics, scenario, response checks and scoring."""

import io
import json

import numpy as np
import pandas as pd
import pytest

from evaluation.families import FAMILIES
from evaluation.families.forecasting.contract import decode_response, encode_request
from evaluation.registry import METRICS
from testbed.config import PROJECT_ROOT
from testbed.errors import ContractViolation
from tests.doubles import FakeSandbox


@pytest.fixture(scope="module")
def fam(bike_spec):
    return FAMILIES.get("forecasting")(bike_spec, PROJECT_ROOT / "data")


@pytest.fixture(scope="module")
def test_windows(fam):
    return fam.load("test")


def test_test_windows_stay_in_the_sequestered_period(fam, bike_spec, test_windows):
    split = bike_spec.dataset.splits["test"]
    first, last = test_windows.origins[0], test_windows.origins[-1] + pd.Timedelta(hours=23)
    assert first >= pd.Timestamp(split.start) and last <= pd.Timestamp(split.end)
    assert (test_windows.origins.hour % 6 == 0).all()
    # the history ends right before the origin: the last history hour is the origin minus one hour
    series = pd.read_csv(PROJECT_ROOT / "data/seoul-bike/SeoulBikeData.csv", encoding="latin-1")["Rented Bike Count"]
    origin = int((first - pd.Timestamp("2017-12-01")).total_seconds() // 3600)
    assert test_windows.history[0, -1, 0] == series[origin - 1] and test_windows.truth[0, 0] == series[origin]


def test_public_splits_do_not_overlap_the_test_targets(fam, test_windows):
    sample = fam.load("sample")
    assert sample.origins[-1] + pd.Timedelta(hours=23) < test_windows.origins[0]


def test_metrics_on_a_hand_example():
    y, yhat, scale = np.array([10.0, 0.0, 5.0]), np.array([8.0, 0.0, 9.0]), np.array([2.0, 2.0, 2.0])
    fns = METRICS.where(family="forecasting")
    assert fns["mae"](y, yhat, scale) == pytest.approx(2.0)
    assert fns["rmse"](y, yhat, scale) == pytest.approx(np.sqrt((4 + 0 + 16) / 3))
    assert fns["smape"](y, yhat, scale) == pytest.approx(100 * (4 / 18 + 0 + 8 / 14) / 3)
    assert fns["mase"](y, yhat, scale) == pytest.approx(1.0)


def test_missing_hours_is_seeded_and_spares_the_calendar(fam, test_windows):
    data = fam.options.data
    sc = type("S", (), {"name": "missing_hours", "severity": 0.2, "seed": 7})()
    h1, f1 = fam.perturb(test_windows, fam.inputs(test_windows), sc)
    h2, _ = fam.perturb(test_windows, fam.inputs(test_windows), sc)
    assert np.array_equal(np.isnan(h1), np.isnan(h2))
    lost = np.isnan(h1[..., 0]).mean()
    assert 0.15 < lost < 0.25 and not np.isnan(test_windows.history).any()
    assert data.calendar == ["hour", "day_of_week", "is_holiday", "functioning_day"]
    for name in data.calendar:
        assert not np.isnan(h1[..., data.history_features.index(name)]).any()
    assert np.isnan(h1[..., data.history_features.index("temperature")]).any()
    assert np.array_equal(f1, test_windows.future)


@pytest.mark.parametrize("body, words", [
    (b"[[1, 2]]", "shape"), (b'{"x": 1}', "numeric"), (json.dumps([[float("nan")] * 24]).encode(), "NaN"),
    (json.dumps([[-1.0] * 24]).encode(), "negative"),
])
def test_decode_response_rejects_contract_violations(body, words):
    with pytest.raises(ContractViolation, match=words):
        decode_response(body, 1, 24)


def npy(array) -> bytes:
    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=True)
    return out.getvalue()


def test_binary_request_and_answer_round_trip_without_pickle():
    history, future = np.full((2, 3, 4), np.nan), np.ones((2, 5, 1))
    with np.load(io.BytesIO(encode_request(history, future)), allow_pickle=False) as npz:
        assert np.array_equal(npz["history"], history, equal_nan=True) and np.array_equal(npz["future"], future)
    assert encode_request(history[:1, :1, :1], future[:1, :1], binary=False) == \
        b'{"history": [[[NaN]]], "future": [[[1.0]]]}'
    assert np.array_equal(decode_response(npy(np.ones((2, 24), np.float32)), 2, 24), np.ones((2, 24)))
    for bad, words in [(npy(np.array([[object()] * 24], dtype=object)), "numeric"),
                       (npy(np.array([["a"] * 24])), "numeric"), (npy(np.ones((1, 23))), "shape"),
                       (b"\x93NUMPY garbage", "numeric")]:
        with pytest.raises(ContractViolation, match=words):
            decode_response(bad, 1, 24)


def oracle(truth_by_key):
    """A handler that answers with the truth (looked up by the window's history)."""

    def handle(route, payload):
        history = np.asarray(payload["history"], dtype=float)
        return [truth_by_key[h[:, 0].tobytes()] for h in np.nan_to_num(history)]

    return handle


def test_score_perfect_and_failing_services(fam, test_windows):
    key = {np.nan_to_num(h[:, 0]).tobytes(): t.tolist() for h, t in zip(test_windows.history, test_windows.truth,
                                                                        strict=True)}
    result = FakeSandbox(oracle(key)).run(type("J", (), {"phases": fam.phases(test_windows), "route": "/forecast"}))
    outcome = fam.score(test_windows, result)
    assert outcome.metrics["clean"]["mae"] == 0 and outcome.coverage == 1 and not outcome.violations
    assert list(outcome.metrics) == ["clean", "missing_hours"]
    assert {"hour_band=night", "day_type=weekend", "season=autumn", "holiday=holiday"} <= set(outcome.groups)
    assert outcome.baseline["name"] == "seasonal_naive" and outcome.baseline["mase"] > 0.5

    def flaky(route, payload):
        if len(payload["history"]) > 1:
            raise RuntimeError("boom")
        return [[1.0] * 23]

    outcome = fam.score(test_windows, FakeSandbox(flaky).run(
        type("J", (), {"phases": fam.phases(test_windows), "route": "/forecast"})))
    assert outcome.coverage == 0 and any("shape" in v for v in outcome.violations)


def test_equity_never_resamples_the_same_target_hours_as_independent_units(fam, test_windows):
    """Bike windows overlap (24 h ahead every 6 h: each target hour is in 4 windows), and the equity bootstrap
    drew whole windows as independent units: 241 units where 61 days of targets exist, and intervals half as
    wide as resampling the target days (seasonal-naive forecasts, every hour band: width ratio 1.95-2.02), so a
    gap read as clear too readily and groups too small to judge passed as large enough. The units are now
    blocks of `horizon` consecutive target steps of one series (target days here), which share no target."""
    from evaluation.equity import assess_groups
    from evaluation.family import UNDER_LOAD

    baseline = test_windows.baseline.copy()
    outcome = fam.score_predictions(test_windows, {"clean": baseline, UNDER_LOAD: baseline, "missing_hours": baseline})
    days = (test_windows.origins.values[:, None] + np.arange(24) * np.timedelta64(1, "h")).astype("datetime64[D]")
    errors = np.abs(test_windows.truth - baseline) / test_windows.scale[:, None]
    bands = test_windows.groups["hour_band"].ravel()
    by_day = assess_groups({"hour_band": bands}, metric="mase", goal="min", values=errors.ravel(),
                           units=days.ravel().astype(int), settings=fam.spec.equity)
    groups = outcome.equity["groups"]
    for name, expected in by_day["groups"].items():
        assert groups[name]["units"] == expected["units"] == 61
        assert (groups[name]["low"], groups[name]["high"]) == pytest.approx((expected["low"], expected["high"]),
                                                                            rel=0.1)
