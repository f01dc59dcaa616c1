"""Reading a dataset as time series, as its pilot spec describes it (`task.data`): the time column, target,
covariates, frequency and series keys of long/panel data; strict checks (unknown columns, duplicate timestamps
in a series, gaps, misaligned timestamps); derived calendar features and groups; a dense panel to cut windows
from. Sources that need reshaping first name a registered adapter (`adapters.py`); what the spec may say is in
`options.py`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.families.forecasting.options import ADAPTERS, DERIVED_FEATURES, SeriesData
from testbed.errors import SpecError

__all__ = ["Panel", "read_panel", "remembered_panel"]


@dataclass
class Panel:
    """The data as a dense grid: series x time steps on the common frequency grid."""

    values: np.ndarray  # (series, steps, len(history_features)); NaN where a row is absent
    present: np.ndarray  # (series, steps) bool: the row exists
    times: pd.DatetimeIndex  # (steps,) the grid
    keys: np.ndarray  # (series, len(series_keys)) str
    labels: dict[str, np.ndarray]  # column -> (series, steps) object labels, for groups
    continuous: frozenset[str] = frozenset()  # columns of measured values (not whole numbers): no group key


def _fail(where: str, problem: str, fix: str):
    raise SpecError(problem, where=where, fix=fix)


def _adapted(raw: pd.DataFrame, name: str, path: Path, where: str) -> pd.DataFrame:
    """`raw` reshaped by adapter `name`; one that cannot read the file (another source's columns) is the spec's
    error, naming the field and what the adapter reads, not a pandas KeyError."""
    reshape = ADAPTERS.get(name)
    try:
        return reshape(raw)
    except Exception as exc:  # noqa: BLE001 - an adapter meets a file it was not written for
        reads = " ".join((reshape.__doc__ or "").split(".")[0].split())
        detail = " ".join(str(exc).split())[:160]
        _fail(where, f"`task.data.adapter` {name} cannot reshape {path.name} ({type(exc).__name__}: {detail}); it "
                     f"reads {reads}", "name the adapter written for this file in `task.data.adapter`, or leave it "
                                       "out for a tidy file (one row per time step and series)")


def _frame(path: Path, data: SeriesData, where: str) -> pd.DataFrame:
    try:
        raw = pd.read_csv(path, encoding=data.encoding, low_memory=False,  # keys as written: `007` is not `7`
                          dtype=dict.fromkeys(data.series_keys, str))
    except (UnicodeError, LookupError) as exc:
        _fail(where, f"{path.name} cannot be read as {data.encoding} ({exc.__class__.__name__})",
              "set `task.data.encoding` to the file's encoding")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        _fail(where, f"{path.name} is not a readable CSV ({str(exc).splitlines()[0][:200]})",
              "give a comma-separated file with a header row")
    if raw.empty:
        _fail(where, f"{path.name} has no rows", "give the data file its rows")
    frame = _adapted(raw, data.adapter, path, where) if data.adapter else raw
    needed = [c for c in data.columns if c not in DERIVED_FEATURES or c not in data.calendar]
    unknown = [c for c in needed if c not in frame.columns]
    if unknown:
        derived = [c for c in unknown if c in data.calendar]
        named = ", ".join(f"{c!r} (`task.data.{data.role(c)}`)" for c in unknown)
        _fail(where, f"no column {named} in {path.name}{' after adapter ' + data.adapter if data.adapter else ''}, "
                     f"which has {list(frame.columns)[:30]}",
              "name columns of the data in `task.data` (names that read garbled: set `task.data.encoding` to the "
              "file's encoding)"
              + (f"; `task.data.calendar` may also name the features the harness derives from the time: "
                 f"{', '.join(DERIVED_FEATURES)}" if derived else ""))
    for c in [data.target, *data.known, *data.observed, *(c for c in data.calendar if c in frame.columns)]:
        if not pd.api.types.is_numeric_dtype(frame[c]):
            text = pd.to_numeric(frame[c], errors="coerce").isna() & frame[c].notna()
            row = int(np.flatnonzero(text.to_numpy())[0]) if text.any() else 0
            _fail(where, f"column {c!r} is not numeric (data row {row + 1}: {str(frame[c].iloc[row])[:40]!r})",
                  "correct the values in the data file" if c == data.target else
                  "correct the values, or use the column as a series key or attribute, or encode it numerically "
                  "in a data adapter")
    for c, role in [(data.target, "target"), *((c, "known") for c in data.known),
                    *((c, "calendar") for c in data.calendar if c in frame.columns)]:
        missing = frame[c].isna().to_numpy()
        if missing.any():  # only the history of observed covariates may have gaps: these are sent as they are
            _fail(where, f"{role} column {c!r} has {int(missing.sum())} missing values (first in data row "
                         f"{int(np.flatnonzero(missing)[0]) + 1})",
                  "drop or fill those rows in the data (or leave the steps out and set `on_gap: skip`)")
    for c in data.series_keys:
        blank = (frame[c].isna() | (frame[c].astype(str).str.strip() == "")).to_numpy()
        if blank.any():
            _fail(where, f"series key {c!r} is empty in {int(blank.sum())} rows (first in data row "
                         f"{int(np.flatnonzero(blank)[0]) + 1})", "give every row its series, or remove those rows")
    for c in [data.target, *data.known, *data.observed]:
        infinite = np.isinf(frame[c].to_numpy(dtype=float, na_value=np.nan))
        if infinite.any():
            _fail(where, f"column {c!r} has {int(infinite.sum())} infinite values (first in data row "
                         f"{int(np.flatnonzero(infinite)[0]) + 1})", "fix those values in the data file")
    return frame


def _times(frame: pd.DataFrame, data: SeriesData, where: str) -> pd.DatetimeIndex:
    if data.time_format is None and pd.api.types.is_numeric_dtype(frame[data.time]):  # read as ns since 1970
        _fail(where, f"time column {data.time!r} holds numbers (data row 1: {frame[data.time].iloc[0]}), not dates",
              "set `task.data.time_format` to how they are written (e.g. '%Y%m%d%H' for 2023010100)")
    try:
        times = pd.DatetimeIndex(pd.to_datetime(frame[data.time], format=data.time_format))
    except (ValueError, TypeError) as exc:
        _fail(where, f"time column {data.time!r} does not parse ({exc})".replace("\n", " "),
              "set `task.data.time_format` (strftime), or fix the column")
    if times.isna().any():
        _fail(where, f"time column {data.time!r} has {int(times.isna().sum())} empty values", "fix those rows")
    if times.tz is not None:  # one local clock, as the spec's split dates are written
        times = times.tz_localize(None)
    return times


def _series_name(data: SeriesData, keys, code: int) -> str:
    if not data.series_keys:
        return "the series"
    return ", ".join(f"{k}={v}" for k, v in zip(data.series_keys, keys[code], strict=True))


def remembered_panel(path: Path, data: SeriesData, where: str) -> Panel:
    """`read_panel`, remembered in this process for the same file (path, size, modification time) and settings:
    a campaign's or a bench's evaluations of one pilot parse its file once (the subway panel: ~0.5 s each). The
    panel's arrays are read-only, being shared."""
    stat = path.stat()
    return _remembered(str(path), stat.st_size, stat.st_mtime_ns, data.model_dump_json(), where)


@functools.lru_cache(maxsize=2)
def _remembered(path: str, size: int, mtime_ns: int, data: str, where: str) -> Panel:
    panel = read_panel(Path(path), SeriesData.model_validate_json(data), where)
    for array in (panel.values, panel.present, panel.keys, *panel.labels.values()):
        array.flags.writeable = False
    return panel


def _whole_label(value: float) -> str:
    """A whole number read as a float, as a label: 3.0 reads "3", 1e20 all its digits, a missing value "<NA>"."""
    return "<NA>" if np.isnan(value) else f"{value + 0.0:.0f}" if np.isfinite(value) else str(value)


def _refuse_sparse_grid(times: pd.DatetimeIndex, grid: pd.DatetimeIndex, data: SeriesData, where: str) -> None:
    """More steps of the grid with no row in any series than with one: the grid is finer than the data, or one
    timestamp lies far from the others (a mistyped year made a grid of millions of steps, and gigabytes)."""
    filled = np.sort(times.unique())
    empty = len(grid) - len(filled)
    if empty <= len(filled):
        return
    jumps = np.diff(filled)
    if len(grid) < 2 or pd.Series(jumps).median() != grid[1] - grid[0]:
        _refuse_frequency(times, data, where, f"{empty} steps without a row in any series", len(filled))
    j = int(np.argmax(jumps))
    lone = filled[j + 1] if len(filled) - j - 1 < j + 1 else filled[j]  # on the side with fewer timestamps
    row = int(np.flatnonzero(times == lone)[0])
    _fail(where, f"the timestamps jump from {pd.Timestamp(filled[j])} to {pd.Timestamp(filled[j + 1])}, leaving "
                 f"{empty} of the grid's {len(grid)} `{data.frequency}` steps without a row: "
                 f"data row {row + 1} ({pd.Timestamp(lone)}) is far from the rest",
          "correct that timestamp (a mistyped date?), or remove the row")


def _refuse_frequency(times: pd.DatetimeIndex, data: SeriesData, where: str, missing: str, present: int) -> None:
    """The grid is finer than the data: said with the data's own spacing."""
    spacing = pd.Series(np.diff(np.sort(times.unique()))).median()
    _fail(where, f"the `{data.frequency}` grid has {missing} and {present} with one: the data's timestamps are "
                 f"{spacing} apart", "set `task.data.frequency` to the data's own step (a pandas alias: h, D, MS, ...)")


def read_panel(path: Path, data: SeriesData, where: str) -> Panel:
    """The file as a dense panel, refusing duplicate timestamps, off-grid timestamps and (with `on_gap: error`)
    gaps inside a series."""
    frame = _frame(path, data, where)
    times = _times(frame, data, where)
    grid = pd.date_range(times.min(), times.max(), freq=data.frequency)
    step = grid.get_indexer(times)
    if (step < 0).any():
        bad = times[step < 0][0]
        _fail(where, f"timestamp {bad} is not on the `{data.frequency}` grid starting {grid[0]}",
              "check `task.data.frequency`, or align the timestamps")
    key_frame = frame[data.series_keys].astype(str) if data.series_keys else pd.DataFrame(index=frame.index)
    codes, keys = (pd.MultiIndex.from_frame(key_frame).factorize() if data.series_keys
                   else (np.zeros(len(frame), int), pd.MultiIndex.from_tuples([()])))
    dup = pd.DataFrame({"s": codes, "t": step}).duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        name = _series_name(data, keys, codes[i])
        _fail(where, f"duplicate timestamp {times[i]} in {name} ({int(dup.sum())} duplicate rows in all)",
              "declare the columns that tell series apart in `task.data.series_keys`" if not data.series_keys
              else "keep one row per series and timestamp")
    n_series, n_steps = len(keys), len(grid)
    _refuse_sparse_grid(times, grid, data, where)  # before a (series × steps) grid is allocated for it
    present = np.zeros((n_series, n_steps), bool)
    present[codes, step] = True
    first, last = present.argmax(1), n_steps - 1 - present[:, ::-1].argmax(1)
    span = (np.arange(n_steps) >= first[:, None]) & (np.arange(n_steps) <= last[:, None])
    gaps = span & ~present
    if gaps.sum() > present.sum():  # more steps missing than present: the grid is finer than the data
        _refuse_frequency(times, data, where, f"{int(gaps.sum())} steps without a row", int(present.sum()))
    if gaps.any() and data.on_gap == "error":
        s, t = np.argwhere(gaps)[0]
        name = _series_name(data, keys, s)
        _fail(where, f"gap: {name} has no row for {grid[t]} ({int(gaps.sum())} missing steps in "
                     f"{int(gaps.any(1).sum())} series)", "complete the data, or set `task.data.on_gap: skip` "
                                                         "to cut no window across a gap")
    values = np.full((n_series, n_steps, len(data.history_features)), np.nan)
    for j, name in enumerate(data.history_features):
        if name in frame.columns:
            values[codes, step, j] = frame[name].to_numpy(float)
        else:  # derived calendar feature: known on the whole grid
            values[:, :, j] = DERIVED_FEATURES[name](grid)[None, :]
    labels, continuous = {}, set()
    for name in dict.fromkeys([*data.series_keys, *data.attributes, *data.calendar, *data.known, *data.observed]):
        if name in frame.columns:
            grid_labels = np.full((n_series, n_steps), None, dtype=object)
            column = frame[name]
            if pd.api.types.is_float_dtype(column):
                finite = column[np.isfinite(column)]
                if (finite % 1 == 0).all():  # whole numbers, written as such: in int64 where they all fit
                    exact = len(finite) == column.notna().sum() and (finite.abs() < 2 ** 53).all()
                    column = column.astype("Int64") if exact else column.map(_whole_label)
                else:
                    continuous.add(name)
            grid_labels[codes, step] = column.astype(str).to_numpy(object)
            labels[name] = grid_labels
    key_array = np.array([list(k) for k in keys], dtype=str).reshape(n_series, len(data.series_keys))
    return Panel(values, present, grid, key_array, labels, frozenset(continuous))
