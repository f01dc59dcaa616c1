"""The campaign driver's side of evaluations: concluding finished sandbox runs (scoring, the scorecard's figures,
the tracking writes) in the driver alone, and with scoring processes beside it (`workflow.scoring`)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def driver_scoring(spec, bundle: Path, ws, tracker, example: str, runs: int = 4) -> dict:
    """Conclude `runs` finished sandbox runs of `bundle` one after another in the driver, then `runs` more with
    a pool of min(2, cores) processes (warmed first, as a campaign's are while its first sandboxes run)."""
    from sandbox.executor import InlineExecutor
    from workflow.evaluate import conclude_evaluation, prepare_evaluation
    from workflow.scoring import ScoringPool

    executor, finished = InlineExecutor(), []
    for i in range(2 * runs):  # distinct submissions, each an official evaluation of its own
        p = prepare_evaluation(spec, bundle, _vendor(example), ws=ws, out_dir=ws.home / "driver" / str(i),
                               submission=f"driver-bench-{i}", tracker=tracker)
        finished.append((p, executor.run(p.job)))
    workers = min(2, os.cpu_count() or 1)
    with ScoringPool(workers) as pool:
        pool.ready()
        t0 = time.perf_counter()
        for p, result in finished[:runs]:
            conclude_evaluation(p, result, tracker=tracker)
        alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        pending = [(pool.submit(p, result, official=True), p, result) for p, result in finished[runs:]]
        fallbacks = 0
        for future, p, result in pending:
            assessed = future.result()
            fallbacks += assessed is None
            conclude_evaluation(p, result, tracker=tracker, assessed=assessed)
        pooled = time.perf_counter() - t0
    return {"example": example, "runs": runs, "workers": workers, "alone_s": alone, "pooled_s": pooled,
            "speedup": alone / pooled, "fallbacks": fallbacks}


def _vendor(example: str):
    from pilots.vendor import VendorProfile
    from testbed.config import PROJECT_ROOT
    from testbed.yamlio import load_model

    return load_model(PROJECT_ROOT / "examples" / example / "vendor.yaml", VendorProfile)
