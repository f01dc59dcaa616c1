"""Equity with uncertainty (evaluation.equity): seeded bootstrap intervals per group, the worst-group gap with
its interval, and groups too small to judge."""

import numpy as np
import pytest

from evaluation.equity import assess_groups


def errors(sizes: dict[str, int], means: dict[str, float], seed=0):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([[g] * n for g, n in sizes.items()])
    values = np.concatenate([rng.exponential(means[g], n) for g, n in sizes.items()])
    return labels, values


def test_a_tiny_group_is_marked_too_small_and_never_named_worst():
    labels, values = errors({"big": 400, "mid": 300, "tiny": 5}, {"big": 1.0, "mid": 1.5, "tiny": 9.0})
    report = assess_groups({"area": labels}, metric="mae", goal="min", values=values,
                           settings={"min_units": 30, "resamples": 300})
    assert report["groups"]["area=tiny"]["value"] > report["groups"]["area=mid"]["value"]
    assert report["too_small"] == ["area=tiny"] and not report["groups"]["area=tiny"]["judged"]
    assert report["worst_group"] == "area=mid" and report["best_group"] == "area=big"
    assert report["gap_low"] <= report["gap"] <= report["gap_high"] and report["gap_is_clear"]


def test_the_interval_shrinks_with_n():
    widths = []
    for n in (20, 200, 2000):
        labels, values = errors({"g": n}, {"g": 1.0}, seed=n)
        g = assess_groups({"k": labels}, metric="mae", goal="min", values=values, settings={"min_units": 1})["groups"]
        widths.append(g["k=g"]["high"] - g["k=g"]["low"])
        assert g["k=g"]["low"] <= g["k=g"]["value"] <= g["k=g"]["high"]
    assert widths[0] > widths[1] > widths[2] and widths[0] > 4 * widths[2]  # about 1/sqrt(n)


def test_seeded_and_independent_of_other_groups():
    labels, values = errors({"a": 100, "b": 100}, {"a": 1.0, "b": 2.0})
    one = assess_groups({"k": labels}, metric="mae", goal="min", values=values, settings={"seed": 3})
    two = assess_groups({"k": labels}, metric="mae", goal="min", values=values, settings={"seed": 3})
    other = assess_groups({"k": labels}, metric="mae", goal="min", values=values, settings={"seed": 4})
    alone = assess_groups({"k": labels[:100]}, metric="mae", goal="min", values=values[:100], settings={"seed": 3})
    assert one == two and one["groups"]["k=a"]["low"] != other["groups"]["k=a"]["low"]
    assert alone["groups"]["k=a"] == one["groups"]["k=a"]


def test_units_resample_whole_windows_and_a_score_function_matches_the_mean():
    # 50 windows of 24 points: points of a window move together, so the interval is wider than per point
    rng = np.random.default_rng(0)
    window_level = np.repeat(rng.exponential(1.0, 50), 24)
    values = window_level + rng.normal(0, 0.01, 50 * 24)
    labels = np.array(["all"] * len(values))
    units = np.repeat(np.arange(50), 24)
    per_point = assess_groups({"k": labels}, metric="mae", goal="min", values=values)["groups"]["k=all"]
    per_window = assess_groups({"k": labels}, metric="mae", goal="min", values=values, units=units)["groups"]["k=all"]
    assert per_window["units"] == 50 and per_point["units"] == 1200
    assert (per_window["high"] - per_window["low"]) > 3 * (per_point["high"] - per_point["low"])
    scored = assess_groups({"k": labels}, metric="mae", goal="min", score=lambda idx: float(values[idx].mean()),
                           units=units, settings={"resamples": 200, "min_units": 1})["groups"]["k=all"]
    assert scored["value"] == pytest.approx(per_window["value"])
    assert scored["low"] == pytest.approx(per_window["low"], rel=0.1)


def test_higher_is_better_metrics_rank_the_other_way():
    labels = np.array(["a"] * 200 + ["b"] * 200)
    correct = np.r_[np.ones(180), np.zeros(20), np.ones(120), np.zeros(80)]
    report = assess_groups({"k": labels}, metric="accuracy", goal="max", values=correct, overall=0.75)
    assert report["worst_group"] == "k=b" and report["gap"] == pytest.approx(0.3) and report["gap_low"] > 0
    assert report["worst_vs_overall"] == pytest.approx(0.6 / 0.75)


def test_a_key_with_one_judged_group_names_no_worst_best_or_gap():
    """A key with one group large enough to judge (a big district among small ones) named that group worst and
    best at once, gap 0 (CI 0–0): when it was the worst of all, the headline hid the other key's gap. Two groups
    with the same value were one group named worst and best too."""
    rng = np.random.default_rng(0)
    district = np.array(["gangnam"] * 40 + [f"d{i}" for i in range(5) for _ in range(5)])
    hour = np.array(["day", "night"] * 32 + ["day"])
    values = rng.random(65) * 0.1 + np.where(hour == "night", 0.6, 0.2) + np.where(district == "gangnam", 2.0, 0)
    report = assess_groups({"district": district, "hour_band": hour}, metric="mase", goal="min", values=values,
                           settings={"min_units": 30, "resamples": 200})
    assert report["groups"]["district=gangnam"]["value"] > report["groups"]["hour_band=night"]["value"]
    assert set(report["keys"]) == {"hour_band"}
    assert (report["worst_group"], report["best_group"]) == ("hour_band=night", "hour_band=day")
    alike = assess_groups({"k": np.array(["a", "b"] * 40)}, metric="count_mae", goal="min", values=np.zeros(80))
    assert {alike["worst_group"], alike["best_group"]} == {"k=a", "k=b"} and alike["gap"] == 0


def test_without_intervals_the_best_group_is_another_group_of_the_worst_groups_key():
    """A family without bootstrap intervals: the worst group of all was set against the best group of all, of
    another key (a district against an hour band), or against itself when it was the only group measured."""
    from evaluation.criteria import plain_equity

    groups = {"district=a": {"mase": 2.0}, "district=b": {"mase": 1.5}, "hour=night": {"mase": 0.2},
              "hour=day": {"mase": 0.9}, "district=c": {"mase": float("nan")}}
    equity = plain_equity(groups, "mase", "min", 1.0)
    assert (equity["worst_group"], equity["best_group"], equity["gap"]) == ("district=a", "district=b", 0.5)
    alone = plain_equity({"district=a": {"accuracy": 0.4}, "hour=day": {"accuracy": 0.9}}, "accuracy", "max", 0.8)
    assert alone["worst_group"] == "district=a" and "best_group" not in alone and "gap" not in alone
    assert plain_equity({}, "mase", "min", 1.0) == {"metric": "mase"}
