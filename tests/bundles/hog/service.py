"""Test bundle: asks for more memory or processes than the sandbox allows."""

import os
import time

import bentoml
import numpy as np


@bentoml.service
class Hog:
    @bentoml.api
    def hog(self, kind: str) -> str:
        if kind == "memory":
            blocks = [np.ones(1 << 27) for _ in range(64)]  # 64 GiB
            return str(len(blocks))
        if kind == "processes":
            for _ in range(512):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
        return "done"
