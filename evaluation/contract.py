"""Task contracts: the API a bundle must expose for its pilot's task family.

Each task family declares its contract in its folder's `contract.py`. A contract is checked twice: statically
at submission, against the routes the bundle declares in its `bento.yaml` (nothing runs), and dynamically, on
every response the sandboxed service returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from testbed.errors import ContractError, ContractViolation

if TYPE_CHECKING:
    from sandbox.bundle import BundleInfo

__all__ = ["Contract", "ContractViolation"]


@dataclass(frozen=True)
class Contract:
    """The BentoML API a task family requires."""

    family: str
    api: str
    """Name of the `@bentoml.api` method (and its route `/<api>`)."""
    inputs: dict[str, tuple[str, ...]]
    """Required parameter names and the schema types BentoML may declare for each."""
    summary: str
    """One paragraph for vendors: what goes in, what must come out."""
    example: str = field(default="", repr=False)
    """A minimal service implementing the contract."""

    @property
    def route(self) -> str:
        return f"/{self.api}"

    def check_bundle(self, info: BundleInfo, pilot: str, where: str | None = None) -> None:
        """Raise ContractError unless the bundle is for `pilot`: its declared routes (`check_routes`), and the
        pilot its `bentofile.yaml` labels name (`labels: {pilot: ...}`), when it names one. `where`: the file
        to name (by default the one inspected)."""
        where = where or str(info.path)
        labels = info.manifest.get("labels")
        declared = labels.get("pilot") if isinstance(labels, dict) else None
        if declared is not None and not isinstance(declared, str):
            raise ContractError(f"the bundle's label `pilot` is {str(declared)[:80]}, not a pilot id", where=where,
                                fix=f"label it `pilot: {pilot}` in its bentofile.yaml (one pilot id), or leave the "
                                    "label out, and build it again")
        if declared is not None and declared != pilot:
            raise ContractError(f"the bundle declares it is for the pilot {str(declared)[:80]!r} (`labels: pilot:` in "
                                f"its bentofile.yaml), not {pilot!r}", where=where,
                                fix=f"give it to {str(declared)[:80]!r}, or, if it is for {pilot!r}, correct that "
                                    "label and build it again")
        self.check_routes(info.routes, where=where, pilot=pilot)

    def check_routes(self, routes: list[dict[str, Any]], where: str, pilot: str = "PILOT") -> None:
        """Raise ContractError unless the declared routes include this contract's API with its inputs."""
        fix = f"expose `@bentoml.api def {self.api}({', '.join(self.inputs)})` — see `testbed pilots show {pilot}`"
        route = next((r for r in routes if r.get("name") == self.api), None)
        if route is None:
            names = ", ".join(sorted(str(r.get("name")) for r in routes)) or "none"
            raise ContractError(f"the bundle has no `{self.api}` API (it declares: {names})", where=where, fix=fix)
        props = (route.get("input") or {}).get("properties") or {}
        for name, types in self.inputs.items():
            if name not in props:
                raise ContractError(f"API `{self.api}` lacks the input `{name}`", where=where, fix=fix)
            declared = props[name].get("type")
            if declared not in types:
                raise ContractError(f"API `{self.api}` input `{name}` is declared as {declared!r}, expected one "
                                    f"of {', '.join(types)}", where=where, fix=fix)
        extra = set((route.get("input") or {}).get("required") or []) - set(self.inputs)
        if extra:
            raise ContractError(f"API `{self.api}` requires inputs the contract does not send: {sorted(extra)}",
                                where=where, fix="give those parameters default values, or remove them")

