"""A test's witness at the broker: a persistent session recording every message it is delivered."""

import asyncio

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
