"""The scorecard for people: a self-contained HTML page with plots (embedded as base64: charts as PNG, figures
of photographs, such as camera frames, as JPEG)."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False  # labels are data (a station, a category): "$" is a dollar sign
from matplotlib import font_manager  # noqa: E402

if any(f.name.startswith("NanumGothic") for f in font_manager.fontManager.ttflist):
    matplotlib.rcParams["font.family"] = ["DejaVu Sans", "NanumGothic"]  # Hangul labels (station names) fall back
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: E402

from evaluation.criteria import against  # noqa: E402
from evaluation.scorecard import Scorecard  # noqa: E402
from sandbox.contention import yield_cpu  # noqa: E402
from testbed.text import printable  # noqa: E402

__all__ = ["PLOT_FORMATS", "guarded", "standard_figures", "shown_groups", "render_html", "render_plots", "write_report",
           "write_atomic", "warm_up"]

_env = Environment(loader=PackageLoader("evaluation", "templates"), autoescape=select_autoescape(["html", "j2"]))
_env.filters["num"] = lambda v, d=3: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else (
    f"{v:.{d}g}" if isinstance(v, float) else v)

_env.filters["against"] = lambda v, bound, d=4: _env.filters["num"](v, d) if bound is None or v is None or (
    math.isnan(v)) else against(v, bound, f".{d}g")  # a value beside its requirement, never rounded onto it


_warming: threading.Thread | None = None
T = TypeVar("T")


def warm_up() -> None:
    """Draw a small figure in a background thread, once per process, while a sandbox runs: matplotlib's first
    figure (colour tables, fonts, the PNG writer) costs ~0.3-0.5 s, and compiling the page's template ~0.1 s,
    which then overlap the bundle's run instead of following it. Off pyplot (no shared figure manager);
    `render_plots` waits for it before drawing."""
    global _warming
    if _warming is None:
        _warming = threading.Thread(target=_draw_once, name="matplotlib-warm-up", daemon=True)
        _warming.start()


def _draw_once() -> None:
    from matplotlib.figure import Figure

    yield_cpu()  # beside the sandbox, at a lower CPU priority
    _env.get_template("scorecard.html.j2")  # compiled once (~0.1 s), then cached by the environment
    fig = Figure(figsize=(2, 1))
    ax = fig.subplots()
    ax.barh(["강남구", "b"], [1.0, 0.5], color=["#55a868", "#c44e52"])
    ax.hist([1.0, 2.0, 2.5], bins=3, color="#8172b2")
    ax.set(title="warm-up", xlabel="x")
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png", dpi=110)


SHOWN_TEXT = 300
"""Characters of a text shown in the evidence: a name the bundle chose (a file, a tensor) can run to megabytes; the
JSON scorecard has it whole."""


def _readable(value):
    """Evidence for people: floats to 4 significant digits, text as written (Korean included), its control and
    formatting characters written out, cut at SHOWN_TEXT characters."""
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.4g}")
    if isinstance(value, str):
        shown = printable(value[:SHOWN_TEXT])
        return shown if len(value) <= SHOWN_TEXT else f"{shown}… ({len(value):,} characters)"
    if isinstance(value, dict):
        return {k: _readable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_readable(v) for v in value]
    return value


_env.filters["readable"] = lambda v: json.dumps(_readable(v), ensure_ascii=False)


PER_KEY = 12
"""Groups shown per key in the plot and the table (the worst first); the JSON scorecard has them all."""


def shown_groups(card: Scorecard) -> dict[str, list[tuple[str, dict]]]:
    """Per group key, the groups to show: worst judged first, then the too-small ones, at most PER_KEY; within
    each, a group without a value (NaN, or null as JSON writes a non-finite one) last."""
    eq = card.equity.get("groups") or {}
    if not eq:  # a family without intervals: the plain per-group values
        metric = card.equity.get("metric")
        eq = {g: {"key": g.split("=", 1)[0], "value": v.get(metric, math.nan), "judged": True}
              for g, v in card.groups.items()}
    worst_first = card.equity.get("goal", "min") == "min"
    by_key: dict[str, list[tuple[str, dict]]] = {}
    for name, g in eq.items():
        by_key.setdefault(g["key"], []).append((name, g))
    for key, rows in by_key.items():
        rows.sort(key=lambda r: (not r[1]["judged"], *_unmeasured_last(r[1]["value"], worst_first)))
        by_key[key] = rows[:PER_KEY]
    return by_key


def _unmeasured_last(value: float | None, worst_first: bool) -> tuple[bool, float]:
    if value is None or math.isnan(value):
        return True, 0.0
    return False, -value if worst_first else value


def _groups_figure(card: Scorecard, metric: str) -> plt.Figure:
    rows = [r for rows in shown_groups(card).values() for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    names, values = [n for n, _ in rows], np.array([g["value"] for _, g in rows], dtype=float)
    low = np.array([g.get("low", v) for (_, g), v in zip(rows, values, strict=True)], dtype=float)
    high = np.array([g.get("high", v) for (_, g), v in zip(rows, values, strict=True)], dtype=float)
    colours = ["#4c72b0" if g["judged"] else "#bbbbbb" for _, g in rows]
    spread = np.array([values - low, high - values])  # none where not finite, or below 0 by a rounding
    ax.barh(names, values, color=colours, xerr=np.where(np.isfinite(spread) & (spread > 0), spread, 0),
            ecolor="#333333", capsize=2)
    ax.axvline(card.metrics.get("clean", {}).get(metric, math.nan), color="black", ls="--", lw=1, label="overall")
    ax.set(xlabel=f"{metric} ({card.equity.get('level', 0.95):.0%} bootstrap interval; grey: too small to judge)"
           if "groups" in card.equity else metric, title=f"{metric} by group (equity)")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def standard_figures(card: Scorecard) -> dict[str, plt.Figure]:
    """Plots every family gets: per-group error, scenario retention, latency (each `guarded`)."""
    metric = card.equity.get("metric")
    measured = [n for n in card.groups if not math.isnan(card.groups[n].get(metric, math.nan))]
    retention = {k: v for k, v in card.retention.items() if not math.isnan(v)}
    latencies = card.performance.get("latencies_ms") or []
    builders = {"groups": (lambda: _groups_figure(card, metric)) if measured and metric else None,
                "retention": (lambda: _retention_figure(retention, metric)) if retention else None,
                "latency": (lambda: _latency_figure(card, latencies)) if latencies else None}
    drawn = {name: guarded(f"{name} chart", build, None) for name, build in builders.items() if build}
    return {name: fig for name, fig in drawn.items() if fig is not None}


def _retention_figure(retention: dict[str, float], metric: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(retention) + 1.2))
    vals = list(retention.values())
    ax.barh(list(retention), vals, color=["#55a868" if v >= 0.9 else "#c44e52" for v in vals])
    ax.axvline(1.0, color="black", lw=1)
    ax.set(xlim=(0, max([1.1, *(v for v in vals if math.isfinite(v))])), xlabel="retention vs clean",
           title=f"Robustness: {metric} retained per scenario")
    fig.tight_layout()
    return fig


def _latency_figure(card: Scorecard, latencies: list[float]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 2.8))
    ax.hist(latencies, bins=min(30, max(5, len(latencies) // 3)), color="#8172b2")
    for q in ("p50", "p95"):
        ax.axvline(card.performance["latency_ms"][q], color="black", ls=":" if q == "p50" else "--", label=q)
    ax.set(xlabel="ms per request (single stream, through the sandbox)", ylabel="requests", title="Latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def guarded(what: str, draw: Callable[[], T], default: T) -> T:
    """`draw()`, or `default` with a warning when it fails: charts show what a run's answers and data hold, so
    values no chart expected (an overflow, a label matplotlib cannot lay out) may break one, and a chart must
    never cost a finished run its scorecard; its numbers stand in the JSON and the page's tables."""
    before = set(plt.get_fignums())
    try:
        return draw()
    except Exception as exc:  # noqa: BLE001 - anything matplotlib raises on values it was never meant to see
        for number in set(plt.get_fignums()) - before:
            plt.close(number)
        warnings.warn(f"the scorecard's {what} could not be drawn ({type(exc).__name__}: "
                      f"{printable(' '.join(str(exc).split()))[:200]}); it is left out, its numbers stand",
                      stacklevel=2)
        return default


