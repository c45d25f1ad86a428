"""A disk that another program fills: the gateway deletes its reserve and its backlog still drains.

A real small file system (tmpfs): mounting one needs root, as on these machines and a station's
own install; elsewhere the test is skipped.
"""

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import wire
from deploy.servers import MosquittoServer
from tests.mqtt_observer import observe

GATEWAY, SITE = "others-gw", "Tuotuohe"


@contextlib.contextmanager
def _small_disk(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(disk: Path) -> None:
    """Another program takes every byte left."""
    # Unbuffered: nothing left to write (and fail) at close.
    with (disk / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 65_536)


def _pending(outbox: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
async def test_a_disk_filled_by_another_program_still_lets_the_backlog_drain(
    tmp_path: Path,
) -> None:
    received: list[tuple[str, bytes]] = []
    ready = asyncio.Event()
    log: list[str] = []
    with _small_disk(tmp_path / "disk", "4m") as disk:
        state = disk / "state"
        outbox = state / f"{GATEWAY}.outbox.sqlite3"
        async with MosquittoServer(tmp_path / "broker") as broker:
            observer = asyncio.create_task(
                observe(broker.port, wire.readings_topic(SITE, GATEWAY), "others", received, ready)
            )
            await ready.wait()
            await broker.stop()
            config = tmp_path / "gw.toml"
            config.write_text(
                f'[gateway]\nid = "{GATEWAY}"\nsite = "{SITE}"\n'
                f"state_dir = {json.dumps(str(state))}\ncommit_interval_s = 0.05\n"
                "batch_max_readings = 50\nbacklog_readings_per_s = 2000\n"
                f"[broker]\nport = {broker.port}\nreconnect_max_s = 0.5\n"
                + '[[devices]]\nid = "hydro-1"\nkind = "hydrology"\ninterval_s = 0.05\n'
                'source = { type = "simulator", seed = 1 }\n',
                encoding="utf-8",
            )
            gateway = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "collector", "run", "--config", str(config)],
                stderr=asyncio.subprocess.PIPE,
            )
            assert gateway.stderr is not None

            async def read() -> None:
                assert gateway.stderr is not None
                while line := await gateway.stderr.readline():
                    log.append(line.decode(errors="replace"))

            reader = asyncio.create_task(read())
            try:
                async with asyncio.timeout(60):
                    while not outbox.exists() or await asyncio.to_thread(_pending, outbox) < 200:  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                assert (state / f"{GATEWAY}.outbox.sqlite3.reserve").exists()
                await asyncio.to_thread(_fill, disk)
                async with asyncio.timeout(60):
                    while not any("dropped since start" in line for line in log):  # noqa: ASYNC110
                        await asyncio.sleep(0.1)
                held = await asyncio.to_thread(_pending, outbox)
                # The broker returns with the disk still full: the reserve goes, the backlog too.
                await broker.start()
                async with asyncio.timeout(90):
                    while await asyncio.to_thread(_pending, outbox) > held // 2:
                        assert gateway.returncode is None, "".join(log[-40:])
                        await asyncio.sleep(0.2)
                assert any("deleted the reserve" in line for line in log), "".join(log[-40:])
                gateway.send_signal(signal.SIGTERM)
                async with asyncio.timeout(60):
                    await gateway.wait()
                await reader
            finally:
                if gateway.returncode is None:
                    gateway.kill()
                    await gateway.wait()
            observer.cancel()
            await asyncio.gather(observer, return_exceptions=True)
    assert received, "the backlog reached the broker"
