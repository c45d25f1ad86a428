"""PUBACKs held back until a message's readings are durable, then sent in arrival order."""

import asyncio
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

    def __init__(
        self, send: Callable[[int], None], *, backlog: int = 0, on_backlog: Done | None = None
    ) -> None:
        self._send = send
        # Called after acknowledgements when still ``backlog`` or more messages are owed
        # one: the rest of a burst need not wait for the writer's batch timer.
        self._backlog = backlog
        self._on_backlog = on_backlog
        # Per ticket still owed, oldest first: its packet id (0 for QoS 0, nothing
        # to send) and arrival time. Tickets are numbered from 0; _head is the oldest.
        self._mids: deque[int] = deque()
        self._arrived: deque[float] = deque()
        self._head = 0
        self._next = 0
        # Tickets done ahead of an older one still waiting.
        self._early: set[int] = set()
        # Set by all_done(): resolved when no message is owed a PUBACK any more.
        self._all_done: asyncio.Future[None] | None = None

    @property
    def unacked(self) -> int:
        return len(self._mids)

    def oldest_age_s(self) -> float:
        """How long the oldest message still owed a PUBACK has waited (0 if none)."""
        if not self._arrived:
            return 0.0
        return time.monotonic() - self._arrived[0]

    async def all_done(self) -> None:
        """Return once every message ticketed so far has had its PUBACK sent (or owed none)."""
        if not self._mids:
            return
        if self._all_done is None or self._all_done.done():
            self._all_done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._all_done)

    def ticket(self, mid: int, qos: int) -> Done:
        # One closure over an int per message: the cheapest ticket measured
        # (1.2 us per message with its release, against 1.8 us for a list per entry).
        number = self._next
        self._next = number + 1
        self._mids.append(mid if qos > 0 else 0)
        self._arrived.append(time.monotonic())

        def done() -> None:
            self._finish(number)

        return done

    def _finish(self, number: int) -> None:
        if number != self._head:
            if number > self._head:
                self._early.add(number)
            return
        early, mids, send = self._early, self._mids, self._send
        while True:
            self._head += 1
            self._arrived.popleft()
            mid = mids.popleft()
            if mid:
                # On a link that has gone, this does nothing: the broker
                # redelivers the message on the next session, which is safe
                # because a reading always maps to the same point.
                send(mid)
            if self._head not in early:
                break
            early.discard(self._head)
        if not mids and self._all_done is not None and not self._all_done.done():
            self._all_done.set_result(None)
        if self._on_backlog is not None and len(mids) >= self._backlog:
            self._on_backlog()
