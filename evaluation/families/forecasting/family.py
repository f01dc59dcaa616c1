"""Hourly demand forecasting: windows of the past week in, the next `horizon` hours out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from evaluation.families.forecasting.contract import FORECAST, HISTORY_FEATURES, decode_response, encode_request
from evaluation.family import LOAD_PHASES, Outcome, TaskFamily
from evaluation.registry import SCENARIOS, family
from pilots.spec import ScenarioSpec
from sandbox.runner import SandboxResult

__all__ = ["Forecasting", "Windows", "read_series"]

COLUMNS = {  # source column -> feature name
    "Rented Bike Count": "demand", "Hour": "hour", "Temperature(°C)": "temperature", "Humidity(%)": "humidity",
    "Wind speed (m/s)": "wind_speed", "Visibility (10m)": "visibility", "Dew point temperature(°C)": "dew_point",
    "Solar Radiation (MJ/m2)": "solar_radiation", "Rainfall(mm)": "rainfall", "Snowfall (cm)": "snowfall",
}
HOUR_BANDS = [(0, 5, "night"), (6, 9, "morning_peak"), (10, 16, "daytime"), (17, 20, "evening_peak"),
              (21, 23, "late_evening")]


class ForecastOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    history_hours: int = Field(default=168, ge=24, le=24 * 28)
    """Hours of history in each window."""
    horizon: int = Field(default=24, ge=1, le=24 * 7)
    """Hours to forecast from each origin."""
    stride_hours: int = Field(default=6, ge=1)
    """Hours between consecutive forecast origins."""
    season: int = Field(default=24, ge=1)
    """Lag of the seasonal-naive baseline and of the MASE scale, in hours."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Windows per request in the scenario phases."""
    single_stream_requests: int = Field(default=60, ge=1)
    """One-window requests sent one after another to measure latency."""


def read_series(path) -> pd.DataFrame:
    """The hourly series with feature columns (UCI's latin-1 CSV), indexed by timestamp."""
    raw = pd.read_csv(path, encoding="latin-1")
    frame = raw.rename(columns=COLUMNS)
    frame["time"] = pd.to_datetime(raw["Date"], format="%d/%m/%Y") + pd.to_timedelta(raw["Hour"], unit="h")
    frame["day_of_week"] = frame["time"].dt.day_of_week
    frame["holiday"] = (raw["Holiday"] == "Holiday").astype(float)
    frame["functioning_day"] = (raw["Functioning Day"] == "Yes").astype(float)
    frame["season"] = raw["Seasons"].str.lower()
    return frame.set_index("time").sort_index()


@dataclass
class Windows:
    """Model inputs and harness-only truth for one split."""

    history: np.ndarray  # (n, history_hours, len(HISTORY_FEATURES))
    future: np.ndarray  # (n, horizon, len(FUTURE_FEATURES))
    truth: np.ndarray  # (n, horizon)
    scale: np.ndarray  # (n,) in-sample seasonal-naive MAE of each window's history
    baseline: np.ndarray  # (n, horizon) seasonal-naive forecast
    origins: pd.DatetimeIndex
    groups: dict[str, np.ndarray]  # key -> (n, horizon) labels
    split: str = ""


