"""Data adapters: sources that need reshaping before they read as time series. Each is registered under the
name a pilot spec gives in `task.data.adapter`, takes the raw CSV as read and returns one row per time step
(and series). Tidy files need none."""

from __future__ import annotations

import pandas as pd

from evaluation.families.forecasting.options import adapter

__all__ = ["uci_seoul_bike", "seoul_subway_hourly"]

BIKE_COLUMNS = {
    "Rented Bike Count": "demand", "Temperature(°C)": "temperature", "Humidity(%)": "humidity",
    "Wind speed (m/s)": "wind_speed", "Visibility (10m)": "visibility", "Dew point temperature(°C)": "dew_point",
    "Solar Radiation (MJ/m2)": "solar_radiation", "Rainfall(mm)": "rainfall", "Snowfall (cm)": "snowfall",
}


@adapter("uci_seoul_bike")
def uci_seoul_bike(raw: pd.DataFrame) -> pd.DataFrame:
    """UCI Seoul Bike Sharing Demand: a timestamp from `Date` (dd/mm/yyyy) + `Hour`, the holiday and
    functioning-day flags as numbers (and `holiday` as a label), seasons in lower case."""
    frame = raw.rename(columns=BIKE_COLUMNS)[list(BIKE_COLUMNS.values())]
    frame.insert(0, "time", pd.to_datetime(raw["Date"], format="%d/%m/%Y") + pd.to_timedelta(raw["Hour"], unit="h"))
    frame["is_holiday"] = (raw["Holiday"] == "Holiday").astype(float)
    frame["holiday"] = frame["is_holiday"].map({1.0: "holiday", 0.0: "working_day"})
    frame["functioning_day"] = (raw["Functioning Day"] == "Yes").astype(float)
    frame["season"] = raw["Seasons"].str.lower()
    return frame


@adapter("seoul_subway_hourly")
def seoul_subway_hourly(raw: pd.DataFrame) -> pd.DataFrame:
    """Seoul Open Data Plaza OA-12252 (one row per month x line x station, 24 hour bands x boardings/alightings
    as columns) to one row per month x line x station x hour band: `month_start`, `line`, `station`,
    `hour_band` (`07-08`), `hour` (the band's first hour), `boardings`, `alightings`."""
    parts = []
    for column in raw.columns:
        if column.endswith("승차인원"):
            start, end = column[:2], column[4:6]
            part = raw[["사용월", "호선명", "지하철역"]].copy()
            part["hour_band"], part["hour"] = f"{start}-{end}", float(start)
            part["boardings"] = raw[column].astype(float)
            part["alightings"] = raw[column.replace("승차", "하차")].astype(float)
            parts.append(part)
    long = pd.concat(parts, ignore_index=True).rename(columns={"호선명": "line", "지하철역": "station"})
    long.insert(0, "month_start", pd.to_datetime(long.pop("사용월").astype(str), format="%Y%m"))
    return long.sort_values(["line", "station", "hour", "month_start"], ignore_index=True)
