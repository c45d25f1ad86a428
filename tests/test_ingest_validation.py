"""Every kind of bad input through the real broker into the real ingest process: each refusal is
dead-lettered with its reason, repeats are counted, suspicious values are stored with a flag."""

import asyncio
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import pytest_asyncio

from collector import wire
from deploy.servers import InfluxServer, MosquittoServer, find_free_port
from devices.ecology import Hydrology
from pipelines.config import InfluxSettings, QualitySettings
from pipelines.dead_letter import DeadLetterStore
from pipelines.influx_query import influx_query
from pipelines.quality import QualityChecker
from pipelines.quality_history import load_quality_history

SITE, GW, OTHER_GW = "Tuotuohe", "tuotuohe-gw1", "tuotuohe-gw2"
TOPIC = wire.readings_topic(SITE, GW)
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
OPERATOR = "operator-token-0123456789"


def _hydro(second: int, **values: Any) -> dict[str, Any]:
    return {
        "device": "hydro-1",
        "kind": "hydrology",
        "time": (T0 + timedelta(seconds=second)).isoformat(),
        "values": {
            "stage": 4520.0 + second / 100,
            "discharge": 50.0 + second,
            "water_temperature": 3.0 + second / 100,
            **values,
        },
    }


def _message(seq: int, *readings: dict[str, Any], **envelope: Any) -> bytes:
    body = {
        "schema": 1,
        "gateway": GW,
        "site": SITE,
        "seq": seq,
        "sent_at": T0.isoformat(),
        "readings": list(readings),
        **envelope,
    }
    return json.dumps(body).encode()


@dataclass
class Expected:
    name: str
    payload: bytes
    reason: str | None
    """Dead-letter reason, None for a message that must be stored."""
    topic: str = TOPIC


def _stream() -> list[Expected]:
    """Good readings (seq 0-2 and the flagged ones) between every kind of bad input."""
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    return [
        Expected("good", _message(0, _hydro(0), _hydro(1)), None),
        Expected("malformed JSON", b'{"schema": 1, "readings": [', "bad_json"),
        Expected("not UTF-8", b"\xff\xfe\x80 not text", "not_utf8"),
        Expected(
            "wrong envelope type",
            _message(1, _hydro(2)).replace(b'"seq": 1', b'"seq": "one"'),
            "bad_envelope",
        ),
        Expected("wrong value type", _message(2, _hydro(3, stage="4520 m")), "invalid_values"),
        Expected(
            "out of catalog range",
            _message(3, _hydro(4, water_temperature=95.0)),
            "invalid_values",
        ),
        Expected("out of the site's range", _message(4, _hydro(5, stage=4600.0)), "invalid_values"),
        Expected("future time", _message(5, {**_hydro(6), "time": future}), "time_in_future"),
        Expected(
            "1970 time", _message(6, {**_hydro(7), "time": "1970-01-01T00:00:12Z"}), "clock_unset"
        ),
        Expected(
            "another gateway in the payload",
            _message(7, _hydro(8), gateway=OTHER_GW),
            "topic_mismatch",
        ),
        Expected(
            "another gateway's device",
            _message(8, {**_hydro(9), "device": "hydro-9"}),
            "foreign_device",
        ),
        Expected("unknown kind", _message(9, {**_hydro(10), "kind": "toaster"}), "unknown_kind"),
        Expected("oversized", _message(10, _hydro(11), padding="x" * 5000), "too_large"),
        # The spike: stage jumps 15 m (threshold 5 m) and comes back.
        Expected("spike", _message(11, _hydro(20), _hydro(21, stage=4535.0), _hydro(22)), None),
        Expected("good again", _message(12, _hydro(30), _hydro(31)), None),
        # Same seq again: a redelivery, counted, stored once (same points).
        Expected("repeated seq", _message(12, _hydro(30), _hydro(31)), None),
        # Stuck: the same stage 5 times (stuck_readings = 4).
        Expected(
            "stuck",
            _message(13, *[_hydro(40 + i, stage=4521.5) for i in range(5)]),
            None,
        ),
        # One point twice with other values (a late time: its series has moved on, so
        # the quality checker does not judge it): the first is stored, the second refused.
        Expected(
            "one point, two values",
            _message(14, _hydro(35), _hydro(35, stage=4533.0)),
            "conflicting_duplicate",
        ),
    ]


STORED_READINGS = 2 + 3 + 2 + 5 + 1


@dataclass
class Running:
    dead_letters: Path
    database: str
    influx_url: str
    api: str


