"""Safe handling of an untrusted `.bento` archive: inspect without executing, extract without escaping."""

from __future__ import annotations

import errno
import hashlib
import posixpath
import re
import shutil
import socket
import tarfile
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.errors import BundleError, InfrastructureFailure, TestbedError
from testbed.yamlio import safe_load_bounded

__all__ = ["BundleInfo", "inspect_bundle", "import_bundle", "sha256_file", "Limits"]


@dataclass(frozen=True)
class Limits:
    """Size limits for submitted archives."""

    max_archive_bytes: int = 1 << 30
    """Largest accepted `.bento` file."""
    max_unpacked_bytes: int = 4 << 30
    """Largest total size of the archive's files once unpacked."""
    max_members: int = 20_000
    """Most files and folders in one archive."""
    max_depth: int = 64
    """Most folders a member may be nested in (unpacking creates them one call inside another: a member 1,100
    folders deep raised RecursionError)."""


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle declares, read from its `bento.yaml` without running any of its code."""

    path: Path
    sha256: str
    size: int
    tag: str
    """`name:version` as BentoML will import it."""
    manifest: dict[str, Any] = field(repr=False)
    """The parsed `bento.yaml`."""
    manifest_bytes: bytes = field(default=b"", repr=False)
    """`bento.yaml` as the archive holds it (what a store keeps to vouch for these bytes later, see `vetted`)."""

    @property
    def routes(self) -> list[dict[str, Any]]:
        schema = self.manifest.get("schema") or {}
        return list(schema.get("routes") or [])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


XZ_MAGIC = b"\xfd7zXZ\x00"
"""`bentoml export` writes a `.bento` as an xz-compressed tar, the only format `bentoml import` reads for it."""
OTHER_FORMATS = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"}


MAX_MANIFEST_BYTES = 1 << 20
"""Largest `bento.yaml` read (BentoML writes a few KiB)."""
TAG_PART = re.compile(r"[a-z0-9](?:[-._a-z0-9]{0,61}[a-z0-9])?")
"""A bundle's name or version as BentoML's own tags allow them (`bentoml._internal.tag`)."""


def _unsafe(where: str, problem: str) -> BundleError:
    return BundleError(problem, where=where,
                       fix="submit the archive that `bentoml export NAME:VERSION FILE.bento` writes, unmodified")


def _open(path: Path, limits: Limits, mode: str) -> tarfile.TarFile:
    """The archive, opened with tarfile after the file-level checks (exists, size, xz)."""
    where = str(path)
    if not path.is_file():
        special = path.exists() and not path.is_dir()  # a pipe (`<(cat model.bento)`) or a device: read once, or never
        raise BundleError("a folder, not a .bento file" if path.is_dir() else
                          "a pipe or a device, not a .bento file" if special else "no such file", where=where,
                          fix="give the path of a `.bento` file made by `bentoml export NAME:VERSION FILE.bento`"
                              + (" (a copy of the .bento on disk: it is read more than once)" if special else ""))
    size = path.stat().st_size
    if size > limits.max_archive_bytes:
        raise BundleError(f"archive is {size} bytes, above the {limits.max_archive_bytes}-byte limit", where=where,
                          fix="make the bundle smaller: leave training data, checkpoints and caches out of "
                              "`include` in bentofile.yaml, then build and export it again")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic != XZ_MAGIC:
        kind = next((name for m, name in OTHER_FORMATS.items() if magic.startswith(m)), None)
        if kind:
            raise BundleError(f"a {kind} archive: a .bento is the xz-compressed tar `bentoml export` writes to a "
                              "path ending in `.bento`", where=where,
                              fix="export it again to a `.bento` path: `bentoml export NAME:VERSION model.bento` "
                                  "(BentoML picks another format for `.tar.gz`, `.zip`…)")
        raise _unsafe(where, "not a readable .bento archive (a .bento is the xz-compressed tar `bentoml export` "
                             "writes)")
    try:
        return tarfile.open(path, mode)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _unreadable(where, exc) from None


MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.ENFILE,
                            errno.EMFILE})
"""The errors of the machine under the harness (its disk full, over quota, failing or read-only; its memory or file
descriptors exhausted), never the archive's: what is unpacked is within `Limits` before it is written."""


def _machine(exc: BaseException) -> InfrastructureFailure | None:
    """`exc` as the machinery's failure, when it is the machine's (`MACHINE_ERRNOS`), not the bundle's."""
    if not (isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS):
        return None
    return InfrastructureFailure(
        f"the machine failed while the bundle was read or unpacked ([Errno {exc.errno}] {exc.strerror}"
        + (f": {exc.filename}" if exc.filename else "") + "): not the bundle's fault",
        where=f"host {socket.gethostname()}",
        fix="nothing was recorded: run the command again (a campaign retries it by itself); check that machine's free "
            f"disk (a bundle may unpack to {Limits().max_unpacked_bytes >> 30} GiB), its disk's health, memory and "
            "open-file limit if it keeps happening")


