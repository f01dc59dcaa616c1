"""Hostile test bundle: answers built to knock the harness over — a response far too large to hold, and one
that trickles a byte at a time for longer than the run may last."""

import time
from collections.abc import Generator

import bentoml


@bentoml.service
class Harness:
    @bentoml.api
    def flood(self, kind: str) -> Generator[str, None, None]:
        if kind == "huge":  # 1.5 GiB
            chunk = "x" * (1 << 20)
            for _ in range(1536):
                yield chunk
        elif kind == "trickle":  # one byte a second, for a minute
            for _ in range(60):
                yield "["
                time.sleep(1)
        else:
            yield "ok"
