"""Forecasting of time series driven by the pilot spec: one series or a panel, windows of history in, the
next `horizon` steps out (pilots `bike-demand`, `subway-ridership`)."""

from evaluation.families.forecasting import adapters, metrics, scenarios  # noqa: F401 - they register themselves
from evaluation.families.forecasting.contract import FORECAST
from evaluation.families.forecasting.family import Forecasting, Windows
from evaluation.families.forecasting.options import ADAPTERS, ForecastOptions, SeriesData, adapter
from evaluation.families.forecasting.series import read_panel

__all__ = ["FORECAST", "Forecasting", "ForecastOptions", "Windows", "ADAPTERS", "SeriesData", "adapter",
           "read_panel"]