def _unreadable(where: str, exc: Exception) -> TestbedError:
    return _machine(exc) or _unsafe(where, f"not a readable .bento archive ({str(exc).splitlines()[0].rstrip(':')})")


def _checked(tar: tarfile.TarFile, where: str, limits: Limits):
    """The archive's members, each checked (inside the archive, a plain file or folder, within the limits)
    before it is yielded: one pass over the compressed stream."""
    total, count, files, folders = 0, 0, set(), set()
    try:
        for member in tar:
            count += 1
            name = member.name
            normal = posixpath.normpath(name)
            if name.startswith("/") or normal == ".." or normal.startswith("../"):
                raise _unsafe(where, f"member {name[:80]!r} points outside the archive")
            if not (member.isfile() or member.isdir()):
                raise _unsafe(where, f"member {name[:80]!r} is a link or special file; only files and folders "
                                     "allowed")
            if (depth := normal.count("/")) > limits.max_depth:
                raise _unsafe(where, f"member {name[:60]!r}… is nested {depth} folders deep (at most "
                                     f"{limits.max_depth})")
            parts = normal.split("/")
            parents = {"/".join(parts[:i]) for i in range(1, len(parts))}
            unnamed = member.size < 0 or len(name.encode()) > 4000 or max(len(p.encode()) for p in parts) > 255 \
                or member.isfile() and normal == "."
            clash = parents & files or normal in (files if member.isdir() else folders)
            if unnamed or clash or member.isfile() and parts[0] == "models" and len(parts) == 2:
                raise _unsafe(where, f"member {name[:80]!r} cannot be unpacked as BentoML lays a bundle out (an "
                                     "empty or over-long name, a negative size, a file where a folder is, or a file "
                                     "directly in models/)")
            folders |= parents | ({normal} if member.isdir() else set())
            files |= {normal} if member.isfile() else set()
            total += member.size
            if count > limits.max_members:
                raise _unsafe(where, f"the archive holds more than {limits.max_members:,} files and folders")
            if total > limits.max_unpacked_bytes:
                raise BundleError(f"the archive unpacks to more than {limits.max_unpacked_bytes >> 30} GiB",
                                  where=where, fix="make the bundle smaller: leave training data, checkpoints and "
                                                   "caches out of `include` in bentofile.yaml, then build and export "
                                                   "it again")
            yield member, normal
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _unreadable(where, exc) from None


def _manifest(manifest_bytes: bytes | None, where: str) -> tuple[dict, str]:
    """The parsed `bento.yaml` and the tag it names, checked."""
    if manifest_bytes is None:
        raise _unsafe(where, "no bento.yaml inside: this is not a BentoML bundle")
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise _unsafe(where, f"bento.yaml is larger than {MAX_MANIFEST_BYTES >> 20} MiB (BentoML writes a few KiB)")
    try:
        manifest = safe_load_bounded(manifest_bytes)
    except (yaml.YAMLError, TypeError, RecursionError, ValueError) as exc:  # ValueError: e.g. 2024-02-30
        raise _unsafe(where, f"bento.yaml is malformed ({str(exc)[:300]})") from None
    if not isinstance(manifest, dict):
        raise _unsafe(where, "bento.yaml is not a mapping of fields (`name`, `version`, `schema`, ...)")
    for key in ("name", "version"):
        value = manifest.get(key)
        if not (isinstance(value, str) and TAG_PART.fullmatch(value)) or (key == "version" and value == "latest"):
            shown = repr(value)[:80] if value is not None else "missing"
            raise BundleError(f"bento.yaml `{key}` is {shown}: not a BentoML tag part (at most 63 lowercase letters, "
                              "digits, '-', '_' and '.', starting and ending with a letter or digit; a version "
                              "other than `latest`)", where=f"{where}: bento.yaml",
                              fix="build the bundle with `bentoml build` and export it unmodified")
    _check_routes_shape(manifest, where)
    return manifest, f"{manifest['name']}:{manifest['version']}"


def inspect_bundle(path: Path, limits: Limits = Limits(), vetted: tuple[str, bytes] | None = None) -> BundleInfo:
    """Check every member is a plain file or folder inside the archive, within limits; read `bento.yaml`.
    `vetted` = (sha256, `bento.yaml` bytes) recorded when these very bytes were inspected before (by the
    harness's own submission store): while the file's hash still matches, the archive is not decompressed
    again (a whole pass over it, seconds for a large model). The sandbox's import checks every member anyway."""
    path = Path(path)
    if vetted is not None and path.is_file() and sha256_file(path) == vetted[0]:
        manifest, tag = _manifest(vetted[1], str(path))
        return BundleInfo(path=path, sha256=vetted[0], size=path.stat().st_size, tag=tag, manifest=manifest,
                          manifest_bytes=vetted[1])
    manifest_bytes, files = None, set()
    with _open(path, limits, "r:xz") as tar:
        for member, normal in _checked(tar, str(path), limits):
            files |= {normal} if member.isfile() else set()
            if normal == "bento.yaml" and member.isfile():
                try:  # read here, outside `_checked`'s own guard: a cut inside it is the archive's fault too
                    manifest_bytes = tar.extractfile(member).read(MAX_MANIFEST_BYTES + 1)
                except (tarfile.TarError, EOFError, OSError) as exc:
                    raise _unreadable(str(path), exc) from None
    manifest, tag = _manifest(manifest_bytes, str(path))
    _check_service_code(manifest, files, str(path))
    return BundleInfo(path=path, sha256=sha256_file(path), size=path.stat().st_size, tag=tag, manifest=manifest,
                      manifest_bytes=manifest_bytes)