@family("forecasting")
class Forecasting(TaskFamily):
    contract = FORECAST
    Options = ForecastOptions
    group_keys = ("hour_band", "day_type", "season", "holiday")
    primary_metric = "mase"
    technology_fields = ("time_series",)
    baseline_name = "seasonal_naive"

    def load(self, split: str) -> Windows:
        o, window = self.options, self.spec.dataset.splits[split]
        frame = read_series(self.data_path)
        values = frame[list(HISTORY_FEATURES)].to_numpy(np.float64)
        times = frame.index
        first = max(times.searchsorted(window.start), o.history_hours)
        last = times.searchsorted(window.end, side="right") - o.horizon
        origins = np.arange(first, last + 1)
        origins = origins[times[origins].hour % o.stride_hours == 0]
        hist = np.stack([values[t - o.history_hours:t] for t in origins])
        future = np.stack([values[t:t + o.horizon, 1:] for t in origins])
        truth = np.stack([values[t:t + o.horizon, 0] for t in origins])
        demand = hist[..., 0]
        scale = np.mean(np.abs(demand[:, o.season:] - demand[:, :-o.season]), axis=1)
        baseline = np.stack([np.resize(d[-o.season:], o.horizon) for d in demand])
        target_times = [times[t:t + o.horizon] for t in origins]
        hours = np.stack([t.hour for t in target_times])
        band = np.empty(hours.shape, dtype=object)
        for lo, hi, name in HOUR_BANDS:
            band[(hours >= lo) & (hours <= hi)] = name
        idx = np.stack([np.arange(t, t + o.horizon) for t in origins])
        groups = {
            "hour_band": band,
            "day_type": np.where(np.stack([t.day_of_week for t in target_times]) >= 5, "weekend", "weekday"),
            "season": frame["season"].to_numpy()[idx],
            "holiday": np.where(frame["holiday"].to_numpy()[idx] > 0, "holiday", "working_day"),
        }
        return Windows(hist, future, truth, np.maximum(scale, 1.0), baseline, times[origins], groups, split)

    def inputs(self, data: Windows) -> tuple[np.ndarray, np.ndarray]:
        return data.history, data.future

    def size(self, data: Windows) -> int:
        return len(data.truth)

    def perturb(self, data: Windows, inputs, sc: ScenarioSpec) -> tuple[np.ndarray, np.ndarray]:
        return SCENARIOS.get(sc.name)(*inputs, sc.severity, self.scenario_rng(sc))

    def encode(self, inputs, rows: np.ndarray) -> bytes:
        history, future = inputs
        return encode_request(history[rows], future[rows])

    def _predictions(self, result: SandboxResult, name: str, n: int, violations: list[str]) -> np.ndarray:
        preds = np.full((n, self.options.horizon), np.nan)
        decode = lambda body, rows: decode_response(body, len(rows), self.options.horizon)  # noqa: E731
        for rows, values in self.answers(result, name, decode, violations):
            preds[rows] = values
        return preds

    def predictions(self, data: Windows, result: SandboxResult, violations: list[str]) -> dict[str, np.ndarray]:
        n = len(data.truth)
        preds = {name: self._predictions(result, name, n, violations) for name in self.scenario_names}
        for load_phase in LOAD_PHASES:
            self._predictions(result, load_phase, n, violations)
        return preds

    def score_predictions(self, data: Windows, preds: dict[str, np.ndarray]) -> Outcome:
        fns = self.metric_functions()
        scale = np.broadcast_to(data.scale[:, None], data.truth.shape)

        def compute(pred: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
            ok = np.isfinite(pred) if mask is None else np.isfinite(pred) & mask
            if not ok.any():
                return {m: float("nan") for m in fns}
            return {m: fn(data.truth[ok], pred[ok], scale[ok]) for m, fn in fns.items()}

        clean = preds["clean"]
        groups = {f"{key}={value}": compute(clean, labels == value)
                  for key in self.spec.groups for labels in [data.groups[key]] for value in sorted(set(labels.flat))}
        return Outcome(
            metrics={name: compute(preds[name]) for name in self.scenario_names},
            groups=groups,
            baseline={"name": self.baseline_name, **compute(data.baseline)},
            coverage=float(np.isfinite(clean).all(axis=1).mean()),
            extras={"pred": clean},
        )

    def exactness(self, data: Windows, preds: dict[str, np.ndarray]) -> float | None:
        """R² of the clean forecast against the best affine map of the truth (a·truth + b): 1 means the
        forecast is the truth shifted or scaled."""
        ok = np.isfinite(preds["clean"])
        y, x = preds["clean"][ok], data.truth[ok]
        if len(y) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return None
        fitted = np.polyval(np.polyfit(x, y, 1), x)
        return float(1 - np.sum((y - fitted) ** 2) / np.sum((y - y.mean()) ** 2))

    def export(self, data: Windows, out_dir) -> list:
        path = out_dir / f"{data.split}.npz"
        np.savez_compressed(path, history=data.history, future=data.future, target=data.truth,
                            origins=np.asarray(data.origins.strftime("%Y-%m-%dT%H:%M"), dtype="U16"))
        return [path]

    def plots(self, data: Windows, outcome: Outcome) -> dict:
        import matplotlib.pyplot as plt

        pred = outcome.extras["pred"]
        step = max(1, self.options.horizon // self.options.stride_hours)
        rows = list(range(0, min(len(data.truth), 7 * step), step))
        fig, ax = plt.subplots(figsize=(10, 3.2))
        hours = np.arange(len(rows) * self.options.horizon)
        ax.plot(hours, data.truth[rows].ravel(), label="actual", color="black", lw=1.4)
        ax.plot(hours, pred[rows].ravel(), label="model", color="#1f77b4", lw=1.2)
        ax.plot(hours, data.baseline[rows].ravel(), label="seasonal naive", color="#ff7f0e", lw=1, ls="--")
        ax.set(xlabel=f"hours from {data.origins[0]:%Y-%m-%d %H:%M}", ylabel="bikes rented / hour",
               title="Forecast against actual (first week of the test split)")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        return {"forecast_vs_actual": fig}
