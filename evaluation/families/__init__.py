"""Task families, one folder each: its contract, data loading, phases, metrics, scenarios and plots.

Adding a family is copying a folder and registering its class with `@family(name)` (see
`evaluation.registry`); every folder here is imported on first use, so nothing else needs to change.
"""

from __future__ import annotations

from pathlib import Path

from evaluation.family import TaskFamily
from evaluation.registry import FAMILIES
from pilots.spec import PilotSpec
from testbed.registry import load_plugins

__all__ = ["FAMILIES", "open_family"]

load_plugins(__name__)


def open_family(spec: PilotSpec, data_dir: Path, *, verify: bool = True) -> TaskFamily:
    """The spec's family bound to the data folder; with `verify`, the data are checked against the spec's
    sha256 first (a SpecError names the file that differs)."""
    fam = FAMILIES.get(spec.family)(spec, data_dir)
    if verify:
        fam.dataset_sha256  # noqa: B018 - verifies and caches
    return fam
