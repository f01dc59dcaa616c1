"""Append-only, hash-chained audit trails (reviews per submission, production moves per pilot).

One JSON object per line. Each entry carries its position (`seq`), the hash of the entry before it (`prev`,
64 zeros for the first) and its own `hash`: the sha256 of its canonical JSON without `hash`. Editing an entry
breaks its own hash; removing or reordering entries breaks the `prev` links. The chain has no secret, so a
mirror kept elsewhere (MLflow tags) records each entry as it is written, before the line is: a chain read
with its `anchor` (the last entry the mirror recorded, read once the file is locked and read) must hold that
entry, or every read refuses (entries were removed, or the file replaced; when the mirror is just one entry
ahead, a write was cut short, and the next writer's entry takes its place, recording what it replaces), and
any entry after it is one the mirror never recorded (forged by someone who can write the file): reads leave such
entries out with a warning, and writers refuse to append after them. Writers hold an exclusive `flock` on the
file for the whole read-check-mirror-append, so two operators acting at once are serialised, and each line is
written with one `write` on an `O_APPEND` descriptor and flushed to disk before the lock is released: an entry
is whole or absent.

    chain = AuditChain(path, anchor=lambda entries: Anchor(...))
    with chain.locked() as txn:          # exclusive; txn.entries are the verified entries so far
        ...decide from txn.entries...
        entry = txn.append({"action": "promote", ...}, mirror=record_elsewhere)
    chain.entries()                      # verified read (shared lock); AuditError names the broken line
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import AuditError

__all__ = ["AuditChain", "Anchor", "Anchoring", "CutShort", "Mirror", "GENESIS", "REPLACES", "entry_hash"]

GENESIS = "0" * 64
"""The `prev` of the first entry."""
REPLACES = "replaces"
"""The field of an entry written in the place of one the mirror recorded but the trail never held (its recording
cut short, or the trail's last entry removed by hand): that entry's `seq`, `hash`, `mirror` and what the mirror
`recorded` of it. The chain then still says that an entry stood there, and what it was, once the mirror holds
the new one."""
_CHAIN_KEYS = ("seq", "prev", "hash")


@dataclass(frozen=True)
class Anchor:
    """The last entry of the trail as a mirror recorded it elsewhere: the trail must hold it, and nothing after
    it counts. `seq` 0: the mirror recorded no entry (every entry in the file is then unconfirmed)."""

    seq: int
    hash: str
    mirror: str
    """Where it was recorded, for the message (e.g. "MLflow run 3f2a…'s testbed.review tags")."""
    said: str = ""
    """What the mirror recorded of that entry (the decision or move, who, when): kept by an entry that takes its
    place when the trail never held it (`REPLACES`)."""

    @property
    def latest(self) -> str:
        return f"entry {self.seq}" if self.seq else "no entry"


Mirror = Callable[[dict[str, Any]], None]
"""Records a new entry elsewhere (e.g. as MLflow tags) before it is written to the trail."""
Anchoring = Callable[[list[dict[str, Any]]], "Anchor | None"]
"""What the mirror holds now, given the trail's well-chained entries (e.g. the tags of the run the last review
judged); None: nothing to check against."""


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 of the entry's canonical JSON (sorted keys, no spaces), `hash` itself excluded; ValueError when it
    holds a number JSON has not (NaN, infinity)."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                     allow_nan=False).encode()).hexdigest()


class CutShort(AuditError):
    """The mirror recorded the entry that would follow the trail's last one: its write was cut short (or the last
    entry was removed). Reads refuse; a writer may go on, its entry taking that place."""


class _Twice(ValueError):
    """A JSON object gives a key twice (its name)."""


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refusing a key given twice: `json` keeps the last, so a line could show one
    value to a person or a tool that reads the first while its hash matches the other."""
    entry = dict(pairs)
    if len(entry) != len(pairs):
        raise _Twice(next(k for i, (k, _) in enumerate(pairs) if any(k == other for other, _ in pairs[:i])))
    return entry


