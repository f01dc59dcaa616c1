"""`testbed pilots ...`: the pilot catalogue (the city's calls), their task contracts and public data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from cli.console import emit_json as _emit_json
from cli.console import err, friendly, out
from testbed.config import Workspace
from testbed.errors import TestbedError
from workflow.catalogue import get_pilot, scan_pilots

__all__ = ["pilots_app"]

pilots_app = typer.Typer(help="The pilot catalogue (the city's calls).", no_args_is_help=True)


@pilots_app.command("list")
@friendly
def pilots_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List the pilots, and any spec file that is broken with its error (then exit 1)."""
    pilots, broken = scan_pilots()
    if as_json:
        _emit_json([{"id": p.id, "title": p.title.model_dump(), "family": p.family} for p in pilots.values()]
                   + [{"id": path.stem, "file": str(path), "error": str(exc)} for path, exc in broken.items()])
    else:
        table = Table("id", "family", "title", "department")
        for p in pilots.values():
            table.add_row(p.id, p.family, escape(f"{p.title.en}\n{p.title.ko}"), escape(p.department))
        out.print(table)
        for path, exc in broken.items():
            err.print(f"[bold red]broken spec[/] {escape(str(path))} (not listed above):\n  {escape(str(exc))}",
                      highlight=False, soft_wrap=True)
    if broken:
        raise typer.Exit(1)


@pilots_app.command("show")
@friendly
def pilots_show(pilot: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Show a pilot's spec and the task contract a bundle must implement."""
    from evaluation.families import FAMILIES

    spec = get_pilot(pilot)
    contract = FAMILIES.get(spec.family).contract
    details = FAMILIES.get(spec.family).contract_details(spec)
    if as_json:
        return _emit_json({"spec": spec.model_dump(mode="json"),
                           "contract": {"api": contract.api, "inputs": list(contract.inputs),
                                        "summary": contract.summary, **details}})
    out.print(f"[bold]{escape(spec.title.en)}[/] — {escape(spec.title.ko)}\n{escape(spec.department)}\n")
    out.print("[bold]Policy goals[/]\n" + "\n".join(f"  • {escape(g)}" for g in spec.policy_goals))
    out.print(f"\n[bold]Task contract[/] ({spec.family}): API `{contract.api}`\n{escape(contract.summary)}\n")
    for name, value in details.items():
        shown = ", ".join(f"{i}: {v}" for i, v in enumerate(value)) if name.endswith("features") else value
        out.print(f"  [bold]{name}[/]: {escape(str(shown))}")
    out.print("[bold]Thresholds[/]: " + ", ".join(
        f"{t.metric} {'≤ ' + str(t.max) if t.max is not None else '≥ ' + str(t.min)}{' (gate)' if t.gate else ''}"
        for t in spec.thresholds))
    out.print(f"[bold]Scenarios[/]: {', '.join(s.name for s in spec.scenarios) or 'none'}   "
              f"[bold]Groups[/]: {escape(', '.join(spec.groups))}")
    out.print(f"[bold]Resources[/]: {spec.resources.model_dump()}\n[bold]Service level[/]: "
              f"{spec.service_level.model_dump()}\n[bold]Criteria weights[/]: {spec.criteria.weights.model_dump()}")


@pilots_app.command("validate")
@friendly
def pilots_validate(pilot: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """The city's check of a pilot before its call opens: every split, the sequestered one too, read from the data
    (TESTBED_DATA_DIR) and turned into the requests an evaluation sends; exit 2 with the error where one fails."""
    import secrets

    from evaluation.families import open_family

    spec = get_pilot(pilot)
    fam = open_family(spec, Workspace.from_env().data_dir)  # checks the data's sha256 against the spec
    rows = []
    for name, split in spec.dataset.splits.items():
        data = fam.load(name)
        sent = not split.public or name == "sample"  # what `evaluate` and `check` run on; the rest is exported
        requests = sum(len(p.bodies) for p in fam.phases(data, secrets.randbits(32))) if sent else None
        rows.append({"split": name, "public": split.public, "items": fam.size(data), "requests": requests})
    if as_json:
        return _emit_json({"pilot": spec.id, "dataset_sha256": fam.dataset_sha256, "splits": rows})
    table = Table("split", "public", "items", "requests an evaluation sends", title=f"{spec.id}: every split reads")
    for r in rows:
        table.add_row(r["split"], "yes" if r["public"] else "no (sequestered)", str(r["items"]),
                      "— (exported only)" if r["requests"] is None else str(r["requests"]))
    out.print(table)


@pilots_app.command("data")
@friendly
def pilots_data(pilot: str, out_dir: Path = typer.Option(..., "--out", help="Folder to write the public splits to.")):
    """Export the pilot's PUBLIC splits (training data and sample) in the contract's own format."""
    from evaluation.families import open_family

    if not str(out_dir).strip() or out_dir == Path():  # `--out ''` or `--out .`: not the working folder by mistake
        raise TestbedError(f"--out {str(out_dir)!r} names no folder of its own", where="--out",
                           fix="give the folder to write the public splits to, e.g. --out public-data")
    spec = get_pilot(pilot)
    fam = open_family(spec, Workspace.from_env().data_dir)
    splits = {name: fam.load(name) for name, split in spec.dataset.splits.items() if split.public}  # all, or none
    if out_dir.exists() and not out_dir.is_dir():
        raise TestbedError(f"{out_dir} is {'a file' if out_dir.is_file() else 'not a folder'}, where a folder is "
                           "needed", where="--out", fix="give a folder (it is created if missing)")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as staging:
        written = [path.relative_to(staging) for data in splits.values() for path in fam.export(data, Path(staging))]
        for rel in written:  # nothing moved while any file would not fit: all, or none
            _check_room(out_dir, rel)
        for rel in written:  # moved into place once every split is written
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(Path(staging) / rel, out_dir / rel)
    for rel in written:
        out.print(f"wrote {escape(str(out_dir / rel))}", soft_wrap=True)


def _check_room(out_dir: Path, rel: Path) -> None:
    """TestbedError naming what is in the way where the export writes `out_dir / rel`."""
    target = out_dir / rel
    blocked = next((p for p in target.parents[:len(rel.parts) - 1] if p.exists() and not p.is_dir()), None)
    if target.is_dir() and not target.is_symlink() or blocked:
        raise TestbedError(f"{blocked} is a file, where the export writes a folder" if blocked else
                           f"{target} is a folder, where the export writes a file", where="--out",
                           fix="move it away, or give another --out folder; nothing was written")
