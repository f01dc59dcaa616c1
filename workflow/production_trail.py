"""The production trail of a pilot: every move of its `production` alias (promote, rollback, withdraw) as an
entry of an append-only, hash-chained file `TESTBED_HOME/production/<pilot>.jsonl`, each mirrored as a
registered-model tag `testbed.production.NNNN` (the chain's anchor: a trail cut short, or rewritten from some
entry on, no longer ends where the tags say). `write_move` sets the alias and appends the entry, both or neither;
the replays (`trail_version`, `left_at`, `replay`) read what the trail says was in service, whatever the alias
says. Used by `workflow.promote`."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path

from evaluation.tracking import absent, registered_model_name
from testbed.errors import AuditError
from workflow.ledger import Anchor, AuditChain

__all__ = ["ALIAS", "MOVE_TAG", "PUT_FIELDS", "left_at", "production_chain", "replay", "trail_version", "write_move"]

ALIAS = "production"
MOVE_TAG = "testbed.production."
"""The registered model's tags mirroring the production trail: `testbed.production.0001`, one a move."""


def production_chain(client, home: Path, pilot: str) -> AuditChain:
    """The pilot's trail, anchored to its last move as the registered model's tags mirror it (read when the
    trail is locked). `client`: the MLflow client of the tracking store."""
    name = registered_model_name(pilot)

    def anchor(entries: list[dict]) -> Anchor:
        from mlflow.exceptions import MlflowException

        try:
            tags = client.get_registered_model(name).tags
        except MlflowException as exc:  # no registered model yet: nothing mirrored
            if not absent(exc):
                raise  # the store failing says nothing of the trail: never "entries never recorded" for it
            tags = {}
        moves = {k: k.removeprefix(MOVE_TAG) for k in tags if k.startswith(MOVE_TAG)}
        mirror = f"the registered model {name}'s testbed.production tags"
        if not moves:
            return Anchor(0, "", mirror)
        wrong = [k for k, n in moves.items() if not (n.isascii() and n.isdigit())]
        last = wrong[0] if wrong else max(moves, key=lambda k: int(moves[k]))  # by number: 10000 after 9999
        try:
            move = json.loads(tags[last])
            seq, digest = int(moves[last]), move["hash"]
            said = (f"{move.get('action')} of version {move.get('version')} ({move.get('submission')}) by "
                    f"{move.get('by')} at {move.get('at')}")
        except (ValueError, TypeError, KeyError, AttributeError):
            raise AuditError(f"the registered model's tag {last} is malformed", where=f"models:/{name}",
                             fix="restore the registered model's tags from a backup") from None
        return Anchor(seq, str(digest), f"the registered model {name}'s {last} tag", said)

    return AuditChain(home / "production" / f"{pilot}.jsonl", anchor, _move_record)


PUT_FIELDS = ("version", "submission", "run_id", "bundle_sha256", "review_hash")
"""What a move records of the version it puts in service (all None when it puts none: a withdrawal)."""


def write_move(client, txn, pilot: str, action: str, put: dict[str, str] | None, by: str, note: str,
               previous: str | None, alias: str | None) -> dict:
    """Set the alias and append the entry to the locked trail `txn` (`put`: the `PUT_FIELDS` of the version put
    in service, None for none; `previous`: what the trail had in service; `alias`: what the alias named, put back
    should the entry fail)."""
    name = registered_model_name(pilot)
    ok = put is not None
    if ok:
        client.set_registered_model_alias(name, ALIAS, put["version"])
    elif alias is not None:
        client.delete_registered_model_alias(name, ALIAS)
    event = {"action": action, "pilot": pilot, **{k: put[k] if ok else None for k in PUT_FIELDS},
             "previous_version": previous, "by": by, "note": note,
             "at": datetime.now(UTC).isoformat(timespec="seconds")}
    mirrored: list[str] = []

    def mirror(entry: dict) -> None:  # the registry's tag first, then the trail's line: both or neither
        key = f"{MOVE_TAG}{entry['seq']:04d}"
        mirrored.append(key)  # before: a Ctrl-C as the registry's write returns still takes the tag back
        client.set_registered_model_tag(name, key, json.dumps(
            {k: entry[k] for k in ("action", "version", "submission", "by", "at", "hash")}))

    try:
        return txn.append(event, mirror=mirror)
    except BaseException:  # not recorded: put the alias (and the tag) back as they were
        from mlflow.exceptions import MlflowException

        if alias is None:
            if ok:
                client.delete_registered_model_alias(name, ALIAS)
        else:
            client.set_registered_model_alias(name, ALIAS, alias)
        for key in mirrored:
            with contextlib.suppress(MlflowException):  # never set (its write failed): nothing to take back
                client.delete_registered_model_tag(name, key)
        raise


def _move_record(entry: dict) -> None:
    """ValueError unless `entry` is a production move as `write_move` writes it."""
    text = ("by", "at", "pilot")
    optional = (*PUT_FIELDS, "previous_version")
    if entry.get("action") not in ("promote", "rollback") or any(not isinstance(entry.get(k), str) for k in text) \
            or any(k not in entry or not isinstance(entry[k], str | None) for k in optional) \
            or (entry["action"] == "promote" and not (entry["version"] and entry["submission"])):
        raise ValueError("not a production move: `action` promote or rollback, `by`, `at`, `pilot` and the version "
                         "it put in service")


def trail_version(entries: list[dict]) -> str | None:
    """The version a trail's last move put in production (None: none yet, or withdrawn)."""
    return entries[-1]["version"] if entries else None


def left_at(entries: list[dict], submission: str) -> str | None:
    """When a trail's moves last took `submission` out of production (None: in service now, or never put in)."""
    put = [i for i, e in enumerate(entries) if e["submission"] == submission]
    return entries[put[-1] + 1]["at"] if put and put[-1] + 1 < len(entries) else None


def replay(entries: list[dict]) -> list[dict]:
    """Replay the trail: a promotion pushes its version, a rollback pops back to its target (or empties)."""
    stack: list[dict] = []
    for e in entries:
        if e["action"] == "promote":
            stack.append(e)
        elif e["action"] == "rollback":
            while stack and stack[-1]["version"] != e["version"]:
                stack.pop()
    return stack
