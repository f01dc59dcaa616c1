"""The text-classification task contract (citizen petitions: title in, category with probabilities out).

    @bentoml.service
    class MyRouter:
        @bentoml.api
        def classify(self, texts: list[str]) -> list[dict]: ...

- `texts`: a list of short texts (petition titles, Korean as citizens type it: typos, missing spaces, informal
  endings, words typed with the keyboard left in Latin mode), UTF-8, up to a few hundred characters each.
  One request carries many texts.
- returns: one object per text, in input order: `{"label": str, "scores": {category: probability, ...}}`.
  `scores` has exactly the pilot's categories as keys (`testbed pilots show PILOT`, the `task.categories`
  labels, as written in the public data's `label` column), each a probability in [0, 1]; they sum to 1
  (within 0.01). `label` is the category with the highest score. The harness scores `label` (accuracy,
  macro-F1, per-category F1) and the top score as the model's confidence (calibration error): a low score
  is how a model says "send this one to a person".
"""

from __future__ import annotations

import json
import math
from itertools import chain

import numpy as np

from evaluation.contract import Contract, ContractViolation

__all__ = ["CLASSIFY", "SUM_TOLERANCE", "encode_request", "decode_response"]

CLASSIFY = Contract(
    family="text-classification",
    api="classify",
    inputs={"texts": ("array",)},
    summary=__doc__.split("\n\n", 1)[1].strip(),
)

SUM_TOLERANCE = 0.01
"""How far the scores of one text may sum from 1."""
TIE_TOLERANCE = 1e-6
"""How much higher than the label's score another category's may be (rounding) before it is a violation."""


def encode_request(texts: list[str]) -> bytes:
    """JSON body for one request."""
    return json.dumps({"texts": list(texts)}, ensure_ascii=False).encode()


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _bulk(data: list, categories: list[str], index: dict[str, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The checks of `decode_response` for every answer at once (numbers are floats here: integers are parsed
    as floats); None when anything is off, for the checks one answer at a time to name it."""
    if not data:
        return np.zeros(0, int), np.zeros((0, len(categories)))
    if set(map(type, data)) != {dict}:
        return None
    try:
        labels, scores = [index[item["label"]] for item in data], [item["scores"] for item in data]
        if set(map(type, scores)) != {dict} or set(map(len, scores)) != {len(categories)}:
            return None
        rows = [[s[c] for c in categories] for s in scores]  # with as many keys, a KeyError if one differs
    except (KeyError, TypeError):
        return None
    if set(map(type, chain.from_iterable(rows))) != {float}:
        return None
    probs, labels = np.array(rows, dtype=float), np.array(labels)
    sums = probs.sum(1)
    if not (np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()) or \
            (np.abs(sums - 1) > SUM_TOLERANCE).any() or \
            (probs.max(1) - probs[np.arange(len(labels)), labels] > TIE_TOLERANCE).any():
        return None
    return labels, probs / sums[:, None]


def decode_response(body: bytes, n_texts: int, categories: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse and check one response for `n_texts` texts: (label index per text, probabilities (n, K) in
    `categories` order). Raise ContractViolation with what is wrong."""
    try:  # integers parsed as floats: a huge one becomes inf (refused as non-finite)
        data = json.loads(body, parse_int=float)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ContractViolation(f"response is not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(data, list) or len(data) != n_texts:
        got = f"{len(data)} items" if isinstance(data, list) else type(data).__name__
        raise ContractViolation(f"response must be a list with one object per text: {n_texts} expected, got {got}")
    index, want = {c: k for k, c in enumerate(categories)}, set(categories)
    bulk = _bulk(data, categories, index)
    if bulk is not None:
        return bulk
    labels, probs = np.zeros(n_texts, int), np.zeros((n_texts, len(categories)))
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "label" not in item or "scores" not in item:
            keys = f"keys {sorted(map(str, item))[:6]}" if isinstance(item, dict) else type(item).__name__
            raise ContractViolation(f"text {i}: each answer must be an object with `label` and `scores` (got {keys})")
        label, scores = item["label"], item["scores"]
        if not isinstance(label, str) or label not in index:
            raise ContractViolation(f"text {i}: `label` {str(label)[:80]!r} is not one of the pilot's categories")
        if not isinstance(scores, dict) or set(scores) != want:
            given = set(scores) if isinstance(scores, dict) else set()
            unknown, missing = sorted(map(str, given - want))[:3], sorted(want - given)[:3]
            raise ContractViolation(f"text {i}: `scores` must have exactly the pilot's {len(categories)} categories "
                                    f"as keys (unknown: {unknown or 'none'}; missing: {missing or 'none'}; the "
                                    "categories: `testbed pilots show PILOT`)")
        bad = [v for v in scores.values() if not (_number(v) and 0 <= v <= 1)]
        if bad:
            kind = f"{bad[0]:g}" if _number(bad[0]) else f"not a number ({type(bad[0]).__name__} {str(bad[0])[:20]!r})"
            raise ContractViolation(f"text {i}: every score must be a probability in [0, 1]; one is {kind}")
        row = np.array([float(scores[c]) for c in categories])
        if abs(row.sum() - 1) > SUM_TOLERANCE:
            raise ContractViolation(f"text {i}: scores sum to {row.sum():.4f}, not 1")
        if row.max() - row[index[label]] > TIE_TOLERANCE:
            raise ContractViolation(f"text {i}: `label` {label!r} is not the category with the highest score")
        labels[i], probs[i] = index[label], row / row.sum()
    return labels, probs
