"""What a forecasting pilot spec says (`task`): how to read the data as time series (`SeriesData`, with the
registry of data adapters and the calendar features and groups derived from the time column) and how to cut and
send windows (`ForecastOptions`). `series.py` reads the data this way; `family.py` cuts the windows."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pilots.spec import Encoding
from testbed.registry import Registry

__all__ = ["ADAPTERS", "adapter", "DERIVED_FEATURES", "DERIVED_GROUPS", "SeriesData", "ForecastOptions"]

ADAPTERS: Registry = Registry("data adapter")


def adapter(name: str):
    """Register `fn(raw: pd.DataFrame) -> pd.DataFrame` reshaping a source file into one row per time step
    (and series); a spec names it in `task.data.adapter`."""
    return ADAPTERS.register(name)


HOUR_BANDS = [(0, 5, "night"), (6, 9, "morning_peak"), (10, 16, "daytime"), (17, 20, "evening_peak"),
              (21, 23, "late_evening")]


def _weekdays_in_month(t: pd.DatetimeIndex) -> np.ndarray:
    first = t.to_period("M").to_timestamp()
    return np.busday_count(first.values.astype("datetime64[D]"),
                           (first + pd.offsets.MonthBegin(1)).values.astype("datetime64[D]")).astype(float)


DERIVED_FEATURES = {
    "hour": lambda t: t.hour.to_numpy(float),
    "day_of_week": lambda t: t.day_of_week.to_numpy(float),
    "day_of_month": lambda t: t.day.to_numpy(float),
    "day_of_year": lambda t: t.day_of_year.to_numpy(float),
    "month": lambda t: t.month.to_numpy(float),
    "is_weekend": lambda t: (t.day_of_week >= 5).to_numpy(float),
    "days_in_month": lambda t: t.days_in_month.to_numpy(float),
    "weekdays_in_month": _weekdays_in_month,
}
"""Calendar features computed from the time column when the data have no column of that name."""


def _hour_band(t: pd.DatetimeIndex) -> np.ndarray:
    band = np.empty(len(t), dtype=object)
    for lo, hi, name in HOUR_BANDS:
        band[(t.hour >= lo) & (t.hour <= hi)] = name
    return band


DERIVED_GROUPS = {
    "hour_band": _hour_band,
    "day_type": lambda t: np.where(t.day_of_week >= 5, "weekend", "weekday").astype(object),
    "month": lambda t: np.asarray(t.strftime("%Y-%m"), dtype=object),
}
"""Groups computed from the target time when the data have no column of that name (hour_band: night 0-5,
morning_peak 6-9, daytime 10-16, evening_peak 17-20, late_evening 21-23)."""


class SeriesData(BaseModel):
    """How to read the dataset file as time series."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    adapter: str | None = None
    """A registered data adapter reshaping the raw file first (e.g. `uci_seoul_bike`); none for tidy files."""
    encoding: Encoding = "utf-8"
    """Text encoding of the CSV file (e.g. `utf-8`, `cp949`, `latin-1`)."""
    time: str
    """Column holding each row's timestamp (after the adapter, if any)."""
    time_format: str | None = None
    """strftime format of the time column (default: ISO 8601, inferred)."""
    frequency: str
    """Step between consecutive rows of one series, as a pandas offset alias: `h` hourly, `D` daily, `MS` monthly."""
    target: str
    """Column to forecast (numeric)."""
    series_keys: list[str] = Field(default_factory=list)
    """Columns naming one series in long/panel data (e.g. `[district]`); empty for a single series."""
    calendar: list[str] = Field(default_factory=list)
    """Features always known and never missing: columns, or derived from the time column (hour, day_of_week,
    day_of_month, day_of_year, month, is_weekend, days_in_month, weekdays_in_month)."""
    known: list[str] = Field(default_factory=list)
    """Numeric covariates known in advance (sent for the history and the horizon, e.g. a weather forecast)."""
    observed: list[str] = Field(default_factory=list)
    """Numeric covariates known only up to the forecast origin (sent for the history only)."""
    attributes: list[str] = Field(default_factory=list)
    """Other columns kept only to group results by (e.g. `season`); never sent to the model."""
    on_gap: Literal["error", "skip"] = "error"
    """A series missing a step inside its own span: `error` refuses the data; `skip` cuts no window across it."""

    @field_validator("frequency")
    @classmethod
    def _frequency(cls, value: str) -> str:
        try:
            offset = pd.tseries.frequencies.to_offset(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a pandas frequency (use e.g. h, D, MS)") from None
        if offset.n <= 0:
            raise ValueError(f"{value!r} is not a step forward in time (use e.g. h, 15min, D, MS)")
        return value

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, value: str | None) -> str | None:
        if value is not None and value not in ADAPTERS:
            raise ValueError(f"unknown data adapter {value!r} (registered: {', '.join(ADAPTERS.names()) or 'none'})")
        return value

    @model_validator(mode="after")
    def _each_column_once(self) -> SeriesData:
        seen: dict[str, str] = {}
        for role, column in self._roles():
            if column in seen:
                raise ValueError(f"column {column!r} is given both as `{seen[column]}` and as `{role}`: give "
                                 "each column one role (a derived calendar feature such as `month` needs the time "
                                 "column to have another name: rename it in the data, or leave the feature out)")
            seen[column] = role
        return self

    def _roles(self) -> list[tuple[str, str]]:
        """(field, column) for every column the spec names, in the fields' order."""
        fields = ("time", "target", "series_keys", "calendar", "known", "observed", "attributes")
        return [(role, column) for role in fields
                for column in (getattr(self, role) if isinstance(getattr(self, role), list) else [getattr(self, role)])]

    def role(self, column: str) -> str:
        """The field of `task.data` that names `column`."""
        return next(role for role, named in self._roles() if named == column)

    @property
    def history_features(self) -> list[str]:
        """Columns of `history`, in order: target, calendar, known, observed."""
        return [self.target, *self.calendar, *self.known, *self.observed]

    @property
    def future_features(self) -> list[str]:
        """Columns of `future`, in order: calendar, known."""
        return [*self.calendar, *self.known]

    @property
    def columns(self) -> list[str]:
        """Every column the spec names (groups may use any of them)."""
        return [self.time, self.target, *self.series_keys, *self.calendar, *self.known, *self.observed,
                *self.attributes]


