"""Record and replay over TLS with a client certificate and a password, configured as for the gateway."""

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
import pytest_asyncio

from collector.config import BrokerSettings
from deploy.servers import MosquittoServer, find_free_port, require_binaries
from deploy.traces.file_format import load_trace
from deploy.traces.record import RecordOptions, recording
from tests.tls_material import TlsMaterial, make_tls_material, tls_listener

pytestmark = pytest.mark.slow

USER, PASSWORD = "field-engineer", "yak-butter-tea"
CLI = [sys.executable, "-m", "deploy.traces"]


@pytest_asyncio.fixture
async def tls_broker(tmp_path: Path) -> AsyncIterator[tuple[MosquittoServer, int, TlsMaterial]]:
    require_binaries()
    (tmp_path / "tls").mkdir()
    material = await make_tls_material(tmp_path / "tls", USER, PASSWORD)
    port = find_free_port()
    async with MosquittoServer(
        tmp_path / "broker", extra_config=tls_listener(port, material)
    ) as server:
        yield server, port, material


async def _cli(*args: str, password: str = PASSWORD) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args,
        env={**os.environ, "ECOTEL_TRACE_PASSWORD": password},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_record_with_a_gateway_config_and_replay_over_tls(tls_broker, tmp_path: Path) -> None:
    server, tls_port, m = tls_broker
    # The gateway's own file: [broker] with TLS files and the user; the password from the environment.
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[broker]\nhost = "127.0.0.1"\nport = {tls_port}\nusername = "{USER}"\n'
        f'tls = {{ ca_file = "{m.ca}", cert_file = "{m.client_cert}", key_file = "{m.client_key}" }}\n'
    )
    out = tmp_path / "tls.trace.gz"
    recorder = asyncio.create_task(
        _cli(
            "record", "--broker-config", str(config), "-t", "site/#", "--count", "3", "-o", str(out)
        )
    )
    await asyncio.sleep(1.5)  # the recorder is connected and subscribed
    async with aiomqtt.Client("127.0.0.1", server.port) as plain:
        for i in range(3):
            await plain.publish(f"site/{i}", f"reading {i}".encode(), qos=1)
    code, text = await recorder
    assert code == 0, text
    recorded, stats = load_trace([out])
    assert [r.payload for r in recorded] == [b"reading 0", b"reading 1", b"reading 2"]
    assert stats.headers[0].broker == f"mqtts://127.0.0.1:{tls_port}"

    heard = tmp_path / "heard.trace.gz"
    async with recording(
        BrokerSettings(port=server.port), RecordOptions(filters=["site/#"], out=heard), quiet_s=0.5
    ):
        code, text = await _cli(
            "replay", str(out), "--max-speed", "--port", str(tls_port), "--username", USER,
            "--ca-file", str(m.ca), "--cert-file", str(m.client_cert), "--key-file", str(m.client_key),
        )  # fmt: skip
        assert code == 0, text
    assert [r.payload for r in load_trace([heard])[0]] == [r.payload for r in recorded]


async def test_a_wrong_password_is_named_not_retried(tls_broker, tmp_path: Path) -> None:
    _, tls_port, m = tls_broker
    common = [
        "--port", str(tls_port), "--username", USER, "--ca-file", str(m.ca),
        "--cert-file", str(m.client_cert), "--key-file", str(m.client_key),
    ]  # fmt: skip
    code, text = await _cli(
        "record", *common, "-o", str(tmp_path / "x.trace.gz"), "--count", "1", password="wrong"
    )
    assert code == 2, text
    assert "broker.username / broker.password" in text
    assert not (tmp_path / "x.trace.gz").exists()
    trace = Path(__file__).parent / "traces" / "duplicated_seq.trace.gz"
    code, text = await _cli("replay", str(trace), *common, password="wrong")
    assert code == 1, text
    assert "refused" in text
