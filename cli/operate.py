"""Operators' commands: promotion, rollback, what is in production, serving and monitoring."""

from __future__ import annotations

import errno
import math

import typer
from rich.markup import escape
from rich.table import Table

from cli.console import emit_json as _emit_json
from cli.console import err, friendly, out, warn_replaced
from testbed.config import Workspace
from testbed.errors import SpecError, TestbedError
from testbed.text import cell, printable
from workflow.catalogue import get_pilot
from workflow.submissions import SubmissionStore


def _within(option: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # NaN too
        raise SpecError(f"{option} {value} is outside {low:g}–{high:g}", where=option,
                        fix=f"give {option} a value from {low:g} to {high:g}")


@friendly
def promote(submission: str, by: str = typer.Option(..., "--by", help="The operator's name."),
            note: str = typer.Option("", "--note", help="Why (kept in the audit trail).")):
    """Put an approved, gate-passing, unaltered submission into production (MLflow alias `production`)."""
    from workflow.promote import Production

    ws = Workspace.from_env()
    store = SubmissionStore(ws)
    sub = store.get(submission)  # before touching MLflow
    if store.stored_sha256(sub.id) != sub.bundle_sha256:  # production serves the registry's copy, checked below
        err.print(f"[bold yellow]warning:[/] the submission's own stored bundle {escape(str(store.bundle(sub.id)))} "
                  "is not the one submitted (altered or unreadable): `testbed audit` says more; restore it from a "
                  "backup", soft_wrap=True)
    entry, ok = Production(ws).promote(submission, by=by, note=note)
    if entry is None:
        out.print(f"{ok.submission.id} (version {ok.version}) is already in production: nothing changed")
        return
    out.print(f"promoted {ok.submission.id}: testbed-{ok.submission.pilot} version {ok.version} is in production "
              f"(was {entry['previous_version'] or 'none'}) · bundle sha256 {ok.sha256[:16]}… · entry #{entry['seq']}")


@friendly
def rollback(pilot: str, by: str = typer.Option(..., "--by", help="The operator's name."),
             note: str = typer.Option("", "--note", help="Why (kept in the audit trail).")):
    """Move production back to the previous approved version (none left: production is withdrawn)."""
    from workflow.promote import Production

    get_pilot(pilot)
    entry, skipped = Production(Workspace.from_env()).rollback(pilot, by=by, note=note)
    for line in skipped:  # the reason may quote a rejecting evaluator's note: written out, as every note is shown
        err.print(f"skipped {cell(line)}", highlight=False, soft_wrap=True)
    if entry["version"]:
        out.print(f"rolled back: testbed-{pilot} version {entry['version']} ({entry['submission']}) is in production "
                  f"again (was {entry['previous_version']})")
    else:
        out.print(f"rolled back: no earlier approved version since production was last withdrawn (or first "
                  f"promoted), so production of {pilot} is withdrawn (was version "
                  f"{entry['previous_version']}); `testbed serve` answers 503 until the next promotion")


@friendly
def production(pilot: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """What is in production for a pilot, and every promotion and rollback (who, when, which version)."""
    from workflow.promote import Production, trail_version

    get_pilot(pilot)
    prod = Production(Workspace.from_env())
    version, history = prod.current_version(pilot), prod.history(pilot)
    last = trail_version(history)
    if as_json:
        return _emit_json({"pilot": pilot, "version": version, "history": history, "consistent": version == last})
    out.print(f"[bold]testbed-{pilot}[/] production: version {version or 'none'}")
    if version != last:
        err.print(f"[bold red]warning:[/] the registry's alias names {'version ' + version if version else 'nothing'} "
                  f"but the trail's last move put {'version ' + last if last else 'nothing'} in production: the alias "
                  "was changed outside the testbed, or a move was cut short; `testbed serve` will not start on it (one "
                  "running keeps what it served)\n  fix: "
                  f"an operator repeats the move (`testbed promote SUBMISSION --by NAME` or `testbed rollback {pilot} "
                  "--by NAME`), which puts both in agreement", highlight=False, soft_wrap=True)
    serving = next((e["submission"] for e in reversed(history) if e["version"] == version), None) if version else None
    try:
        review = prod.review_of(serving) if serving else None
    except TestbedError as exc:  # said, and the moves still shown: the operator needs them most then
        err.print(f"[bold red]warning:[/] the review trail of version {version} ({serving}) cannot be read: "
                  f"{escape(printable(str(exc)))}", highlight=False, soft_wrap=True)
        review = None
    if review is not None and review.decision == "reject":
        err.print(f"[bold red]warning:[/] version {version} ({serving}) was rejected by {escape(review.by)} at "
                  f"{review.at} after its promotion: a running `testbed serve` has stopped serving it (503); "
                  f"`testbed rollback {pilot} --by NAME` puts the previous approved version back")
    warn_replaced([(e["seq"], e.get("replaces")) for e in history], "move")
    table = Table("#", "at", "action", "version", "submission", "by", "was", "note")
    for e in history:
        table.add_row(str(e["seq"]), e["at"], e["action"], e["version"] or "(withdrawn)", e["submission"] or "—",
                      cell(e["by"]), e["previous_version"] or "—", cell(e["note"] or ""))
    out.print(table)


@friendly
def serve(pilot: str, host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
          port: int = typer.Option(3000, "--port", help="Port to listen on."),
          poll: float = typer.Option(5.0, "--poll", help="Seconds between checks of the production alias."),
          batching: bool = typer.Option(False, "--batching/--no-batching", help=(
              "Adaptive batching in the proxy: concurrent clients' requests merged into one call (throughput "
              "where the model gains from batches, e.g. on a GPU; the bundle then sees several clients' inputs "
              "together and could hand one client's data to another).")),
          max_batch: int = typer.Option(64, "--max-batch", help="Most items per call into the sandbox.")):
    """Serve the pilot's production bundle (from the MLflow registry) in the sandbox, with Prometheus metrics."""
    import ipaddress
    import socket

    from serving.server import ProductionServer, serve_until_stopped
    from testbed.errors import Refused

    _within("--port", port, 1, 65535)
    _within("--poll", poll, 0.1, 3600)
    _within("--max-batch", max_batch, 1, 100_000)
    local = "give an address of this machine with --host (127.0.0.1 by default; 0.0.0.0 for every interface)"
    if not host.strip():  # the socket would listen on every interface: never what an empty value meant
        raise SpecError("--host is empty", where="--host", fix=local)
    try:  # fail before starting the sandbox when the address is taken
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.create_server((host, port), family=addresses[0][0]):  # IPv6 too (`--host ::1`)
            pass
    except OSError as exc:
        fix = {errno.EADDRINUSE: "choose another --port",
               errno.EACCES: "choose a --port of 1024 or more (lower ones need root)"}.get(exc.errno, local)
        raise Refused(f"cannot listen on {host}:{port} ({exc.strerror})", fix=fix) from None
    if not all(ipaddress.ip_address(a[4][0].split("%")[0]).is_loopback for a in addresses):
        err.print(f"[bold yellow]warning:[/] --host {escape(host)} serves the API and /metrics beyond this machine; "
                  "put an authenticating proxy in front of it (the testbed's own is for loopback)")
    server = ProductionServer(Workspace.from_env(), pilot, poll_s=poll, batching=batching, max_batch=max_batch)
    try:
        serve_until_stopped(server, host, port, lambda url: err.print(
            f"{escape(url)}  (API {server.contract.route}, /healthz, /readyz, /metrics); Ctrl-C stops", soft_wrap=True))
    except KeyboardInterrupt:  # how a service is stopped: said as such, not as a command cut short
        err.print(f"\n[bold]stopped[/] by Ctrl-C or SIGTERM: the service and its sandbox are down; "
                  f"production is unchanged (`testbed serve {pilot}` serves it again)", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(130) from None


@friendly
def monitor(pilot: str, url: str = typer.Option("http://127.0.0.1:3000", "--url", help="The service's address."),
            window: float = typer.Option(5.0, "--window", help="Seconds between two readings (0: since start)."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Latency, throughput and error rate of the live service against the pilot's service level; adds an
    "in service" section to the production version's scorecard page. Exits 1 when the service is not ready, 2 when it
    cannot be reached."""
    import time

    import httpx

    from serving.monitor import scrape, summarize
    from workflow.promote import Production

    spec, ws = get_pilot(pilot), Workspace.from_env()
    _within("--window", window, 0, 3600)
    if not url.startswith(("http://", "https://")) or url.rstrip("/").endswith("/metrics"):
        base = url.rstrip("/").removesuffix("/metrics")
        raise SpecError(f"--url {url} is not the service's address", where="--url",
                        fix=f"give the address `testbed serve` printed, e.g. --url "
                            f"{base if base.startswith(('http://', 'https://')) else 'http://' + base.split('://')[-1]}")
    try:  # a typo (a letter in the port, no host) is the user's, not a traceback
        why = "" if httpx.URL(url).host else "no host"
    except httpx.InvalidURL as exc:
        why = str(exc)
    if why:
        raise SpecError(f"--url {url} is not an address ({why})", where="--url",
                        fix="give the address `testbed serve` printed, e.g. --url http://127.0.0.1:3000")
    url = url.rstrip("/")  # named in messages as the address, `/metrics` added to it
    before = scrape(url, pilot) if window > 0 else None
    if before:
        time.sleep(window)
    summary = summarize(spec, scrape(url, pilot), before)
    page = stale = None
    try:  # the page is this workspace's: a service monitored from elsewhere is still shown
        page = Production(ws).record_measures(pilot, summary) if summary.get("submission") else None
    except TestbedError as exc:
        stale = exc
    if as_json:
        _emit_json(summary)
    else:
        _show(summary, page)
    if stale is not None:
        err.print(f"[bold yellow]warning:[/] the scorecard page was not updated with these measures: "
                  f"{escape(printable(str(stale)))}", highlight=False, soft_wrap=True)
    if not summary["ready"]:
        raise typer.Exit(1)


def _show(summary: dict, page) -> None:
    served = (f"version {escape(str(summary['version']))} ({escape(summary['submission'])})"
              if summary.get("submission") else "no version in service")  # withdrawn, or not yet serving
    out.print(f"[bold]{escape(str(summary['model']))}[/] {served} · "
              f"{'ready' if summary['ready'] else '[red]NOT READY[/]'} · {summary['requests']} requests in "
              f"{summary['window_s']:.1f} s" + (f" (and {summary['client_errors']} refused as the clients' mistakes)"
                                                if summary.get("client_errors") else ""))
    table = Table("measure", "in service", "service level", "met")
    for row in summary["rows"]:
        met = "—" if row["met"] is None else "[green]yes[/]" if row["met"] else "[red]no[/]"
        measured = "— (no requests)" if math.isnan(row["value"]) else f"{row['value']:.4g} {row['unit']}"
        table.add_row(row["measure"], measured,
                      "—" if row["target"] is None else f"{row['target']:g} {row['unit']}", met)
    out.print(table)
    if page:
        out.print(f"scorecard with the in-service section: {escape(str(page))}", soft_wrap=True)


COMMANDS = [promote, rollback, production, serve, monitor]
"""Registered as top-level `testbed` commands by `cli.app`."""
