"""What every `testbed` command shares: the consoles, the error handling, JSON output."""

from __future__ import annotations

import errno
import functools
import inspect
import os
import signal
import threading
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from testbed.errors import TestbedError, from_tracking_store, sigterm_as_ctrl_c
from testbed.jsonio import strict_dumps
from testbed.text import printable

__all__ = ["out", "err", "friendly", "emit_json", "warn_unsafe", "warn_replaced", "unwrap_help"]

PATH_SETTINGS = ("TESTBED_HOME", "BENTOML_HOME", "TESTBED_ENVS_DIR", "TESTBED_DATA_DIR", "TESTBED_PILOTS_DIR")
"""Environment variables naming folders: a path under one that cannot be used names the variable."""
# emoji off: a `:code:` in a vendor's or pilot's text is shown as written, never as an emoji (names stay verbatim)
out = Console(width=None if Console().is_terminal else 160, emoji=False)  # logs and pipes: full lines, not 80
err = Console(stderr=True, emoji=False)
_show_warning = warnings.showwarning


def _warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The testbed's own warnings (e.g. an altered record left off the leaderboard) as one plain line."""
    if category is UserWarning:
        err.print(f"[bold yellow]warning:[/] {escape(printable(str(message)))}", highlight=False, soft_wrap=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


warnings.showwarning = _warning

def friendly(fn):
    """User mistakes become one clear message and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, sigterm_as_ctrl_c) if main else None
        try:
            return fn(*args, **kwargs)
        except TestbedError as exc:
            err.print(f"[bold red]error:[/] {escape(printable(str(exc)))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: said, never a silent exit
            err.print("\n[bold red]interrupted[/] (Ctrl-C or SIGTERM)\n  fix: a submission, an official evaluation, a "
                      "review and a production move are each recorded whole or not at all: `testbed scorecard ID`, "
                      "`testbed review history ID` or `testbed production PILOT` shows whether this one was; if not, "
                      "run the command again (a submission of the same bytes again is safe, and prints its id)",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except OSError as exc:  # a path given that cannot be used as asked (a folder, no such folder, no access)
            if exc.filename is None:
                raise
            where = " → ".join(str(f) for f in (exc.filename, exc.filename2) if f)
            failed = Path(os.fsdecode(exc.filename))
            fix = _path_fix(failed)
            problem = exc.strerror or str(exc)
            if exc.errno in (errno.EEXIST, errno.ENOTDIR):  # "File exists" where a folder was to be made
                blocker = next((p for p in (failed, *failed.parents) if p.is_file()), None)
                problem = f"{blocker} is a file, where a folder is needed" if blocker else problem
            err.print(f"[bold red]error:[/] {escape(where)}: {escape(problem)}\n  fix: "
                      f"{escape(fix)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            if not from_tracking_store(exc):
                raise
            detail = " ".join(str(exc).split())[:300]
            err.print(f"[bold red]error:[/] the MLflow tracking store failed ({type(exc).__name__}: {escape(detail)})"
                      f"\n  where: MLFLOW_TRACKING_URI={escape(os.environ.get('MLFLOW_TRACKING_URI', '(unset)'))}\n"
                      "  fix: check that it names a working store (a SQLite file, a database with its driver, or a "
                      "tracking server); unset it to use the project's SQLite store under mlflow/",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        finally:
            if previous is not None:  # None: set outside Python, nothing to put back
                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _path_fix(failed: Path) -> str:
    """What to do about a path that could not be used: the folder setting it lies under, set (correct or unset
    it) or by default (make the folder writable, or set the variable), else the option or file given."""
    from testbed.config import Workspace

    ws = Workspace.from_env()
    defaults = {"TESTBED_HOME": ws.home, "BENTOML_HOME": ws.bentoml_home, "TESTBED_ENVS_DIR": ws.envs,
                "TESTBED_DATA_DIR": ws.data_dir}
    under = [(name, Path(os.environ.get(name) or defaults.get(name) or "")) for name in PATH_SETTINGS]
    under = [(name, path) for name, path in under if str(path) not in ("", ".") and path in (failed, *failed.parents)]
    if not under:
        return "give a path that exists and can be used as the option expects (a file or a folder)"
    explicit = [item for item in under if os.environ.get(item[0])]  # a setting given is the likelier mistake
    name, path = max(explicit or under, key=lambda item: len(item[1].parts))  # the most specific one
    if os.environ.get(name):
        return f"{name}={os.environ[name]} must name a folder the testbed can create and write in: correct or unset it"
    return (f"{path} ({name} unset: the default) must be a folder the testbed can create and write in: make it "
            f"writable for this user, or set {name} to one that is")


def emit_json(data) -> None:
    """`data` as strict JSON on stdout (a NaN, e.g. no requests measured, written null)."""
    print(strict_dumps(data, indent=2, ensure_ascii=False, default=str))


def warn_replaced(entries: list[tuple[int, dict | None]], kind: str) -> None:
    """A warning for each trail entry `(seq, replaces)` that took the place of one the mirror recorded but the
    trail never held (`workflow.ledger.REPLACES`): a recording cut short, or a line removed by hand."""
    for seq, lost in entries:
        if lost:
            err.print(f"[bold yellow]warning:[/] {kind} #{seq} took the place of entry {lost.get('seq')} (hash "
                      f"{str(lost.get('hash'))[:12]}…), which {escape(printable(str(lost.get('mirror'))))} recorded "
                      f"({escape(printable(str(lost.get('recorded') or 'nothing more')))}) but the trail never held: "
                      "its recording was cut short, or its line was removed from the file\n  fix: if it was removed, "
                      "restore the file from a backup", highlight=False, soft_wrap=True)


def warn_unsafe() -> None:
    err.print("[bold white on red] UNSAFE: --unsafe-no-sandbox given. The bundle runs WITHOUT isolation, with "
              "network and file access. Only for code you trust. This is recorded on the result. [/]")


def unwrap_help(app: typer.Typer) -> None:
    """Each command's help as paragraphs of one line: Typer's command list keeps a docstring's line breaks, so a
    docstring wrapped at the source's width would break the list's lines mid-sentence."""
    for info in app.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if doc:
            info.help = "\n\n".join(" ".join(part.split()) for part in inspect.cleandoc(doc).split("\n\n"))
    for group in app.registered_groups:
        unwrap_help(group.typer_instance)
