"""What every task family provides, and what the harness does the same way for all of them: validating the
spec against the family, pinning the data, and (inherited from `evaluation.phases`) the phase plan (single
stream, offline, clean, one per scenario) and reading the answers back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ValidationError

from evaluation.contract import Contract
from evaluation.phases import LOAD_PHASES, UNDER_LOAD, PhasePlan
from evaluation.registry import METRICS, SCENARIOS, goal_of, span_of
from pilots.spec import PilotSpec, ScenarioSpec
from sandbox.bundle import sha256_file
from sandbox.runner import SandboxResult
from testbed.errors import SpecError, TestbedError
from testbed.yamlio import validation_error

__all__ = ["TaskFamily", "Outcome", "LOAD_PHASES", "UNDER_LOAD"]


@dataclass
class Outcome:
    """What a family's scoring found, before criteria and gates."""

    metrics: dict[str, dict[str, float]]
    """Scenario name (`clean` first) -> metric name -> value."""
    groups: dict[str, dict[str, float]]
    """`key=value` group -> metric name -> value, on the clean scenario."""
    baseline: dict[str, Any]
    """The non-deep-learning reference on the same clean items: `name`, and metric values."""
    under_load: dict[str, float] = field(default_factory=dict)
    """Metric name -> value of the answers the load phases gave (`UNDER_LOAD`), on the items they answered;
    empty when the predictions hold none."""
    violations: list[str] = field(default_factory=list)
    """Contract violations found in responses (any makes the verdict `contract_violation`)."""
    coverage: float = 1.0
    """Share of clean items that got a valid prediction."""
    equity: dict[str, Any] | None = None
    """Per-group intervals, gap and too-small groups on the primary metric (`evaluation.equity.assess_groups`);
    None: the scorecard ranks `groups` without uncertainty."""
    exactness: float | None = None
    """`TaskFamily.exactness` of the scored predictions (1 = the truth copied up to offset and scale)."""
    agreement: float | None = None
    """`TaskFamily.agreement`: share of the items answered in the clean phase whose timed answer agrees."""
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    """What `TaskFamily.predictions` decoded: logged with official runs, recomputed by the audit."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Family data for plots (not serialised)."""


