"""The catalogue as the workflow uses it: every spec checked against the schema (`pilots.catalogue`) and then
against its task family (options, metrics, scenarios, groups)."""

from __future__ import annotations

import re
from pathlib import Path

from evaluation.families import FAMILIES
from pilots.catalogue import read_spec, spec_files
from pilots.spec import PilotSpec
from testbed.errors import NotFound, SpecError

__all__ = ["load_pilot", "scan_pilots", "all_pilots", "get_pilot"]


def load_pilot(path: Path, *, catalogued: bool = False) -> PilotSpec:
    """Validate one spec file, including what its task family offers."""
    spec = read_spec(path, catalogued=catalogued)
    if spec.family not in FAMILIES:
        raise SpecError(f"field `family`: unknown task family {spec.family!r}", where=str(path),
                        fix=f"use one of: {', '.join(FAMILIES.names())}")
    FAMILIES.get(spec.family).validate_spec(spec, str(path))
    return spec


def scan_pilots() -> tuple[dict[str, PilotSpec], dict[Path, SpecError]]:
    """Every valid pilot by id, and every spec file that is not valid with its error: one bad file never hides
    the others. A second file claiming an id already taken is reported as broken."""
    pilots: dict[str, PilotSpec] = {}
    sources: dict[str, Path] = {}
    broken: dict[Path, SpecError] = {}
    for path in spec_files():
        try:
            spec = load_pilot(path, catalogued=True)
        except SpecError as exc:
            broken[path] = exc
            continue
        if spec.id in pilots:
            broken[path] = SpecError(f"pilot id {spec.id!r} is already defined by {sources[spec.id]}",
                                     where=str(path), fix="remove one of the two files, or rename one pilot")
            continue
        pilots[spec.id], sources[spec.id] = spec, path
    return pilots, broken


def all_pilots() -> dict[str, PilotSpec]:
    """The valid pilots by id (`scan_pilots` also lists the broken spec files)."""
    return scan_pilots()[0]


def get_pilot(pilot_id: str) -> PilotSpec:
    """One pilot; when its own spec file is broken, that file's error (the other files do not matter)."""
    pilots, broken = scan_pilots()
    if pilot_id not in pilots:
        mine = [exc for path, exc in broken.items() if pilot_id in (path.stem, _declared_id(path))]
        if mine:
            raise mine[0]
        also = f"; {len(broken)} broken spec file(s) are not listed: `testbed pilots list` names them" if broken else ""
        raise NotFound(f"no pilot {pilot_id!r}", fix=f"use one of: {', '.join(sorted(pilots))} (testbed pilots list)"
                                                    f"{also}")
    return pilots[pilot_id]


def _declared_id(path: Path) -> str | None:
    """The `id:` a broken spec file declares on a top-level line, read from its text (it may not parse as YAML);
    None when there is none or the file cannot be read."""
    try:
        found = re.search(r"""^id:[ \t]*['"]?([^\s'"#]+)""", path.read_text(encoding="utf-8"), re.MULTILINE)
    except (OSError, UnicodeError):
        return None
    return found and found.group(1)
