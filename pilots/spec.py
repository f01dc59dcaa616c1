"""Pilot specs: the city's call for one pilot, as YAML validated by these models."""

from __future__ import annotations

import codecs
import hashlib
import math
import re
from datetime import date, datetime, time
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from testbed.errors import SpecError
from testbed.yamlio import repeated

__all__ = [
    "PilotSpec", "Title", "DatasetSpec", "Split", "Threshold", "ScenarioSpec", "Resources", "ServiceLevel",
    "CriteriaWeights", "Criteria", "EquitySettings", "Encoding", "require_split_kind", "ID_PATTERN",
]

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,48}$"
"""A pilot's id: lower-case letters, digits and dashes (it names files, MLflow models and paths)."""


SPLIT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


_NOT_FILE_ENCODINGS = frozenset({"undefined", "punycode", "idna"})
"""Text codecs no data file is written in: `undefined` fails every read, the other two encode domain names."""


def _known_codec(value: str) -> str:
    try:
        codec = codecs.lookup(value)
    except (LookupError, ValueError):  # ValueError: a name with a NUL in it
        raise ValueError(f"{value[:40]!r} is not a text encoding Python knows (e.g. utf-8, cp949)") from None
    if not getattr(codec, "_is_text_encoding", True):  # rot13, base64, zlib...: no file opens as text with them
        raise ValueError(f"{value[:40]!r} is a codec between bytes or between texts, not a text encoding "
                         "(e.g. utf-8, cp949)")
    if codec.name in _NOT_FILE_ENCODINGS:
        raise ValueError(f"{value[:40]!r} is not the encoding of a data file (e.g. utf-8, cp949)")
    return value


Encoding = Annotated[str, AfterValidator(_known_codec)]
"""The text encoding of a data file, checked when the spec is read: a Python codec name (`utf-8`, `cp949`...)."""


class _Spec(BaseModel):
    # allow_inf_nan=False: `.inf` would pass a bound such as `gt=0`, then be written as null to the logged
    # `pilot_spec.json`, which no audit could read back
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True, allow_inf_nan=False)


