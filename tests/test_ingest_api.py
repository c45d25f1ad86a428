"""The ingest's HTTP API against a running ingest process, a real broker and a real InfluxDB."""

import ast
import asyncio
import base64
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from deploy.servers import InfluxServer, MosquittoServer, find_free_port
from pipelines.config import load_ingest_config
from pipelines.dead_letter import REASONS, DeadLetterStore
from pipelines.influx_query import influx_query

OPERATOR = "operator-token-0123456789"
GATEWAY_TOKEN = "gateway-token-0123456789"
SITE, GW = "Madoi", "madoi-gw1"
ROOT = Path(__file__).resolve().parent.parent
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


@dataclass
class Api:
    url: str
    influx_url: str
    database: str
    config: Path

    def client(self, token: str | None = OPERATOR) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, trust_env=False, timeout=30)


@pytest.fixture(scope="module")
def api(
    mosquitto: MosquittoServer, influxdb: InfluxServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("api")
    database = f"api_{uuid.uuid4().hex[:8]}"
    port = find_free_port()
    config = tmp / "ingest.toml"
    config.write_text(
        f'[mqtt]\nport = {mosquitto.port}\nclient_id = "ingest-api-{database}"\n'
        f'topics = ["ecotel/v1/{database}/+/readings"]\n'
        f'[influx]\nurl = "{influxdb.url}"\ndatabase = "{database}"\n'
        "[batch]\nmax_delay_s = 0.2\n"
        f'[dead_letter]\npath = "{tmp / "dead.sqlite3"}"\n'
        "[validation]\nmax_future_s = 3\n"
        f'[validation.sites."{SITE}".limits.hydrology]\ndischarge = [0.0, 500.0]\n'
        f'[validation.sites."{SITE}".limits.water_quality]\nph = [6.5, 8.5]\n'
        f"[api]\nenabled = true\nport = {port}\n"
        f'[[api.tokens]]\ntoken = "{OPERATOR}"\nname = "ops"\n'
        f'[[api.tokens]]\ntoken = "{GATEWAY_TOKEN}"\nsite = "{SITE}"\ngateway = "{GW}"\n',
        encoding="utf-8",
    )
    process = subprocess.Popen([sys.executable, "-m", "pipelines", "--config", str(config), "run"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the ingest API never became ready"
            time.sleep(0.2)
        yield Api(url, influxdb.url, database, config)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def _hydro(second: int, **values: Any) -> dict[str, Any]:
    return {
        "device": "hydro-1",
        "kind": "hydrology",
        "time": (T0 + timedelta(seconds=second)).isoformat(),
        "values": {
            "stage": 2.0 + second / 100,
            "discharge": 40.0,
            "water_temperature": 4.0,
            **values,
        },
    }


def _message(seq: int, *readings: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "schema": 1,
            "gateway": GW,
            "site": SITE,
            "seq": seq,
            "sent_at": T0.isoformat(),
            "readings": list(readings),
        }
    ).encode()


async def _stored_seconds(api: Api) -> set[int]:
    series = await influx_query(
        api.influx_url, "SELECT stage FROM hydrology", database=api.database, epoch="s"
    )
    return {row[0] - int(T0.timestamp()) for s in series for row in s.values}


async def test_health_readiness_and_metrics(api: Api) -> None:
    async with api.client(None) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = (await http.get("/readyz")).json()
        assert ready == {"ready": True, "broker": True, "influxdb": True, "problems": []}
        metrics = await http.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "ecotel_ingest_readings_written_total",
        "ecotel_ingest_spool_points",
        "ecotel_ingest_unacked_messages",
        "ecotel_ingest_oldest_unacked_age_seconds",
        'ecotel_ingest_write_batch_seconds_bucket{le="+Inf"}',
        "ecotel_ingest_broker_connected 1.0",
    ):
        assert name in metrics.text


async def test_posted_readings_are_stored_before_the_answer_with_refusals_listed(api: Api) -> None:
    async with api.client(GATEWAY_TOKEN) as http:
        response = await http.post(
            f"/v1/readings/{SITE}/{GW}",
            content=_message(1, _hydro(0), _hydro(1, discharge=900.0), _hydro(2)),
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stored"] == 2
    [refusal] = body["refused"]
    assert refusal["index"] == 1
    assert refusal["reason"] == "invalid_values"
    assert f"validation.sites.'{SITE}'.limits.hydrology.discharge" in refusal["detail"]
    # No waiting: the answer came after the write.
    assert {0, 2} <= await _stored_seconds(api)


async def test_tokens_are_checked_and_bound_to_their_gateway(api: Api) -> None:
    path = f"/v1/readings/{SITE}/{GW}"
    async with api.client(None) as http:
        assert (await http.post(path, content=_message(2, _hydro(3)))).status_code == 401
    async with api.client("not-a-token-at-all") as http:
        assert (await http.post(path, content=_message(2, _hydro(3)))).status_code == 401
    async with api.client(GATEWAY_TOKEN) as http:
        other = await http.post(f"/v1/readings/{SITE}/other-gw", content=_message(2, _hydro(3)))
        assert other.status_code == 403
        assert (await http.get("/v1/dead-letters")).status_code == 403


async def test_a_refused_message_is_dead_lettered_and_shown_with_its_exact_bytes(api: Api) -> None:
    payload = b"\xff\x00 not UTF-8"
    async with api.client() as http:
        response = await http.post(f"/v1/readings/{SITE}/{GW}", content=payload)
        assert response.status_code == 422
        assert response.json()["reason"] == "not_utf8"
        page = (await http.get("/v1/dead-letters", params={"reason": "not_utf8"})).json()
        [letter] = page["items"]
        assert letter["whole_message"]
        assert page["next_after_id"] is None
        shown = (await http.get(f"/v1/dead-letters/{letter['id']}")).json()
        assert base64.b64decode(shown["payload_base64"]) == payload
        assert shown["payload_text"] is None
        assert (await http.get("/v1/dead-letters/999999")).status_code == 404
        big = await http.post(f"/v1/readings/{SITE}/{GW}", content=b"x" * 2_000_000)
        assert big.status_code == 413


async def test_a_path_level_that_is_no_name_is_a_bad_topic(api: Api) -> None:
    async with api.client() as http:
        response = await http.post(f"/v1/readings/%24bad/{GW}", content=_message(5, _hydro(5)))
        assert response.status_code == 422, response.text
        assert response.json()["reason"] == "bad_topic"
        assert "'$bad'" in response.json()["detail"]
        page = (await http.get("/v1/dead-letters", params={"reason": "bad_topic"})).json()
        [letter] = page["items"]
        assert letter["topic"] == f"ecotel/v1/$bad/{GW}/readings"
        assert letter["whole_message"]
        report = (await http.post("/v1/dead-letters/replay", json={"ids": [letter["id"]]})).json()
    assert [(r["outcome"], r["reason"]) for r in report["results"]] == [("refused", "bad_topic")]


async def test_dead_letters_page_and_replay_stores_what_passes_now(api: Api) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=5)
    async with api.client() as http:
        posted = await http.post(
            f"/v1/readings/{SITE}/{GW}",
            content=_message(
                3,
                {**_hydro(10), "time": soon.isoformat()},
                _hydro(11, discharge=800.0),
                _hydro(12, discharge=801.0),
            ),
        )
        assert [r["reason"] for r in posted.json()["refused"]] == [
            "time_in_future",
            "invalid_values",
            "invalid_values",
        ]
        first = (await http.get("/v1/dead-letters", params={"limit": 1})).json()
        second = (
            await http.get(
                "/v1/dead-letters", params={"limit": 1, "after_id": first["next_after_id"]}
            )
        ).json()
        assert second["items"][0]["id"] > first["items"][0]["id"]
        future = (await http.get("/v1/dead-letters", params={"reason": "time_in_future"})).json()
        [letter] = future["items"]
        # Still too far ahead: kept, with the reason it fails with now.
        report = (await http.post("/v1/dead-letters/replay", json={"ids": [letter["id"]]})).json()
        assert report["results"][0]["outcome"] == "refused"
        assert report["results"][0]["reason"] == "time_in_future"
        # Wait until the reading is within max_future_s (3 s) of now.
        await asyncio.sleep((soon - datetime.now(UTC)).total_seconds() - 2)
        report = (await http.post("/v1/dead-letters/replay", json={"ids": [letter["id"]]})).json()
        assert report["results"][0]["outcome"] == "stored"
        assert report["results"][0]["stored"] == 1
        assert (await http.get(f"/v1/dead-letters/{letter['id']}")).status_code == 404
        counts = (await http.get("/v1/dead-letters/counts")).json()
        assert counts["invalid_values"] >= 2
    stored = await influx_query(
        api.influx_url,
        "SELECT count(stage) FROM hydrology WHERE time > now()",
        database=api.database,
    )
    assert stored
    assert stored[0].values[0][1] == 1


def test_the_command_line_replays_after_a_configuration_fix(api: Api, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(
        api.config.read_text(encoding="utf-8").replace(
            "discharge = [0.0, 500.0]", "discharge = [0.0, 1000.0]"
        ),
        encoding="utf-8",
    )
    command = [sys.executable, "-m", "pipelines", "--config", str(fixed), "dead-letters"]
    replayed = subprocess.run(
        [*command, "replay", "--reason", "invalid_values"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert replayed.stdout.count("stored") >= 3
    left = subprocess.run([*command, "counts"], capture_output=True, text=True, check=True)
    assert "invalid_values" not in left.stdout


async def test_a_replayed_reading_gets_its_derived_point(api: Api, tmp_path: Path) -> None:
    sonde = {
        "device": "sonde-1",
        "kind": "water_quality",
        "time": (T0 + timedelta(seconds=500)).isoformat(),
        "values": {
            "water_temperature": 6.0,
            "ph": 8.8,
            "dissolved_oxygen": 8.0,
            "conductivity": 300.0,
            "turbidity": 5.0,
            "ammonia_nitrogen": 0.1,
        },
    }
    async with api.client() as http:
        posted = await http.post(f"/v1/readings/{SITE}/{GW}", content=_message(40, sonde))
        assert [r["reason"] for r in posted.json()["refused"]] == ["invalid_values"]
        letters = (await http.get("/v1/dead-letters", params={"reason": "invalid_values"})).json()
    [letter] = [item for item in letters["items"] if "limits.water_quality.ph" in item["detail"]]
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(
        api.config.read_text(encoding="utf-8").replace("ph = [6.5, 8.5]", "ph = [6.0, 9.0]"),
        encoding="utf-8",
    )
    command = ["--config", str(fixed), "dead-letters", "replay", str(letter["id"])]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipelines", *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, (out + err).decode()
    assert "1 point written" in out.decode()
    at = f"time = '{sonde['time']}'"
    raw = await influx_query(
        api.influx_url, f"SELECT ph FROM water_quality WHERE {at}", database=api.database
    )
    assert [row[1] for s in raw for row in s.values] == [8.8]
    derived = await influx_query(
        api.influx_url,
        f'SELECT "class", label, device FROM water_quality_class WHERE {at}',
        database=api.database,
    )
    assert [row[1:] for s in derived for row in s.values] == [[1.0, "I", "sonde-1"]]


def test_the_openapi_document_describes_every_endpoint_with_models(api: Api) -> None:
    document = httpx.get(f"{api.url}/openapi.json", trust_env=False).json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            ok = operation["responses"]["200"]
            assert ok.get("content"), f"{method} {path} has no documented 200 body"
    schemas = document["components"]["schemas"]
    assert {"IngestResult", "DeadLetterDetail", "ReplayReport", "Readiness"} <= set(schemas)
    body = document["paths"]["/v1/readings/{site}/{gateway}"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReadingsMessage"
    }
    message = schemas["ReadingsMessage"]
    assert {"schema", "site", "gateway", "seq", "sent_at", "readings"} <= set(message["required"])
    assert message["properties"]["readings"]["items"] == {"$ref": "#/components/schemas/Reading"}
    reading = schemas["Reading"]["properties"]
    assert {"device", "kind", "channel", "time", "values", "clock"} == set(reading)
    assert {"hydrology", "water_quality", "traffic_detector"} <= set(reading["kind"]["enum"])
    assert reading["values"]["additionalProperties"] == {
        "anyOf": [{"type": "number"}, {"type": "string"}]
    }


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(api: Api) -> None:
    # Loaded in the test rather than by schemathesis.pytest.from_fixture (its
    # lazy schema sets Function._nodeid, gone in pytest 9), and sent with
    # httpx rather than case.call() (its requests transport trips over the
    # urllib3-future installed here).
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    auth = {"Authorization": f"Bearer {OPERATOR}"}
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == 8
    with httpx.Client(trust_env=False, timeout=30) as http:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=12,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def no_server_error(case: Any) -> None:
                request = case.as_transport_kwargs(base_url=api.url, headers=auth)
                if "data" in request:
                    request["content"] = request.pop("data")
                # The API reads no cookies; httpx deprecates them per request, so send them
                # as a header, as a browser would.
                cookies = request.pop("cookies", None) or {}
                if cookies:
                    request.setdefault("headers", {})["Cookie"] = "; ".join(
                        f"{k}={v}" for k, v in cookies.items()
                    )
                response = http.request(**request)
                assert response.status_code < 500, (
                    f"{request['method']} {request['url']}: {response.status_code} "
                    f"{response.text[:500]}"
                )

            no_server_error()


def _influx_down_config(tmp_path: Path, **sections: str) -> Path:
    """An ingest configuration whose InfluxDB (and broker) nobody listens on."""
    config = tmp_path / "down.toml"
    config.write_text(
        f'[mqtt]\nport = {find_free_port()}\n[influx]\nurl = "http://127.0.0.1:{find_free_port()}"\n'
        f'[dead_letter]\npath = "{tmp_path / "dead.sqlite3"}"\n'
        + "".join(f"[{name}]\n{body}\n" for name, body in sections.items()),
        encoding="utf-8",
    )
    return config


def test_the_api_answers_while_influxdb_is_away(tmp_path: Path) -> None:
    port = find_free_port()
    config = _influx_down_config(tmp_path, api=f"enabled = true\nport = {port}")
    process = subprocess.Popen([sys.executable, "-m", "pipelines", "--config", str(config), "run"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{url}/healthz", trust_env=False, timeout=30)
                break
            except httpx.TransportError:
                assert process.poll() is None, "the ingest exited"
                assert time.monotonic() < deadline, "the API never answered with InfluxDB away"
                time.sleep(0.2)
        assert health.status_code == 200
        ready = httpx.get(f"{url}/readyz", trust_env=False, timeout=30)
        assert ready.status_code == 503
        assert any(p.startswith("influxdb: ") for p in ready.json()["problems"]), ready.json()
        # Nothing received yet: SIGTERM stops it at once, without the graceful stop's wait.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)


def test_replay_gives_up_on_an_unreachable_influxdb_naming_the_setting(
    api: Api, tmp_path: Path
) -> None:
    away = tmp_path / "away.toml"
    away.write_text(
        api.config.read_text(encoding="utf-8").replace(
            api.influx_url, f"http://127.0.0.1:{find_free_port()}"
        ),
        encoding="utf-8",
    )
    replayed = subprocess.run(
        [*_dead_letters_command(away), "replay", "--reason", "invalid_values", "--wait", "1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert replayed.returncode == 1, replayed.stderr
    assert "influx.url" in replayed.stderr
    assert str(away) in replayed.stderr


def _dead_letters_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines", "--config", str(config), "dead-letters"]


def test_listing_into_a_reader_that_left_stops_quietly(api: Api) -> None:
    # The reader closes before the command prints: as `dead-letters list | head -1` when
    # head has read its line and the listing is longer than the pipe's buffer.
    process = subprocess.Popen(
        [*_dead_letters_command(api.config), "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGPIPE, stderr
    assert stderr == ""


async def test_a_replay_must_name_ids_or_a_reason_not_both(api: Api) -> None:
    async with api.client() as http:
        neither = await http.post("/v1/dead-letters/replay", json={})
        both = await http.post(
            "/v1/dead-letters/replay", json={"ids": [1, 2], "reason": "bad_json"}
        )
    assert neither.status_code == 422
    assert "name dead letter ids, or a reason" in neither.text
    assert both.status_code == 422
    assert "not both" in both.text


def test_the_command_line_replays_ids_or_a_reason_not_both(api: Api) -> None:
    cli = subprocess.run(
        [*_dead_letters_command(api.config), "replay", "1", "2", "--reason", "bad_json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "not both" in cli.stderr


async def test_a_reason_no_letter_can_have_is_refused_naming_the_codes(api: Api) -> None:
    # A reason of an older ingest, still in the store: listed like today's codes.
    async with DeadLetterStore(load_ingest_config(api.config).dead_letter.path) as store:
        await store.add_message(f"ecotel/v1/{SITE}/{GW}/readings", b"{", "out_of_range", "old")
    async with api.client() as http:
        listed = await http.get("/v1/dead-letters", params={"reason": "bogus"})
        replayed = await http.post("/v1/dead-letters/replay", json={"reason": "bogus"})
        no_letters_yet = await http.get("/v1/dead-letters", params={"reason": "too_large"})
        older = await http.get("/v1/dead-letters", params={"reason": "out_of_range"})
    assert listed.status_code == 422, listed.text
    assert replayed.status_code == 422, replayed.text
    for response, where in ((listed, "query"), (replayed, "body")):
        [error] = response.json()["detail"]
        assert error["loc"] == [where, "reason"]
        assert error["msg"].startswith("'bogus' is no reason code; the ingest's: too_large, ")
        assert "invalid_values" in error["msg"]
        assert error["msg"].endswith("; this store also holds: out_of_range")
    # A code the ingest gives is a fair question even while no letter has it.
    assert no_letters_yet.status_code == 200
    assert no_letters_yet.json() == {"items": [], "next_after_id": None}
    assert [item["detail"] for item in older.json()["items"]] == ["old"]
    # The command line says the same, from the same check.
    cli = await asyncio.create_subprocess_exec(
        *_dead_letters_command(api.config),
        "list",
        "--reason",
        "bogus",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    assert "'bogus' is no reason code; the ingest's: too_large, " in out.decode()


def test_the_reason_codes_are_those_the_wire_contract_lists() -> None:
    table = (ROOT / "docs" / "wire-contract.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `([a-z0-9_]+)` \| (?:message|reading|point) \|", table, re.M)
    assert documented == list(REASONS)


def test_every_reason_the_code_gives_is_a_listed_code() -> None:
    # A code given in the code but missing from REASONS would be refused (422) by the API
    # until a letter of it exists: every literal reason of a refusal must be listed.
    given: set[str] = set()
    refusals = {"Rejection", "MessageRejected", "CatalogError", "Refused"}
    for path in [*(ROOT / "pipelines").rglob("*.py"), *(ROOT / "devices").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            first = node.args[0] if node.args else None
            reason = next((k.value for k in node.keywords if k.arg in ("reason", "code")), first)
            if name in refusals and isinstance(reason, ast.Constant) and isinstance(reason.value, str):
                given.add(reason.value)
    assert len(given) >= 10, given  # the walk finds the refusals at all
    assert given <= set(REASONS), given - set(REASONS)
