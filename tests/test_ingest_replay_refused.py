"""Points InfluxDB refused are replayed after the operator removes the conflict: kept with
InfluxDB's answer while it lasts, then stored once and their letters gone (HTTP API and CLI)."""

import asyncio
import contextlib
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from deploy.servers import InfluxServer, MosquittoServer, find_free_port
from pipelines.config import load_ingest_config
from pipelines.dead_letter import DeadLetterStore
from pipelines.influx_query import influx_query
from pipelines.service import IngestService
from tests.hydrology_load import hydrology_message
from tests.ingest_harness import running_ingest

OPERATOR = "operator-token-0123456789"
# InfluxDB's shards of the default policy are weeks from Monday 00:00 UTC: a type conflict
# planted in the week of T0 refuses that week's points, and dropping its shard mends it.
T0 = datetime(2026, 3, 2, tzinfo=UTC)
ECOTEL_INGEST = str(Path(sys.executable).with_name("ecotel-ingest"))


def _config(
    tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer, db: str, extra: str = ""
) -> Path:
    config = tmp_path / "ingest.toml"
    config.write_text(
        f'[mqtt]\nport = {mosquitto.port}\nclient_id = "ingest-{db}"\n'
        f'topics = ["ecotel/v1/{db}/+/readings"]\n'
        f'[influx]\nurl = "{influx.url}"\ndatabase = "{db}"\n'
        "[batch]\nmax_delay_s = 0.05\n"
        f'[dead_letter]\npath = "{tmp_path / "dead.sqlite3"}"\n' + extra,
        encoding="utf-8",
    )
    return config


def _running(config: Path) -> contextlib.AbstractAsyncContextManager[IngestService]:
    return running_ingest(load_ingest_config(config))


async def _influx(url: str, db: str, statement: str) -> list[Any]:
    return [
        row for series in await influx_query(url, statement, database=db) for row in series.values
    ]


async def _write(url: str, db: str, line: str) -> None:
    async with httpx.AsyncClient(base_url=url, trust_env=False) as http:
        answer = await http.post("/write", params={"db": db}, content=line)
    assert answer.status_code == 204, answer.text


async def test_refused_points_replayed_over_http_stay_until_the_conflict_is_dropped(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str
) -> None:
    # `stage` a string in the first week: the float stages of that week are refused.
    await _write(
        influxdb.url,
        influx_db,
        f'hydrology,device=other,gateway=x,site=site stage="high" {int(T0.timestamp()) * 10**9}',
    )
    port = find_free_port()
    api = f'[api]\nenabled = true\nport = {port}\n[[api.tokens]]\ntoken = "{OPERATOR}"\n'
    config = _config(tmp_path, mosquitto, influxdb, influx_db, "[derive]\nenabled = false\n" + api)
    payload = json.loads(hydrology_message("gw-r", 0, 14, T0))
    for i, reading in enumerate(payload["readings"]):
        reading["time"] = (T0 + timedelta(days=i, hours=1)).isoformat()
    async with (
        _running(config),
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {OPERATOR}"},
            trust_env=False,
            timeout=30,
        ) as http,
    ):
        async with asyncio.timeout(30):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        posted = await http.post("/v1/readings/site/gw-r", content=json.dumps(payload))
        assert posted.json() == {"stored": 14, "refused": []}  # refused by InfluxDB after
        letters = (await http.get("/v1/dead-letters", params={"reason": "influx_refused"})).json()
        assert len(letters["items"]) == 7

        still = await http.post("/v1/dead-letters/replay", json={"reason": "influx_refused"})
        assert still.status_code == 200, still.text
        results = still.json()["results"]
        assert {r["outcome"] for r in results} == {"refused"}
        assert {r["reason"] for r in results} == {"influx_refused"}
        assert all("field type conflict" in r["detail"] for r in results)
        shown = (await http.get(f"/v1/dead-letters/{results[0]['id']}")).json()
        assert shown["reason"] == "influx_refused"
        assert shown["detail"] == results[0]["detail"]

        # The operator's fix: the week with the wrongly typed data goes.
        shards = await influx_query(influxdb.url, "SHOW SHARDS")
        [week] = [
            row[0]
            for series in shards
            if series.name == influx_db
            for row in series.values
            if row[4] == "2026-03-02T00:00:00Z"
        ]
        await influx_query(influxdb.url, f"DROP SHARD {week}")

        fixed = await http.post("/v1/dead-letters/replay", json={"reason": "influx_refused"})
        results = fixed.json()["results"]
        assert [(r["outcome"], r["stored"]) for r in results] == [("stored", 1)] * 7
        assert (await http.get("/v1/dead-letters/counts")).json() == {}
    rows = await _influx(
        influxdb.url, influx_db, "SELECT stage FROM hydrology WHERE device = 'hydro-1'"
    )
    days = sorted((datetime.fromisoformat(t) - T0).days for t, _ in rows)
    assert days == list(range(14))  # each reading once: the 7 kept and the 7 replayed
    assert (
        await _influx(influxdb.url, influx_db, "SELECT stage FROM hydrology WHERE device = 'other'")
        == []
    )


