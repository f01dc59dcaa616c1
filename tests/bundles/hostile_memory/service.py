"""Hostile test bundle: memory the address-space limit does not see (memfd), the /tmp filesystem's inodes, and
forks sharing their pages (which a per-process RSS sum counts many times), and forks each holding their own."""

import errno
import os
import time

import bentoml


@bentoml.service
class Memory:
    @bentoml.api
    def hog(self, kind: str, mb: int = 0) -> dict:
        if kind == "memfd":  # many files, each below the file-size limit
            fds, chunk = [], b"\1" * (1 << 20)
            for i in range(mb):
                if i % 32 == 0:
                    fds.append(os.memfd_create("hog"))
                os.write(fds[-1], chunk)
            return {"held_mb": mb}
        if kind == "inodes":
            os.makedirs("/tmp/many", exist_ok=True)
            count = 0
            try:
                while count < 1_000_000:
                    open(f"/tmp/many/{count}", "w").close()
                    count += 1
            except OSError as exc:
                return {"files": count, "stopped_by": errno.errorcode.get(exc.errno, str(exc))}
            return {"files": count, "stopped_by": None}
        if kind == "shared_forks":
            block = bytearray(mb << 20)
            for page in range(0, len(block), 4096):  # touched: resident, then shared by every child
                block[page] = 1
            children = []
            for _ in range(8):
                pid = os.fork()
                if pid == 0:
                    time.sleep(2)
                    os._exit(0)
                children.append(pid)
            for pid in children:
                os.waitpid(pid, 0)
            return {"children": len(children), "block_mb": len(block) >> 20}
        if kind == "forks_apart":  # each child under the address-space limit, all of them together far over it
            children = []
            for _ in range(4):
                pid = os.fork()
                if pid == 0:
                    block = bytearray(mb << 20)
                    for page in range(0, len(block), 4096):
                        block[page] = 1
                    time.sleep(20)
                    os._exit(0)
                children.append(pid)
            for pid in children:
                os.waitpid(pid, 0)
            return {"children": len(children)}
        return {}
