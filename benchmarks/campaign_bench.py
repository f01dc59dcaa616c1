"""A campaign's wall time for N submissions at once (issue 11's figures for N = 1, 2, 6): `run_campaign` on a
local Ray (started before the clock), the sandboxes and MLflow real, each submission a distinct official
evaluation, as `testbed evaluate --all` runs them on this machine (no scoring processes: `scoring_workers`)."""

from __future__ import annotations

import lzma
import time
from pathlib import Path


def campaign_walls(spec, bundle: Path, ws, example: str, sizes: tuple[int, ...] = (1, 2, 6)) -> dict:
    """For each N in `sizes`: N new submissions of `bundle` (its archive compressed anew, each its own bytes,
    the same files inside), evaluated in one campaign; its wall time, and per evaluation."""
    from evaluation.tracking import MlflowTracker
    from sandbox.executor import RayExecutor
    from testbed.config import PROJECT_ROOT
    from workflow.campaign import run_campaign
    from workflow.submissions import SubmissionStore

    store, tracker, vendor = SubmissionStore(ws), MlflowTracker(ws), PROJECT_ROOT / "examples" / example / "vendor.yaml"
    tar, made, walls = lzma.decompress(Path(bundle).read_bytes()), 0, {}
    with RayExecutor() as executor:
        executor.connect()
        for n in sizes:
            subs = []
            for _ in range(n):
                made += 1
                copy = ws.home / "campaign-bench" / f"{example}-{made}.bento"
                copy.parent.mkdir(parents=True, exist_ok=True)
                copy.write_bytes(_recompressed(tar, made))
                subs.append(store.submit(spec, copy, vendor)[0])
            t0 = time.perf_counter()
            items = run_campaign(subs, executor=executor, tracker=tracker, ws=ws)
            wall = time.perf_counter() - t0
            walls[str(n)] = {"wall_s": wall, "per_evaluation_s": wall / n,
                             "statuses": sorted({i.status for i in items})}
    return {"example": example, "walls": walls}


def _recompressed(tar: bytes, i: int) -> bytes:
    """The same tar in an xz stream of other bytes for each `i` below 30 (the preset and the check differ): a distinct
    submission of the very same bundle."""
    checks = (lzma.CHECK_CRC64, lzma.CHECK_CRC32, lzma.CHECK_SHA256)
    return lzma.compress(tar, format=lzma.FORMAT_XZ, check=checks[i % 3], preset=(i // 3) % 10)


def campaign_markdown(campaign: dict) -> list[str]:
    walls = ", ".join(f"N = {n}: {w['wall_s']:.1f} s ({w['per_evaluation_s']:.1f} s per evaluation"
                      f"{'' if w['statuses'] == ['evaluated'] else ', ' + '/'.join(w['statuses'])})"
                      for n, w in campaign["walls"].items())
    return ["", f"Campaign wall time (`run_campaign` on the local Ray, {campaign['example']}, official evaluations "
                f"of N distinct submissions at once): {walls}."]
