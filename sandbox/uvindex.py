"""How the harness runs uv to build a bundle's environment, and how it reads uv's failures: what of the operator's
environment uv sees (`build_environment`: the package index and how to reach it, never how to install), and
whether a failed install was the package index's or the machine's (`index_trouble`, `index_refuses_harness`:
InfrastructureFailure, retried) rather than the bundle's. What an error quotes of uv never carries the index's
credentials (`quoted`). Used by `sandbox.environment`."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from sandbox.bounded import Budget, run_bounded

__all__ = ["build_environment", "index_refuses_harness", "index_settings", "index_trouble", "quoted",
           "INDEX_SETTINGS", "UV_INSTALL_THREADS", "UV_SETTINGS"]


UV_SETTINGS = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "LANG", "LANGUAGE", "TZ", "NO_COLOR", "XDG_CACHE_HOME",
    "UV_CACHE_DIR", "UV_INDEX", "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS",
    "UV_NO_INDEX", "UV_OFFLINE", "UV_INDEX_STRATEGY", "UV_KEYRING_PROVIDER", "UV_INSECURE_HOST", "NETRC",
    "UV_NATIVE_TLS", "SSL_CERT_FILE", "SSL_CERT_DIR", "SSL_CLIENT_CERT", "UV_HTTP_TIMEOUT", "UV_REQUEST_TIMEOUT",
    "UV_HTTP_RETRIES", "UV_CONCURRENT_DOWNLOADS", "UV_CONCURRENT_INSTALLS", "UV_PYTHON_DOWNLOADS"})
"""What of the operator's environment the build's commands see: where uv's cache is, which index it uses and how
it reaches it (credentials `UV_INDEX_<NAME>_USERNAME/PASSWORD`, proxies in either case, TLS), and the locale.
Nothing else: not the settings choosing how uv installs (`UV_COMPILE_BYTECODE`, `UV_CONFIG_FILE`, `UV_LINK_MODE`,
`UV_NO_CACHE`, `UV_PYTHON`...), nor pip's or Python's (`PYTHON*`, `VIRTUAL_ENV`), nor the loader's."""


UV_INSTALL_THREADS = min(os.cpu_count() or 1, 16)
"""Most threads uv installs with: each takes ~4 MiB of the build's data-segment bound, and uv's default (one per
CPU) panicked within 2 GiB from ~500 (measured: 512), or hung at tighter bounds."""


def build_environment() -> dict[str, str]:
    """The environment of the build's commands: `UV_SETTINGS` from the harness's own, and uv's bytecode
    compilation off (`UV_COMPILE_BYTECODE=1`, or a `UV_CONFIG_FILE` saying `compile-bytecode = true`, made uv
    compile with the new environment's Python with `site`, which ran a wheel's `.pth` on the host: measured, as
    root). Without `UV_NO_CACHE` uv uses the cache it names (its additions can then be removed); without
    `UV_LINK_MODE` files are linked or copied from it, never symlinks into a cache the sandbox does not mount."""
    env = {k: v for k, v in os.environ.items()
           if k in UV_SETTINGS or k.startswith(("LC_", "UV_INDEX_"))
           or k.upper() in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")}
    env["UV_COMPILE_BYTECODE"] = "0"
    asked = env.get("UV_CONCURRENT_INSTALLS", "")
    env["UV_CONCURRENT_INSTALLS"] = str(min(UV_INSTALL_THREADS, int(asked) if asked.isdigit() and int(asked) else
                                            UV_INSTALL_THREADS))
    return env


INDEX_SETTINGS = ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_OFFLINE")
"""The settings (of `UV_SETTINGS`) choosing where uv finds packages: PyPI where none is set."""
UV_INDEX_ERRORS = re.compile(
    r"^\s*(?:error|cause): (?:Failed to fetch: |Request failed after \d+ retr|Failed to read `--find-links` "
    r"|Failed to download distribution due to network timeout)"
    r"|^hint: An index (?:URL )?\(.*\) (?:returned a 40[13] |could not be queried due to a lack of valid auth)",
    re.MULTILINE)
"""How uv says it could not read the package index, at a line's start (after `error:` or `cause:`, which uv writes
before each of its own messages, never before a package's text): a request that failed (refused, no such host,
TLS, a 5xx answer, cut off, timed out), a `UV_FIND_LINKS` location it cannot read, an index refusing its
credentials (401, 403). An index answering 404 everywhere, or a local index folder that is not there, is only
"not found" to uv, like a package that does not exist: `_install` then asks for the harness's own packages."""
OS_ERROR = re.compile(r"^\s*(?:error|cause): (?:[Ff]ailed to [a-z ]+ `(?P<path>[^`\n]+)`: )?[A-Z][A-Za-z /',-]* "
                      r"\(os error (?P<code>\d+)\)$", re.MULTILINE)
"""A system error as uv reports it, the whole line: the error's own words, after the file it names (a file name a
wheel chose is quoted inside that line, its control characters replaced, so it cannot end the line as it likes)."""
MACHINE_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENFILE, errno.EMFILE})
"""The machine's failures whatever uv was reading or writing (a failing disk, one full, over quota or read-only;
file descriptors exhausted); not ENOMEM, which within the build's memory bound is the package's
(`bounded.MAX_BUILD_MEMORY_BYTES`), nor a file name too long, which a wheel chooses."""


