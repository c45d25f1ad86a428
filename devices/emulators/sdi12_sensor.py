"""SDI-12 sensors emulated byte for byte on the master end of a pty: one or more addresses on a
line, values from a callable or a kind's simulator, measuring time and faults on demand."""

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import re
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, get_args

from devices.catalog import KINDS
from devices.drivers.sdi12 import (
    MAX_VALUES,
    crc16,
    encode_crc,
    format_value,
    is_address,
    with_crc,
)
from devices.emulators.pty_link import open_pty_link
from devices.quantity import Role
from devices.simulators import SIMULATORS, make_simulator

log = logging.getLogger(__name__)

Fault = Literal["ok", "silent", "bad_crc", "garbage"]
FAULTS: Final[tuple[Fault, ...]] = get_args(Fault)

ValueSource = Callable[[str], Sequence[float] | None]
"""A sensor's values for a measurement ('' for aM!, '1'..'9' for aM1!..); None or empty: the
sensor has no such measurement (it answers 'a0000')."""

MISSING_VALUE: Final = -9999.0
"""What a simulated sensor reports for an optional quantity its simulator leaves out."""
MAX_VALUES_CHARS: Final = 35
"""The longest values part of a data answer to an aM! measurement (v1.3 section 4.4.6)."""
MAX_READY_S: Final = 999

_COMMAND_CHARS: Final = re.compile(r"[^0-9A-Za-z?]")
_GARBAGE_CHARS: Final = "#$%&*<>^~|"
"""Noise no reader can take for an SDI-12 answer: none of them is an address."""
# A sensor that heard part of a command and then nothing forgets it, as after a new break.
_STALE_INPUT_S: Final = 0.1


@dataclass
class EmulatedSensor:
    """One sensor on the line; change ``fault``, ``ready_after_s`` or ``answer_delay_s`` while
    it runs."""

    address: str
    values: ValueSource
    ready_after_s: float = 0.0
    """How long a measurement takes; above 0 the sensor announces ttt = ceil(ready_after_s)
    and sends its service request 'a<CR><LF>' when done."""
    fault: Fault = "ok"
    answer_delay_s: float = 0.0
    """How long after a command its answer leaves (a slow link); the line waits meanwhile, so
    a driver that gave up still gets the answer, late."""
    decimals: int = 7
    """At most this many decimal places per value (fewer where 7 digits do not hold them)."""
    values_per_answer: int | None = None
    """Split the values over aD0!, aD1!, ... after this many, besides the 35-character limit."""
    identification: str = "ECOTEL  SDI12E100"
    """What aI! returns after 'a13': vendor (8), model (6), version (3), serial (up to 13)."""
    commands: list[str] = field(default_factory=list)
    """Every command addressed to this sensor so far, e.g. ['0MC!', '0D0!'], answered or not."""
    _answers: list[str] = field(default_factory=list, init=False, repr=False)
    _crc: bool = field(default=False, init=False, repr=False)
    _measuring: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not is_address(self.address):
            raise ValueError(f"an SDI-12 address is one of 0-9, a-z, A-Z; got {self.address!r}")
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; known: {', '.join(FAULTS)}")


def fixed_values(by_measurement: Mapping[str, Sequence[float]]) -> ValueSource:
    """Values by measurement, e.g. {"": [3.14, -0.27, 12.5]}; later changes to the mapping
    show in the next measurement."""

    def values(measurement: str) -> Sequence[float] | None:
        return by_measurement.get(measurement)

    return values


def simulated_fields(kind: str) -> list[str]:
    """The quantities a simulated sensor of ``kind`` reports, in catalog order: nine per
    measurement, the first nine on aM!, the next on aM1!, and so on."""
    return [q.name for q in KINDS[kind].quantities() if q.role is not Role.STATE]


