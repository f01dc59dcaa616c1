"""Submissions: a vetted `.bento`, its vendor profile and its hash, stored once per (pilot, bytes)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from evaluation.families import FAMILIES
from evaluation.scorecard import Scorecard
from pilots.spec import PilotSpec
from pilots.vendor import VendorProfile
from sandbox.bundle import inspect_bundle, sha256_file
from sandbox.environment import bundle_environment
from testbed.config import Workspace
from testbed.errors import AuditError, NotFound, Refused, SpecError
from testbed.text import hidden
from testbed.yamlio import load_model

__all__ = ["Submission", "SubmissionStore", "load_vendor"]

VETTED_MANIFEST = "bento.yaml"
"""The bundle's `bento.yaml`, kept beside it at submission (see `SubmissionStore.vetted`)."""


class Submission(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    id: str
    """`<pilot>-<first 12 hex of the bundle's sha256>`: the same bytes give the same id."""
    pilot: str
    """The pilot it was submitted to."""
    vendor: VendorProfile
    """The vendor profile given at submission."""
    bundle_sha256: str
    """sha256 of the `.bento` bytes."""
    bundle_size: int
    """Size of the `.bento` file in bytes."""
    bento_tag: str
    """`name:version` declared in the bundle."""
    apis: list[str]
    """API names the bundle declares."""
    submitted_at: str
    """When it was first submitted (UTC)."""


ID = re.compile(r"[a-z0-9][a-z0-9-]*-[0-9a-f]{12}")
"""A submission id (no path separators: ids name folders)."""


PLAIN_FIELDS = {"name": "give the company's legal name as plain text on one line",
                "licence": "give the licence's SPDX id (e.g. Apache-2.0) or its name, on one line",
                "contact": "give one e-mail address, or leave `contact` out",
                "model_description": "describe the model in plain text (line breaks are fine)"}
"""The profile's free-text fields and the fix for each. They reach evaluators' terminals and pages (review list
and show, the leaderboard), where each must read as what it is: checked as a submission comes in (records stored
before stay readable, and are shown written out)."""


def _plain_fields(vendor: VendorProfile, where: str) -> None:
    for field, fix in PLAIN_FIELDS.items():
        value = getattr(vendor, field)
        if value is None:
            continue
        if hidden(value.replace("\n", " ").replace("\t", " ") if field == "model_description" else value):
            raise SpecError(f"field `{field}`: {repr(value)[:80]} holds control or formatting characters (an escape "
                            "sequence, a bidirectional override" + (")" if field == "model_description" else
                                                                    ", a line break)"), where=where, fix=fix)
        if not value.strip():  # spaces only (ASCII, ideographic, no-break): an empty vendor on every list
            raise SpecError(f"field `{field}` is blank", where=where, fix=fix)
    if vendor.contact is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", vendor.contact):
        raise SpecError(f"field `contact`: {vendor.contact[:80]!r} is not an e-mail address", where=where,
                        fix=PLAIN_FIELDS["contact"])


def load_vendor(path: Path) -> VendorProfile:
    """A vendor profile file, checked as a submission checks it (`testbed check --vendor` reads it so too)."""
    vendor = load_model(path, VendorProfile)
    _plain_fields(vendor, str(path))
    return vendor


def _read(path: Path) -> Submission:
    try:
        return Submission.model_validate_json(path.read_bytes())
    except ValueError as exc:
        raise AuditError(f"the stored submission record is unreadable ({str(exc).splitlines()[0][:200]})",
                         where=str(path), fix="restore the file from a backup") from None
    except OSError as exc:  # a folder, a dangling link, no permission where the record belongs
        raise AuditError(f"the stored submission record cannot be read ({exc.strerror or type(exc).__name__})",
                         where=str(path), fix="restore the file from a backup") from None


class SubmissionStore:
    def __init__(self, ws: Workspace):
        self.root, self.envs = ws.submissions, ws.envs

    def submit(self, spec: PilotSpec, bundle: Path, vendor: Path | VendorProfile) -> tuple[Submission, bool]:
        """Validate, build the bundle's declared Python environment (a package that cannot be installed is a
        BundleError naming it) and store with the vendor profile (or its YAML file); returns the submission and
        whether it is new (False: same bytes, stored before with the profile it had then)."""
        if isinstance(vendor, VendorProfile):
            _plain_fields(vendor, "the vendor profile")
        else:
            vendor = load_vendor(vendor)
        info = inspect_bundle(bundle)
        FAMILIES.get(spec.family).contract.check_bundle(info, spec.id)
        bundle_environment(info.manifest, self.envs, where=str(bundle)).ensure()
        sub_id = f"{spec.id}-{info.sha256[:12]}"
        if os.path.lexists(self.root / sub_id / "submission.json"):  # submitted before, or unreadable: `get` says
            return self._resubmitted(sub_id, info.sha256), False
        if os.path.lexists(self.root / sub_id):
            raise AuditError(f"{self.root / sub_id} is in the way of this submission: it holds no submission record",
                             where=str(self.root / sub_id), fix="move it out of the submissions folder (the testbed "
                             "writes each submission whole, so it is not one of its own), then submit again")
        sub = Submission(id=sub_id, pilot=spec.id, vendor=vendor, bundle_sha256=info.sha256, bundle_size=info.size,
                         bento_tag=info.tag, apis=[r.get("name") for r in info.routes],
                         submitted_at=datetime.now(UTC).isoformat(timespec="seconds"))
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{sub_id}-", dir=self.root))
        try:
            shutil.copyfile(bundle, staging / "bundle.bento")
            (staging / VETTED_MANIFEST).write_bytes(info.manifest_bytes)
            (staging / "submission.json").write_text(sub.model_dump_json(indent=2))
            staging.rename(self.root / sub_id)  # atomic: a submission is whole or absent
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if (self.root / sub_id / "submission.json").is_file():  # the same bytes, submitted at the same moment
                return self._resubmitted(sub_id, info.sha256), False
            raise
        return sub, True

    def _resubmitted(self, sub_id: str, sha256: str) -> Submission:
        """The stored submission of these bytes; a different bundle whose sha256 begins alike (the id keeps 12 hex
        digits of it) is refused, never taken for the stored one."""
        stored = self.get(sub_id)
        if stored.bundle_sha256 != sha256:
            raise Refused(f"this bundle (sha256 {sha256}) is not submission {sub_id}, whose bundle's sha256 "
                          f"{stored.bundle_sha256} begins with the same 12 digits its id keeps", where=sub_id,
                          fix="rebuild the bundle (`bentoml build` gives new bytes) and submit that")
        return stored

    def get(self, sub_id: str) -> Submission:
        path = self.root / sub_id / "submission.json"
        if not ID.fullmatch(sub_id) or not os.path.lexists(path):  # a folder or link there: unreadable (`_read`)
            known = ", ".join(p.parent.name for p in self._records()) or "none yet"
            raise NotFound(f"no submission {sub_id!r}", fix=f"use an id printed by `testbed submit` (known: {known})")
        return _read(path)

    def bundle(self, sub_id: str) -> Path:
        return self.root / sub_id / "bundle.bento"

    def stored_sha256(self, sub_id: str) -> str:
        """The sha256 of the stored bundle as it is now (what a re-evaluation runs), or `unreadable (why)`."""
        try:
            return sha256_file(self.bundle(sub_id))
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"

    def vetted(self, sub_id: str) -> tuple[str, bytes] | None:
        """(sha256, `bento.yaml`) of the bundle as inspected at submission, for `inspect_bundle` to skip a
        second pass over the same bytes; None for a submission stored before this was kept."""
        saved = self.root / sub_id / VETTED_MANIFEST
        return (self.get(sub_id).bundle_sha256, saved.read_bytes()) if saved.is_file() else None

    def report_dir(self, sub_id: str) -> Path:
        return self.root / sub_id / "scorecard"

    def scorecard(self, sub_id: str) -> Scorecard | None:
        """The stored official scorecard of `sub_id` (None before its first official evaluation): the copy for
        people; the record is the one logged with the MLflow run (`workflow.record`). AuditError if unreadable."""
        path = self.report_dir(sub_id) / "scorecard.json"
        if not path.is_file():
            return None
        try:
            return Scorecard.model_validate_json(path.read_bytes())
        except ValueError as exc:
            raise AuditError(f"the scorecard copy is unreadable ({str(exc).splitlines()[0][:200]})", where=str(path),
                             fix=f"the record is the scorecard logged with the MLflow run: `testbed scorecard {sub_id} "
                                 f"--restore` rewrites this copy from it, `testbed audit {sub_id}` checks it") from None

    def _records(self) -> list[Path]:
        """Every stored `submission.json`, by id (a staging folder or a stray one is none)."""
        return sorted(p for p in self.root.glob("*/submission.json") if ID.fullmatch(p.parent.name))

    def ids(self) -> list[str]:
        """Every stored submission's id, sorted (its record is not read: see `get`)."""
        return [p.parent.name for p in self._records()]