class TaskFamily(PhasePlan, ABC):
    """One kind of task (forecasting, detection, ...): a folder under `evaluation/families/` holding this
    subclass (registered with `@family(name)`), its contract, metrics, scenarios and plots. An instance is
    bound to one pilot spec and the city's data folder."""

    name: ClassVar[str]
    contract: ClassVar[Contract]
    Options: ClassVar[type[BaseModel]]
    """The pydantic model of the spec's `task:` options."""
    group_keys: ClassVar[tuple[str, ...]]
    primary_metric: ClassVar[str]
    """The metric that ranks, measures retention and equity, and compares against the baseline."""
    baseline_metric: ClassVar[str | None] = None
    """Metric on which the non-deep-learning baseline is compared (default: the primary metric)."""
    technology_fields: ClassVar[tuple[str, ...]] = ()
    """Vendor technology fields that match this family (evidence for deep-learning fit)."""
    baseline_name: ClassVar[str] = "none"
    """Name of the non-deep-learning baseline the family computes in `score`."""
    content_type: ClassVar[str] = "application/json"
    """Media type of what `encode` returns (the sandbox's worker converts a binary one for BentoML)."""

    @property
    def answer_bytes_per_item(self) -> int | None:
        """Most bytes an honest answer takes per item, with room to spare (`Phase.answer_bytes_per_item`): bigger
        answers fail their request before the harness decodes them. None: only the job's overall cap."""
        return None

    def __init__(self, spec: PilotSpec, data_dir: Path):
        self.spec = spec
        self.data_dir = data_dir
        self.options = self.Options.model_validate(spec.task)

    @classmethod
    def validate_spec(cls, spec: PilotSpec, where: str) -> None:
        """Cross-check a spec against what this family offers; raise SpecError naming the field."""
        try:
            cls.Options.model_validate(spec.task)
        except ValidationError as exc:
            raise validation_error(where, cls.Options, exc, prefix="task.") from None
        metrics = METRICS.where(family=cls.name)
        for i, threshold in enumerate(spec.thresholds):
            if threshold.metric not in metrics:
                raise SpecError(f"field `thresholds.{i}.metric`: unknown metric {threshold.metric!r}", where=where,
                                fix=f"use one of the {cls.name} metrics: {', '.join(sorted(metrics))}")
            lower_is_better = goal_of(metrics[threshold.metric]) == "min"
            bound = "max" if threshold.max is not None else "min"
            if (bound == "max") != lower_is_better:
                raise SpecError(f"field `thresholds.{i}.{bound}`: {threshold.metric} is "
                                f"{'lower' if lower_is_better else 'higher'}-is-better, so a `{bound}` bound would "
                                "pass worse models more easily", where=where,
                                fix=f"give `{'max' if lower_is_better else 'min'}` for {threshold.metric}")
            lo, hi = span_of(metrics[threshold.metric])
            value = threshold.max if bound == "max" else threshold.min
            never, always = (value < lo, value >= hi) if lower_is_better else (value > hi, value <= lo)
            if never or always:
                raise SpecError(f"field `thresholds.{i}.{bound}`: {threshold.metric} can only be {lo:g} to {hi:g}, so "
                                f"a `{bound}` of {value:g} would {'never' if never else 'always'} be met", where=where,
                                fix=f"give a `{bound}` between {lo:g} and {hi:g} (exclusive of "
                                    f"{hi if lower_is_better else lo:g}), or leave the threshold out")
        scenarios = SCENARIOS.where(family=cls.name)
        for i, sc in enumerate(spec.scenarios):
            if sc.name not in scenarios:
                raise SpecError(f"field `scenarios.{i}.name`: unknown scenario {sc.name!r}", where=where,
                                fix=f"use one of the {cls.name} scenarios: {', '.join(sorted(scenarios))}")
        available = cls.available_groups(spec)
        for i, group in enumerate(spec.groups):
            if group not in available:
                raise SpecError(f"field `groups.{i}`: unknown group {group!r}", where=where,
                                fix=f"use one of: {', '.join(available)}")

    @classmethod
    def available_groups(cls, spec: PilotSpec) -> tuple[str, ...]:
        """Group keys a spec may name (default: the family's fixed `group_keys`)."""
        return cls.group_keys

    @classmethod
    def contract_details(cls, spec: PilotSpec) -> dict[str, Any]:
        """What the contract means for this pilot (shapes, feature names and order), shown by `pilots show`."""
        return {}

    @property
    def data_path(self) -> Path:
        return self.data_dir / self.spec.dataset.path

    @cached_property
    def dataset_sha256(self) -> str:
        """sha256 pinning the data (the main file, or the manifest of every file), checked against the spec;
        raises SpecError when the data on disk are not the bytes the spec pins."""
        ds, where = self.spec.dataset, f"pilot {self.spec.id}: dataset"
        pinned = self.data_dir / (ds.manifest or ds.path)
        if not pinned.is_file():
            field = "dataset.manifest" if ds.manifest else "dataset.path"
            if pinned.is_dir():
                raise SpecError(f"field `{field}`: {pinned} is a folder, not a data file", where=where,
                                fix=f"set `{field}` to the data file in it")
            if pinned.is_symlink():
                raise SpecError(f"field `{field}`: {pinned} is a link that leads to no file (broken, or a loop)",
                                where=where, fix="point the link at the data file, or put the file there")
            raise SpecError(f"field `{field}`: data file {pinned} not found", where=where,
                            fix=f"set TESTBED_DATA_DIR to the folder that holds the pilot's data, or correct `{field}`")
        digest = sha256_file(pinned)
        if digest != ds.sha256:
            raise SpecError(f"{pinned} has sha256 {digest}, the spec says {ds.sha256}", where=where,
                            fix="restore the original data, or update dataset.sha256 on purpose")
        self._pinned = {self.data_path.resolve()} if not ds.manifest else set()
        if ds.manifest:
            for number, line in enumerate(pinned.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                expected, _, name = line.strip().partition(" ")
                name = name.strip().lstrip("*")
                if len(expected) != 64 or not name or name.startswith("/") or ".." in name.split("/"):
                    raise SpecError(f"{pinned} line {number} is not `SHA256  FILE` with FILE inside its folder",
                                    where=where, fix="regenerate the manifest with `sha256sum FILES > SHA256SUMS` "
                                                     "in the dataset's folder")
                member = pinned.parent / name
                if not member.is_file() or sha256_file(member) != expected:
                    raise SpecError(f"{member} is missing or differs from {pinned.name}", where=where,
                                    fix="restore the original data files listed in the manifest")
                self._pinned.add(member.resolve())
        self.require_pinned([self.data_path], "dataset.path")
        for path, field in self.data_files():
            self.require_pinned([path], field)
        return digest

    def data_files(self) -> list[tuple[Path, str]]:
        """The files the family reads beside `dataset.path`, each with the spec field naming it (none by
        default): each must be pinned (`require_pinned`)."""
        return []

    def require_pinned(self, paths: list[Path], field: str) -> None:
        """Refuse to read a data file whose bytes the spec does not pin: `dataset.sha256` pins `dataset.path`
        alone, a `dataset.manifest` every file it lists. Otherwise a file the manifest leaves out (a splits list,
        the annotations) could be changed under an unchanged `dataset_sha256`. A no-op for a family opened
        without verifying its data (serving reads none)."""
        pinned = getattr(self, "_pinned", None)
        if pinned is None:
            return
        absent = [p for p in paths if not p.is_file()]  # a misspelt name: what to fix is the name, not the pins
        if absent:
            more = f" ({len(absent)} of {len(paths)} files)" if len(paths) > 1 else ""
            raise SpecError(f"no file {absent[0]}{more}, read for `{field}`", where=f"pilot {self.spec.id}: {field}",
                            fix=f"correct `{field}` in the pilot spec, or restore the missing data files")
        loose = [p for p in paths if p.resolve() not in pinned]
        if loose:
            ds = self.spec.dataset
            more = f" ({len(loose)} files in all)" if len(loose) > 1 else ""
            pins = f"the manifest {ds.manifest}" if ds.manifest else f"dataset.sha256, which pins {ds.path} alone"
            raise SpecError(f"{loose[0]}{more}, read for `{field}`, is not pinned by {pins}: its bytes could change "
                            "under the same dataset sha256", where=f"pilot {self.spec.id}: "
                            f"{'dataset.manifest' if ds.manifest else 'dataset'}",
                            fix="list every data file in a manifest (`sha256sum FILES > SHA256SUMS` in the dataset's "
                                "folder) and give it as dataset.manifest, with the manifest's sha256 as dataset.sha256")

    def metric_functions(self) -> dict[str, Any]:
        return METRICS.where(family=self.name)

    def scenario_rng(self, sc: ScenarioSpec, *key: int) -> np.random.Generator:
        """The seeded generator of scenario `sc` (optionally per item `key`): same seed, same perturbation."""
        return np.random.default_rng([sc.seed, *key])

    # What a family provides ------------------------------------------------------------------------------

    @abstractmethod
    def read(self, split: str) -> Any:
        """The split's inputs and ground truth, read from the data (called by `load`)."""

    def load(self, split: str) -> Any:
        """The split's inputs and ground truth (ground truth never leaves this process). Data the family cannot
        read (a malformed file, a value of the wrong kind) is a SpecError naming the pilot's data, whatever the
        family's reader raised: the data are the city's, never the vendor's."""
        try:
            return self.read(split)
        except TestbedError:
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure on data we have not seen
            detail = " ".join(str(exc).split())[:240]
            raise SpecError(f"split {split!r} could not be read from the data ({type(exc).__name__}: {detail})",
                            where=f"pilot {self.spec.id}: dataset {self.spec.dataset.path}",
                            fix="check the data files against the spec's `task` and `dataset` fields") from exc

    @abstractmethod
    def inputs(self, data: Any) -> Any:
        """The clean model inputs of `data`, in the form `encode` and `perturb` take."""

    @abstractmethod
    def size(self, data: Any) -> int:
        """Number of items (windows, frames) in `data`."""

    @abstractmethod
    def perturb(self, data: Any, inputs: Any, sc: ScenarioSpec) -> Any:
        """`inputs` under scenario `sc` (same shape; the ground truth stays valid): a function of `inputs`, the
        options and `sc` alone (seed it from `scenario_rng`), so it is computed once per process and reused
        (`evaluation.perturbed`). Called from worker threads."""

    @abstractmethod
    def encode(self, inputs: Any, rows: np.ndarray) -> bytes:
        """The request body carrying items `rows` (indices, in this order) of `inputs`."""

    @abstractmethod
    def check_request(self, inputs: dict[str, list], items: int) -> None:
        """Raise ContractViolation, saying what is wrong, when a client's request (its contract inputs, `items`
        items each) is not one the contract allows: production serving answers it 400 before the bundle sees
        it, so a client's mistake never counts as the bundle's failure."""

    @abstractmethod
    def check_answer(self, body: bytes, items: int) -> Any:
        """`body` decoded as the answer to a request of `items` items; ContractViolation, saying what is wrong,
        when it is not a valid one: the check production serving applies to every answer (evaluation's
        `predictions` decodes with the same check)."""

    @abstractmethod
    def predictions(self, data: Any, result: SandboxResult, violations: list[str]) -> dict[str, np.ndarray]:
        """Decode and check every phase's responses (contract violations go to `violations`); return the
        predictions of the clean and scenario phases, and of the load phases together as `UNDER_LOAD`, as named
        arrays (what is logged for the audit)."""

    @abstractmethod
    def score_predictions(self, data: Any, preds: dict[str, np.ndarray]) -> Outcome:
        """Metrics per scenario and group, the baseline's and the load phases' (`Outcome.under_load`, when
        `preds` hold `UNDER_LOAD`), from `predictions` output alone: the audit recomputes a scorecard's numbers
        with this and nothing else."""

    def ready_scoring(self, data: Any) -> None:
        """Work the scoring of `data` needs that no answer changes (e.g. fitting the baseline), done in a
        background thread while the sandbox runs and kept (cached) where `score_predictions` finds it."""
        return None

    def agreement(self, data: Any, preds: dict[str, np.ndarray]) -> float | None:
        """Share of the items with a clean answer whose answer in the timed phases (`UNDER_LOAD`) is the same up
        to numerical noise (an item the timed phases did not answer disagrees); None when `preds` hold no timed
        answers. Item by item, so better timed answers on some items cannot make up for cheaper ones on others."""
        return None

    def epochs(self, data: Any) -> np.ndarray | None:
        """One number per item when items reveal each other's truth: an item's ground truth may be part of the
        inputs of items of a later epoch (a later forecast window's history holds an earlier window's target),
        never of the same or an earlier one. The measured phases, which show the service every item first,
        then go forward epoch by epoch (`phases`), and a family with epochs scores each item's first answer,
        never a later one, and an item whose first answer failed as unanswered (a lookup of what the service was
        shown since cannot improve a score, not even within the agreement tolerance). None: the items reveal
        nothing of each other."""
        return None

    def exactness(self, data: Any, preds: dict[str, np.ndarray]) -> float | None:
        """How exactly the scored predictions reproduce the ground truth up to a constant offset and scale (1 =
        a copy of the truth); None when the family does not say. Flags a lookup when the truth is public."""
        return None

    def score(self, data: Any, result: SandboxResult) -> Outcome:
        """Decode, check and score a run's responses. Answers that overflow the arithmetic (a forecast of 1e200)
        score as the overflow leaves them (an infinite error), quietly: numpy's warnings would reach the command
        line, and where warnings are errors, change the score."""
        violations: list[str] = []
        with np.errstate(all="ignore"):
            preds = self.predictions(data, result, violations)
            outcome = self.score_predictions(data, preds)
            outcome.violations, outcome.exactness = violations, self.exactness(data, preds)
            outcome.predictions, outcome.agreement = preds, self.agreement(data, preds)
        return outcome

    @abstractmethod
    def export(self, data: Any, out_dir: Path) -> list[Path]:
        """Write a public split for vendors in the contract's own format; return the files written."""

    def plots(self, data: Any, outcome: Outcome) -> dict[str, Any]:
        """Family-specific matplotlib figures for the scorecard, by file stem."""
        return {}
