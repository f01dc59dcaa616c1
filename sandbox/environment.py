"""Each bundle's own Python environment, built from the packages its `bentofile.yaml` declared.

BentoML writes what `python.packages` (and `requirements_txt`) declared into the bundle's `bento.yaml`
(`image.python_requirements`, the same lines as `env/python/requirements.txt`). The harness reads them without
running anything, accepts plain index requirements only (`name[extras] <specifier> ; marker`: no URLs, paths or
pip options), adds the server's packages at its own exact versions (`SERVER_PACKAGES`: BentoML, which the
worker inside the sandbox serves with, and uvicorn's httptools and uvloop) and builds a virtual environment
with uv, OUTSIDE the sandbox and BEFORE the run:

- wheels only (`--no-build`), and their bytecode compiled (`compileall` on the environment's site-packages) by
  the harness's base interpreter, the one the environment was made from, started with `-I -S` (no `site`, so no
  `.pth` file a wheel installs is executed, and not the environment's own Python, whose `pyvenv.cfg` a wheel may
  overwrite): no code of a declared package runs on the host while installing; a package published only as a
  source archive is refused, named;
- from the package index only (PyPI, or the index the operator configured for uv), with uv's own cache
  (files are linked from it, so a second environment with torch costs seconds); a package the index does not
  have is the bundle's BundleError, the index itself failing the machinery's InfrastructureFailure
  (`PythonEnvironment._install`);
- once per requirements hash: `<cache>/<sha256>/`, built in a staging folder and renamed when complete, so
  concurrent builders never see half an environment and a finished one is reused as it is.

The sandbox then runs the worker on that environment, mounted read-only; the harness's own packages are not
in it unless the bundle declared them. Nothing here knows about pilots.

    env = bundle_environment(info.manifest, cache=ws.envs, where=str(bundle))   # validates the lines
    prefix = env.ensure()                                                       # builds once, then reuses
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from sandbox.bounded import Budget, remove_tree, run_bounded
from sandbox.uvindex import (
    INDEX_SETTINGS,
    build_environment,
    index_refuses_harness,
    index_settings,
    index_trouble,
    quoted,
)
from testbed.errors import BundleError, InfrastructureFailure, TestbedError

__all__ = ["PythonEnvironment", "bundle_environment", "declared_requirements", "parse_requirements", "COMPLETE"]

COMPLETE = ".testbed-complete"
"""Marker written last into a finished environment (with the requirements it was built from)."""
FIX = ("declare only packages that exist on the package index with wheels for CPython "
       f"{sys.version_info.major}.{sys.version_info.minor} on {sysconfig.get_platform()} "
       "(bentofile.yaml `python.packages`), then rebuild and export the bundle")


COMPILE_WORKERS = min(os.cpu_count() or 1, 4)
"""Processes compiling an environment's bytecode at once, each within `bounded.MAX_BUILD_MEMORY_BYTES`."""


SERVER_PACKAGES = ("bentoml", "httptools", "uvloop")
"""What the worker inside the sandbox serves with: BentoML, and uvicorn's fast HTTP parser and event loop (what
`uvicorn[standard]` adds). Every environment gets the harness's own exact versions of these."""


def _harness_packages(extras: dict[str, set[str]] | None = None) -> list[str]:
    """The server's packages at the harness's exact versions, with the extras declared for them (`extras`)."""
    extras = extras or {}
    return [f"{name}{'[' + ','.join(sorted(extras[name])) + ']' if extras.get(name) else ''}=={metadata.version(name)}"
            for name in SERVER_PACKAGES]


def parse_requirements(text: str, where: str) -> list[str]:
    """Requirement lines checked to be plain index requirements (BundleError naming the first that is not),
    sorted, then the server's packages at the harness's own exact versions (replacing any line for them, whose
    extras they keep: `bentoml[io-image]>=1.4` -> `bentoml[io-image]==<the harness's>`)."""
    found: set[str] = set()
    extras: dict[str, set[str]] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            req = None if line.startswith("-") else Requirement(line)
        except InvalidRequirement:
            req = None
        if req is None or req.url:
            raise BundleError(f"declared requirement {line!r} is not a package from the index (URLs, paths and "
                              "pip options are not accepted)", where=where, fix=FIX)
        name = canonicalize_name(req.name)
        if name not in SERVER_PACKAGES:
            found.add(str(req))
        elif req.marker is None or req.marker.evaluate():
            extras.setdefault(name, set()).update(canonicalize_name(e) for e in req.extras)
    return sorted(found) + _harness_packages(extras)


