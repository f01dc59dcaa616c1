"""Test bundle with its own dependency: decomposes Hangul with `jamo` (declared in bentofile.yaml, absent from
the harness) and reports which other modules it can import, where its Python runs from, what the server it runs
in was started with (uvicorn's loop and parser) and which of BentoML's per-request recorders are on."""

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
        from bentoml._internal.configuration.containers import BentoMLContainer

        server = BentoMLContainer.api_server_config
        recorders = {"tracing": not BentoMLContainer.tracing_excluded_urls.get().url_disabled("http://sandbox/probe"),
                     "metrics": server.metrics.enabled.get(), "access_log": server.logging.access.enabled.get()}
        return {"jamo": "".join(jamo.j2hcj(jamo.h2j("한국어"))), "prefix": sys.prefix, "imports": found,
                "env_writable": writable, "recorders": recorders,
                "server_modules": sorted(m for m in ("httptools", "uvloop") if m in sys.modules)}
