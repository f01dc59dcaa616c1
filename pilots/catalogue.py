"""The pilot catalogue: the city's calls, one YAML spec each in `pilots/catalogue/` (plus any in the folders
that `TESTBED_PILOTS_DIR` lists). This module checks each file against the spec schema only; what a task
family adds (its `task:` options, metrics, scenarios, groups) is checked a floor up, by the family itself
(`workflow.catalogue`)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pilots.spec import ID_PATTERN, PilotSpec
from testbed.errors import SpecError
from testbed.yamlio import load_model

__all__ = ["CATALOGUE_DIR", "spec_files", "read_spec"]

CATALOGUE_DIR = Path(__file__).parent / "catalogue"


def spec_files() -> list[Path]:
    """Every pilot spec file (`*.yaml`, `*.yml`): the built-in catalogue first, then `TESTBED_PILOTS_DIR` folders
    (`os.pathsep`-separated) in the order given, so a later file claiming a pilot id already taken is the one
    reported as broken; a folder named there that does not exist is an error, not silently ignored."""
    extra = [Path(p) for p in os.environ.get("TESTBED_PILOTS_DIR", "").split(os.pathsep) if p]
    for folder in extra:
        if not folder.is_dir():
            raise SpecError(f"folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder",
                            where="TESTBED_PILOTS_DIR",
                            fix="point TESTBED_PILOTS_DIR at existing folders of pilot YAML files, or unset it")
    folders: dict[Path, Path] = {}
    for folder in [CATALOGUE_DIR, *extra]:  # a folder named twice is read once, where it first comes
        folders.setdefault(folder.resolve(), folder)
    return [f for d in folders.values()
            for f in sorted(f for f in d.iterdir() if f.suffix.lower() in (".yaml", ".yml"))]


def read_spec(path: Path, *, catalogued: bool = False) -> PilotSpec:
    """One spec file, validated against the schema. A `catalogued` spec (one of `spec_files()`) must also
    carry its file's name as its `id`."""
    spec = load_model(path, PilotSpec)
    if catalogued and spec.id != path.stem:
        either = f" or set id: {path.stem}" if re.fullmatch(ID_PATTERN, path.stem) else ""
        raise SpecError(f"field `id`: {spec.id!r} differs from the file name", where=str(path),
                        fix=f"name the file {spec.id}.yaml{either}")
    return spec