def declared_requirements(manifest: dict[str, Any], where: str) -> list[str]:
    """The requirements a bundle declared, from its parsed `bento.yaml` (`image.python_requirements`)."""
    image = manifest.get("image") or {}
    if not isinstance(image, dict):
        raise BundleError("bento.yaml `image` is not a mapping", where=where, fix=FIX)
    text = image.get("python_requirements") or ""
    if not isinstance(text, str):
        raise BundleError("bento.yaml `image.python_requirements` is not text", where=where, fix=FIX)
    return parse_requirements(text, where)


@dataclass(frozen=True)
class PythonEnvironment:
    """The Python environment one bundle runs on: its requirements and the cache folder it is built in."""

    requirements: tuple[str, ...]
    """Plain index requirements, sorted, the harness's exact server packages (`SERVER_PACKAGES`) last."""
    cache: Path
    """Folder of built environments, one sub-folder per requirements hash."""
    where: str = "bundle"
    """What to name in errors (the bundle's file)."""

    @property
    def key(self) -> str:
        """sha256 of the requirements, the interpreter and the platform: what makes two environments equal."""
        ident = {"requirements": list(self.requirements), "python": sys.version, "platform": sysconfig.get_platform(),
                 "builder": 2}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    @property
    def prefix(self) -> Path:
        return self.cache / self.key

    @property
    def ready(self) -> bool:
        return (self.prefix / COMPLETE).is_file()

    def ensure(self) -> Path:
        """The environment's prefix, built first when no finished one is cached (BundleError naming the
        packages when uv cannot install them; InfrastructureFailure when the package index failed)."""
        if self.ready:
            return self.prefix
        self.cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.key[:16]}-", dir=self.cache))
        try:
            self._build(staging / "env")
            try:
                os.rename(staging / "env", self.prefix)
            except OSError:
                if not self.ready:  # not another builder's finished environment: a folder left without its marker
                    self._replace_unfinished(staging)
        finally:
            remove_tree(staging)
        return self.prefix

    def _replace_unfinished(self, staging: Path) -> None:
        """Put the environment built in `staging/env` in place of a folder at `prefix` without the marker (an
        interrupted clean-up left it: every later build then failed renaming, `[Errno 39] Directory not empty`).
        Only a finished environment is ever renamed there, so that folder is no builder's work in progress: it is
        moved into `staging` (removed with it), under an exclusive lock on the cache folder, so that two builders
        replacing it at once never move aside each other's finished environment."""
        fd = os.open(self.cache, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.ready:
                return
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.rename(self.prefix, staging / "unfinished")
                os.rename(staging / "env", self.prefix)
            except OSError as exc:
                if not self.ready:  # not another builder's finished environment, renamed there meanwhile
                    raise TestbedError(f"cannot put the environment built for {self.where} in place: {exc}",
                                       where=str(self.prefix),
                                       fix="remove that folder (it is not a finished environment), then retry") from exc
        finally:
            os.close(fd)

    def _build(self, target: Path) -> None:
        uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
        if uv is None:
            raise BundleError("uv is not installed, so bundle environments cannot be built", where=self.where,
                              fix="run `make setup` (installs the pinned uv into the harness's venv)")
        python = _base_python()
        reqs = target.parent / "requirements.txt"
        reqs.write_text("\n".join(self.requirements) + "\n")
        budget = Budget()
        self._run([uv, "venv", "--quiet", "--no-config", "--relocatable", "--python", python, str(target)], budget,
                  uv=uv)
        self._install(uv, target, reqs, budget)
        self._run(self._compile(target), budget, checked=False)
        (target / COMPLETE).write_text("\n".join(self.requirements) + "\n")

    @staticmethod
    def _compile(target: Path) -> list[str]:
        """The command compiling the installed packages' bytecode (the sandbox mounts the environment read-only,
        so its Python could not cache it). Not with uv's `--compile-bytecode`: that starts the environment's
        Python with `site`, which executes the `.pth` files a wheel may carry, as the harness's user on the host.
        Nor with the environment's own Python: it reads the environment's `pyvenv.cfg`, which a wheel may replace
        (uv installs `.data/data/pyvenv.cfg` over it), and its `home` then chooses the standard library it
        imports. The harness's base interpreter, the one the environment was made from (same bytecode), started
        with `-I -S` reads nothing of it; compiling only parses the sources. A file that does not compile is left
        to the sandbox; the bytecode counts against the build's write bound, and each of its `COMPILE_WORKERS`
        processes has the build's memory bound (`bounded.MAX_BUILD_MEMORY_BYTES`)."""
        sites = sorted(str(p) for p in target.glob("lib/python*/site-packages"))
        return [str(_base_python()), "-I", "-S", "-m", "compileall", "-q", "-j", str(COMPILE_WORKERS), *sites]

    def _install(self, uv: str, target: Path, reqs: Path, budget: Budget) -> None:
        """uv installs the requirements into `target`. A failure is the package index's (or the machine's) when
        uv says so (`index_trouble`), or when the index cannot give the harness's own server packages either
        (`index_refuses_harness`): InfrastructureFailure, which a campaign retries. Anything else is the bundle's
        BundleError naming its packages."""
        install = [uv, "pip", "install", "--quiet", "--no-config", "--no-build", "--python",
                   str(target / "bin" / "python")]
        returncode, output = self._run([*install, "-r", str(reqs)], budget, uv=uv, tree=target, checked=False)
        if returncode == 0:
            return
        env = build_environment()
        said = index_trouble(output, env) or index_refuses_harness(install, _harness_packages(), env, budget)
        if said is None:
            raise self._refused(output)
        raise InfrastructureFailure(
            f"the package index (or this machine) failed while the environment of {self.where} was built, not the "
            f"bundle: {said}", where=f"package index ({index_settings(env)})",
            fix="nothing was recorded: run it again (a campaign retries it by itself); if it keeps failing, check the "
                f"package index configuration ({index_settings(env, values=False)}; uv's settings for it: "
                f"{', '.join(INDEX_SETTINGS)}): it must name an index this node can reach that holds the harness's own "
                "packages; and this node's free disk and its disk's health")

    def _run(self, cmd: list[str], budget: Budget, *, uv: str | None = None, tree: Path | None = None,
             checked: bool = True) -> tuple[int, str]:
        """Run one of the build's commands within its bounds (`sandbox.bounded`: BundleError naming the packages
        past one): its exit status and output; a failed `checked` command's output names the culprits."""
        problem, returncode, output = run_bounded(cmd, build_environment(), budget, uv=uv, tree=tree)
        if problem:
            raise BundleError(f"the declared package(s) {', '.join(self.culprits(''))} {problem}",
                              where=self.where, fix=FIX)
        if checked and returncode != 0:
            raise self._refused(output)
        return returncode, output

    def _refused(self, output: str) -> BundleError:
        """The bundle's error for a command that failed saying `output`, naming the packages it names."""
        names = ", ".join(self.culprits(output.strip()))
        return BundleError(f"cannot install the declared package(s) {names}: {quoted(output)}", where=self.where,
                           fix=FIX)

    def culprits(self, message: str) -> list[str]:
        """Declared packages that uv's error names, the vendor's before the harness's server packages (all of
        the vendor's when it names none)."""
        vendors = [n for n in (Requirement(r).name for r in self.requirements) if n not in SERVER_PACKAGES]
        named = [n for n in [*vendors, *SERVER_PACKAGES]
                 if re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w-])", message, re.IGNORECASE)]
        return [n for n in named if n in vendors] or named or vendors or list(SERVER_PACKAGES)


def _base_python() -> str:
    """The harness's base interpreter: every environment is made from it (`uv venv --python`), and only the harness
    decides it (not a file in the environment, which a declared package may overwrite)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def bundle_environment(manifest: dict[str, Any], cache: Path, where: str) -> PythonEnvironment:
    """The environment a bundle declared (validated, not built): see `PythonEnvironment.ensure`."""
    return PythonEnvironment(tuple(declared_requirements(manifest, where)), Path(cache), where)
