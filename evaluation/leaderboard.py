"""The leaderboard of a pilot, read back from the tracker (MLflow: the system of record)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

from rich.table import Table

from evaluation.families import FAMILIES
from evaluation.registry import METRICS, goal_of
from evaluation.tracking import RunRecord, Tracker
from pilots.spec import PilotSpec
from testbed.config import harness_version
from testbed.text import cell

__all__ = ["ALTERED", "leaderboard_rows", "leaderboard_table", "rank_rows", "release"]

ALTERED = "ALTERED record"
"""The review column of a row whose record or review trail was altered: ranked last, its gates not shown (the
warning printed with the table says what was found)."""

CRITERIA = ("deep_learning_fit", "viability", "local_strength_fit")


def release(version: str) -> str:
    """A harness version's release, without the source checkout's commit (`0.1.0+g1a2b….dirty` -> `0.1.0`)."""
    return version.split("+", 1)[0]


def leaderboard_rows(spec: PilotSpec, tracker: Tracker, runs: list[RunRecord] | None = None) -> list[dict]:
    """One row per official evaluation (`runs`, by default the tracker's), ranked from the logged metrics
    (`rank_rows`). A run scored under another version of the pilot spec than `spec` (other weights, thresholds,
    service level: its logged `pilot_spec_sha256`) is marked `spec_changed`, and one scored by another release
    of the harness than the one installed (its logged `harness_version`: a formula may have changed, so the same
    bytes may score otherwise) `harness_changed`; either is ranked after every run of this spec and release, with
    a warning: neither an edit of the catalogue nor an upgrade of the testbed during a call may decide the
    ranking. Commits of one release (a source checkout's `+g…`) rank together."""
    primary, current, ours = FAMILIES.get(spec.family).primary_metric, spec.sha256(), release(harness_version())
    rows, upgraded = [], []
    for run in sorted(tracker.official_runs(spec.id) if runs is None else runs, key=lambda r: r.start_time):
        m, tags, theirs = run.metrics, run.tags, release(run.params.get("harness_version", ours))
        if theirs != ours:
            upgraded.append(f"{tags.get('testbed.submission')} ({theirs})")
        rows.append({
            "spec_changed": run.params.get("pilot_spec_sha256", current) != current,
            "harness_changed": theirs != ours,
            "submission": tags.get("testbed.submission"), "vendor": tags.get("testbed.vendor"),
            "verdict": tags.get("testbed.verdict"), "passed": tags.get("testbed.passed") == "true",
            primary: m.get(f"clean/{primary}"), "total_score": m.get("total_score"),
            **{c: m.get(f"criteria/{c}") for c in CRITERIA},
            "p95_latency_ms": m.get("service_latency_ms/p95", m.get("latency_ms/p95")), "run_id": run.run_id,
            "node_speed": min((v for k, v in m.items() if k.startswith("node_speed/")), default=None),
        })
    changed = [str(row["submission"]) for row in rows if row["spec_changed"]]
    if changed:
        warnings.warn(f"{len(changed)} official evaluation(s) of {spec.id} were scored under another version of its "
                      f"pilot spec than the catalogue's ({', '.join(changed[:5])}{' …' if len(changed) > 5 else ''}): "
                      "they are ranked after this spec's, marked 'other spec'; fix: put back the spec they were scored "
                      "under (each run's pilot_spec.json artifact), or give the changed spec a new pilot id and have "
                      "the vendors submit to it", stacklevel=2)
    if upgraded:
        warnings.warn(f"{len(upgraded)} official evaluation(s) of {spec.id} were scored by another release of the "
                      f"testbed than this one ({ours}): {', '.join(upgraded[:5])}{' …' if len(upgraded) > 5 else ''}; "
                      "they are ranked after this release's, marked 'other harness'; fix: rank a call's evaluations "
                      "with the release that scored them (install it), and upgrade the testbed between calls, not "
                      "during one", stacklevel=2)
    return rank_rows(spec, rows)


def rank_rows(spec: PilotSpec, rows: list[dict], then: Callable[[dict], tuple] = lambda row: ()) -> list[dict]:
    """Sort `rows` (in place; returned) and number them (`rank`): a row whose record was found `altered` last of
    all (its logged numbers are not to be believed), runs of the current spec and harness release first (neither
    `spec_changed` nor `harness_changed`), passed first, then `then` (e.g. rejected by an evaluator last), then by
    total. Equal standings share a rank: the total is what the city decides on (rounded
    to 0.01, and saturating: full deep-learning credit at the pilot's `full_credit_skill`, full
    viability once every threshold and the service level are met), so two strong models often tie, and neither
    the order the runs come in nor a resubmission of the same model (new bytes, a newer run) may put one above
    the other. Within a tie the better primary metric is listed first, then the row that came first (the
    earlier evaluation, as `leaderboard_rows` orders them)."""
    primary = FAMILIES.get(spec.family).primary_metric
    better = goal_of(METRICS.where(family=spec.family)[primary])

    def standing(row: dict) -> tuple:
        other = bool(row.get("spec_changed") or row.get("harness_changed"))
        return bool(row.get("altered")), other, not row["passed"], *then(row), -(row["total_score"] or 0)

    def measured(row: dict) -> float:  # the better primary metric first; not measured last
        value = row.get(primary)
        return math.inf if value is None or math.isnan(value) else value if better == "min" else -value

    rows.sort(key=lambda r: (*standing(r), measured(r)))
    for i, row in enumerate(rows):
        row["rank"] = rows[i - 1]["rank"] if i and standing(row) == standing(rows[i - 1]) else i + 1
    return rows


def _fmt(v, digits=3, kind="g") -> str:
    return "—" if v is None else f"{v:.{digits}{kind}}" if isinstance(v, float) else str(v)


def leaderboard_table(spec: PilotSpec, rows: list[dict]) -> Table:
    """Rows from `leaderboard_rows`, or with the evaluators' decisions (`policy_fit`, `review`, `provisional`)
    added by the workflow."""
    primary = FAMILIES.get(spec.family).primary_metric
    table = Table(title=f"Leaderboard · {spec.id} · {cell(spec.title.en)}", caption="one official evaluation per "
                  "submission; * total provisional until an evaluator scores policy fit and confirms the vendor's "
                  "claims (local), which count 0 until then; rejected = failed a hard gate; unverified = its record "
                  "or review trail was altered (see the warning); node = how fast the node ran a fixed workload "
                  "while the run was timed (1 = the reference machine; slower lowers latency and "
                  "throughput, and is not corrected)")
    for col in ("#", "submission", "vendor", "verdict", "gates", primary, "DL fit", "viability", "policy", "local",
                "total", "node", "review"):
        numeric = col in (primary, "DL fit", "viability", "policy", "local", "total", "node")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=col != "vendor")
    for r in rows:
        review = {"approve": "[green]approved[/]", "reject": "[red]rejected[/]", "stale": "re-review"}.get(
            r.get("review"), r.get("review") or "awaiting")
        review += " · [yellow]other spec[/]" if r.get("spec_changed") else ""
        review += " · [yellow]other harness[/]" if r.get("harness_changed") else ""
        table.add_row(str(r["rank"]), *(cell(str(r[k] or "")) for k in ("submission", "vendor", "verdict")),
                      "[green]pass[/]" if r["passed"] else "[yellow]unverified[/]" if r.get("review") == ALTERED
                      else "[red]rejected[/]", _fmt(r[primary], 4),
                      *(_fmt(r[c], 3) for c in CRITERIA[:2]), _fmt(r.get("policy_fit"), 3), _fmt(r[CRITERIA[2]], 3),
                      _fmt(r["total_score"], 2, "f") + ("*" if r.get("provisional", True) else ""),
                      _fmt(r.get("node_speed"), 2, "f"), review)
    return table