def _traffic(minute: int, lane: str, volume: float) -> dict[str, Any]:
    return {
        "device": "radar-1",
        "kind": "traffic_detector",
        "channel": lane,
        "time": (T0 + timedelta(hours=3, minutes=minute)).isoformat(),
        "values": {"interval_s": 60.0, "volume": volume, "mean_speed": 80.0, "occupancy": 12.0},
    }


async def _replay_refused(config: Path) -> tuple[int | None, str]:
    """``ecotel-ingest --config FILE dead-letters replay --reason influx_refused``, as typed."""
    process = await asyncio.create_subprocess_exec(
        *[ECOTEL_INGEST, "--config", str(config), "dead-letters", "replay"],
        *["--reason", "influx_refused"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return process.returncode, out.decode()


async def test_the_command_line_replays_refused_traffic_and_recomputes_its_windows(
    tmp_path: Path, mosquitto: MosquittoServer, influxdb: InfluxServer, influx_db: str
) -> None:
    # Someone wrote `volume` as a string: every traffic reading of that week is refused.
    await _write(
        influxdb.url,
        influx_db,
        f'traffic_detector,device=old,gateway=x,lane=1,site=G6 volume="12" '
        f"{int(T0.timestamp()) * 10**9}",
    )
    config = _config(
        tmp_path, mosquitto, influxdb, influx_db, "[derive]\nhighway_utc_offset_h = 0\n"
    )
    readings = [_traffic(m, lane, 10.0 + m) for m in range(3) for lane in ("1", "2")]
    message = {
        "schema": 1,
        "gateway": "gw-t",
        "site": "G6",
        "seq": 0,
        "sent_at": T0.isoformat(),
        "readings": readings,
    }
    async with _running(config) as service:
        outcome = await service.submit("ecotel/v1/G6/gw-t/readings", json.dumps(message).encode())
    assert outcome.stored == 6
    async with DeadLetterStore(tmp_path / "dead.sqlite3") as store:
        assert (await store.counts()) == {"influx_refused": 6}

    code, out = await _replay_refused(config)
    assert code == 1, out
    refused = [line for line in out.splitlines() if "refused" in line]
    assert len(refused) == 6
    assert all("influx_refused: InfluxDB answered 400" in line for line in refused)
    flow = "SELECT vehicles, lanes FROM traffic_flow_site WHERE \"window\" = '15min'"
    assert await _influx(influxdb.url, influx_db, flow) == []

    await influx_query(influxdb.url, "DROP MEASUREMENT traffic_detector", database=influx_db)
    code, out = await _replay_refused(config)
    assert code == 0, out
    *letters, windows = out.splitlines()
    assert [line.split()[1:] for line in letters] == [["stored", "1", "point", "written"]] * 6
    # Marked by the replay: the first run recomputed (empty) what the live ingest had marked.
    assert windows.startswith("2 derived windows recomputed (")
    volumes = await _influx(
        influxdb.url, influx_db, "SELECT volume FROM traffic_detector GROUP BY lane"
    )
    assert sorted(v for _, v in volumes) == [10.0, 10.0, 11.0, 11.0, 12.0, 12.0]
    # The quarter-hour from T0 + 3 h holds all six: its figure is computed from them.
    assert await _influx(influxdb.url, influx_db, flow) == [
        [(T0 + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ"), 66.0, 2.0]
    ]
    async with DeadLetterStore(tmp_path / "dead.sqlite3") as store:
        assert (await store.counts()) == {}
