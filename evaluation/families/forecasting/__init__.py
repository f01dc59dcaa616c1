"""Forecasting of an hourly series: windows of history in, the next `horizon` hours out (pilot `bike-demand`)."""

from evaluation.families.forecasting import metrics, scenarios  # noqa: F401 - they register themselves
from evaluation.families.forecasting.contract import FORECAST
from evaluation.families.forecasting.family import Forecasting, Windows, read_series

__all__ = ["FORECAST", "Forecasting", "Windows", "read_series"]
