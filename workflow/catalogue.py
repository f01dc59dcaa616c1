"""The catalogue as the workflow uses it: every spec checked against the schema (`pilots.catalogue`) and then
against its task family (options, metrics, scenarios, groups)."""

from __future__ import annotations

from pathlib import Path

from evaluation.families import FAMILIES
from pilots.catalogue import read_spec, spec_files
from pilots.spec import PilotSpec
from testbed.errors import NotFound, SpecError

__all__ = ["load_pilot", "all_pilots", "get_pilot"]


def load_pilot(path: Path, *, catalogued: bool = False) -> PilotSpec:
    """Validate one spec file, including what its task family offers."""
    spec = read_spec(path, catalogued=catalogued)
    if spec.family not in FAMILIES:
        raise SpecError(f"field `family`: unknown task family {spec.family!r}", where=str(path),
                        fix=f"use one of: {', '.join(FAMILIES.names())}")
    FAMILIES.get(spec.family).validate_spec(spec, str(path))
    return spec


def all_pilots() -> dict[str, PilotSpec]:
    pilots: dict[str, PilotSpec] = {}
    for path in spec_files():
        spec = load_pilot(path, catalogued=True)
        pilots[spec.id] = spec
    return pilots


def get_pilot(pilot_id: str) -> PilotSpec:
    pilots = all_pilots()
    if pilot_id not in pilots:
        raise NotFound(f"no pilot {pilot_id!r}", fix=f"use one of: {', '.join(sorted(pilots))} (testbed pilots list)")
    return pilots[pilot_id]
