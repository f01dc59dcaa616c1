"""Append-only, hash-chained audit trails (reviews per submission, production moves per pilot).

One JSON object per line. Each entry carries its position (`seq`), the hash of the entry before it (`prev`,
64 zeros for the first) and its own `hash`: the sha256 of its canonical JSON without `hash`. Editing an entry
breaks its own hash; removing or reordering entries breaks the `prev` links. Removing the last entries, or
replacing the whole file with a new chain, breaks neither: a chain built with an `anchor` (the last entry as a
mirror elsewhere recorded it, e.g. MLflow tags) must still hold that entry, or every read refuses. Writers hold
an exclusive `flock` on the file for the whole read-check-append, so two operators acting at once are
serialised, and each line is written with one `write` on an `O_APPEND` descriptor and flushed to disk before the
lock is released: an entry is whole or absent.

    chain = AuditChain(path)
    with chain.locked() as txn:          # exclusive; txn.entries are the verified entries so far
        ...decide from txn.entries...
        entry = txn.append({"action": "promote", ...})
    chain.entries()                      # verified read (shared lock); AuditError names the broken line
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import AuditError

__all__ = ["AuditChain", "Anchor", "GENESIS", "entry_hash"]

GENESIS = "0" * 64
"""The `prev` of the first entry."""
_CHAIN_KEYS = ("seq", "prev", "hash")


@dataclass(frozen=True)
class Anchor:
    """An entry of the trail as a mirror recorded it elsewhere: the trail must still hold it."""

    seq: int
    hash: str
    mirror: str
    """Where it was recorded, for the message (e.g. "MLflow run 3f2a…'s testbed.review tags")."""


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 of the entry's canonical JSON (sorted keys, no spaces), `hash` itself excluded."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                     allow_nan=False).encode()).hexdigest()


def _verify(path: Path, data: bytes, anchor: Anchor | None = None) -> list[dict[str, Any]]:
    if data and not data.endswith(b"\n"):
        raise AuditError("the last entry is incomplete (no end of line): the file was cut or is being edited",
                         where=str(path), fix="restore the file from a backup; entries are never rewritten")
    entries, prev = [], GENESIS
    for number, line in enumerate(data.splitlines(), 1):
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except ValueError:
            raise AuditError("the entry is not valid JSON", where=where, fix="restore the file from a backup") from None
        if not isinstance(entry, dict) or any(k not in entry for k in _CHAIN_KEYS):
            raise AuditError("the entry lacks its chain fields (seq, prev, hash)", where=where,
                             fix="restore the file from a backup")
        if entry["hash"] != entry_hash(entry):
            raise AuditError(f"entry {number} was edited: its content no longer matches its hash", where=where,
                             fix="restore the file from a backup; a decision is changed by a new entry, never by "
                                 "editing an old one")
        if entry["prev"] != prev or entry["seq"] != number:
            raise AuditError(f"entry {number} does not follow entry {number - 1}: an entry was removed, inserted "
                             "or reordered", where=where, fix="restore the file from a backup")
        entries.append(entry)
        prev = entry["hash"]
    if anchor is not None and not any((e["seq"], e["hash"]) == (anchor.seq, anchor.hash) for e in entries):
        raise AuditError(f"entry {anchor.seq} (hash {anchor.hash[:12]}…), which {anchor.mirror} recorded, is not in "
                         f"the trail: entries were removed or the file was replaced", where=str(path),
                         fix=f"restore the file from a backup (the last entry it must hold: see {anchor.mirror})")
    return entries


class _Transaction:
    def __init__(self, chain: AuditChain, fd: int, entries: list[dict[str, Any]]):
        self.chain, self._fd, self.entries = chain, fd, entries

    def append(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Chain `payload` after the last entry and write it durably; returns the entry with seq/prev/hash."""
        if any(k in payload for k in _CHAIN_KEYS):
            raise ValueError(f"payload must not set {_CHAIN_KEYS}")
        entry = {**payload, "seq": len(self.entries) + 1, "prev": self.entries[-1]["hash"] if self.entries
                 else GENESIS}
        entry["hash"] = entry_hash(entry)
        line = (json.dumps(entry, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()
        if os.write(self._fd, line) != len(line):
            raise AuditError("the entry could not be written whole (disk full?)", where=str(self.chain.path),
                             fix="free disk space, then remove the incomplete last line by hand and retry")
        os.fsync(self._fd)
        self.entries.append(entry)
        return entry


class AuditChain:
    """One append-only JSONL audit file."""

    def __init__(self, path: Path, anchor: Anchor | None = None):
        self.path, self.anchor = path, anchor

    @contextmanager
    def locked(self) -> Iterator[_Transaction]:
        """Exclusive lock for a read-decide-append; entries are verified before anything is decided."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield _Transaction(self, fd, _verify(self.path, self._read(fd), self.anchor))
        finally:
            os.close(fd)  # releases the lock

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first, after checking the whole chain (empty when the file does not exist)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return _verify(self.path, b"", self.anchor)  # no file: no entries, unless a mirror recorded one
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return _verify(self.path, self._read(fd), self.anchor)
        finally:
            os.close(fd)

    @staticmethod
    def _read(fd: int) -> bytes:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
