"""The only testbed code that runs INSIDE the sandbox: load the vendor's bento and serve it on the socket the
harness created and handed in as a file descriptor.

Standard library, BentoML and uvicorn only (the testbed's packages are not mounted here). Isolation is
enforced from outside by bubblewrap, cgroups, rlimits and seccomp; verdicts come from what the harness observes
outside. The audit hook below only *reports*, on a pipe the harness reads as it is written, the paths the
service tried to open that do not exist here (the harness matches them against its own paths, which the
sandbox is never told). It runs in the vendor's process, so it is best effort: a report, once sent, cannot be
taken back, but a determined bundle can stop further reports.

Arrays travel in binary when the harness asks for it (`binary_arrays` below): the request body is an `.npz`
(`application/x-testbed-npz`, read with `allow_pickle=False`), handed to BentoML through its own pickle
serde, which the app accepts only from this wrapper (pickle from outside is refused, as BentoML's main server
does), and a 200 answer goes back as one `.npy` (`application/x-npy`) when it is a numeric array, else as JSON
(text the service returned goes back as it is), for the harness to judge. The harness decodes it with
`allow_pickle=False` too: it never unpickles anything from the sandbox. Any other request is BentoML's own.

Usage (by the harness): python -I worker.py SOCKET_FD REPORT_FD TAG_FD
(the harness writes the bundle's tag to TAG_FD once the bundle is imported: BentoML is imported meanwhile)
"""

import os
import sys

NPZ, NPY, PICKLE = b"application/x-testbed-npz", b"application/x-npy", b"application/vnd.bentoml+pickle"

_seen = set()


def _audit_hook(report):
    def hook(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes)):
            path = os.path.abspath(os.fsdecode(args[0]))
            if path not in _seen and len(_seen) < 10_000 and not os.path.lexists(path):
                _seen.add(path)
                try:
                    os.write(report, f"open {path}\n".encode(errors="replace"))
                except OSError:
                    pass

    return hook


async def _reply(send, status, body, content_type=b"text/plain; charset=utf-8"):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def binary_arrays(app):
    """ASGI wrapper: `.npz` request -> BentoML's pickle serde -> `.npy` answer (see the module's docstring)."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = dict(scope["headers"])
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media == PICKLE:
            return await _reply(send, 415, b"application/vnd.bentoml+pickle is not accepted")
        if media != NPZ:
            return await app(scope, receive, send)
        import io
        import json
        import pickle

        import numpy as np

        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            with np.load(io.BytesIO(b"".join(chunks)), allow_pickle=False) as npz:
                body = pickle.dumps({name: npz[name] for name in npz.files}, protocol=5)
        except Exception as exc:  # noqa: BLE001 - a bad body is the client's error
            return await _reply(send, 400, f"bad .npz body: {type(exc).__name__}".encode())
        rest = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        inner = {**scope, "headers": [*rest, (b"content-type", PICKLE), (b"content-length", str(len(body)).encode())]}
        sent = False

        async def once():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        answer = {"status": 500, "headers": [], "body": []}

        async def capture(message):
            if message["type"] == "http.response.start":
                answer.update(status=message["status"], headers=message.get("headers", []))
            elif message["type"] == "http.response.body":
                answer["body"].append(message.get("body", b""))

        await app(inner, once, capture)
        data, out_headers = b"".join(answer["body"]), dict(answer["headers"])
        if answer["status"] != 200 or b"buffer-lengths" not in out_headers:  # an error, or text BentoML sent as is
            return await _reply(send, answer["status"], data, out_headers.get(b"content-type", b"text/plain"))
        from _bentoml_impl.serde import Payload, PickleSerde

        try:
            meta = {k.decode("latin-1"): v.decode("latin-1") for k, v in out_headers.items()}
            value = PickleSerde().deserialize_value(Payload((data,), metadata=meta))
            array = np.asarray(value)
            if array.dtype.kind in "biuf":
                out = io.BytesIO()
                np.save(out, array, allow_pickle=False)
                return await _reply(send, 200, out.getvalue(), NPY)
        except Exception:  # noqa: BLE001 - not an array: sent as JSON below, for the harness to judge
            pass
        try:
            text = json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, default=str).encode()
        except Exception as exc:  # noqa: BLE001 - the answer cannot travel at all
            return await _reply(send, 500, f"the answer cannot be sent: {type(exc).__name__}"[:500].encode())
        return await _reply(send, 200, text, b"application/json")

    return wrapped


def unobserved(service):
    """Turn off what BentoML records per request for observers the sandbox cannot have: OpenTelemetry spans
    (there is no network to export them to), its Prometheus middleware (nothing scrapes the sandbox; production
    serving keeps its own metrics, outside) and its access log (uvicorn's is off too). Set for these keys only,
    over the service's own configuration, before its app is built. With `media_types_once`: ~0.5 ms of the
    ~1.7 ms BentoML's app spent on each request of a small forecasting model (measured in-process)."""
    import json

    off = {"tracing": {"excluded_urls": ".*"}, "metrics": {"enabled": False}, "logging": {"access": {"enabled": False}}}
    os.environ["BENTOML_CONFIG_OVERRIDES"] = json.dumps({"services": {name: off for name in service.all_services()}})


def media_types_once():
    """BentoML derives a response's media type from its output model's JSON schema, which it rebuilds on every
    response; the answer depends on the model class alone, so it is computed once per class. Nothing changes
    where BentoML's internals differ from the version this was written for."""
    import functools

    try:
        from _bentoml_sdk.io_models import IOMixin

        derive = IOMixin.__dict__["mime_type"].__func__
    except (ImportError, KeyError, AttributeError):
        return
    IOMixin.mime_type = classmethod(functools.lru_cache(maxsize=None)(derive))


def app_of(service):
    """The ASGI app the sandbox serves for a loaded BentoML service: its own app, set up as above, behind
    `binary_arrays`."""
    unobserved(service)
    media_types_once()
    # is_main=False lets BentoML take pickle, which `binary_arrays` alone sends it (it refuses pickle from outside)
    return binary_arrays(service.to_asgi(is_main=False))


def _read_tag(fd):
    """The bundle's tag, once the harness has imported it (empty: it refused the archive)."""
    data = b""
    while len(data) < 1024:
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return data.decode(errors="replace").strip()


def main():
    socket_fd, report_fd, tag_fd = (int(arg) for arg in sys.argv[1:4])
    sys.addaudithook(_audit_hook(report_fd))
    import bentoml
    import uvicorn

    try:  # BentoML's server, imported while the harness unpacks the bundle (no vendor code has run yet)
        import _bentoml_impl.server.app  # noqa: F401
    except ImportError:
        pass
    tag = _read_tag(tag_fd)
    if not tag:
        return
    # standalone_load, as BentoML's own server loads it: the service stays in the bundle's `src/` (read-only), so
    # files opened by a relative path are found as under `bentoml serve`
    uvicorn.run(app_of(bentoml.load(tag, standalone_load=True)), fd=socket_fd, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
