"""Forecasting plots for the scorecard: forecast against actual on one series (the busiest), and, for a panel
of many series, predicted against actual over all windows."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["forecast_plots"]


def forecast_plots(fam, data, outcome) -> dict:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    o, pred, figs = fam.options, outcome.extras["pred"], {}
    series = pd.Series([",".join(row) for row in data.series] if data.series.shape[1] else [""] * len(data.truth))
    level = pd.Series(data.truth.mean(1)).groupby(series).mean()
    names, busiest = list(level.index), level.idxmax()
    mine = list(np.flatnonzero(series == busiest))
    step = max(1, -(-o.horizon // o.stride))  # consecutive windows that do not overlap
    rows = mine[::step][:max(1, 168 // o.horizon)]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    x = np.arange(len(rows) * o.horizon)
    marker = "o" if len(x) < 24 else None
    ax.plot(x, data.truth[rows].ravel(), label="actual", color="black", lw=1.4, marker=marker)
    ax.plot(x, pred[rows].ravel(), label="model", color="#1f77b4", lw=1.2, marker=marker)
    ax.plot(x, data.baseline[rows].ravel(), label="seasonal naive", color="#ff7f0e", lw=1, ls="--", marker=marker)
    where = f" · {busiest}" if busiest else ""
    ax.set(xlabel=f"steps ({o.data.frequency}) from {data.origins[rows[0]]:%Y-%m-%d %H:%M}", ylabel=o.data.target,
           title=f"Forecast against actual{where}")
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
