"""Criterion 4, local strength fit: the vendor's claims, which count only once an evaluator confirms them.

Seoul-based (40 points), startup (20) and a field where Seoul leads (40) — the last only when that field is the
pilot's task (e.g. computer vision for a detection pilot, never for a forecasting one). The score is the share
of the points this pilot makes achievable. Until a review, every claim is *declared, unverified* and the
criterion waits for the evaluator, like policy fit; the review's confirmed claims then score.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pilots.vendor import SEOUL_LEADING_FIELDS, VendorProfile

__all__ = ["CLAIMS", "POINTS", "declared_claims", "local_strength"]

CLAIMS = ("seoul_based", "startup", "technology_field")
"""Claim names, as a review's `confirmed_claims` lists them."""
POINTS = {"seoul_based": 40, "startup": 20, "technology_field": 40}
UNVERIFIED, CONFIRMED, NOT_CONFIRMED = "declared, unverified", "confirmed by an evaluator", "not confirmed by review"


def declared_claims(profile: VendorProfile, task_fields: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What the profile claims, and whether each claim could earn points in this pilot."""
    matching = SEOUL_LEADING_FIELDS & set(task_fields)
    return {
        "seoul_based": {"declared": profile.seoul_based, "district": profile.headquarters_district,
                        "counts": profile.seoul_based, "achievable": True},
        "startup": {"declared": profile.startup, "counts": profile.startup, "achievable": True},
        "technology_field": {"declared": profile.technology_field, "seoul_leading_fields_for_this_task":
                             sorted(matching), "counts": profile.technology_field in matching,
                             "achievable": bool(matching)},
    }


def local_strength(claims: dict[str, dict[str, Any]], confirmed: Iterable[str] | None = None
                   ) -> tuple[float | None, str, dict[str, Any]]:
    """(score 0–100 or None while pending, status, evidence) from `declared_claims` output and, after a review,
    the claims the evaluator confirmed (None = no review yet)."""
    confirmed = None if confirmed is None else set(confirmed)
    achievable = sum(POINTS[k] for k, c in claims.items() if c["achievable"])
    shown, earned = {}, 0
    for name, claim in claims.items():
        if not claim["counts"]:
            status = "not claimed" if claim["achievable"] else "does not count for this pilot's task"
        elif confirmed is None:
            status = UNVERIFIED
        elif name in confirmed:
            status, earned = CONFIRMED, earned + POINTS[name]
        else:
            status = NOT_CONFIRMED
        shown[name] = {**claim, "status": status, "points": POINTS[name]}
    pending = confirmed is None and any(c["counts"] for c in claims.values())
    score = None if pending else 100 * earned / achievable if achievable else 0.0
    return score, "pending_evaluator" if pending else "scored", {"claims": shown, "achievable_points": achievable}
