"""Tests of deploy.servers against real mosquitto and influxd processes."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from pathlib import Path

import aiomqtt
import httpx
import pytest

from deploy.servers import (
    InfluxServer,
    MosquittoServer,
    ServerStartError,
    find_binary,
    find_free_port,
)
from pipelines import influx_query as ecotel_query


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket that process `pid` listens on, read from /proc."""
    inodes: set[str] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found: set[tuple[str, int]] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A is TCP_LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)
            # The kernel prints each 32-bit word of the address in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return found


async def influx_query(url: str, q: str, db: str | None = None) -> dict[str, object]:
    params = {"q": q} | ({"db": db} if db else {})
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        response = await client.post("/query", data=params)
    response.raise_for_status()
    body: dict[str, object] = response.json()
    return body


async def test_mqtt_publish_subscribe_round_trip(mosquitto: MosquittoServer) -> None:
    topic = f"ecotel/test/{uuid.uuid4().hex}"
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port) as subscriber,
        aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher,
    ):
        await subscriber.subscribe(topic, qos=1)
        await publisher.publish(topic, b"hello", qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(subscriber.messages))
    assert message.topic.value == topic
    assert message.payload == b"hello"


async def test_retained_message_survives_broker_restart(tmp_path: Path) -> None:
    topic = "ecotel/test/retained"
    async with MosquittoServer(tmp_path) as broker:
        port, first_pid = broker.port, broker.pid
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish(topic, b"kept", qos=1, retain=True)
        await broker.stop()
        assert not broker.running
        assert broker.pid is None
        await broker.start()
        assert broker.port == port
        assert broker.pid != first_pid
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.subscribe(topic, qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(client.messages))
    assert message.payload == b"kept"
    assert message.retain
    assert (broker.persistence_dir / "mosquitto.db").is_file()


async def test_persistent_session_keeps_more_than_default_queue(
    mosquitto: MosquittoServer,
) -> None:
    # mosquitto's default max_queued_messages (1000) would drop the last 500 of these.
    count = 1500
    topic = f"ecotel/test/{uuid.uuid4().hex}"
    consumer_id = f"consumer-{uuid.uuid4().hex[:8]}"

    def consumer() -> aiomqtt.Client:
        return aiomqtt.Client(
            mosquitto.host, mosquitto.port, identifier=consumer_id, clean_session=False
        )

    async with consumer() as client:
        await client.subscribe(topic, qos=1)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
        for i in range(count):
            await publisher.publish(topic, str(i).encode(), qos=1)
    received: list[int] = []
    async with consumer() as client:
        async with asyncio.timeout(30):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                received.append(int(message.payload))
                if len(received) == count:
                    break
        await client.unsubscribe(topic)
    assert received == list(range(count))


async def test_influx_write_then_query(influxdb: InfluxServer, influx_db: str) -> None:
    async with httpx.AsyncClient(base_url=influxdb.url, trust_env=False) as client:
        response = await client.post(
            "/write",
            params={"db": influx_db, "precision": "s"},
            content=b"air_temp,site=ridge value=21.5 1700000000\n",
        )
    assert response.status_code == 204, response.text
    body = await influx_query(influxdb.url, "SELECT value, site FROM air_temp", db=influx_db)
    assert body == {
        "results": [
            {
                "statement_id": 0,
                "series": [
                    {
                        "name": "air_temp",
                        "columns": ["time", "value", "site"],
                        "values": [["2023-11-14T22:13:20Z", 21.5, "ridge"]],
                    }
                ],
            }
        ]
    }


async def test_influx_data_and_port_survive_restart(tmp_path: Path) -> None:
    async with InfluxServer(tmp_path) as server:
        port = server.port
        await influx_query(server.url, "CREATE DATABASE kept")
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
            response = await client.post("/write", params={"db": "kept"}, content=b"m v=1i 1\n")
        assert response.status_code == 204, response.text
        await server.restart()
        assert server.port == port
        body = await influx_query(server.url, "SELECT count(v) FROM m", db="kept")
    assert body["results"] == [
        {
            "statement_id": 0,
            "series": [
                {"name": "m", "columns": ["time", "count"], "values": [["1970-01-01T00:00:00Z", 1]]}
            ],
        }
    ]


async def test_servers_listen_only_on_loopback(
    mosquitto: MosquittoServer, influxdb: InfluxServer
) -> None:
    assert mosquitto.pid is not None
    assert influxdb.pid is not None
    assert listening_addresses(mosquitto.pid) == {("127.0.0.1", mosquitto.port)}
    assert listening_addresses(influxdb.pid) == {
        ("127.0.0.1", influxdb.port),
        ("127.0.0.1", influxdb.rpc_port),
    }
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    assert influxdb.url == f"http://127.0.0.1:{influxdb.port}"


async def test_influx_effective_config_disables_reporting(influxdb: InfluxServer) -> None:
    written = influxdb.config_path.read_text()
    assert "reporting-disabled = true" in written
    assert "reporting-enabled = false" in written
    proc = await asyncio.create_subprocess_exec(
        str(find_binary("influxd")),
        "config",
        "-config",
        str(influxdb.config_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    effective = [line.strip() for line in stdout.decode().splitlines()]
    assert "reporting-enabled = false" in effective
    assert f'bind-address = "127.0.0.1:{influxdb.rpc_port}"' in effective
    assert f'bind-address = "127.0.0.1:{influxdb.port}"' in effective
    assert 'level = "warn"' in effective
    assert "store-enabled = false" in effective


async def test_start_failure_names_the_cause(tmp_path: Path, free_port: int) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_port))
        squatter.listen()
        broker = MosquittoServer(tmp_path, port=free_port, start_timeout=10)
        with pytest.raises(ServerStartError, match=r"(?i)address already in use"):
            await broker.start()
    assert not broker.running
    await broker.stop()


def test_find_free_port_is_bindable_on_loopback() -> None:
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_first_start_moves_off_a_taken_auto_port(tmp_path: Path) -> None:
    server = InfluxServer(tmp_path)
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        async with server:
            assert server.port != taken
            assert "address already in use" in server.log_path.read_text()
            async with httpx.AsyncClient(trust_env=False) as client:
                response = await client.get(f"{server.url}/ping")
            assert response.status_code == 204


async def test_query_of_an_empty_server_gives_empty_series(tmp_path: Path) -> None:
    # InfluxDB leaves "values" out of a series with no rows; a fresh server has no database.
    async with InfluxServer(tmp_path / "influx") as influx:
        series = await ecotel_query.influx_query(influx.url, "SHOW DATABASES")
    assert [s.values for s in series if s.name == "databases"] in ([[]], [[["_internal"]]])
