"""Serve the HTTP API with uvicorn inside the ingest's own event loop."""

import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn

from pipelines.api import build_app
from pipelines.config import ApiUnavailable
from pipelines.service import IngestService

log = logging.getLogger("ecotel.ingest.api")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The ingest's own handlers stop everything, the API with it.
        yield


async def serve_api(service: IngestService) -> None:
    """Run until cancelled; a port in use fails the ingest at start, naming it."""
    api = service.settings.api
    port = api.port_for(service.settings.mqtt.worker)
    try:
        sock = socket.create_server((api.host, port), reuse_port=False)
    except OSError as exc:
        raise ApiUnavailable(
            f"api: cannot listen on {api.host}:{port} (api.host, api.port): {exc}"
        ) from exc
    config = uvicorn.Config(
        build_app(service), log_level="warning", lifespan="off", access_log=False
    )
    log.info("ingest API on http://%s:%d (OpenAPI at /docs)", api.host, port)
    with sock:
        await _Server(config).serve(sockets=[sock])
