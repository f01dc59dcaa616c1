"""Each evaluation's private copy of a stored bundle: copied into a folder only the harness can read and checked
against the hash recorded at submission, so that every later read (the model scan, the sandbox job, the logged
artifact) reads the bytes hashed, whatever happens to the stored file meanwhile. The copies of a process that
died first are removed by the next one made."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from sandbox.bundle import sha256_file
from testbed.errors import AuditError, BundleError

__all__ = ["COPY_PREFIX", "private_copy"]


COPY_PREFIX = "testbed-bundle-"
"""`private_copy`'s folders in the temporary directory: `testbed-bundle-<pid of the process holding it>-<random>`."""


def _remove_orphaned_copies() -> None:
    """Remove this user's private copies whose process no longer exists: a killed evaluation never runs its
    cleanup, and each copy is a whole bundle (up to 1 GiB)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{COPY_PREFIX}*-*"):
        pid = folder.name[len(COPY_PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or folder.lstat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # gone meanwhile, or a live process of another user
            continue


def private_copy(stored: Path, sha256: str, name: str) -> Path:
    """A copy of a stored bundle in a new folder only the harness can read, checked against the hash recorded
    when it was stored (AuditError naming the store's file otherwise): every later read (the model scan, the
    sandbox job, the logged artifact) reads these bytes, so replacing the stored file meanwhile changes nothing.
    The caller removes the folder (`shutil.rmtree(copy.parent)`); the copies of a process that died first (killed
    mid-evaluation) are removed by the next one made here."""
    _remove_orphaned_copies()
    folder = Path(tempfile.mkdtemp(prefix=f"{COPY_PREFIX}{os.getpid()}-"))
    copy = folder / stored.name
    try:
        shutil.copyfile(stored, copy)
        found = sha256_file(copy)
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise BundleError(f"the stored bundle of {name} cannot be read ({exc.strerror or exc})", where=str(stored),
                          fix="restore the file from a backup, or submit the vendor's original bundle again") from None
    if found != sha256:
        shutil.rmtree(folder, ignore_errors=True)
        raise AuditError(f"the stored bundle of {name} is not the one submitted: sha256 {found[:16]}…, recorded at "
                         f"submission {sha256[:16]}…", where=str(stored),
                         fix="restore the file from a backup, or submit the vendor's original bundle again")
    return copy
