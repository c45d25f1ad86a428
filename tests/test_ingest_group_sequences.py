"""Loss and repeats judged across a shared group: the ledger file two workers share, then three
real workers (``ecotel-ingest run --workers 3``) fed numbers with gaps and repeats over a real broker."""

import asyncio
import json
import re
import signal
import sqlite3
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import httpx
import pytest

from collector import wire
from deploy.servers import InfluxServer, MosquittoServer, find_free_port
from pipelines.influx_query import influx_query
from pipelines.sequence_ledger import GroupFigures, SequenceLedger

GRACE_S = 10.0


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def _save(ledger: SequenceLedger, *numbers: int, gateway: str = "g") -> None:
    for n in numbers:
        ledger.record("s", gateway, n, lambda: None)
    await ledger.flush()
    await ledger.refresh_view()


async def test_two_workers_judge_one_gateway_together(tmp_path: Path) -> None:
    clock = _Clock()
    path = tmp_path / "sequences.sqlite3"
    async with (
        SequenceLedger(path, grace_s=GRACE_S, clock=clock) as a,
        SequenceLedger(path, grace_s=GRACE_S, clock=clock) as b,
    ):
        # Round robin between two workers, 4 and 8 lost on the link, 5 delivered twice.
        await _save(a, 0, 2, 5, 6)
        await _save(b, 1, 3, 5, 7, 9)
        await a.refresh_view()
        assert a.view == b.view == {("s", "g"): GroupFigures(1, 0, None)}, "no gap within grace"

        clock.now += GRACE_S + 1.5
        await _save(a)  # nothing new: the judgment alone
        await b.refresh_view()
        assert a.view == b.view == {("s", "g"): GroupFigures(1, 2, 10)}
        assert await b.missing_numbers("s", "g") == [4, 8]

        await _save(b, 8)  # late: found at once, no grace needed
        await _save(a, 2)  # judged and pruned: a repeat
        await b.refresh_view()
        assert a.view == b.view == {("s", "g"): GroupFigures(2, 1, 10)}
        assert await a.missing_numbers("s", "g") == [4]

        # Numbers the grace has not covered yet wait; the settled ones are pruned.
        await _save(a, 10, 12)
        clock.now += 1.0
        await _save(b, 14)
        clock.now += GRACE_S - 0.3  # 10 and 12 saved over the grace ago, 14 not yet
        await _save(a)
        await b.refresh_view()
        assert a.view == b.view == {("s", "g"): GroupFigures(2, 2, 13)}, "11 judged; 13, 14 not"
        assert await a.missing_numbers("s", "g") == [4, 11]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT seq FROM seen ORDER BY seq").fetchall() == [(14,)]

    # A restarted worker reads the group's figures back.
    async with SequenceLedger(path, grace_s=GRACE_S, clock=clock) as again:
        assert again.view == {("s", "g"): GroupFigures(2, 2, 13)}


async def test_gateways_judged_together_keep_their_own_numbers(tmp_path: Path) -> None:
    clock = _Clock()
    async with SequenceLedger(tmp_path / "l.sqlite3", grace_s=GRACE_S, clock=clock) as ledger:
        # One judgment for three gateways: each one's gaps, late numbers and repeats are its own.
        await _save(ledger, 0, 2, 4, gateway="a")
        await _save(ledger, 10, 11, 11, 15, gateway="b")
        await _save(ledger, 3, gateway="c")
        clock.now += GRACE_S + 1.5
        await _save(ledger)
        assert ledger.view == {
            ("s", "a"): GroupFigures(0, 2, 5),
            ("s", "b"): GroupFigures(1, 3, 16),
            ("s", "c"): GroupFigures(0, 0, 4),
        }
        await _save(ledger, 1, gateway="a")
        await _save(ledger, 13, 10, gateway="b")
        assert await ledger.missing_numbers("s", "a") == [3]
        assert await ledger.missing_numbers("s", "b") == [12, 14]
        assert ledger.view[("s", "a")] == GroupFigures(0, 1, 5)
        assert ledger.view[("s", "b")] == GroupFigures(2, 2, 16)
        assert ledger.view[("s", "c")] == GroupFigures(0, 0, 4)