def index_trouble(output: str, env: dict[str, str]) -> str | None:
    """uv's words when `output` says the package index, or the machine, failed (`UV_INDEX_ERRORS`, a system error
    on a file of a local index or find-links folder, one of `MACHINE_ERRNOS` anywhere); None when it does not."""
    local = _local_locations(env)
    for match in OS_ERROR.finditer(output):
        if int(match["code"]) in MACHINE_ERRNOS or (match["path"] and _within(match["path"], local)):
            return quoted(output)
    return quoted(output) if UV_INDEX_ERRORS.search(output) else None


def index_refuses_harness(install: list[str], harness: list[str], env: dict[str, str], budget: Budget
                          ) -> str | None:
    """What uv says when the index cannot give the harness's own server packages, which every environment has
    (their exact versions, without their dependencies, a dry run: nothing the bundle declared is asked, so nothing
    it declared can make this fail); None when it can. `install`: the build's `uv pip install` command;
    `harness`: those packages' exact requirements."""
    problem, returncode, output = run_bounded([*install, "--dry-run", "--no-deps", *harness], env, budget)
    if problem or returncode == 0:
        return None
    return f"it does not give the harness's own packages either ({', '.join(harness)}): {quoted(output)}"


def _local_locations(env: dict[str, str]) -> list[Path]:
    """The folders of the local indexes and find-links locations the settings name (`file://` URLs and paths;
    `UV_INDEX` may name each `NAME=URL`)."""
    found = []
    for name in INDEX_SETTINGS:
        for item in re.split(r"[\s,]+", env.get(name, "")):
            item = item.split("=", 1)[1] if re.match(r"^[\w.-]+=", item) else item
            if item.startswith("file://"):
                found.append(Path(unquote(urlparse(item).path)))
            elif item.startswith("/"):
                found.append(Path(item))
    return found


def _within(path: str, folders: list[Path]) -> bool:
    return any(Path(path).is_relative_to(f) for f in folders)


def index_settings(env: dict[str, str], values: bool = True) -> str:
    """The index settings in effect, `NAME=VALUE` (credentials in a URL left out) or their names, or that none is
    (so PyPI)."""
    named = [f"{n}={_redacted(env[n])}" if values else n for n in INDEX_SETTINGS if env.get(n)]
    return ", ".join(named) if named else "none set: PyPI"


def _redacted(text: str) -> str:
    """`text` without the credentials of the URLs in it (`https://user:secret@host` -> `https://***@host`)."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", text)


def quoted(output: str) -> str:
    """uv's output as an error quotes it: without credentials, at most ~1,500 characters (its start and end)."""
    message = _redacted(output.strip())
    return f"{message[:900]} […] {message[-500:]}" if len(message) > 1500 else message
