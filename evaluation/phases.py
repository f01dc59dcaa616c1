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
"""Name of the predictions the load phases gave, all items together: the answers scored (`PhasePlan.scored`),
whose latency and throughput were measured; the clean phase's are only compared with them (`agreement`)."""
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
        of them in one request when the family has no such option), then `clean` (every item again, in batches
        of up to the options' `batch_size`); then, in a second sitting (`Phase.sitting`: a fresh start of the
        service, in a sandbox of its own), one phase per scenario in such batches. The measured phases come
        first and share no item, so each timed item is new to the service: a service that remembers answers
        cannot make its latency or throughput look better than its model is. The scenarios' sitting never sees
        an item clean, so a service that knows an item again under a scenario (by what the scenario leaves
        alone, or a look-alike) has no clean answer to give it, and cannot make its robustness look better than
        its model is. Items with `epochs` are shown walk-forward in every phase that is scored: epoch by epoch,
        never two epochs in one request, and in the scenarios' sitting each scenario's items of an epoch before
        any later epoch's (a phase is then sent in parts, one per epoch; the runner joins them). So no item's
        truth has reached the service when it answers it. `clean` goes whole: with epochs its answers are only
        compared with the first ones, never scored. Anti-replay: each phase sends the items in its own order
        drawn from `seed`, and the accuracy phases in their own batch sizes, so no phase repeats another's
        sequence of requests. `plan` keeps which items each request carries, in the order sent; `plan_record()`
        is what the scorecard records."""
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
        walk = [("single_stream", clean, self._cut(measured[:single], [1] * single), 0),
                ("offline", clean, self._cut(rest, self._batches(rest, size, epochs)), 0)]
        scenarios, self.left_alone = [], {}
        for name, inputs in scenario_inputs(self, data, clean).items():
            order = rng.permutation(n)
            same = self.unchanged(clean, inputs, n)
            if same.any():  # never sent again: scored with their first answer
                self.left_alone[name], order = np.flatnonzero(same), order[~same[order]]
            if epochs is not None:
                order = order[np.argsort(epochs[order], kind="stable")]
            scenarios.append((name, inputs, self._cut(order, self._sizes(rng, order, o.batch_size, epochs)), 1))
        last = rng.permutation(n)
        walk += [("clean", clean, self._cut(last, self._sizes(rng, last, o.batch_size, None)), 0), *scenarios]
        self.plan = {name: cuts for name, _, cuts, _ in walk}
        if epochs is None or len(scenarios) < 2:
            return [self._phase(*step) for step in walk if step[2]]
        parts = [(epochs[cut[0]], i, name, inputs, cut) for i, (name, inputs, cuts, _) in enumerate(scenarios)
                 for cut in cuts if len(cut)]
        parts.sort(key=lambda part: (part[0], part[1]))  # stable: each phase's own order within an epoch
        joined: list[Phase] = []
        for _, _, name, inputs, cut in parts:  # consecutive parts of one phase (no other's between) go together
            phase = self._phase(name, inputs, [cut], 1)
            if joined and joined[-1].name == name:
                joined[-1].bodies += phase.bodies
                joined[-1].items += phase.items
            else:
                joined.append(phase)
        return [self._phase(*step) for step in walk[:3]] + joined

    @staticmethod
    def unchanged(clean: Any, perturbed: Any, n: int) -> np.ndarray:
        """Which of the `n` items a scenario left as they were, byte for byte: a list of items (texts, encoded
        images) item by item, arrays (or a tuple of them) row by row along their first axis. A family whose
        inputs are otherwise overrides it; all False sends every item."""
        if isinstance(clean, list):
            return np.array([a == b for a, b in zip(clean, perturbed, strict=True)], bool).reshape(n)
        same = np.ones(n, bool)
        for a, b in zip(clean if isinstance(clean, tuple) else (clean,),
                        perturbed if isinstance(perturbed, tuple) else (perturbed,), strict=True):
            a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
            if a.shape != b.shape or a.dtype != b.dtype or len(a) != n:
                return np.zeros(n, bool)
            same &= (a.reshape(n, -1).view(np.uint8) == b.reshape(n, -1).view(np.uint8)).all(axis=1)
        return same

    @staticmethod
    def take(decoded: Any, keep: np.ndarray) -> Any:
        """The part of a decoded answer (`check_answer`'s) for the items where `keep` is True: an answer holds its
        items along its first axis (an array, a list, or a tuple of them). A family whose answers do not
        overrides it."""
        if isinstance(decoded, tuple):
            return tuple(PhasePlan.take(part, keep) for part in decoded)
        if isinstance(decoded, np.ndarray):
            return decoded[keep]
        return [item for item, kept in zip(decoded, keep, strict=True) if kept]

    @staticmethod
    def scored(preds: dict[str, Any]) -> dict[str, Any]:
        """The predictions as scored: the clean phase's (`clean`, `clean/...`) replaced by the answers the timed
        phases gave the same items (`UNDER_LOAD`, `under_load/...`), each item's first answer; the clean phase is
        only compared with them (`agreement`). A service that tells the untimed clean requests apart (by their
        batch sizes) and answers them with a better model than the one timed gains nothing: the scored accuracy
        is that of the answers whose latency and throughput were measured. Predictions without timed answers
        (none were logged) score the clean ones."""
        if UNDER_LOAD not in preds:
            return preds
        timed = {"clean" + key[len(UNDER_LOAD):]: value for key, value in preds.items()
                 if key == UNDER_LOAD or key.startswith(f"{UNDER_LOAD}/")}
        return {key: value for key, value in preds.items() if key != "clean" and not key.startswith("clean/")
                } | timed

    def plan_state(self) -> tuple[int | None, dict, dict]:
        """What `phases` decided for this job, to score its run elsewhere (`adopt_plan`)."""
        return getattr(self, "plan_seed", None), getattr(self, "plan", {}), getattr(self, "left_alone", {})

    def adopt_plan(self, state: tuple[int | None, dict, dict]) -> None:
        """Score a run with the plan `plan_state` gave (another process's family object made the job)."""
        self.plan_seed, self.plan, self.left_alone = state

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

    def _phase(self, name: str, inputs: Any, cuts: list[np.ndarray], sitting: int) -> Phase:
        return Phase(name, [self.encode(inputs, rows) for rows in cuts], [len(rows) for rows in cuts],
                     content_type=self.content_type, answer_bytes_per_item=self.answer_bytes_per_item,
                     sitting=sitting)

    def plan_record(self) -> dict[str, Any]:
        """The phase plan as recorded on the scorecard: the seed, each phase's batch sizes, and how many items each
        scenario left as they were (not sent again: their first answer is scored)."""
        seed, plan, left_alone = self.plan_state()
        return {"seed": seed, "batch_sizes": {name: [len(rows) for rows in cuts] for name, cuts in plan.items()},
                "left_alone": {name: len(rows) for name, rows in left_alone.items()}}

    def answers(self, result: SandboxResult, name: str, violations: list[str],
                decode: Callable[[bytes, np.ndarray], Any] | None = None) -> Iterator[tuple[np.ndarray, Any]]:
        """`(items, decoded)` for every answered request of phase `name` (`UNDER_LOAD`: of the load phases): the
        item indices the request carried (from the phase plan) and its decoded answer. `decode(body, items)`
        (by default the family's `check_answer` for that many items) raises ContractViolation for a bad answer,
        which is collected in `violations`."""
        decode = decode or (lambda body, rows: self.check_answer(body, len(rows)))
        reused = getattr(self, "left_alone", {}).get(name)
        if reused is not None:  # items the scenario left as they were: their first answer, from the load phases
            for rows, decoded in self.answers(result, UNDER_LOAD, [], decode):  # its violations are counted there
                keep = np.isin(rows, reused)
                if keep.any():
                    yield rows[keep], self.take(decoded, keep)
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
