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


def decode_response(body: bytes, n_texts: int, categories: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse and check one response for `n_texts` texts: (label index per text, probabilities (n, K) in
    `categories` order). Raise ContractViolation with what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError) as exc:
        raise ContractViolation(f"response is not JSON ({exc})") from None
    if not isinstance(data, list) or len(data) != n_texts:
        got = f"{len(data)} items" if isinstance(data, list) else type(data).__name__
        raise ContractViolation(f"response must be a list with one object per text: {n_texts} expected, got {got}")
    index, want = {c: k for k, c in enumerate(categories)}, set(categories)
    labels, probs = np.zeros(n_texts, int), np.zeros((n_texts, len(categories)))
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "label" not in item or "scores" not in item:
            raise ContractViolation(f"text {i}: each answer must be an object with `label` and `scores`")
        label, scores = item["label"], item["scores"]
        if label not in index:
            raise ContractViolation(f"text {i}: `label` {label!r} is not one of the pilot's categories")
        if not isinstance(scores, dict) or set(scores) != want:
            raise ContractViolation(f"text {i}: `scores` must have exactly the pilot's {len(categories)} categories "
                                    "as keys")
        if not all(_number(v) and 0 <= v <= 1 for v in scores.values()):
            raise ContractViolation(f"text {i}: every score must be a probability in [0, 1]")
        row = np.array([float(scores[c]) for c in categories])
        if abs(row.sum() - 1) > SUM_TOLERANCE:
            raise ContractViolation(f"text {i}: scores sum to {row.sum():.4f}, not 1")
        if row.max() - row[index[label]] > TIE_TOLERANCE:
            raise ContractViolation(f"text {i}: `label` {label!r} is not the category with the highest score")
        labels[i], probs[i] = index[label], row / row.sum()
    return labels, probs