def _verify(path: Path, data: bytes, anchoring: Anchoring | None = None,
            validate: Callable[[dict[str, Any]], object] | None = None, *, writing: bool = False
            ) -> tuple[list[dict[str, Any]], list[int], Anchor | None]:
    """(the entries the mirror recorded, in order; the seqs of those after its last one; the anchor). Without
    an anchor, every entry counts. `validate` raises ValueError (or TypeError, KeyError) for an entry that is
    not a valid record of its trail, however well chained. `writing`: a mirror one entry ahead (`CutShort`)
    lets every entry count, for the writer whose entry takes that place."""
    if data and not data.endswith(b"\n"):
        raise AuditError("the last entry is incomplete (no end of line): the file was cut or is being edited",
                         where=str(path), fix="restore the file from a backup; entries are never rewritten")
    entries, prev = [], GENESIS
    for number, line in enumerate(data.splitlines(), 1):
        where = f"{path}:{number}"
        try:
            entry = json.loads(line, object_pairs_hook=_once_each)
            digest = entry_hash(entry) if isinstance(entry, dict) else None
        except _Twice as exc:
            raise AuditError(f"entry {number} was edited: it gives `{exc}` twice (a reader keeps one of them, its hash "
                             "the other)", where=where, fix="restore the file from a backup") from None
        except (ValueError, RecursionError):
            raise AuditError("the entry is not valid JSON", where=where, fix="restore the file from a backup") from None
        if not isinstance(entry, dict) or any(k not in entry for k in _CHAIN_KEYS):
            raise AuditError("the entry lacks its chain fields (seq, prev, hash)", where=where,
                             fix="restore the file from a backup")
        if entry["hash"] != digest:
            raise AuditError(f"entry {number} was edited: its content no longer matches its hash", where=where,
                             fix="restore the file from a backup; a decision is changed by a new entry, never by "
                                 "editing an old one")
        if entry["prev"] != prev or entry["seq"] != number:
            raise AuditError(f"entry {number} does not follow entry {number - 1}: an entry was removed, inserted "
                             "or reordered", where=where, fix="restore the file from a backup")
        try:
            if validate is not None:
                validate(entry)
        except (ValueError, TypeError, KeyError) as exc:
            reason = str(exc).splitlines()[:3]
            raise AuditError(f"entry {number} is not a valid record of this trail ({' '.join(reason)[:200]})",
                             where=where, fix="restore the file from a backup") from None
        entries.append(entry)
        prev = entry["hash"]
    anchor = anchoring(entries) if anchoring is not None else None
    if anchor is None:
        return entries, [], None
    if anchor.seq and not path.exists() and not (writing and anchor.seq == 1):
        raise AuditError(f"there is no trail here, yet {anchor.mirror} recorded {anchor.seq} entr"
                         f"{'y' if anchor.seq == 1 else 'ies'} of it: this is not the TESTBED_HOME the decisions were "
                         "recorded under, or the file was removed", where=str(path),
                         fix="set TESTBED_HOME to the folder the submissions were made in (with this MLflow store); "
                             "if the file was removed, restore it from a backup")
    if anchor.seq == len(entries) + 1:
        if writing:
            warnings.warn(f"{path}: entry {anchor.seq}, which {anchor.mirror} recorded"
                          f"{' (' + anchor.said + ')' if anchor.said else ''}, was never written to the trail (its "
                          "recording cut short, or the trail's last entry removed): this entry takes its place, and "
                          f"says so (`{REPLACES}`)", stacklevel=4)
            return entries, [], anchor
        raise CutShort(f"entry {anchor.seq}, which {anchor.mirror} recorded, was never written to the trail: its "
                       "recording was cut short (or the trail's last entry was removed)", where=str(path),
                       fix="make the decision (review, promotion, rollback) again: the new entry takes its place; "
                           f"if entry {anchor.seq} should be there, restore the file from a backup")
    if anchor.seq and not any((e["seq"], e["hash"]) == (anchor.seq, anchor.hash) for e in entries):
        raise AuditError(f"entry {anchor.seq} (hash {anchor.hash[:12]}…), which {anchor.mirror} recorded, is not in "
                         f"the trail: entries were removed or the file was replaced", where=str(path),
                         fix=f"restore the file from a backup (the last entry it must hold: see {anchor.mirror})")
    return entries[:anchor.seq], [e["seq"] for e in entries[anchor.seq:]], anchor