async def test_a_pubacks_waits_for_its_number_to_be_saved(tmp_path: Path) -> None:
    acked: list[int] = []
    async with SequenceLedger(tmp_path / "l.sqlite3", grace_s=GRACE_S) as ledger:
        done = ledger.record("s", "g", 7, lambda: acked.append(7))
        done()  # the readings are written: not yet acknowledged
        assert acked == []
        await ledger.flush()
        assert acked == [7]
        ledger.record("s", "g", 8, lambda: acked.append(8))()
        running = asyncio.create_task(ledger.run())
        try:
            async with asyncio.timeout(5):
                while acked != [7, 8]:  # noqa: ASYNC110 (saved soon, not after the interval)
                    await asyncio.sleep(0.01)
        finally:
            running.cancel()


async def test_remembered_lost_numbers_are_capped(tmp_path: Path) -> None:
    clock = _Clock()
    async with SequenceLedger(tmp_path / "l.sqlite3", grace_s=1, clock=clock, max_lost=3) as ledger:
        await _save(ledger, 0, 100)
        clock.now += 3
        await _save(ledger)
        assert ledger.view[("s", "g")] == GroupFigures(0, 99, 101)
        assert await ledger.missing_numbers("s", "g") == [97, 98, 99]
        await _save(ledger, 98, 5)  # 5 is forgotten: counted a repeat, as the tracker does
        assert ledger.view[("s", "g")] == GroupFigures(1, 98, 101)


# Three real workers behind a real broker.

SITE, GW, CLEAN_GW = "group-site", "gw-lossy", "gw-clean"
CLIENT_ID, GROUP = "ingest-seq", "seqgroup"
WORKERS = 3
SKIPPED = {7, 23, 41}
TWICE = {5, 30, 52}
LAST = 59
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _message(gateway: str, seq: int) -> bytes:
    reading = {
        "device": "hydro-1",
        "kind": "hydrology",
        "time": (T0 + timedelta(seconds=seq)).isoformat(),
        "values": {"stage": 1.0 + seq / 100, "discharge": 5.0, "water_temperature": 3.0},
    }
    body = {
        "schema": 1,
        "gateway": gateway,
        "site": SITE,
        "seq": seq,
        "sent_at": T0.isoformat(),
        "readings": [reading],
    }
    return json.dumps(body).encode()


def _figures(metrics: str, name: str) -> dict[str, float]:
    """Per gateway, the value of ecotel_ingest_<name> on one worker's /metrics."""
    pattern = rf'^ecotel_ingest_{name}{{gateway="([^"]+)",site="{SITE}"}} (\S+)$'
    return {gw: float(value) for gw, value in re.findall(pattern, metrics, re.MULTILINE)}


async def _scrape(ports: list[int], name: str) -> list[dict[str, float]]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        pages = [(await http.get(f"http://127.0.0.1:{p}/metrics")).text for p in ports]
    return [_figures(page, name) for page in pages]


async def _until(ports: list[int], name: str, wanted: dict[str, float]) -> None:
    """Until every worker shows ``wanted`` for ``name`` (the group's figure is the same on all)."""
    seen: list[dict[str, float]] = []
    try:
        async with asyncio.timeout(20):
            while (seen := await _scrape(ports, name)) != [wanted] * len(ports):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"{name}: {seen}, wanted {wanted} on every worker") from None


async def _stats_fields(url: str, database: str) -> list[tuple[float, float]]:
    series = await influx_query(
        url,
        "SELECT last(group_repeated_messages), last(group_missing_messages) FROM ingest_stats "
        'GROUP BY "worker"',
        database=database,
    )
    return [(s.values[0][1], s.values[0][2]) for s in series]


