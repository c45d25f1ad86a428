"""The recorder against a real Mosquitto: its own client id beside a live gateway, one copy of each
message whatever the filters overlap, what the broker granted, retained messages after a reconnect."""

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from collector.config import BrokerSettings
from deploy.servers import MosquittoServer
from deploy.traces.broker import MqttVersion
from deploy.traces.file_format import TraceHeader, TraceRecord, load_trace, write_trace
from deploy.traces.record import RecordOptions, recording

CLI = [sys.executable, "-m", "deploy.traces"]


async def _run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_a_gateway_config_does_not_lend_its_client_id(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    gateway_id = f"gw-link-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "gw1"\nsite = "S"\n\n[broker]\nhost = "127.0.0.1"\n'
        f'port = {mosquitto.port}\nclient_id = "{gateway_id}"\n'
    )
    trace = tmp_path / "one.trace.gz"
    header = TraceHeader(broker="t", filters=["#"], started_at=datetime.now(UTC))
    write_trace(trace, header, [TraceRecord(1, f"cid/{gateway_id}", b"x", 1)])
    # The live gateway's link, holding the id in the configuration.
    async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=gateway_id) as gateway:
        rc, out = await _run(
            "record",
            "--broker-config",
            str(config),
            "-t",
            "cid/#",
            "-o",
            str(tmp_path / "rec.trace.gz"),
            "--duration",
            "1.5",
        )
        assert rc == 0, out
        rc, out = await _run(
            "replay", str(trace), "--broker-config", str(config), "--max-speed", "--quiet"
        )
        assert rc == 0, out
        # Still connected: the broker did not hand its id to the recorder or the replayer.
        await gateway.publish(f"cid/{gateway_id}/alive", b"yes", qos=1)
    log = mosquitto.log_path.read_text()
    assert f"Client {gateway_id} already connected" not in log


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_overlapping_filters_record_each_message_once(
    mosquitto: MosquittoServer, tmp_path: Path, version: MqttVersion
) -> None:
    top = f"ov{uuid.uuid4().hex[:6]}"
    out = tmp_path / "ov.trace.gz"
    filters = [f"{top}/#", f"{top}/x/a", f"{top}/+/a", f"{top}/#"]
    options = RecordOptions(filters=filters, out=out, version=version)
    sent = [(f"{top}/x/a", b"1"), (f"{top}/y/b", b"2"), (f"{top}/z/a", b"3"), (f"{top}/x/a", b"4")]
    async with (
        recording(BrokerSettings(port=mosquitto.port), options, quiet_s=0.5),
        aiomqtt.Client("127.0.0.1", mosquitto.port) as client,
    ):
        for topic, payload in sent:
            await client.publish(topic, payload, qos=1)
    back, _ = load_trace([out])
    assert [(r.topic, r.payload) for r in back] == sent
    assert all(not (r.props or {}).get("SubscriptionIdentifier") for r in back)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_a_reconnect_does_not_record_retained_messages_again(
    tmp_path: Path, version: MqttVersion
) -> None:
    out = tmp_path / "re.trace.gz"
    async with MosquittoServer(tmp_path / "broker") as broker:
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.publish("site/gw/status", b"offline", qos=1, retain=True)
        options = RecordOptions(filters=["site/#"], out=out, version=version)
        async with recording(BrokerSettings(port=broker.port), options, quiet_s=0.5) as stats:
            await asyncio.sleep(0.3)
            await broker.restart()  # the retained status survives (persistence)
            async with asyncio.timeout(30):
                while stats.subscribed < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.publish("site/gw/readings", b"after", qos=1)
    back, read = load_trace([out])
    # The stored status once (at the first subscription), then live traffic only.
    assert [(r.topic, r.payload, r.retain) for r in back] == [
        ("site/gw/status", b"offline", True),
        ("site/gw/readings", b"after", False),
    ]
    assert len(read.headers) == 2


async def test_a_lower_granted_qos_is_said_and_kept_in_the_header(tmp_path: Path) -> None:
    out = tmp_path / "q.trace.gz"
    async with MosquittoServer(tmp_path / "broker", extra_config="max_qos 1") as broker:
        rc, said = await _run(
            "record", "--port", str(broker.port), "-t", "q/#", "-o", str(out), "--duration", "0.5"
        )
    assert rc == 0, said
    assert "the broker granted QoS 1 for 'q/#' (asked 2)" in said
    _, read = load_trace([out])
    assert read.headers[0].note is not None
    assert "granted QoS 1 for 'q/#'" in read.headers[0].note


DYNSEC = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


@pytest.mark.skipif(not DYNSEC.exists(), reason="Mosquitto's dynamic security plugin is missing")
@pytest.mark.parametrize(("version", "code"), [("5", "0x87 Not authorized"), ("3.1.1", "0x80")])
async def test_a_refused_filter_stops_the_recorder_naming_it(
    tmp_path: Path, version: str, code: str
) -> None:
    # Mosquitto's acl_file grants every subscription; its dynamic security plugin refuses.
    config = tmp_path / "dynsec.json"
    deny = {"acltype": "subscribePattern", "topic": "secret/#", "priority": 0, "allow": False}
    config.write_text(
        json.dumps(
            {
                "defaultACLAccess": {
                    "publishClientSend": True,
                    "publishClientReceive": True,
                    "subscribe": True,
                    "unsubscribe": True,
                },
                "clients": [],
                "groups": [{"groupname": "anonymous", "roles": [{"rolename": "deny"}]}],
                "roles": [{"rolename": "deny", "acls": [deny]}],
                "anonymousGroup": "anonymous",
            }
        )
    )
    extra = f"plugin {DYNSEC}\nplugin_opt_config_file {config}"
    out = tmp_path / "refused.trace.gz"
    async with MosquittoServer(tmp_path / "broker", extra_config=extra) as broker:
        rc, said = await _run(
            "record", "--port", str(broker.port), "--mqtt", version,
            "-t", "open/#", "-t", "secret/#", "-o", str(out), "--duration", "5",
        )  # fmt: skip
    assert rc == 2, said
    assert f"the broker refused topic filter 'secret/#' ({code}" in said
    assert not out.exists(), "no empty trace left behind"
