"""Scoring a finished sandbox run: the family's metrics, the scorecard and its plots drawn, the audit files; no
file written and nothing tracked (`workflow.evaluate` records it). Plain inputs (`Scoring`), so another process
can do it (`workflow.scoring`)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from evaluation.criteria import build_scorecard
from evaluation.family import TaskFamily
from evaluation.report import guarded, render_plots
from evaluation.scorecard import Scorecard
from pilots.spec import PilotSpec
from pilots.vendor import VendorProfile
from sandbox.runner import SandboxResult
from testbed.config import harness_version
from testbed.errors import ContractViolation, TestbedError

__all__ = ["Scoring", "Assessment", "assess", "AUDIT_FILES"]

AUDIT_FILES = ("predictions.npz", "pilot_spec.json", "vendor.json")
"""Written beside every scorecard and logged with every official run: what `testbed audit` recomputes from."""


@dataclass(frozen=True)
class Scoring:
    """What scoring a finished sandbox run needs beside the family and its data: plain values, so another
    process can take it (`workflow.scoring`)."""

    spec: PilotSpec
    data_dir: Path
    split: str
    vendor: VendorProfile
    submission: str
    bundle_sha256: str
    models: list
    """`scan_models`' findings."""
    role: str
    reevaluate: str | None
    official: bool
    """Recorded by a tracker (else a check)."""
    plan: tuple[int | None, dict, dict]
    """The family's phase plan for this job (`PhasePlan.plan_state`: its seed, the items of each request, the
    items each scenario left as they were)."""


@dataclass
class Assessment:
    """A finished run scored and drawn, not yet recorded (`conclude_evaluation` writes and tracks it)."""

    card: Scorecard
    """Its `mlflow_run_id` is set when the run is recorded."""
    plots: dict[str, tuple[str, bytes]]
    """`render_plots`' drawings."""
    extra: dict[str, bytes]
    """The audit files (`AUDIT_FILES`), written beside the scorecard."""


def assess(s: Scoring, fam: TaskFamily, data, result: SandboxResult) -> Assessment:
    """Score the sandbox's `result` and draw the scorecard's plots: no file written, nothing tracked."""
    spec = s.spec
    try:
        outcome = fam.score(data, result)
    except Exception as exc:  # noqa: BLE001 - answers the decoders let through must not cost the verdict
        if isinstance(exc, TestbedError) and not isinstance(exc, ContractViolation):
            raise  # the city's spec or data (a SpecError), not the bundle's answers: never the vendor's verdict
        result = replace(result, phases={}, verdict="contract_violation",
                         reason=f"the responses could not be scored ({type(exc).__name__}: {str(exc)[:200]})")
        outcome = fam.score(data, result)
    extra = {"predictions.npz": _npz(outcome.predictions), "pilot_spec.json": spec.recorded(),
             "vendor.json": s.vendor.model_dump_json(indent=2).encode()}
    card = build_scorecard(spec, fam, s.vendor, outcome, result, models=s.models, submission=s.submission,
                           vendor=s.vendor.name, bundle_sha256=s.bundle_sha256, dataset_sha256=fam.dataset_sha256,
                           harness_version=harness_version(), split=s.split, official=s.official, evaluation=s.role,
                           reevaluation_reason=s.reevaluate if s.role == "reevaluation" else None,
                           pilot_spec_sha256=spec.sha256(),
                           predictions_sha256=_sha(extra["predictions.npz"]))
    completed = card.verdict in ("completed", "contract_violation", "request_failures")
    drawable = completed and outcome.coverage > 0
    figures = guarded(f"{fam.name} charts", lambda: fam.plots(data, outcome), {}) if drawable else {}
    plots = render_plots(card, figures)
    return Assessment(card, plots, extra)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