Prose = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""Text people read (a title, a goal): spaces around it dropped, and never blank."""


class Title(_Spec):
    ko: Prose
    """Title in Korean, as the call was published."""
    en: Prose
    """Title in English."""


class Split(_Spec):
    public: bool
    """True when vendors may see this split (training data, validation sample); false = sequestered."""
    start: datetime | None = None
    """First timestamp of the split's targets (time-series families)."""
    end: datetime | None = None
    """Last timestamp of the split's targets, inclusive (time-series families); a date alone means the whole day
    (through 23:59:59), never only its midnight, which left 23 hours of hourly data out."""
    members: str | None = None
    """Key in the dataset's split file that lists this split's items (image families)."""
    truth_public: bool = False
    """True when this split's ground truth is published somewhere (e.g. the dataset is an open download): a
    sequestered split is then only withheld from the submission, and near-exact matches to the truth are
    flagged as a suspected lookup. A `public` split's truth is always public."""

    @field_validator("end", mode="before")
    @classmethod
    def _whole_day(cls, value: Any) -> Any:
        if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
            value = date.fromisoformat(value.strip())
        if isinstance(value, date) and not isinstance(value, datetime):
            return datetime.combine(value, time(23, 59, 59))
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Split:
        if self.members is not None and (self.start is not None or self.end is not None):
            raise ValueError("give the split either `members` (a list in the dataset's split file, for image "
                             "families) or `start`/`end` (dates, for time-series and dated families), not both")
        return self

    @field_validator("start", "end")
    @classmethod
    def _local_clock(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            raise ValueError("write split dates without a time zone, on the data's own clock")
        return value

    def overlaps(self, other: Split) -> bool:
        """Whether the two splits can share items: the same `members` list, or target periods that meet (an
        open end reaches as far as the data)."""
        if self.members is not None or other.members is not None:
            return self.members == other.members
        return (self.start is None or other.end is None or self.start <= other.end) and \
            (other.start is None or self.end is None or other.start <= self.end)

    @property
    def truth_known(self) -> bool:
        """Whether a vendor could have the truth of this split."""
        return self.public or self.truth_public


class DatasetSpec(_Spec):
    name: str = Field(min_length=1)
    """Human name of the dataset."""
    path: str
    """Main data file, relative to the testbed's data directory (`TESTBED_DATA_DIR`, default `data/`)."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 of the main data file, or of the `manifest` when one is given; evaluation refuses other bytes."""
    manifest: str | None = None
    """For datasets of many files: a `sha256sum`-format file (relative to the data directory) listing every
    file with its hash; each listed file is verified before an evaluation."""
    licence: str = Field(min_length=1)
    """The data's licence (see the SOURCE.md beside the data)."""
    splits: dict[str, Split]
    """Named splits; `sample` (public) and `test` (sequestered) are required."""

    @field_validator("splits")
    @classmethod
    def _required_splits(cls, splits: dict[str, Split]) -> dict[str, Split]:
        for name, public in (("sample", True), ("test", False)):
            split = splits.get(name)
            if split is None:
                raise ValueError(f"a `{name}` split is required")
            if split.public != public:
                raise ValueError(f"the `{name}` split must have public: {str(public).lower()}")
        for name, split in splits.items():
            if not SPLIT_NAME.fullmatch(name):
                raise ValueError(f"split name {name[:40]!r}: use lower-case letters, digits, `_` and `-` (it names "
                                 "exported files)")
            if split.start and split.end and split.start > split.end:
                raise ValueError(f"the `{name}` split starts ({split.start}) after it ends ({split.end})")
            shared = [other for other, seen in splits.items()
                      if seen.public and not split.public and split.overlaps(seen)]
            if shared:
                raise ValueError(f"the sequestered `{name}` split overlaps the public `{shared[0]}` split: vendors "
                                 "would have seen its items; give it its own dates (or `members`)")
        return splits

    @field_validator("path", "manifest")
    @classmethod
    def _inside_data_dir(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith(("/", "\\")) or ".." in value.replace("\\", "/").split("/")):
            raise ValueError(f"{value[:80]!r} must be a path inside the data folder (relative, without `..`)")
        if value is not None and value.replace("\\", "/").rstrip("/").split("/")[-1] in ("", "."):
            raise ValueError(f"{value[:80]!r} names a folder, not a file: give the data file's path in the data folder "
                             "(e.g. `seoul-bike/SeoulBikeData.csv`)")
        return value


class Threshold(_Spec):
    metric: str
    """A metric the pilot's task family computes (e.g. `mase`, `map_50`), judged on the clean scenario."""
    max: float | None = Field(default=None, allow_inf_nan=False)
    """Acceptance threshold for lower-is-better metrics: the value must be at most this."""
    min: float | None = Field(default=None, allow_inf_nan=False)
    """Acceptance threshold for higher-is-better metrics: the value must be at least this."""
    gate: bool = True
    """A hard gate: failing it rejects the submission whatever its total score."""

    @model_validator(mode="after")
    def _one_bound(self) -> Threshold:
        if (self.max is None) == (self.min is None):
            raise ValueError("give exactly one of `max` or `min`")
        return self

    def passes(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        return value <= self.max if self.max is not None else value >= self.min


class ScenarioSpec(_Spec):
    name: str
    """A robustness scenario registered for the pilot's task family (e.g. `missing_hours`, `fog`)."""
    severity: float = Field(default=0.5, ge=0, le=1)
    """How harsh the perturbation is, from 0 (none) to 1 (worst)."""
    seed: int = Field(default=0, ge=0)
    """Seed of the scenario's random draws (0 or more): the same seed gives the same perturbed inputs."""


class Resources(_Spec):
    cpus: float = Field(default=1, ge=0.1, le=1024)
    """CPU cores the evaluation asks Ray for (at least a tenth of one: the sandbox's CPU quota is this share of
    each period)."""
    gpus: float = Field(default=0, ge=0)
    """GPUs the evaluation asks Ray for (0 = CPU only); the bundle uses CUDA when it sees one."""
    memory_mb: int = Field(default=3072, ge=256, le=1 << 22)
    """Address-space limit of the sandboxed service in MiB (4 TiB at most); exceeding it ends the run as
    `resource_limit`."""
    max_processes: int = Field(default=64, ge=4, le=1 << 16)
    """Most processes/threads the sandboxed service may run at once."""
    wall_time_s: int = Field(default=600, ge=10, le=86_400)
    """Wall-clock limit for the whole sandboxed run, start-up included (a day at most); exceeding it gives
    `timeout`."""
    startup_timeout_s: int = Field(default=120, ge=5, le=3_600)
    """How long the service may take to become ready (an hour at most)."""


class ServiceLevel(_Spec):
    p95_latency_ms: float = Field(gt=0)
    """Single-request 95th-percentile latency the city needs, in milliseconds."""
    min_throughput: float = Field(gt=0)
    """Items (windows, frames) per second the city needs in batch mode."""
    max_error_rate: float = Field(default=0.0, ge=0, le=1)
    """Largest acceptable share of failed requests; above it is a hard gate failure."""
    min_agreement_under_load: float = Field(default=0.95, gt=0, le=1)
    """Share of the items whose answer in the timed phases (single stream, offline) must agree with their clean
    answer (the family's `agreement`); below it is a hard gate failure: the timings were not of the scored model."""


class CriteriaWeights(_Spec):
    deep_learning_fit: float = Field(ge=0)
    """Weight of criterion 1: deep learning is the right tool and beats the non-deep-learning baseline."""
    viability: float = Field(ge=0)
    """Weight of criterion 2: accuracy, robustness, reliability, latency, throughput."""
    policy_fit: float = Field(ge=0)
    """Weight of criterion 3: serves the pilot's policy goals (evaluators' rubric and equity)."""
    local_strength_fit: float = Field(ge=0)
    """Weight of criterion 4: builds on the strengths of Seoul-based companies."""

    @model_validator(mode="after")
    def _sum_to_one(self) -> CriteriaWeights:
        total = sum(self.model_dump().values())
        if abs(total - 1) > 1e-6:
            raise ValueError(f"the four weights must sum to 1 (they sum to {total:g})")
        return self


class Criteria(_Spec):
    weights: CriteriaWeights
    """Weights of the four decision criteria in the total score."""
    full_credit_skill: float = Field(default=0.3, gt=0, le=1)
    """Skill over the non-deep-learning baseline (1 - error ratio) that earns the full deep-learning-fit score."""


class EquitySettings(_Spec):
    resamples: int = Field(default=1000, ge=50, le=20000)
    """Bootstrap resamples behind each group's confidence interval."""
    level: float = Field(default=0.95, gt=0.5, lt=1)
    """Confidence level of the intervals (0.95 = 95 %)."""
    min_units: int = Field(default=30, ge=1)
    """Groups with fewer resampling units (windows, frames, texts) are marked too small to judge."""
    seed: int = Field(default=0, ge=0)
    """Seed of the bootstrap draws (0 or more): the same seed gives the same intervals."""


class PilotSpec(_Spec):
    id: str = Field(pattern=ID_PATTERN)
    """Short id: lower-case letters, digits and dashes (used in commands, MLflow names and paths)."""
    title: Title
    """The pilot's title in Korean and English."""
    department: Prose
    """The owning department of the Seoul Metropolitan Government."""
    policy_goals: list[Prose] = Field(min_length=1)
    """The Seoul policy goals this pilot serves (what the evaluators' rubric scores against)."""
    family: str
    """Task family: a registered family such as `forecasting` or `detection`."""
    task: dict[str, Any] = Field(default_factory=dict)
    """Family-specific options (validated by the family, e.g. `horizon` for forecasting)."""
    dataset: DatasetSpec
    """The pilot's data and its public and sequestered splits."""
    thresholds: list[Threshold] = Field(min_length=1)
    """Acceptance thresholds on metrics (the accuracy part of viability; gates where marked)."""
    scenarios: list[ScenarioSpec] = Field(default_factory=list)
    """Robustness scenarios run besides the clean one."""
    groups: list[str] = Field(default_factory=list)
    """Group keys for per-group (equity) metrics, as the family defines them (e.g. `hour_band`)."""
    equity: EquitySettings = Field(default_factory=EquitySettings)
    """How per-group uncertainty is measured (bootstrap confidence intervals, smallest group judged)."""
    criteria: Criteria
    """How the four decision criteria are weighted and scored."""
    resources: Resources = Field(default_factory=Resources)
    """Resource budget of one sandboxed evaluation."""
    service_level: ServiceLevel
    """Latency, throughput and reliability the service must offer."""

    def recorded(self) -> bytes:
        """The spec as every evaluation records it (`pilot_spec.json`), its sha256 logged with the run."""
        return self.model_dump_json(indent=2).encode()

    def sha256(self) -> str:
        """sha256 of `recorded()`: which spec a run was scored under (the leaderboard ranks this spec's runs)."""
        return hashlib.sha256(self.recorded()).hexdigest()

    @field_validator("policy_goals", "thresholds", "scenarios", "groups")
    @classmethod
    def _each_once(cls, items: list) -> list:
        """A metric judged twice, a scenario or a group named twice: results are keyed by the name, so a second
        one would silently replace the first; a review scores policy goals by their text."""
        twice = repeated(getattr(item, "metric", getattr(item, "name", item)) for item in items)
        if twice:
            raise ValueError(f"{', '.join(twice)[:80]} given more than once: give each once")
        return items


def require_split_kind(spec: PilotSpec, where: str, family: str, kind: str) -> None:
    """Every split of `spec` of the kind its family reads: `dates` (`start`/`end`: a family that cuts the data by
    time ignores `members`, so a split given only `members` would span the whole file and a sequestered one hold
    every public item) or `members` (a family that picks listed items ignores dates). A SpecError names the split."""
    for name, split in spec.dataset.splits.items():
        if kind == "dates" and split.members is not None:
            raise SpecError(f"field `dataset.splits.{name}.members`: the {family} family cuts its splits by date and "
                            "ignores `members` (the split would span the whole data file)", where=where,
                            fix=f"give the `{name}` split `start` and `end` (dates on the data's own clock) instead of "
                                "`members`")
        if kind == "members" and split.members is None:
            raise SpecError(f"field `dataset.splits.{name}`: the {family} family picks a split's items by `members` "
                            "and ignores dates; this split has no `members`", where=where,
                            fix=f"give the `{name}` split `members`: the key of its list of file names in the "
                                "dataset's split file")