async def _wait_log(path: Path, pattern: str, count: int) -> None:
    """Until the supervisor's log (its workers' too) has ``count`` matches of ``pattern``."""
    async with asyncio.timeout(30):
        while len(re.findall(pattern, await asyncio.to_thread(path.read_text))) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_three_workers_report_exactly_the_skipped_and_repeated_numbers(
    influxdb: InfluxServer, tmp_path: Path
) -> None:
    database = f"seq_{uuid.uuid4().hex[:8]}"
    api_port = find_free_port()
    ports = [api_port + k for k in range(WORKERS)]
    async with MosquittoServer(tmp_path / "broker") as broker:
        config = tmp_path / "ingest.toml"
        config.write_text(
            "stats_interval_s = 0.5\n"
            f'[mqtt]\nport = {broker.port}\nclient_id = "{CLIENT_ID}"\nshared_group = "{GROUP}"\n'
            f'[influx]\nurl = "{influxdb.url}"\ndatabase = "{database}"\n'
            "[batch]\nmax_delay_s = 0.2\n"
            f'[dead_letter]\npath = "{tmp_path / "dead.sqlite3"}"\n'
            "[sequences]\ngrace_s = 1.0\n"
            f"[api]\nenabled = true\nport = {api_port}\n",
            encoding="utf-8",
        )
        log_path = tmp_path / "supervisor.log"
        with log_path.open("wb") as sink:
            supervisor = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "pipelines", "run", "--config", str(config)],
                *["--workers", str(WORKERS)],
                stdout=sink,
                stderr=sink,
            )
        try:
            await _wait_log(log_path, r"ingest connected to", WORKERS)
            async with aiomqtt.Client("127.0.0.1", broker.port) as gateway:
                for seq in range(LAST + 1):
                    await gateway.publish(
                        wire.readings_topic(SITE, CLEAN_GW), _message(CLEAN_GW, seq), qos=1
                    )
                    copies = 0 if seq in SKIPPED else 2 if seq in TWICE else 1
                    for _ in range(copies):
                        await gateway.publish(
                            wire.readings_topic(SITE, GW), _message(GW, seq), qos=1
                        )
                # Every number judged (below LAST + 1) on every worker: exactly the skipped
                # ones are missing, the copies are repeats, the clean gateway has neither.
                await _until(
                    ports, "group_sequence_judged_below", {GW: LAST + 1, CLEAN_GW: LAST + 1}
                )
                await _until(ports, "group_sequence_missing", {GW: len(SKIPPED), CLEAN_GW: 0})
                await _until(ports, "group_sequence_repeats_total", {GW: len(TWICE), CLEAN_GW: 0})
                # A skipped number published late stops counting as missing.
                await gateway.publish(wire.readings_topic(SITE, GW), _message(GW, 23), qos=1)
                await _until(ports, "group_sequence_missing", {GW: len(SKIPPED) - 1, CLEAN_GW: 0})
                await _until(ports, "group_sequence_repeats_total", {GW: len(TWICE), CLEAN_GW: 0})
            # The counters line of every worker carries the group's totals.
            await _wait_log(log_path, r"group_missing_messages=2\b", WORKERS)
            # And so do the ingest_stats points of the fleet dashboard, one series per worker.
            async with asyncio.timeout(10):
                while await _stats_fields(influxdb.url, database) != [(3.0, 2.0)] * WORKERS:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        finally:
            supervisor.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                returncode = await supervisor.wait()
    text = await asyncio.to_thread(log_path.read_text)
    assert returncode == 0
    # The judging workers name the numbers (in one judgment or several), and the late one.
    named = re.findall(rf"gateway {GW} at {SITE}: messages ([\d, ]+) missing", text)
    assert sorted(int(n) for found in named for n in found.split(", ")) == sorted(SKIPPED)
    assert re.findall(rf"gateway {GW} at {SITE}: messages (\S+) arrived late", text) == ["23"]
    assert f"gateway {CLEAN_GW}" not in text
    assert "group_repeated_messages=3 group_missing_messages=2" in text
    # Each worker took part: the group's figures are not one worker's.
    for worker in range(WORKERS):
        taken = re.findall(rf"\[worker {worker}\]: ingest: messages=(\d+) ", text)
        assert max(map(int, taken)) > 0, f"worker {worker} took no message"