def simulated_values(
    kind: str,
    device: str,
    *,
    channel: str | None = None,
    seed: int = 0,
    interval_s: float = 60.0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ValueSource:
    """Values of ``kind``'s simulator (the reading of ``channel`` for kinds with channels), in
    the order of simulated_fields(kind). ValueError for a kind without a simulator."""
    simulator = make_simulator(kind, device, seed=seed, interval_s=interval_s)
    names = simulated_fields(kind)

    def values(measurement: str) -> Sequence[float] | None:
        first = int(measurement or 0) * MAX_VALUES
        wanted = names[first : first + MAX_VALUES]
        if not wanted:
            return None
        readings = [r for r in simulator.sample(clock()) if r.channel == channel]
        if not readings:
            log.warning("%s simulator has no channel %r", kind, channel)
            return None
        got = readings[0].values
        return [MISSING_VALUE if got.get(n) is None else float(got[n]) for n in wanted]

    return values


def split_answers(texts: Sequence[str], per_answer: int | None = None) -> list[str]:
    """Formatted values grouped into data answers' values parts (aD0!, aD1!, ...)."""
    answers: list[str] = []
    current = ""
    count = 0
    for text in texts:
        full = per_answer is not None and count >= per_answer
        if current and (full or len(current) + len(text) > MAX_VALUES_CHARS):
            answers.append(current)
            current, count = "", 0
        current += text
        count += 1
    if current:
        answers.append(current)
    return answers


class Sdi12LineEmulator:
    """Sensors sharing one SDI-12 line, on a pty master fd; one command at a time.

    A pty carries no break, so every command is taken as if a break came before it.
    ``char_time_s`` > 0 paces answers a character at a time, as a real line does (10 bits
    per character: 8.3 ms at 1200 baud 7E1), so a reader sees them arrive in pieces.
    """

    def __init__(
        self,
        fd: int,
        sensors: Iterable[EmulatedSensor],
        *,
        char_time_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.char_time_s = char_time_s
        self._fd = fd
        self._sensors = {s.address: s for s in sensors}
        if not self._sensors:
            raise ValueError("a line needs at least one sensor")
        self._random = random.Random(seed)
        self._rx = bytearray()
        self._rx_at = 0.0
        self._tx = bytearray()
        self._commands: asyncio.Queue[str] = asyncio.Queue()
        self._lines: asyncio.Queue[bytes] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def sensor(self, address: str) -> EmulatedSensor:
        return self._sensors[address]

    def set_fault(self, address: str, fault: Fault) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        self._sensors[address].fault = fault

    def inject(self, data: bytes) -> None:
        """Put raw bytes on the line now, after any answer already leaving: a late answer
        from somewhere, or noise."""
        self._lines.put_nowait(data)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self._tasks = [
            asyncio.create_task(self._serve(), name="sdi12-line-emulator"),
            asyncio.create_task(self._transmit(), name="sdi12-line-transmitter"),
        ]

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        tasks = [*self._tasks, *(s._measuring for s in self._sensors.values() if s._measuring)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def __aenter__(self) -> "Sdi12LineEmulator":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # EIO: no process has the slave end open right now; the link stays usable.
            return
        assert self._loop is not None
        now = self._loop.time()
        if now - self._rx_at > _STALE_INPUT_S:
            self._rx.clear()
        self._rx_at = now
        self._rx += data
        while (end := self._rx.find(b"!")) >= 0:
            raw = self._rx[:end].decode("latin-1")
            del self._rx[: end + 1]
            # What a break's framing error or line noise left before the command goes.
            command = _COMMAND_CHARS.sub("", raw)[-6:]
            if command:
                self._commands.put_nowait(command + "!")

    async def _serve(self) -> None:
        while True:
            command = await self._commands.get()
            if command == "?!":
                awake = [s for s in self._sensors.values() if s.fault != "silent"]
                if len(awake) == 1:  # more would answer at once and collide
                    await self._answer(awake[0], awake[0].address)
                continue
            sensor = self._sensors.get(command[0])
            if sensor is None:
                continue
            sensor.commands.append(command)
            log.debug("sensor %s: %s (%s)", sensor.address, command, sensor.fault)
            if sensor.fault == "silent":
                continue
            # A command to a sensor still measuring aborts the measurement, as a break does.
            if sensor._measuring is not None and not sensor._measuring.done():
                sensor._measuring.cancel()
                sensor._answers = []
            answer = self._respond(sensor, command[1:-1])
            if answer is not None:
                await self._answer(sensor, answer)

    def _respond(self, sensor: EmulatedSensor, request: str) -> str | None:
        a = sensor.address
        if request == "":
            return a
        if request == "I":
            return f"{a}13{sensor.identification}"
        if len(request) == 2 and request[0] == "A" and is_address(request[1]):
            return self._change_address(sensor, request[1])
        if match := re.fullmatch(r"M(C?)([1-9]?)", request):
            return self._start_measurement(sensor, match[2], crc=bool(match[1]))
        if match := re.fullmatch(r"D([0-9])", request):
            index = int(match[1])
            body = a + (sensor._answers[index] if index < len(sensor._answers) else "")
            if not sensor._crc:
                return body
            if sensor.fault == "bad_crc":
                return body + encode_crc(crc16(body.encode("ascii")) ^ 1).decode("ascii")
            return with_crc(body)
        return None  # commands it does not know go unanswered, as the standard says

    def _change_address(self, sensor: EmulatedSensor, new: str) -> str:
        if new != sensor.address and new in self._sensors:
            log.warning("sensor %s: address %s is taken; keeping mine", sensor.address, new)
            return sensor.address
        del self._sensors[sensor.address]
        sensor.address = new
        self._sensors[new] = sensor
        return new

    def _start_measurement(self, sensor: EmulatedSensor, measurement: str, *, crc: bool) -> str:
        try:
            values = list(sensor.values(measurement) or ())
            texts = [format_value(v, sensor.decimals) for v in values]
        except Exception:
            # A broken value source must not take the whole line down with it.
            log.exception("sensor %s: values of measurement %r", sensor.address, measurement)
            texts = []
        if len(texts) > MAX_VALUES:
            log.warning("sensor %s: %d values, aM! carries 9", sensor.address, len(texts))
            texts = texts[:MAX_VALUES]
        answers = split_answers(texts, sensor.values_per_answer)
        sensor._crc = crc
        ready_s = min(MAX_READY_S, math.ceil(sensor.ready_after_s)) if texts else 0
        if ready_s == 0:
            sensor._answers = answers
        else:
            sensor._answers = []
            sensor._measuring = asyncio.create_task(
                self._finish_measurement(sensor, answers), name=f"sdi12-measure-{sensor.address}"
            )
        return f"{sensor.address}{ready_s:03d}{len(texts)}"

    async def _finish_measurement(self, sensor: EmulatedSensor, answers: list[str]) -> None:
        await asyncio.sleep(sensor.ready_after_s)
        sensor._answers = answers
        if sensor.fault != "silent":
            self._queue_line(sensor, sensor.address)  # the service request

    async def _answer(self, sensor: EmulatedSensor, answer: str) -> None:
        if sensor.answer_delay_s > 0:
            await asyncio.sleep(sensor.answer_delay_s)
        self._queue_line(sensor, answer)

    def _queue_line(self, sensor: EmulatedSensor, answer: str) -> None:
        if sensor.fault == "garbage":
            size = self._random.randint(3, 12)
            answer = "".join(self._random.choice(_GARBAGE_CHARS) for _ in range(size))
        self._lines.put_nowait(answer.encode("ascii") + b"\r\n")

    async def _transmit(self) -> None:
        while True:
            line = await self._lines.get()
            if self.char_time_s <= 0:
                self._send(line)
                continue
            for byte in line:
                self._send(bytes([byte]))
                await asyncio.sleep(self.char_time_s)

    def _send(self, data: bytes) -> None:
        self._tx += data
        self._flush()

    def _flush(self) -> None:
        assert self._loop is not None
        try:
            written = os.write(self._fd, self._tx)
        except (BlockingIOError, InterruptedError):
            written = 0
        del self._tx[:written]
        if self._tx:
            self._loop.add_writer(self._fd, self._flush)
        else:
            self._loop.remove_writer(self._fd)


def _sensor_spec(text: str) -> tuple[str, str, str | None]:
    address, _, rest = text.partition("=")
    kind, _, channel = (rest or "hydrology").partition("/")
    if not is_address(address):
        raise argparse.ArgumentTypeError(f"address must be one of 0-9, a-z, A-Z; got {address!r}")
    if kind not in SIMULATORS:
        raise argparse.ArgumentTypeError(f"unknown kind {kind!r}; known: {', '.join(SIMULATORS)}")
    if KINDS[kind].channel is not None and not channel:
        raise argparse.ArgumentTypeError(f"{kind} needs a channel, e.g. {address}={kind}/40")
    return address, kind, channel or None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devices.emulators.sdi12_sensor",
        description="Emulate SDI-12 sensors on a pseudo-terminal: prints the pty's path, then "
        "answers aM!/aMC!/aM1!.., aD0!.., a!, aI!, aAb! and ?! until Ctrl-C. Values come from "
        "the kind's simulator, nine per measurement in catalog order. The pty ignores baud "
        "rate; open it 8N1 (ptys refuse parity and 7 data bits).",
    )
    parser.add_argument(
        "--sensor",
        dest="sensors",
        metavar="ADDRESS[=KIND[/CHANNEL]]",
        type=_sensor_spec,
        action="append",
        help="a sensor: its address, optionally the simulated kind (default hydrology) and "
        "channel (e.g. 3=soil_profile/40); repeat for several on the line (default 0=hydrology)",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument(
        "--ready-after-s",
        type=float,
        default=1.0,
        help="measuring time; above 0 a service request follows (default 1)",
    )
    parser.add_argument(
        "--fault", choices=FAULTS, default="ok", help="fault mode of every sensor (default ok)"
    )
    parser.add_argument(
        "--answer-delay-s", type=float, default=0.0, help="answer delay in seconds (default 0)"
    )
    parser.add_argument(
        "--baudrate",
        type=int,
        default=0,
        help="pace answers as a 7E1 line of this speed would, e.g. 1200 "
        "(default 0: as fast as the pty goes)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    return parser


async def _serve_until_stopped(args: argparse.Namespace) -> None:
    specs: Sequence[tuple[str, str, str | None]] = args.sensors or [("0", "hydrology", None)]
    addresses = [address for address, _, _ in specs]
    if len(set(addresses)) != len(addresses):
        raise SystemExit("each --sensor needs its own address")
    sensors = [
        EmulatedSensor(
            address,
            simulated_values(kind, f"sdi12-{address}", channel=channel, seed=args.seed),
            ready_after_s=args.ready_after_s,
            fault=args.fault,
            answer_delay_s=args.answer_delay_s,
        )
        for address, kind, channel in specs
    ]
    link = open_pty_link()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Sdi12LineEmulator(
            link.master_fd,
            sensors,
            char_time_s=10 / args.baudrate if args.baudrate > 0 else 0.0,
        ):
            for address, kind, channel in specs:
                where = f" channel {channel}" if channel else ""
                names = ", ".join(simulated_fields(kind))
                print(f"SDI-12 sensor {address}: {kind}{where} ({names})", flush=True)
            print(f"on {link.path}", flush=True)
            print("Ctrl-C stops", file=sys.stderr, flush=True)
            await stop.wait()
    finally:
        link.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(_serve_until_stopped(args))


if __name__ == "__main__":
    main()