PLOT_FORMATS = {"png": "image/png", "jpg": "image/jpeg"}
"""File extension of a plot -> its media type."""
JPEG_MAGIC = b"\xff\xd8"


def _image(fig: plt.Figure) -> tuple[str, bytes]:
    """(extension, bytes): JPEG for a figure that shows photographs (an image in any of its axes: a sixth of a
    PNG's size, a quarter of its encoding time), PNG for charts."""
    photo = any(ax.images for ax in fig.axes)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="jpeg" if photo else "png", dpi=110, pil_kwargs={"quality": 90} if photo else None)
    finally:
        plt.close(fig)
    return ("jpg" if photo else "png"), buf.getvalue()


def render_html(card: Scorecard, plots: dict[str, bytes], title: str, in_service: dict | None = None) -> str:
    """The page, with `plots` (name -> PNG or JPEG bytes) embedded; `in_service` (what the live service
    reports, see `serving.monitor`) adds an "In service" block."""
    images = {name: f"data:{PLOT_FORMATS['jpg' if data.startswith(JPEG_MAGIC) else 'png']};base64,"
                    f"{base64.b64encode(data).decode()}" for name, data in plots.items()}
    return _env.get_template("scorecard.html.j2").render(card=card, images=images, title=title,
                                                         shown=shown_groups(card), per_key=PER_KEY,
                                                         in_service=in_service)


def render_plots(card: Scorecard, figures: dict[str, plt.Figure]) -> dict[str, tuple[str, bytes]]:
    """The family's `figures` and the standard ones, drawn: name -> (file extension, PNG or JPEG bytes)."""
    if _warming is not None:
        _warming.join()
    drawn = {name: guarded(f"{name} chart", lambda fig=fig: _image(fig), None)
             for name, fig in {**figures, **standard_figures(card)}.items()}
    return {name: image for name, image in drawn.items() if image is not None}


def write_report(card: Scorecard, plots: dict[str, tuple[str, bytes]], out_dir: Path, title: str) -> dict[str, Path]:
    """Write scorecard.json, scorecard.html and plots/NAME.png (or .jpg) from `render_plots`' `plots` into
    `out_dir` (atomically per file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plots").mkdir(exist_ok=True)
    written = {}
    for name, (ext, data) in plots.items():
        written[f"plots/{name}.{ext}"] = write_atomic(out_dir / "plots" / f"{name}.{ext}", data)
    written["scorecard.json"] = write_atomic(out_dir / "scorecard.json", card.model_dump_json(indent=2).encode())
    html = render_html(card, {name: data for name, (_, data) in plots.items()}, title)
    written["scorecard.html"] = write_atomic(out_dir / "scorecard.html", html.encode())
    return written


def write_atomic(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename: readers see the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
