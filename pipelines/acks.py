"""PUBACKs held back until a message's readings are durable, then sent in arrival order."""

import time
from collections import deque
from collections.abc import Callable

Done = Callable[[], None]


class InOrderAcks:
    """Tickets in arrival order; a PUBACK goes out when its ticket and all earlier ones are done.

    MQTT wants acknowledgements in the order the messages came; a message
    refused early (dead-lettered at once) must not be acknowledged ahead of
    one whose readings are still on their way to InfluxDB. ``send(mid)``
    sends one PUBACK (pipelines/mqtt_consumer.py).
    """

    def __init__(self, send: Callable[[int], None]) -> None:
        self._send = send
        # [mid (0 for QoS 0: nothing to send), done, arrival time]
        self._waiting: deque[list[int | bool | float]] = deque()

    @property
    def unacked(self) -> int:
        return len(self._waiting)

    def oldest_age_s(self) -> float:
        """How long the oldest message still owed a PUBACK has waited (0 if none)."""
        if not self._waiting:
            return 0.0
        return time.monotonic() - float(self._waiting[0][2])

    def ticket(self, mid: int, qos: int) -> Done:
        entry: list[int | bool | float] = [mid if qos > 0 else 0, False, time.monotonic()]
        self._waiting.append(entry)

        def done() -> None:
            entry[1] = True
            self._release()

        return done

    def _release(self) -> None:
        waiting, send = self._waiting, self._send
        while waiting and waiting[0][1]:
            mid = int(waiting.popleft()[0])
            if mid:
                # On a link that has gone, this does nothing: the broker
                # redelivers the message on the next session, which is safe
                # because a reading always maps to the same point.
                send(mid)
