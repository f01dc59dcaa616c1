"""Test bundle with its own dependency: decomposes Hangul with `jamo` (declared in bentofile.yaml, absent from
the harness) and reports which other modules it can import and where its Python runs from."""

import sys

import bentoml


@bentoml.service
class OwnDeps:
    @bentoml.api
    def probe(self, targets: list[str]) -> dict:
        import jamo

        found = {}
        for name in targets:
            try:
                __import__(name)
                found[name] = "importable"
            except ImportError:
                found[name] = "missing"
        try:
            open(f"{sys.prefix}/planted.py", "w").close()
            writable = True
        except OSError:
            writable = False
        return {"jamo": "".join(jamo.j2hcj(jamo.h2j("한국어"))), "prefix": sys.prefix, "imports": found,
                "env_writable": writable}
