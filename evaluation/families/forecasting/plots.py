"""Forecasting plots for the scorecard: forecast against actual on one series (the busiest), and, for a panel
of many series, predicted against actual over all windows."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["forecast_plots"]

OFF_SCALE = 1000
"""Forecasts are drawn clipped to this many times the largest actual value: an answer as large as the contract
allows (up to the largest float) overflows matplotlib's scaling, and past that the chart says nothing more."""


def forecast_plots(fam, data, outcome) -> dict:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    o, figs = fam.options, {}
    bound = OFF_SCALE * (float(np.nanmax(np.abs(data.truth), initial=0)) + 1)
    pred = np.clip(outcome.extras["pred"], -bound, bound)  # NaN (no answer) stays NaN
    series = pd.Series([",".join(row) for row in data.series] if data.series.shape[1] else [""] * len(data.truth))
    level = pd.Series(data.truth.mean(1)).groupby(series).mean()
    names, busiest = list(level.index), level.idxmax()
    mine = list(np.flatnonzero(series == busiest))
    step = pd.tseries.frequencies.to_offset(o.data.frequency)
    rows, end = [], None  # windows that do not overlap, in time order, up to about a week of hourly steps
    for r in mine:
        if end is None or data.origins[r] >= end:
            rows.append(r)
            end = data.origins[r] + step * o.horizon
        if len(rows) >= max(1, 168 // o.horizon):
            break
    # each window at its own times; a NaN point between windows that do not follow each other breaks the lines
    # (a stride longer than the horizon, or windows skipped at a gap in the data)
    times, columns = [], [[], [], []]
    for r in rows:
        ahead = pd.date_range(data.origins[r], periods=o.horizon, freq=step)
        if times and ahead[0] != times[-1] + step:
            times.append(times[-1] + step)
            for column in columns:
                column.append(np.nan)
        times.extend(ahead)
        for column, values in zip(columns, (data.truth[r], pred[r], data.baseline[r]), strict=True):
            column.extend(values)
    x = pd.DatetimeIndex(times).to_pydatetime()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    marker = "o" if len(x) < 24 else None
    ax.plot(x, columns[0], label="actual", color="black", lw=1.4, marker=marker)
    ax.plot(x, columns[1], label="model", color="#1f77b4", lw=1.2, marker=marker)
    ax.plot(x, columns[2], label="seasonal naive", color="#ff7f0e", lw=1, ls="--", marker=marker)
    where = f" · {busiest}" if busiest else ""
    ax.set(xlabel=f"time (steps of {o.data.frequency})", ylabel=o.data.target, title=f"Forecast against actual{where}")
    fig.autofmt_xdate()
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    figs["forecast_vs_actual"] = fig
    if len(names) > 1:
        fig, ax = plt.subplots(figsize=(5.5, 5))
        ok = np.isfinite(pred)
        truth = data.truth[ok] + 1
        ax.scatter(truth, data.baseline[ok] + 1, s=2, alpha=0.25, color="#ff7f0e", label="seasonal naive")
        ax.scatter(truth, pred[ok] + 1, s=2, alpha=0.25, color="#1f77b4", label="model")
        lim = [1, max(2.0, float(truth.max()) * 1.2)]
        ax.plot(lim, lim, color="black", lw=1)
        ax.set(xscale="log", yscale="log", xlabel=f"actual {o.data.target} + 1", ylabel="predicted + 1",
               title=f"All {len(names):,} series, every window")
        for axis in (ax.xaxis, ax.yaxis):  # 1,000 rather than 10³: plainer to read, and half the drawing time
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.legend(fontsize=8, markerscale=4)
        fig.tight_layout()
        figs["predicted_vs_actual"] = fig
    return figs