class ForecastOptions(BaseModel):
    """What a forecasting pilot's `task` says: the data, the windows, the baseline and the requests."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    data: SeriesData
    """How to read the dataset as time series: time column, target, covariates, frequency, series keys."""
    history: int = Field(ge=2, le=5000)
    """Steps of history in each window."""
    horizon: int = Field(ge=1, le=1000)
    """Steps to forecast from each origin."""
    stride: int = Field(default=1, ge=1, le=1_000_000)
    """Steps between consecutive forecast origins (counted from the first timestamp of the data)."""
    season: int = Field(default=1, ge=1)
    """Lag of the seasonal-naive baseline and of the MASE scale, in steps (1 = the last value)."""
    mase_floor: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    """Smallest in-sample error that scales MASE, in target units (keeps near-constant series from dominating)."""
    batch_size: int = Field(default=32, ge=1, le=4096)
    """Windows per request in the scenario phases."""
    single_stream_requests: int = Field(default=60, ge=1, le=10_000)
    """One-window requests sent one after another to measure latency."""
    nonnegative: bool = True
    """The target is a count or an amount: forecasts below zero break the contract. false for a target that can go
    below zero (a temperature, a net flow); the data are checked against it."""

    @model_validator(mode="after")
    def _season_within_history(self) -> ForecastOptions:
        if self.season >= self.history:
            raise ValueError(f"`task.season` ({self.season}) must be shorter than `task.history` ({self.history}): "
                             "the baseline and the MASE scale are computed from each window's history")
        return self
