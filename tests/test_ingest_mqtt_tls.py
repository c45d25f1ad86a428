"""The ingest's broker link over TLS with a password, through ``python -m pipelines run``, against
a real Mosquitto: readings reach InfluxDB, and wrong settings stop it at start naming the key."""

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio

from collector import wire
from deploy.servers import InfluxServer
from tests.hydrology_load import hydrology_message, stored_stages
from tests.tls_material import TlsBroker, tls_broker_in

USER, PASSWORD = "ecotel-ingest", "s3cret-ingest"
MESSAGES, PER_MESSAGE = 20, 5
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsBroker]:
    async with tls_broker_in(tmp_path_factory.mktemp("ingest-tls"), USER, PASSWORD) as broker:
        yield broker


def _config(
    path: Path, broker: TlsBroker, influx_url: str, database: str, *, ca: Path | None = None
) -> Path:
    m = broker.material
    path.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.tls_port}\n'
        f'client_id = "ingest-tls-{uuid.uuid4().hex[:6]}"\nusername = "{USER}"\n'
        f'tls = {{ ca_file = "{ca or m.ca}", cert_file = "{m.client_cert}", '
        f'key_file = "{m.client_key}" }}\n'
        f'[influx]\nurl = "{influx_url}"\ndatabase = "{database}"\n'
        f"[batch]\nmax_delay_s = 0.2\n"
        f'[dead_letter]\npath = "{path.parent / "dead.sqlite3"}"\n',
        encoding="utf-8",
    )
    return path


def _env(password: str) -> dict[str, str]:
    # The password comes from the environment, as the sample configuration advises.
    return {**os.environ, "ECOTEL_INGEST_MQTT__PASSWORD": password}


async def _run_to_exit(config: Path, password: str, *run_args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipelines", "--config", str(config), "run", *run_args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(password),
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            _, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("the ingest kept running with settings the broker refuses") from None
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.mark.slow
async def test_readings_flow_over_tls_with_password_into_influxdb(
    tls_broker: TlsBroker, influxdb: InfluxServer, tmp_path: Path
) -> None:
    database = f"tls_{uuid.uuid4().hex[:8]}"
    config = _config(tmp_path / "ingest.toml", tls_broker, influxdb.url, database)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipelines", "--config", str(config), "run",
        stderr=asyncio.subprocess.PIPE, env=_env(PASSWORD),
    )  # fmt: skip
    assert process.stderr is not None
    try:
        # Publish only once the ingest is subscribed (its log says so).
        async with asyncio.timeout(30):
            while b"ingest connected to" not in (line := await process.stderr.readline()):
                assert line, "the ingest exited before connecting"
        # The publisher uses the plain loopback listener: topics are the broker's, not a listener's.
        async with aiomqtt.Client("127.0.0.1", tls_broker.server.port) as publisher:
            for seq in range(MESSAGES):
                await publisher.publish(
                    wire.readings_topic("site", "gw-tls"),
                    hydrology_message("gw-tls", seq, PER_MESSAGE, T0),
                    qos=1,
                )
        async with asyncio.timeout(30):
            while await stored_stages(influxdb.url, database) < MESSAGES * PER_MESSAGE:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        await process.communicate()
    assert process.returncode == 0
    assert await stored_stages(influxdb.url, database) == MESSAGES * PER_MESSAGE


async def test_wrong_password_stops_the_ingest_naming_the_setting(
    tls_broker: TlsBroker, influxdb: InfluxServer, tmp_path: Path
) -> None:
    config = _config(tmp_path / "ingest.toml", tls_broker, influxdb.url, "tls_refused")
    code, err = await _run_to_exit(config, "not-the-password")
    assert code == 78, err
    assert "mqtt.username / mqtt.password: the broker refused them" in err
    assert str(config) in err
    assert "not-the-password" not in err


async def test_wrong_password_stops_every_worker_of_a_shared_group(
    tls_broker: TlsBroker, influxdb: InfluxServer, tmp_path: Path
) -> None:
    # Restarting a worker cannot mend a refused password: the supervisor stops them all.
    config = _config(tmp_path / "ingest.toml", tls_broker, influxdb.url, "tls_refused_group")
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[mqtt]\n", '[mqtt]\nshared_group = "g"\n'), encoding="utf-8")
    code, err = await _run_to_exit(config, "not-the-password", "--workers", "2")
    assert code == 78, err
    assert err.count("mqtt.username / mqtt.password: the broker refused them") >= 1
    assert "not restarting, stopping every worker" in err
    assert "restarting it in" not in err


async def test_certificate_from_another_ca_names_ca_file(
    tls_broker: TlsBroker, influxdb: InfluxServer, tmp_path: Path
) -> None:
    config = _config(
        tmp_path / "ingest.toml",
        tls_broker,
        influxdb.url,
        "tls_refused",
        ca=tls_broker.material.other_ca,
    )
    code, err = await _run_to_exit(config, PASSWORD)
    assert code == 78, err
    assert "mqtt.tls.ca_file: the broker's certificate does not verify against it" in err
    assert str(config) in err


async def test_a_missing_key_file_is_named_before_connecting(
    tls_broker: TlsBroker, tmp_path: Path
) -> None:
    config = _config(tmp_path / "ingest.toml", tls_broker, "http://127.0.0.1:9", "unused")
    config.write_text(config.read_text().replace(str(tls_broker.material.client_key), "/no/key"))
    code, err = await _run_to_exit(config, PASSWORD)
    assert code == 2, err
    assert f"{config}: mqtt.tls.key_file: no such file /no/key" in err
