"""Gateway status and health letters replayed through the live path's checks: what a fix
cannot mend stays with the same reason; what today's checks accept is stored."""

import asyncio
import contextlib
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from collector import wire
from deploy.servers import InfluxServer, MosquittoServer
from pipelines.config import load_ingest_config
from pipelines.dead_letter import DeadLetterStore
from pipelines.influx_query import influx_query
from pipelines.line_protocol import timestamp_ns
from pipelines.service import IngestService

ECOTEL_INGEST = str(Path(sys.executable).with_name("ecotel-ingest"))


def _health(gateway: str) -> bytes:
    return wire.GatewayHealth(
        gateway=gateway,
        site="site",
        at=datetime(2026, 11, 1, tzinfo=UTC),
        uptime_s=60.0,
        load_1m=0.2,
        memory_available_mb=300.0,
        disk_free_mb=900.0,
        outbox_readings=0,
        outbox_bytes=0,
        link_up=True,
        reconnects=0,
        dropped_total=0,
    ).encode()


async def test_status_and_health_letters_replay_through_todays_checks(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str
) -> None:
    dead = tmp_path / "dead.sqlite3"
    config = tmp_path / "ingest.toml"
    config.write_text(
        f'[mqtt]\nport = {mosquitto.port}\nclient_id = "ingest-gw-replay"\n'
        f'topics = ["ecotel/v1/{influx_db}/+/readings"]\n'
        f'[influx]\nurl = "{influxdb.url}"\ndatabase = "{influx_db}"\n'
        f'[batch]\nmax_delay_s = 0.05\n[dead_letter]\npath = "{dead}"\n'
        "[derive]\nenabled = false\n",
        encoding="utf-8",
    )
    service = IngestService(load_ingest_config(config))
    running = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(60):
            await service.connected.wait()
            # gw-a's health published on gw-b's topic: a gateway speaking for another.
            await service.submit("ecotel/v1/site/gw-b/health", _health("gw-a"))
            # A state this ingest does not know.
            rebooting = {"schema": 1, "gateway": "gw-b", "site": "site", "state": "rebooting"}
            await service.submit("ecotel/v1/site/gw-b/status", json.dumps(rebooting).encode())
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    last_will = {"schema": 1, "gateway": "gw-c", "site": "site", "state": "offline"}
    last_will["reason"] = "connection_lost"
    async with DeadLetterStore(dead) as store:
        impostor, unknown = await store.list()
        assert (impostor.reason, unknown.reason) == ("bad_health", "bad_status")
        assert "payload speaks for site/gw-a" in impostor.detail
        # A last will an earlier ingest refused (a state it did not know yet): today's accept it.
        await store.add_message(
            "ecotel/v1/site/gw-c/status",
            json.dumps(last_will).encode(),
            "bad_status",
            "reason: Input should be 'connected' or 'shutdown'",
        )
        [earlier] = await store.list(after_id=unknown.id)

    process = await asyncio.create_subprocess_exec(
        *[ECOTEL_INGEST, "--config", str(config), "dead-letters", "replay"],
        *[str(impostor.id), str(unknown.id), str(earlier.id)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode == 1, out.decode()  # some were refused again
    lines = [line.split(None, 3)[:3] for line in out.decode().splitlines()]
    assert lines == [
        [str(impostor.id), "refused", "bad_health:"],
        [str(unknown.id), "refused", "bad_status:"],
        [str(earlier.id), "stored", "1"],
    ]

    async with DeadLetterStore(dead) as store:
        kept = await store.list()
        assert [(k.id, k.reason, k.detail) for k in kept] == [
            (impostor.id, impostor.reason, impostor.detail),
            (unknown.id, unknown.reason, unknown.detail),
        ]
    # The last will has no time of its own: stamped with its arrival, as when live.
    series = await influx_query(
        influxdb.url,
        "SELECT online, state, reason FROM gateway_status WHERE gateway = 'gw-c'",
        database=influx_db,
        epoch="ns",
    )
    assert [row for s in series for row in s.values] == [
        [timestamp_ns(earlier.received_at), 0.0, "offline", "connection_lost"]
    ]
    health = await influx_query(influxdb.url, "SELECT * FROM gateway_health", database=influx_db)
    assert health == []
