"""An ingest service running in the test's own event loop, stopped cleanly at the end."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from pipelines.config import IngestSettings
from pipelines.service import IngestService


@contextlib.asynccontextmanager
async def running_ingest(settings: IngestSettings) -> AsyncIterator[IngestService]:
    """The service, once connected to its broker; on leaving, stopped as SIGTERM stops it."""
    service = IngestService(settings)
    running = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(60):
            await service.connected.wait()
        yield service
    finally:
        service.stop()
        async with asyncio.timeout(30):
            await running
