"""Test bundle: asks for more memory, processes or CPU cores than the sandbox allows."""

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
        if kind == "cpu":  # four busy processes for 1.5 s: the CPU time they got, and the wall time
            start = time.monotonic()
            children = []
            for _ in range(4):
                pid = os.fork()
                if pid == 0:
                    while time.monotonic() - start < 1.5:
                        pass
                    os._exit(0)
                children.append(pid)
            cpu = 0.0
            for pid in children:
                _, _, usage = os.wait4(pid, 0)
                cpu += usage.ru_utime + usage.ru_stime
            return f"{cpu} {time.monotonic() - start}"
        if kind == "spin":  # 50 ms of CPU in the request's own thread
            start = time.thread_time()
            while time.thread_time() - start < 0.05:
                pass
        return "done"
