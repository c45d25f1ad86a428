"""A full disk under the outbox: the gateway keeps running, counts what it drops, drains and recovers."""

import asyncio
import json
import os
import re
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from collector import wire
from collector.outbox import MAX_PAGES_ENV
from deploy.servers import MosquittoServer
from tests.mqtt_observer import observe, readings_delivered_once

GATEWAY, SITE = "full-gw", "Tuotuohe"
MAX_PAGES = 30
"""SQLite pages the outbox may have (4 KiB each): room for a few hundred readings."""


async def _read_lines(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode(errors="replace").rstrip())


def _outbox_numbers(path: Path) -> dict[str, int]:
    """Readings ever committed (AUTOINCREMENT never reuses an id) and the outbox's counters."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        numbers = {k: int(v) for k, v in db.execute("SELECT key, value FROM meta")}
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'readings'").fetchone()
    numbers["committed"] = int(row[0]) if row else 0
    return numbers


@pytest.mark.slow
async def test_a_full_disk_drops_counted_readings_and_the_gateway_drains_and_recovers(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    outbox = state / f"{GATEWAY}.outbox.sqlite3"
    received: list[tuple[str, bytes]] = []
    ready = asyncio.Event()
    log: list[str] = []
    async with MosquittoServer(tmp_path / "broker") as broker:
        observer = asyncio.create_task(
            observe(
                broker.port, wire.readings_topic(SITE, GATEWAY), "full-observer", received, ready
            )
        )
        await ready.wait()
        # The station is cut off: everything it takes goes to its outbox, until that is full.
        await broker.stop()
        config = tmp_path / "gw.toml"
        devices = [
            f'[[devices]]\nid = "hydro-{n}"\nkind = "hydrology"\ninterval_s = 0.05\n'
            f'source = {{ type = "simulator", seed = {n} }}\n'
            for n in range(4)
        ]
        config.write_text(
            f'[gateway]\nid = "{GATEWAY}"\nsite = "{SITE}"\nstate_dir = {json.dumps(str(state))}\n'
            "commit_interval_s = 0.05\nbatch_max_readings = 50\nbatch_max_delay_s = 0.1\n"
            "backlog_readings_per_s = 2000\n"
            f"[broker]\nport = {broker.port}\nreconnect_max_s = 0.5\n" + "".join(devices),
            encoding="utf-8",
        )
        gateway = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "collector", "run", "--config", str(config)],
            env={**os.environ, MAX_PAGES_ENV: str(MAX_PAGES)},
            stderr=asyncio.subprocess.PIPE,
        )
        assert gateway.stderr is not None
        reader = asyncio.create_task(_read_lines(gateway.stderr, log))
        try:

            def said(text: str) -> list[str]:
                return [line for line in log if text in line]

            async with asyncio.timeout(60):
                while not said("no room on disk") and gateway.returncode is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert gateway.returncode is None, "\n".join(log[-40:])
            # Full, and it goes on polling: one line per 10 s, not a line per commit.
            full = said("no room on disk")[0]
            assert str(outbox) in full
            assert "MB free on" in full
            assert "dropped since start" in full
            await asyncio.sleep(1.0)
            assert gateway.returncode is None, "\n".join(log[-40:])
            assert len(said("no room on disk")) == 1
            before = await asyncio.to_thread(_outbox_numbers, outbox)
            assert before["count"] == before["committed"] > 0, "nothing sent yet"

            # The broker returns: the backlog drains, and that frees the room for new readings.
            await broker.start()
            async with asyncio.timeout(90):
                while (await asyncio.to_thread(_outbox_numbers, outbox))["count"] > 50:
                    assert gateway.returncode is None, "\n".join(log[-40:])
                    await asyncio.sleep(0.1)
            drained = await asyncio.to_thread(_outbox_numbers, outbox)
            async with asyncio.timeout(60):
                while (await asyncio.to_thread(_outbox_numbers, outbox))["committed"] < (  # noqa: ASYNC110
                    drained["committed"] + 200
                ):
                    await asyncio.sleep(0.1)
            gateway.send_signal(signal.SIGTERM)
            assert await gateway.wait() == 0, "\n".join(log[-40:])
            await reader
        finally:
            if gateway.returncode is None:
                gateway.kill()
                await gateway.wait()
        await asyncio.sleep(0.5)  # the last PUBACKed messages reach the observer
        observer.cancel()
        await asyncio.gather(observer, return_exceptions=True)

    stopped = [line for line in log if "stopped:" in line][-1]
    match = re.search(r"(\d+) readings taken, (\d+) published, (\d+) dropped since start", stopped)
    assert match, stopped
    taken, published, dropped = (int(g) for g in match.groups())
    after = await asyncio.to_thread(_outbox_numbers, outbox)
    assert after["count"] == 0, "everything the outbox took was sent"
    assert dropped > 0
    assert after["dropped"] == dropped, "the drops of a full disk are kept in the outbox file"
    assert taken == after["committed"] + dropped, "every reading taken is kept or counted"
    assert published == after["committed"]

    keys = readings_delivered_once(received)
    assert len(keys) == after["committed"], "every reading the outbox took arrived once"
