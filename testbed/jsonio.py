"""JSON for machines: strict JSON, as every parser reads it (RFC 8259 has no NaN or Infinity)."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["strict_dumps"]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # not measured (no requests), or beyond measure: null, as scorecard.json writes it
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def strict_dumps(data: Any, **kwargs: Any) -> str:
    """`json.dumps(data)` with every NaN or infinite float written as null (Python's own writes `NaN`, which
    `jq`, browsers and most JSON parsers refuse)."""
    return json.dumps(_finite(data), allow_nan=False, **kwargs)
