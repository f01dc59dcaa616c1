"""The pilot catalogue: the city's calls, one YAML spec each in `pilots/catalogue/`
(plus any in `TESTBED_PILOTS_DIR`)."""

from __future__ import annotations

import os
from pathlib import Path

from pilots.errors import NotFound, SpecError
from pilots.spec import PilotSpec
from pilots.yamlio import load_model

__all__ = ["load_pilot", "all_pilots", "get_pilot", "CATALOGUE_DIR"]

CATALOGUE_DIR = Path(__file__).parent / "catalogue"


def load_pilot(path: Path) -> PilotSpec:
    """Validate one spec file, including what its task family offers."""
    from evaluation.families import FAMILIES

    spec = load_model(path, PilotSpec)
    if spec.family not in FAMILIES:
        raise SpecError(f"field `family`: unknown task family {spec.family!r}", where=str(path),
                        fix=f"use one of: {', '.join(FAMILIES.names())}")
    FAMILIES.get(spec.family).validate_spec(spec, str(path))
    return spec


def _spec_files() -> list[Path]:
    dirs = [CATALOGUE_DIR, *(Path(p) for p in os.environ.get("TESTBED_PILOTS_DIR", "").split(os.pathsep) if p)]
    return sorted(f for d in dirs for f in d.glob("*.yaml"))


def all_pilots() -> dict[str, PilotSpec]:
    pilots: dict[str, PilotSpec] = {}
    for path in _spec_files():
        spec = load_pilot(path)
        if spec.id != path.stem:
            raise SpecError(f"field `id`: {spec.id!r} differs from the file name", where=str(path),
                            fix=f"name the file {spec.id}.yaml or set id: {path.stem}")
        pilots[spec.id] = spec
    return pilots


def get_pilot(pilot_id: str) -> PilotSpec:
    pilots = all_pilots()
    if pilot_id not in pilots:
        raise NotFound(f"no pilot {pilot_id!r}", fix=f"use one of: {', '.join(sorted(pilots))} (testbed pilots list)")
    return pilots[pilot_id]
