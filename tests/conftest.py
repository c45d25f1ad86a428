"""Shared fixtures; `mosquitto` and `influxdb` start REAL server processes on 127.0.0.1 ports."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from deploy.servers import InfluxServer, MosquittoServer, find_free_port, require_binaries
from tests.gateway_harness import harness  # noqa: F401  (a fixture for the gateway tests)
from tests.process_cleanup import no_process_left_behind  # noqa: F401  (autouse: stops leftovers)
from tests.trace_fixtures import trace_stack  # noqa: F401  (replay a trace into a fresh stack)


@pytest_asyncio.fixture(scope="session")
async def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MosquittoServer]:
    require_binaries()
    async with MosquittoServer(tmp_path_factory.mktemp("mosquitto")) as server:
        yield server


@pytest_asyncio.fixture(scope="session")
async def influxdb(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InfluxServer]:
    require_binaries()
    async with InfluxServer(tmp_path_factory.mktemp("influxdb")) as server:
        yield server


@pytest_asyncio.fixture
async def influx_db(influxdb: InfluxServer) -> AsyncIterator[str]:
    """Name of a fresh database on the session influxd, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    async with httpx.AsyncClient(base_url=influxdb.url, trust_env=False) as client:
        response = await client.post("/query", data={"q": f'CREATE DATABASE "{name}"'})
        response.raise_for_status()
        # influxd reports statement errors with status 200 inside the JSON body.
        assert "error" not in response.json()["results"][0], response.text
        yield name
        await client.post("/query", data={"q": f'DROP DATABASE "{name}"'})


@pytest.fixture
def free_port() -> int:
    return find_free_port()
