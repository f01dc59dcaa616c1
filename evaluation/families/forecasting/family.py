"""Forecasting driven by the pilot spec: windows of `history` steps in, the next `horizon` steps out, for one
series or a panel of them (`options.py`: what the spec may say; `series.py` reads the data as `task.data`
describes)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from evaluation.equity import assess_groups
from evaluation.families.forecasting.contract import FORECAST, NPZ, decode_response, encode_request
from evaluation.families.forecasting.options import DERIVED_FEATURES, DERIVED_GROUPS, ForecastOptions
from evaluation.families.forecasting.series import Panel, remembered_panel
from evaluation.family import UNDER_LOAD, Outcome, TaskFamily
from evaluation.registry import SCENARIOS, family
from pilots.spec import PilotSpec, ScenarioSpec, require_split_kind
from sandbox.runner import SandboxResult
from testbed.errors import ContractViolation, SpecError

__all__ = ["Forecasting", "Windows"]


@dataclass
class Windows:
    """Model inputs and harness-only truth for one split; windows ordered by series, then origin."""

    history: np.ndarray  # (n, history, len(history_features))
    future: np.ndarray  # (n, horizon, len(future_features))
    truth: np.ndarray  # (n, horizon)
    scale: np.ndarray  # (n,) in-sample seasonal-naive MAE of each window's history (at least mase_floor)
    baseline: np.ndarray  # (n, horizon) seasonal-naive forecast
    origins: pd.DatetimeIndex  # (n,) first forecast step of each window
    series: np.ndarray  # (n, len(series_keys)) str
    groups: dict[str, np.ndarray]  # key -> (n, horizon) labels
    split: str = ""


@family("forecasting")
class Forecasting(TaskFamily):
    contract = FORECAST
    content_type = NPZ
    Options = ForecastOptions
    group_keys = tuple(DERIVED_GROUPS)
    primary_metric = "mase"
    technology_fields = ("time_series",)
    baseline_name = "seasonal_naive"

    @property
    def answer_bytes_per_item(self) -> int:
        """`horizon` numbers in JSON: 64 bytes each is ~3× the longest a float prints (`-1.2345678901234567e-300`)."""
        return 64 * self.options.horizon

    @classmethod
    def validate_spec(cls, spec: PilotSpec, where: str) -> None:
        """Also: a derived group the data's frequency can tell apart (hourly bands need steps under a day)."""
        super().validate_spec(spec, where)
        require_split_kind(spec, where, cls.name, "dates")
        options = ForecastOptions.model_validate(spec.task)
        offset = pd.tseries.frequencies.to_offset(options.data.frequency)
        splits = spec.dataset.splits
        for name, public in splits.items():
            if not public.public or public.start is None:
                continue
            reach = pd.Timestamp(public.start) - offset * options.history  # the first window's history
            for other, hidden in splits.items():
                if hidden.public or (hidden.start is not None and hidden.start >= public.start) or \
                        (hidden.end is not None and pd.Timestamp(hidden.end) < reach):
                    continue
                raise SpecError(f"field `dataset.splits.{name}`: the public `{name}` split's windows look back "
                                f"task.history ({options.history}) steps, to {reach}, into the sequestered `{other}` "
                                "split: their history would hand vendors its truth", where=where,
                                fix=f"start the `{name}` split at least task.history steps after the `{other}` split "
                                    "ends, or put the sequestered split after the public ones")
        data = options.data
        columns = {*data.series_keys, *data.attributes, *data.calendar, *data.known, *data.observed}
        try:
            step = pd.Timedelta(pd.tseries.frequencies.to_offset(data.frequency))
        except ValueError:  # months, quarters, years: no fixed length, all of them longer than a day
            step = pd.Timedelta.max
        for i, group in enumerate(spec.groups):
            if group in columns or group not in ("hour_band", "day_type"):
                continue
            if step >= pd.Timedelta("1D") if group == "hour_band" else step > pd.Timedelta("1D"):
                raise SpecError(f"field `groups.{i}`: the derived group {group!r} cannot tell the `{data.frequency}` "
                                "steps apart (every window would fall in one group)", where=where,
                                fix=f"leave {group!r} out, or name a column of the data as the group")

    @classmethod
    def available_groups(cls, spec: PilotSpec) -> tuple[str, ...]:
        """Any column the spec's `task.data` names (series keys, attributes, covariates), or a derived group."""
        data = ForecastOptions.model_validate(spec.task).data
        return tuple(dict.fromkeys([*data.series_keys, *data.attributes, *data.calendar, *data.known,
                                    *data.observed, *DERIVED_GROUPS]))

    @classmethod
    def contract_details(cls, spec: PilotSpec) -> dict[str, Any]:
        o = ForecastOptions.model_validate(spec.task)
        d = o.data
        return {"history_shape": ["windows", o.history, len(d.history_features)],
                "history_features": d.history_features,
                "future_shape": ["windows", o.horizon, len(d.future_features)],
                "future_features": d.future_features, "never_missing": d.calendar, "frequency": d.frequency,
                "series_keys": d.series_keys, "returns": ["windows", o.horizon], "target": d.target,
                "nonnegative": o.nonnegative}

    @cached_property
    def panel(self) -> Panel:
        where = f"pilot {self.spec.id}: dataset {self.data_path.name}"
        panel = remembered_panel(self.data_path, self.options.data, where)
        below = np.flatnonzero(panel.values[..., 0] < 0)
        if self.options.nonnegative and len(below):
            s, t = np.unravel_index(below[0], panel.values.shape[:2])
            raise SpecError(f"the target {self.options.data.target!r} is below zero at {len(below)} steps (first: "
                            f"{panel.values[s, t, 0]:g} at {panel.times[t]}), but forecasts must be non-negative",
                            where=f"{where}: task.nonnegative",
                            fix="set `task.nonnegative: false` if the target can go below zero (the contract then "
                                "accepts negative forecasts), or correct the data")
        for i, key in enumerate(self.spec.groups):
            if key in panel.continuous:
                values = np.unique(panel.labels[key][panel.present].astype(float))
                example = values[np.isfinite(values) & (values % 1 != 0)][0]
                raise SpecError(f"field `groups.{i}`: column {key!r} holds measured values ({len(values)} distinct, "
                                f"e.g. {example:g}), so each value would be a group of its own, "
                                "each too small to judge", where=f"{where}: groups",
                                fix=f"group by bands of it instead (a column of categories in the data, named in "
                                    f"task.data.attributes), or leave {key!r} out of groups")
        return panel

    def _labels(self, key: str, s: np.ndarray, steps: np.ndarray) -> np.ndarray:
        panel = self.panel
        if key in panel.labels:
            return panel.labels[key][s[:, None], steps]
        if key in DERIVED_GROUPS:
            return DERIVED_GROUPS[key](panel.times)[steps]
        return np.asarray(DERIVED_FEATURES[key](panel.times).astype(int).astype(str), dtype=object)[steps]

    def read(self, split: str) -> Windows:
        o, panel, window = self.options, self.panel, self.spec.dataset.splits[split]
        n_series, n_steps = panel.present.shape
        steps = np.arange(n_steps)
        start = panel.times.searchsorted(window.start) if window.start else 0
        end = (panel.times.searchsorted(window.end, side="right") if window.end else n_steps) - o.horizon
        origins = steps[(steps >= max(start, o.history)) & (steps <= end) & (steps % o.stride == 0)]
        filled = np.concatenate([np.zeros((n_series, 1), int), np.cumsum(panel.present, 1)], axis=1)
        complete = filled[:, origins + o.horizon] - filled[:, origins - o.history] == o.history + o.horizon
        s, k = np.nonzero(complete)  # series-major, then origin order
        if not len(s):
            strided = f", with an origin every {o.stride} steps from the data's first timestamp" if o.stride > 1 \
                else ""
            raise SpecError(f"split {split!r} has no complete window of {o.history} + {o.horizon} steps{strided}",
                            where=f"pilot {self.spec.id}: dataset.splits.{split}",
                            fix="widen the split, or shorten task.history / task.horizon"
                                + (" or task.stride" if o.stride > 1 else ""))
        t = origins[k]
        past, ahead = t[:, None] + np.arange(-o.history, 0), t[:, None] + np.arange(o.horizon)
        hist = panel.values[s[:, None], past]
        future_cols = [o.data.history_features.index(c) for c in o.data.future_features]
        future = panel.values[s[:, None], ahead][..., future_cols]
        truth = panel.values[s[:, None], ahead, 0]
        target = hist[..., 0]
        scale = np.mean(np.abs(target[:, o.season:] - target[:, :-o.season]), axis=1)
        baseline = target[:, -o.season:][:, np.arange(o.horizon) % o.season]
        groups = {key: self._labels(key, s, ahead) for key in self.spec.groups}
        return Windows(hist, future, truth, np.maximum(scale, o.mase_floor), baseline, panel.times[t],
                       panel.keys[s], groups, split)

    def inputs(self, data: Windows) -> tuple[np.ndarray, np.ndarray]:
        return data.history, data.future

    def size(self, data: Windows) -> int:
        return len(data.truth)

    def perturb(self, data: Windows, inputs, sc: ScenarioSpec) -> tuple[np.ndarray, np.ndarray]:
        d = self.options.data
        measured = [i for i, name in enumerate(d.history_features) if name not in d.calendar]
        return SCENARIOS.get(sc.name)(*inputs, sc.severity, self.scenario_rng(sc), measured=measured)

    def encode(self, inputs, rows: np.ndarray) -> bytes:
        history, future = inputs
        return encode_request(history[rows], future[rows])

    def check_request(self, inputs: dict[str, list], items: int) -> None:
        o, d = self.options, self.options.data
        for name, steps, features in (("history", o.history, d.history_features), ("future", o.horizon,
                                                                                     d.future_features)):
            try:
                array = np.asarray(inputs[name])
            except ValueError:  # ragged: windows or steps of different lengths
                array = np.array(None)
            if array.dtype.kind not in "iuf" or array.shape != (items, steps, len(features)):
                raise ContractViolation(f"`{name}` must be numbers of shape (windows, {steps}, {len(features)}) "
                                        f"({', '.join(features)}), a missing value as NaN (not null); got "
                                        f"{array.dtype.name} {array.shape}")

    def check_answer(self, body: bytes, items: int) -> np.ndarray:
        return decode_response(body, items, self.options.horizon, self.options.nonnegative)

    def _predictions(self, result: SandboxResult, name: str, n: int, violations: list[str]) -> np.ndarray:
        preds = np.full((n, self.options.horizon), np.nan)
        for rows, values in self.answers(result, name, violations):
            preds[rows] = values
        return preds

    def predictions(self, data: Windows, result: SandboxResult, violations: list[str]) -> dict[str, np.ndarray]:
        n = len(data.truth)
        return {name: self._predictions(result, name, n, violations) for name in (*self.scenario_names, UNDER_LOAD)}

    def score_predictions(self, data: Windows, preds: dict[str, np.ndarray]) -> Outcome:
        fns = self.metric_functions()
        scale = np.broadcast_to(data.scale[:, None], data.truth.shape)

        def compute(pred: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
            ok = np.isfinite(pred) if mask is None else np.isfinite(pred) & mask
            if not ok.any():
                return {m: float("nan") for m in fns}
            return {m: fn(data.truth[ok], pred[ok], scale[ok]) for m, fn in fns.items()}

        clean, answered = self.first_answers(data, preds)
        groups = {}
        for key, labels in data.groups.items():
            members = pd.Series(np.arange(labels.size)).groupby(labels.ravel().astype(str)).indices
            for value in sorted(members):
                mask = np.zeros(labels.size, bool)
                mask[members[value]] = True
                groups[f"{key}={value}"] = compute(clean, mask.reshape(labels.shape))
        metrics = {name: compute(clean if name == "clean" else self._or_none(preds[name]))
                   for name in self.scenario_names}
        under_load = compute(preds[UNDER_LOAD]) if UNDER_LOAD in preds else {}
        equity = assess_groups({k: v.ravel() for k, v in data.groups.items()}, metric=self.primary_metric,
                               goal="min", values=(np.abs(data.truth - clean) / scale).ravel(),
                               units=self._units(data).ravel(),
                               overall=metrics["clean"][self.primary_metric], settings=self.spec.equity)
        return Outcome(
            metrics=metrics, groups=groups, equity=equity, under_load=under_load,
            baseline={"name": self.baseline_name, **compute(data.baseline)},
            coverage=float(answered.mean()),
            extras={"pred": np.where(answered[:, None], clean, np.nan)},  # the plots leave unanswered ones out
        )

    def _units(self, data: Windows) -> np.ndarray:
        """(windows, horizon): the equity bootstrap's resampling unit of each forecast step, a block of `horizon`
        consecutive target steps of one series on the data's grid. Windows that overlap (a stride shorter than
        the horizon) share target steps, and the errors on them: drawn as independent units, they made every
        interval too narrow (bike: each target hour in 4 windows, intervals half as wide as resampling target
        days). Where the stride is a multiple of the horizon, a block is a window."""
        horizon, n = self.options.horizon, len(data.truth)
        steps = self.panel.times.get_indexer(data.origins)[:, None] + np.arange(horizon)
        series = np.unique(data.series, axis=0, return_inverse=True)[1].reshape(n) if data.series.shape[1] \
            else np.zeros(n, int)
        return series[:, None] * (len(self.panel.times) // horizon + 1) + steps // horizon

    def epochs(self, data: Windows) -> np.ndarray:
        """A window's origin: its target is in the history of the windows of its series up to `history` +
        `horizon` steps later, so the timed phases show the windows origin by origin (see `TaskFamily.epochs`)."""
        return data.origins.asi8

    @staticmethod
    def _alike(data: Windows, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per window: no step of `a` further from `b` than 1 % of the window's MASE scale (its in-sample
        seasonal-naive error); float noise passes, another model does not (a missing step never does)."""
        return np.abs(np.nan_to_num(a, nan=np.inf) - b).max(axis=1) <= 0.01 * data.scale

    @staticmethod
    def _or_none(pred: np.ndarray) -> np.ndarray:
        """`pred` with every window left unanswered (its request failed) forecast as zero: no forecast counts as
        wrong, as a text with no category or a frame with no detection does, so failing the requests that carry
        hard windows cannot raise a score. With no window answered at all there is nothing to score (NaN stays)."""
        answered = np.isfinite(pred).all(axis=1)
        return np.where(answered[:, None], pred, 0.0) if answered.any() else pred

    def first_answers(self, data: Windows, preds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The clean forecasts scored, and which windows had an answer: each window's first answer, the one the
        timed phases got, before any later window's history (which holds its target) was sent. A later answer
        is never scored, however close (a clean answer within the agreement tolerance could still be nudged
        toward a truth learnt since), nor does it stand in for a timed answer that failed: that window counts
        as no forecast (`_or_none`). Predictions without timed answers (none were logged) score the clean ones."""
        first = self.scored(preds)["clean"]
        return self._or_none(first), np.isfinite(first).all(axis=1)

    def agreement(self, data: Windows, preds: dict[str, np.ndarray]) -> float | None:
        """Share of the windows answered in the clean phase whose timed forecast is alike (`_alike`)."""
        if UNDER_LOAD not in preds:
            return None
        clean, timed = preds["clean"], preds[UNDER_LOAD]
        answered = np.isfinite(clean).all(axis=1)
        if not answered.any():
            return None
        return float((self._alike(data, timed, clean) & answered).sum() / answered.sum())

    def exactness(self, data: Windows, preds: dict[str, np.ndarray]) -> float | None:
        """How much of the baseline's error is left once the scored forecast (each window's first answer, as
        `first_answers` picks it; unanswered windows left out) is mapped onto the truth by the best
        affine map (a·forecast + b): 1 − that residual ÷ the seasonal-naive baseline's error, both squared and
        in each window's own scale (MASE units). 1 means the forecast is the truth shifted or scaled; an honest
        forecast reads about as its squared-error skill over the baseline, however much the series differ in
        level (a pooled R² reads ~0.99 for any forecast that knows which station is large)."""
        scored = self.scored(preds)["clean"]
        ok = np.isfinite(scored) & np.isfinite(data.baseline)
        weight = np.broadcast_to(1 / data.scale[:, None], ok.shape)[ok]
        y, x, base = scored[ok], data.truth[ok], data.baseline[ok]
        if len(y) < 3 or np.ptp(y) == 0:
            return None
        affine = np.column_stack([y, np.ones_like(y)])  # least squares as polyfit's, without its RankWarning
        fitted = affine @ np.linalg.lstsq(affine * weight[:, None], x * weight, rcond=None)[0]
        error = np.sum(((base - x) * weight) ** 2)
        return None if error == 0 else float(1 - np.sum(((fitted - x) * weight) ** 2) / error)

    def export(self, data: Windows, out_dir) -> list:
        d, path = self.options.data, out_dir / f"{data.split}.npz"
        extra = {"series": data.series, "series_keys": np.asarray(d.series_keys, dtype=str)} if d.series_keys else {}
        np.savez_compressed(path, history=data.history, future=data.future, target=data.truth,
                            origins=np.asarray(data.origins.strftime("%Y-%m-%dT%H:%M"), dtype="U16"),
                            history_features=np.asarray(d.history_features, dtype=str),
                            future_features=np.asarray(d.future_features, dtype=str), **extra)
        return [path]

    def plots(self, data: Windows, outcome: Outcome) -> dict:
        from evaluation.families.forecasting.plots import forecast_plots

        return forecast_plots(self, data, outcome)