def _unconfirmed(anchor: Anchor, seqs: list[int]) -> str:
    span = f"entry {seqs[0]}" if len(seqs) == 1 else f"entries {seqs[0]}–{seqs[-1]}"
    return (f"{span} follow{'s' if len(seqs) == 1 else ''} the last entry {anchor.mirror} recorded "
            f"({anchor.latest}) and {'was' if len(seqs) == 1 else 'were'} never recorded there: written by someone "
            "who can write the file (forged), or a write cut short")


class _Transaction:
    def __init__(self, chain: AuditChain, fd: int, entries: list[dict[str, Any]], anchor: Anchor | None = None):
        self.chain, self._fd, self.entries, self._anchor = chain, fd, entries, anchor
        """`anchor`: the mirror's last entry; one ahead of `entries`, the trail never held it, and the next entry
        takes its place (`REPLACES`)."""
        self._deferred, self._ctrl_c = ExitStack(), None
        """Ctrl-C held back from an entry's write to the lock's release (`_ctrl_c`: noted, once held back)."""

    def release(self) -> bool:
        """Ctrl-C handled again; whether one came while it was held back."""
        self._deferred.close()
        return bool(self._ctrl_c)

    def append(self, payload: dict[str, Any], mirror: Mirror | None = None) -> dict[str, Any]:
        """Chain `payload` after the last entry, record it with `mirror` (nothing is written when that fails),
        then write it durably; returns the entry with seq/prev/hash."""
        if any(k in payload for k in _CHAIN_KEYS) or payload.get(REPLACES) is not None:
            raise ValueError(f"payload must not set {(*_CHAIN_KEYS, REPLACES)}")
        payload = {k: v for k, v in payload.items() if k != REPLACES}  # a record's own None: the chain's to set
        lost = self._anchor
        if lost is not None and lost.seq == len(self.entries) + 1:
            payload = {**payload, REPLACES: {"seq": lost.seq, "hash": lost.hash, "mirror": lost.mirror,
                                              "recorded": lost.said}}
        entry = {**payload, "seq": len(self.entries) + 1, "prev": self.entries[-1]["hash"] if self.entries
                 else GENESIS}
        entry["hash"] = entry_hash(entry)
        if mirror is not None:
            mirror(entry)
        line = (json.dumps(entry, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()
        if self._ctrl_c is None:  # from the write to the lock's release: a Ctrl-C must not undo the mirror then
            self._ctrl_c = self._deferred.enter_context(_ctrl_c_deferred())
        size = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "written in part")
            os.fsync(self._fd)
        except OSError as exc:  # all or nothing: the caller undoes the mirror, so the line goes too
            with suppress(OSError):
                os.ftruncate(self._fd, size)
            raise AuditError(f"the entry could not be written ({exc.strerror or exc})", where=str(self.chain.path),
                             fix="free disk space (or fix the folder's permissions), then retry") from None
        self.entries.append(entry)
        return entry


@contextmanager
def _ctrl_c_deferred() -> Iterator[list[bool]]:
    """Ctrl-C held back while the trail's line is written and flushed: a SIGINT then is noted (the list yielded)
    and raised once the lock is released (`AuditChain.locked`), never between the write and the caller's undo of
    the mirror, which would leave an entry the mirror lacks. Python runs SIGINT's handler in the main thread,
    whichever thread the kernel chose, so it is that handler that is swapped (where it is Python's default)."""
    import signal
    import threading

    noted: list[bool] = []
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield noted
        return
    signal.signal(signal.SIGINT, lambda signum, frame: noted.append(True))
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class AuditChain:
    """One append-only JSONL audit file."""

    def __init__(self, path: Path, anchor: Anchoring | None = None,
                 validate: Callable[[dict[str, Any]], object] | None = None):
        self.path, self.anchor, self.validate = path, anchor, validate
        """`anchor` is asked once the file is locked and read (what the mirror holds then); `validate` checks each
        entry's content (see `_verify`)."""

    @contextmanager
    def locked(self) -> Iterator[_Transaction]:
        """Exclusive lock for a read-decide-append; entries are verified before anything is decided, and an
        entry the mirror never recorded is refused (AuditError) rather than built upon."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, txn = self._open(os.O_RDWR | os.O_APPEND | os.O_CREAT), None
        except AuditError:
            raise
        except OSError as exc:  # read-only (the file or its folder): nothing decided or mirrored yet
            raise self._unopenable(exc, "opened to record an entry", "writable by this user (the file and its "
                                   "folder; e.g. `chmod u+w` it), then retry: nothing was recorded") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries, unconfirmed, anchor = _verify(self.path, self._read(fd), self.anchor, self.validate,
                                                   writing=True)
            if unconfirmed:
                raise self._refused(anchor, unconfirmed, "nothing is added after them")
            txn = _Transaction(self, fd, entries, anchor)
            yield txn
        finally:
            try:
                interrupted = txn is not None and txn.release()
            finally:
                os.close(fd)  # releases the lock
        if interrupted:  # held back while the entry was written and mirrored: it stops what comes after them
            raise KeyboardInterrupt

    def _refused(self, anchor: Anchor, seqs: list[int], then: str) -> AuditError:
        return AuditError(f"{_unconfirmed(anchor, seqs)}: {then}", where=str(self.path),
                          fix=f"if nobody recorded them, cut them from the end of the file (keep the first "
                              f"{anchor.seq} line(s)), then retry; if one is yours, its recording failed: cut it and "
                              "record it again")

    def entries(self, *, strict: bool = False) -> list[dict[str, Any]]:
        """Every entry the mirror recorded, oldest first, after checking the whole chain (empty when the file does
        not exist); entries after the mirror's last one are left out with a warning (`strict`, the audit's: an
        AuditError)."""
        try:
            fd = self._open(os.O_RDONLY)
        except FileNotFoundError:
            return _verify(self.path, b"", self.anchor, self.validate)[0]  # no file: none, unless a mirror has one
        except OSError as exc:
            raise self._unopenable(exc, "read", "readable by this user (e.g. `chmod u+r` it), then retry") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                data = self._read(fd)
            except OSError as exc:
                raise AuditError(f"the trail cannot be read ({exc.strerror or exc})", where=str(self.path),
                                 fix="restore the file from a backup") from None
            entries, unconfirmed, anchor = _verify(self.path, data, self.anchor, self.validate)
        finally:
            os.close(fd)
        if unconfirmed and strict:
            raise self._refused(anchor, unconfirmed, "the trail holds entries its mirror never recorded")
        if unconfirmed:
            warnings.warn(f"{self.path}: {_unconfirmed(anchor, unconfirmed)}: left out; no entry can follow until "
                          f"they are cut from the end of the file (keep its first {anchor.seq} line(s))", stacklevel=2)
        return entries

    def _unopenable(self, exc: OSError, doing: str, make: str) -> AuditError:
        """Why the trail cannot be `doing`: a file where one of its folders should be, or access (`make` it so)."""
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            blocker = next((p for p in self.path.parents if p.is_file()), self.path.parent)
            return AuditError(f"the trail cannot be {doing}: {blocker} is a file, where a folder is needed",
                              where=str(self.path), fix=f"move {blocker} away (TESTBED_HOME's folders are the "
                              "testbed's), then retry: nothing was recorded")
        return AuditError(f"the trail cannot be {doing} ({exc.strerror or exc})", where=str(self.path),
                          fix=f"make it {make}")

    def _open(self, flags: int) -> int:
        """The trail's descriptor; AuditError when something other than a file is in its place (a folder, or a named
        pipe, which is opened without waiting for a writer)."""
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK, 0o644)
        except IsADirectoryError:
            fd = None
        if fd is not None and stat.S_ISREG(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)
            return fd
        if fd is not None:
            os.close(fd)
        raise AuditError("the trail is not a file: a folder or another special file is in its place",
                         where=str(self.path), fix="move it away and restore the file from a backup (a submission "
                         "or pilot without decisions yet has no trail file)")

    @staticmethod
    def _read(fd: int) -> bytes:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