@pytest_asyncio.fixture
async def ingest(influxdb: InfluxServer, tmp_path: Path) -> AsyncIterator[Running]:
    database = f"val_{uuid.uuid4().hex[:8]}"
    port = find_free_port()
    async with MosquittoServer(tmp_path / "broker") as broker:
        config = tmp_path / "ingest.toml"
        config.write_text(
            f'[mqtt]\nport = {broker.port}\nclient_id = "ingest-validation"\n'
            "max_message_bytes = 4096\n"
            f'[influx]\nurl = "{influxdb.url}"\ndatabase = "{database}"\n'
            "[batch]\nmax_delay_s = 0.2\n"
            f'[dead_letter]\npath = "{tmp_path / "dead.sqlite3"}"\n'
            f'[validation.sites."{SITE}".limits.hydrology]\nstage = [4500.0, 4540.0]\n'
            f'[validation.sites."{SITE}".gateways."{GW}"]\ndevices = ["hydro-1"]\n'
            "[validation.quality]\nstuck_readings = 4\nstuck_min_s = 0\n"
            "[validation.quality.spike]\nstage = 5.0\n"
            f'[api]\nenabled = true\nport = {port}\n[[api.tokens]]\ntoken = "{OPERATOR}"\n',
            encoding="utf-8",
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipelines", "--config", str(config), "run"
        )
        api = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(api)
            async with aiomqtt.Client("127.0.0.1", broker.port) as publisher:
                for item in _stream():
                    await publisher.publish(item.topic, item.payload, qos=1)
            yield Running(tmp_path / "dead.sqlite3", database, influxdb.url, api)
        finally:
            process.send_signal(signal.SIGTERM)
            await process.wait()


async def _wait_ready(api: str) -> None:
    async with httpx.AsyncClient(trust_env=False) as http, asyncio.timeout(30):
        while True:
            try:
                if (await http.get(f"{api}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)


async def _stored(run: Running) -> list[dict[str, Any]]:
    try:
        series = await influx_query(
            run.influx_url, "SELECT * FROM hydrology", database=run.database, epoch="s"
        )
    except Exception:
        return []
    return [row for s in series for row in s.rows()]


@pytest.mark.slow
async def test_every_bad_input_is_dead_lettered_and_good_readings_are_stored(
    ingest: Running,
) -> None:
    expected = [e for e in _stream() if e.reason is not None]
    async with asyncio.timeout(30):
        while len(await _stored(ingest)) < STORED_READINGS:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    async with DeadLetterStore(ingest.dead_letters) as store:
        async with asyncio.timeout(30):
            while sum((await store.counts()).values()) < len(expected):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        letters = await store.list(limit=1000)
    assert [letter.reason for letter in letters] == [e.reason for e in expected]
    for letter, item in zip(letters, expected, strict=True):
        assert letter.topic == item.topic, item.name
        if letter.payload is not None:
            assert letter.payload == item.payload, f"{item.name}: exact bytes kept"
    by_reason = {letter.reason: letter for letter in letters}
    site_note = "validation.sites.'Tuotuohe'.limits.hydrology"
    assert site_note in letters[5].detail, "the refusal names the key of the site's limit"
    assert site_note not in letters[4].detail, "water_temperature has the catalog's range"
    assert by_reason["foreign_device"].reading is not None

    rows = await _stored(ingest)
    times = [row["time"] for row in rows]
    assert len(times) == len(set(times)) == STORED_READINGS, "the repeated message stored once"
    quality = {row["time"] - int(T0.timestamp()): row.get("quality") for row in rows}
    assert quality[21] == "spike:stage"
    assert quality[22] is None, "the return from a lone spike is not a second spike"
    assert [quality[40 + i] for i in range(5)] == [None, None, None, "stuck:stage", "stuck:stage"]
    assert all(q is None for t, q in quality.items() if t not in (21, 43, 44))
    [first] = [row for row in rows if row["time"] - int(T0.timestamp()) == 35]
    assert first["stage"] == 4520.35, "the first of two conflicting copies is the one stored"

    async with httpx.AsyncClient(trust_env=False) as http:
        metrics = (await http.get(f"{ingest.api}/metrics")).text
    assert f'ecotel_ingest_sequence_repeats_total{{gateway="{GW}",site="{SITE}"}} 1.0' in metrics
    assert 'ecotel_ingest_rejected_total{reason="too_large",scope="message"} 1.0' in metrics
    assert 'ecotel_ingest_rejected_total{reason="invalid_values",scope="reading"} 3.0' in metrics
    assert 'ecotel_ingest_quality_flags_total{flag="stuck"} 2.0' in metrics

    # A restarted ingest reads the series' history back and goes on flagging
    # as before; a redelivered reading is not judged again.
    settings = QualitySettings(stuck_readings=4, stuck_min_s=0, spike={"stage": 5.0})
    checker = QualityChecker(settings)
    influx = InfluxSettings(url=ingest.influx_url, database=ingest.database)
    assert await load_quality_history(checker, influx, history_s=86_400) == 1
    series = (SITE, GW, "hydro-1", "hydrology", None)
    # The site's range is beyond the catalog's: built without validation.
    later = Hydrology.model_construct(stage=4521.5, discharge=95.0, water_temperature=3.45)
    assert checker.check(series, T0 + timedelta(seconds=44), Hydrology, later.__dict__) is None
    assert (
        checker.check(series, T0 + timedelta(seconds=45), Hydrology, later.__dict__)
        == "stuck:stage"
    )
