"""PUBACKs held back until a message's readings are durable, then sent in arrival order.

aiomqtt 2.x acknowledges every QoS 1 message on receipt (empicano/aiomqtt
issue #345); paho-mqtt, which it wraps, can hold the PUBACK back
(``manual_ack_set``). We switch that on in aiomqtt's paho client: the one
private attribute ecotel touches, pinned by tests/test_ingest_acks.py, which
kills the ingest with messages in flight and finds every reading stored.
"""

import time
from collections import deque
from collections.abc import Callable

import aiomqtt

Done = Callable[[], None]


def enable_manual_acks(client: aiomqtt.Client) -> None:
    """Make ``client`` leave PUBACKs to us; call before connecting."""
    client._client.manual_ack_set(True)


class InOrderAcks:
    """Tickets in arrival order; a PUBACK goes out when its ticket and all earlier ones are done.

    MQTT wants acknowledgements in the order the messages came; a message
    refused early (dead-lettered at once) must not be acknowledged ahead of
    one whose readings are still on their way to InfluxDB.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client
        self._waiting: deque[list[int | bool | float]] = deque()

    @property
    def unacked(self) -> int:
        return len(self._waiting)

    def oldest_age_s(self) -> float:
        """How long the oldest message still owed a PUBACK has waited (0 if none)."""
        if not self._waiting:
            return 0.0
        return time.monotonic() - float(self._waiting[0][3])

    def ticket(self, mid: int, qos: int) -> Done:
        entry: list[int | bool | float] = [mid, qos, False, time.monotonic()]
        self._waiting.append(entry)

        def done() -> None:
            entry[2] = True
            self._release()

        return done

    def _release(self) -> None:
        while self._waiting and self._waiting[0][2]:
            mid, qos, _, _ = self._waiting.popleft()
            if int(qos) > 0:
                # On a link that has gone, this does nothing: the broker
                # redelivers the message on the next session, which is safe
                # because a reading always maps to the same point.
                self._client._client.ack(int(mid), int(qos))
