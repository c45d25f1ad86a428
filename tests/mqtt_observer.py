"""A test's witness at the broker: a persistent session recording every message it is delivered."""

import asyncio
import json

import aiomqtt

from collector import wire


async def observe(
    port: int,
    topic_filter: str,
    identifier: str,
    sink: list[tuple[str, bytes]],
    ready: asyncio.Event,
) -> None:
    """Append (topic, payload) of each message until cancelled; ``ready`` once subscribed."""
    # A persistent session: what is published while the observer reconnects is kept for it.
    while True:
        try:
            async with aiomqtt.Client(
                "127.0.0.1", port, identifier=identifier, clean_session=False
            ) as client:
                await client.subscribe(topic_filter, qos=wire.QOS)
                ready.set()
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    sink.append((str(message.topic), message.payload))
        except aiomqtt.MqttError:
            await asyncio.sleep(0.2)


def readings_delivered_once(received: list[tuple[str, bytes]]) -> list[tuple[str, str | None, str]]:
    """The (device, channel, time) of every reading in the observed readings messages, after
    checking the gateway's promises: a resent number carries the same bytes, no number is
    missing, and no reading is in two messages."""
    by_seq: dict[int, bytes] = {}
    for _, payload in received:
        seq = json.loads(payload)["seq"]
        assert by_seq.setdefault(seq, payload) == payload, f"seq {seq} resent with other bytes"
    assert sorted(by_seq) == list(range(len(by_seq))), "no message number is missing"
    keys = [
        (r["device"], r.get("channel"), r["time"])
        for payload in by_seq.values()
        for r in json.loads(payload)["readings"]
    ]
    assert len(keys) == len(set(keys)), "no reading is in two messages"
    return keys
