"""The phase plan every task family shares: which items each request carries, in which order, and reading the
answers back by item. `TaskFamily` inherits it (`PhasePlan`); a family provides `options`, `size`, `inputs`,
`epochs`, `encode` and the scenarios' inputs, and the plan does the rest the same way for all of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from evaluation.perturbed import scenario_inputs
from sandbox.runner import Phase, SandboxResult
from testbed.errors import ContractViolation

__all__ = ["PhasePlan", "LOAD_PHASES", "UNDER_LOAD", "VIOLATION_CHARS"]

LOAD_PHASES = ("single_stream", "offline")
"""Phases that measure the service (latency, throughput); between them they carry every item once, and their
answers are checked against the contract and scored as `UNDER_LOAD`."""
UNDER_LOAD = "under_load"
"""Name of the predictions the load phases gave, all items together: scored like the clean phase's, so the
scorecard can tell whether the timed answers are the ones that earned the accuracy."""
VIOLATION_CHARS = 300
"""Characters kept of a contract violation's message: it may quote what the service sent (a box of a million
numbers), and it reaches the verdict's reason, the scorecard, its page and the terminal."""


class PhasePlan:
    """What the harness does the same way for every family: the phases and their plan, and the answers by item."""

    @property
    def scenario_names(self) -> list[str]:
        """`clean` first, then the spec's scenarios in order."""
        return ["clean", *(sc.name for sc in self.spec.scenarios)]

    def phases(self, data: Any, seed: int = 0) -> list[Phase]:
        """Requests to send, in this order: `single_stream` (one item per request, `single_stream_requests` of
        them, at most half the items) and `offline` (the other items, in batches of `offline_batch_size`; all
        of them in one request when the family has no such option), then one phase per scenario and `clean`, in
        batches of up to the options' `batch_size`. The measured phases come first and share no item, so each
        timed item is new to the service: a service that remembers answers cannot make its latency or throughput
        look better than its model is. Items with `epochs` are shown walk-forward, in every phase that is scored:
        epoch by epoch, never two epochs in one request, and each scenario's items of an epoch are sent right
        after that epoch's measured items, before any later epoch's (a phase is then sent in parts, one per
        epoch; the runner joins them). So no item's truth has reached the service when it answers it, and a
        service that learns the truth from later items' inputs cannot buy robustness with it. `clean` goes last,
        whole: with epochs its answers are only compared with the first ones, never scored. Anti-replay: each
        phase sends the items in its own order drawn from `seed`, and the accuracy phases in their own batch
        sizes, so no phase repeats another's sequence of requests. `plan` keeps which items each request carries,
        in the order sent; `plan_record()` is what the scorecard records."""
        o, n, clean = self.options, self.size(data), self.inputs(data)
        rng = np.random.default_rng(seed)
        self.plan_seed, self.plan = seed, {}
        measured, epochs = rng.permutation(n), self.epochs(data)
        if epochs is not None:  # walk-forward: epoch by epoch, in a random order within each
            epochs = np.asarray(epochs)
            measured = measured[np.argsort(epochs[measured], kind="stable")]
        single = min(n // 2, getattr(o, "single_stream_requests", n)) if n > 1 else n
        rest = measured[single:] if n > single else measured  # one item: measured twice, the only choice
        size = getattr(o, "offline_batch_size", None) or max(len(rest), 1)
        walk = [("single_stream", clean, self._cut(measured[:single], [1] * single)),
                ("offline", clean, self._cut(rest, self._batches(rest, size, epochs)))]
        scenarios = scenario_inputs(self, data, clean)
        for name, inputs in scenarios.items():
            order = rng.permutation(n)
            if epochs is not None:
                order = order[np.argsort(epochs[order], kind="stable")]
            walk.append((name, inputs, self._cut(order, self._sizes(rng, order, o.batch_size, epochs))))
        last = rng.permutation(n)
        walk.append(("clean", clean, self._cut(last, self._sizes(rng, last, o.batch_size, None))))
        self.plan = {name: cuts for name, _, cuts in walk}
        if epochs is None or not scenarios:
            return [self._phase(name, inputs, cuts) for name, inputs, cuts in walk]
        *scored, final = walk
        parts = [(epochs[cut[0]], i, name, inputs, cut) for i, (name, inputs, cuts) in enumerate(scored)
                 for cut in cuts if len(cut)]
        parts.sort(key=lambda part: (part[0], part[1]))  # stable: each phase's own order within an epoch
        sent = [self._phase(name, inputs, [cut]) for _, _, name, inputs, cut in parts]
        joined: list[Phase] = []
        for phase in sent:  # consecutive parts of one phase (its epochs with no other phase's items) go together
            if joined and joined[-1].name == phase.name:
                joined[-1].bodies += phase.bodies
                joined[-1].items += phase.items
            else:
                joined.append(phase)
        return joined + [self._phase(*final)]

    @staticmethod
    def _cut(order: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
        return np.split(order, np.cumsum(sizes)[:-1]) if sizes else []

    @staticmethod
    def _batches(rows: np.ndarray, size: int, epochs: np.ndarray | None) -> list[int]:
        """Sizes of the requests carrying `rows` in order: at most `size` items each, and one epoch's only."""
        return [min(size, end - i) for start, end in PhasePlan._runs(rows, epochs) for i in range(start, end, size)]

    @staticmethod
    def _runs(rows: np.ndarray, epochs: np.ndarray | None) -> list[tuple[int, int]]:
        """`(start, end)` of each run of `rows` in one epoch (all of them: one run, without epochs)."""
        keys = np.zeros(len(rows)) if epochs is None else epochs[rows]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(rows) else np.array([], int)
        return list(zip(starts.tolist(), [*starts[1:].tolist(), len(rows)], strict=True))

    @staticmethod
    def _sizes(rng: np.random.Generator, rows: np.ndarray, most: int, epochs: np.ndarray | None) -> list[int]:
        """Random request sizes of up to `most` items (at least half that, where there are enough) for `rows` in
        order, one epoch's items only in each."""
        sizes: list[int] = []
        for start, end in PhasePlan._runs(rows, epochs):
            left = end - start
            while left:
                sizes.append(min(int(rng.integers(max(1, (most + 1) // 2), most + 1)), left))
                left -= sizes[-1]
        return sizes

    def _phase(self, name: str, inputs: Any, cuts: list[np.ndarray]) -> Phase:
        return Phase(name, [self.encode(inputs, rows) for rows in cuts], [len(rows) for rows in cuts],
                     content_type=self.content_type, answer_bytes_per_item=self.answer_bytes_per_item)

    def plan_record(self) -> dict[str, Any]:
        """The phase plan as recorded on the scorecard: the seed, and each phase's batch sizes."""
        return {"seed": getattr(self, "plan_seed", None),
                "batch_sizes": {name: [len(rows) for rows in cuts] for name, cuts in getattr(self, "plan", {}).items()}}

    def answers(self, result: SandboxResult, name: str, violations: list[str],
                decode: Callable[[bytes, np.ndarray], Any] | None = None) -> Iterator[tuple[np.ndarray, Any]]:
        """`(items, decoded)` for every answered request of phase `name` (`UNDER_LOAD`: of the load phases): the
        item indices the request carried (from the phase plan) and its decoded answer. `decode(body, items)`
        (by default the family's `check_answer` for that many items) raises ContractViolation for a bad answer,
        which is collected in `violations`."""
        decode = decode or (lambda body, rows: self.check_answer(body, len(rows)))
        for phase_name in LOAD_PHASES if name == UNDER_LOAD else (name,):
            phase = result.phases.get(phase_name)
            for body, rows in zip(phase.bodies, self.plan[phase_name], strict=False) if phase else []:
                decoded = None
                if body is not None:
                    try:
                        decoded = decode(body, rows)
                    except ContractViolation as exc:
                        text = str(exc)
                        violations.append(f"{phase_name}: {text[:VIOLATION_CHARS]}"
                                          f"{'…' if len(text) > VIOLATION_CHARS else ''}")
                if decoded is not None:
                    yield rows, decoded