def _check_service_code(manifest: dict, files: set[str], where: str) -> None:
    """The module `bento.yaml`'s `service` (`module:Name`) names is in the archive's `src/`, where `bentoml
    build` puts the service's code: without it the bundle cannot start, and would be found out only in a sandbox."""
    service = manifest.get("service")
    module = service.partition(":")[0] if isinstance(service, str) else ""
    stem = "src/" + module.replace(".", "/")
    if module and not {f"{stem}.py", f"{stem}/__init__.py"} & files:
        raise BundleError(f"bento.yaml `service` is {service[:80]!r}, and the archive holds no {stem}.py: the "
                          "service's code is not in the bundle", where=f"{where}: bento.yaml",
                          fix="build the bundle with `bentoml build` (it copies the service's code into src/) and "
                              "export it unmodified")


def _check_routes_shape(manifest: dict, where: str) -> None:
    """`schema.routes` as BentoML writes it: a list of mappings, each with a string `name` and mappings for
    `input` and its `properties` (whose values are mappings too) — anything else is a clear error, never a
    traceback in the contract check."""
    def bad(problem: str) -> BundleError:
        return BundleError(f"bento.yaml `schema.routes` is malformed: {problem}", where=f"{where}: bento.yaml",
                           fix="build the bundle with `bentoml build` and export it unmodified")

    schema = manifest.get("schema")
    if schema is None:
        return
    if not isinstance(schema, dict):
        raise bad("`schema` is not a mapping")
    routes = schema.get("routes")
    if routes is None:
        return
    if not isinstance(routes, list):
        raise bad("`routes` is not a list")
    for i, route in enumerate(routes):
        if not isinstance(route, dict) or not isinstance(route.get("name"), str):
            raise bad(f"route {i} is not a mapping with a string `name`")
        spec = route.get("input")
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise bad(f"route {route['name']!r}: `input` is not a mapping")
        props, required = spec.get("properties"), spec.get("required")
        if props is not None and not (isinstance(props, dict) and all(isinstance(v, dict) for v in props.values())):
            raise bad(f"route {route['name']!r}: `input.properties` is not a mapping of mappings")
        if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
            raise bad(f"route {route['name']!r}: `input.required` is not a list of names")


def import_bundle(path: Path, bentoml_home: Path, limits: Limits = Limits()) -> str:
    """Import an archive into a private BentoML home as `bentoml import` lays it out: the bento under
    `bentos/NAME/VERSION` (with a `latest` file), the models it carries under `models/`, and the home's other
    folders (the sandbox mounts the home read-only, where BentoML could not create them). No BentoML and no vendor
    code runs (a subprocess running `bentoml import` cost ~1 s of every evaluation). One pass over the compressed
    stream: each member is checked as `inspect_bundle` checks it, then extracted with tarfile's `data` filter
    (no links, devices, absolute paths, setuid or group/other write bits); a refused archive leaves nothing
    behind. Returns the tag."""
    path, where = Path(path), str(path)
    for folder in ("bentos", "models", "envs", "tmp"):  # what BentoML creates in a home it opens
        (bentoml_home / folder).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=bentoml_home))
    try:
        with _open(path, limits, "r:xz") as tar:
            for member, _ in _checked(tar, where, limits):
                tar.extract(member, staging, filter="data")
        manifest_file = staging / "bento.yaml"
        with open(manifest_file, "rb") if manifest_file.is_file() else nullcontext() as fh:
            _, tag = _manifest(fh.read(MAX_MANIFEST_BYTES + 1) if fh else None, where)
        name, version = tag.split(":")
        models = staging / "models"
        if models.is_dir():
            for model in models.iterdir():
                target = bentoml_home / "models" / model.name
                target.mkdir(parents=True, exist_ok=True)
                for item in model.iterdir():
                    if not (target / item.name).exists():
                        item.rename(target / item.name)
            shutil.rmtree(models)
        dest = bentoml_home / "bentos" / name / version
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(dest)
        (dest.parent / "latest").write_text(version)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _machine(exc) or BundleError(f"the archive could not be unpacked ({str(exc).splitlines()[0]})",
                                           where=where, fix="re-export the bundle with `bentoml export` using "
                                                            "BentoML 1.4") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tag
