"""DL/T 645-2007 meters emulated byte for byte on the master end of a pty: one or more
meters by address, values from a callable or the energy_meter simulator, faults on demand."""

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, get_args

from devices.datacenter import CIRCUITS
from devices.drivers.base import DeviceError
from devices.drivers.dlt645 import (
    BROADCAST_ADDRESS,
    DATA_IDS,
    END,
    HEADER_LENGTH,
    READ_DATA,
    START,
    WAKE_UP,
    WAKE_UP_BYTE,
    DataFormat,
    Frame,
    decode_frame,
    encode_value,
    error_answer,
    format_data_id,
    frame_length,
    read_answer,
)
from devices.emulators.pty_link import open_pty_link
from devices.simulators import make_simulator

log = logging.getLogger(__name__)

Fault = Literal["ok", "silent", "bad_checksum", "garbage"]
FAULTS: Final[tuple[Fault, ...]] = get_args(Fault)

ValueSource = Callable[[int], float | None]
"""A meter's value of a data identifier (DI3..DI0 as one number); None: it has no such data."""

NO_REQUESTED_DATA: Final = 0x02
OTHER_ERROR: Final = 0x01

# A real meter forgets a half-received frame after a pause; so does this one.
_STALE_INPUT_S: Final = 0.5


@dataclass
class EmulatedMeter:
    """One meter on the line; change ``fault`` or ``delay_s`` while it runs."""

    address: str
    """12 decimal digits."""
    values: ValueSource
    formats: Mapping[int, DataFormat] = field(default_factory=dict)
    """Formats of identifiers beyond the driver's table that ``values`` answers."""
    fault: Fault = "ok"
    delay_s: float = 0.0
    """How long after a request it answers; the line waits (a meter is half-duplex)."""
    drop_next: int = 0
    """Requests to ignore before answering again, as if they were lost on a noisy line."""
    requests: int = 0
    """Requests addressed to this meter so far, answered or not."""

    def __post_init__(self) -> None:
        if len(self.address) != 12 or not self.address.isdigit():
            raise ValueError(f"a meter address is 12 decimal digits, got {self.address!r}")

    def format_of(self, data_id: int) -> DataFormat | None:
        if data_id in self.formats:
            return self.formats[data_id]
        item = DATA_IDS.get(data_id)
        return None if item is None else item.format


def fixed_values(values: Mapping[str, float]) -> ValueSource:
    """Values by identifier as 8 hex digits, e.g. {"02010100": 220.1}; later changes to the
    mapping show in the next answer."""

    def value(data_id: int) -> float | None:
        key = format_data_id(data_id)
        for name, number in values.items():
            if name.upper() == key:
                return number
        return None

    return value


def simulated_values(
    device: str,
    *,
    circuit: str = "it_load",
    seed: int = 0,
    ratio: float = 100.0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ValueSource:
    """Values of one circuit of the energy_meter simulator, as a meter behind current
    transformers of ``ratio`` reads them (primary / ratio), so a site's kW fit the meter's
    XX.XXXX kW; the gateway multiplies back with the field's ``scale``.

    Energy and active power come from the simulator; voltage (220 V), power factor (0.95),
    frequency (50 Hz) and the currents that follow from them are filled in.
    """
    simulator = make_simulator("energy_meter", device, seed=seed, options={"circuits": [circuit]})

    def value(data_id: int) -> float | None:
        (reading,) = simulator.sample(clock())
        # 4 BCD bytes roll over at 1,000,000 kWh, as a real meter's register does.
        energy = float(reading.values["energy_kwh"]) / ratio % 1_000_000
        power = float(reading.values["active_power_kw"]) / ratio
        voltage, power_factor = 220.0, 0.95
        current = power * 1_000.0 / (3 * voltage * power_factor)
        known: dict[int, float] = {
            0x00000000: energy,
            0x00010000: energy,
            0x00020000: 0.0,
            0x02010100: voltage,
            0x02010200: voltage,
            0x02010300: voltage,
            0x02020100: current,
            0x02020200: current,
            0x02020300: current,
            0x02030000: power,
            0x02030100: power / 3,
            0x02030200: power / 3,
            0x02030300: power / 3,
            0x02060000: power_factor,
            0x02800002: 50.0,
        }
        return known.get(data_id)

    return value


class Dlt645LineEmulator:
    """Meters sharing one RS-485 line, on a pty master fd; answers one request at a time.

    ``char_time_s`` > 0 paces answers a byte at a time, as a real line does (11 bits per
    character: 4.6 ms at 2400 baud), so a reader sees them arrive in pieces.
    """

    def __init__(
        self,
        fd: int,
        meters: Iterable[EmulatedMeter],
        *,
        wake_up: bool = True,
        char_time_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.char_time_s = char_time_s
        self._fd = fd
        self._meters = {m.address: m for m in meters}
        if not self._meters:
            raise ValueError("a line needs at least one meter")
        self._preamble = WAKE_UP if wake_up else b""
        self._random = random.Random(seed)
        self._rx = bytearray()
        self._rx_at = 0.0
        self._tx = bytearray()
        self._queue: asyncio.Queue[Frame] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def meter(self, address: str) -> EmulatedMeter:
        return self._meters[address]

    def set_fault(self, address: str, fault: Fault) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        self._meters[address].fault = fault

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)
        self._worker = asyncio.create_task(self._serve(), name="dlt645-line-emulator")

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    async def __aenter__(self) -> "Dlt645LineEmulator":
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
        for frame in _take_frames(self._rx):
            self._queue.put_nowait(frame)

    async def _serve(self) -> None:
        while True:
            request = await self._queue.get()
            meter = self._addressed(request.address)
            if meter is None:
                continue
            meter.requests += 1
            log.debug(
                "meter %s: control 0x%02X data %s (%s)",
                meter.address,
                request.control,
                request.data.hex(" "),
                meter.fault,
            )
            if meter.fault == "silent":
                continue
            if meter.drop_next > 0:
                meter.drop_next -= 1
                continue
            if meter.delay_s > 0:
                await asyncio.sleep(meter.delay_s)
            answer = self._preamble + self._answer(meter, request)
            if self.char_time_s <= 0:
                self._send(answer)
                continue
            for byte in answer:
                self._send(bytes([byte]))
                await asyncio.sleep(self.char_time_s)

    def _addressed(self, address: str) -> EmulatedMeter | None:
        if address == BROADCAST_ADDRESS and len(self._meters) == 1:
            return next(iter(self._meters.values()))
        return self._meters.get(address)

    def _answer(self, meter: EmulatedMeter, request: Frame) -> bytes:
        answer = self._normal_answer(meter, request)
        if meter.fault == "bad_checksum":
            return answer[:-2] + bytes([(answer[-2] + 1) % 256, END])
        if meter.fault == "garbage":
            noise = bytearray(self._random.randbytes(len(answer)))
            # Not a frame start nor a wake-up byte, so nothing can mistake it for an answer.
            while noise[0] in (START, WAKE_UP_BYTE):
                noise[0] = self._random.randrange(256)
            return bytes(noise)
        return answer

    def _normal_answer(self, meter: EmulatedMeter, request: Frame) -> bytes:
        if request.control != READ_DATA or len(request.data) != 4:
            return error_answer(meter.address, OTHER_ERROR, control=0xC0 | request.control)
        data_id = int.from_bytes(request.data, "little")
        fmt = meter.format_of(data_id)
        try:
            value = meter.values(data_id) if fmt is not None else None
        except Exception:
            # A broken value source must not take the whole line down with it.
            log.exception("meter %s: value of %s", meter.address, format_data_id(data_id))
            return error_answer(meter.address, OTHER_ERROR)
        if fmt is None or value is None:
            log.info("meter %s: no data %s", meter.address, format_data_id(data_id))
            return error_answer(meter.address, NO_REQUESTED_DATA)
        try:
            encoded = encode_value(value, fmt)
        except ValueError as exc:
            log.warning("meter %s: %s: %s", meter.address, format_data_id(data_id), exc)
            return error_answer(meter.address, OTHER_ERROR)
        return read_answer(meter.address, data_id, encoded)

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


def _take_frames(buffer: bytearray) -> list[Frame]:
    """Complete frames at the front of ``buffer`` (removed from it); noise and frames with a
    bad checksum are dropped, as a meter ignores them, and a partial frame is left to grow."""
    frames: list[Frame] = []
    while buffer:
        start = buffer.find(START)
        if start < 0:
            buffer.clear()
            break
        del buffer[:start]
        if len(buffer) < HEADER_LENGTH:
            break
        try:
            length = frame_length(bytes(buffer[:HEADER_LENGTH]))
        except DeviceError:
            del buffer[:1]
            continue
        if len(buffer) < length:
            break
        try:
            frames.append(decode_frame(bytes(buffer[:length])))
        except DeviceError:
            del buffer[:1]  # a 0x68 inside noise; look for the next one
            continue
        del buffer[:length]
    return frames


def _meter_spec(text: str) -> tuple[str, str]:
    address, _, circuit = text.partition("=")
    if len(address) != 12 or not address.isdigit():
        raise argparse.ArgumentTypeError(f"address must be 12 decimal digits, got {address!r}")
    circuit = circuit or "it_load"
    if circuit not in CIRCUITS:
        raise argparse.ArgumentTypeError(
            f"unknown circuit {circuit!r}; known: {', '.join(CIRCUITS)}"
        )
    return address, circuit


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devices.emulators.dlt645_meter",
        description="Emulate DL/T 645-2007 electricity meters on a pseudo-terminal: prints the "
        "pty's path, then answers read requests until Ctrl-C. Values come from the "
        "energy_meter simulator. The pty ignores baud rate; open it with parity N "
        "(ptys refuse parity settings).",
    )
    parser.add_argument(
        "--meter",
        dest="meters",
        metavar="ADDRESS[=CIRCUIT]",
        type=_meter_spec,
        action="append",
        help="a meter: 12-digit address, optionally the simulated circuit (default it_load); "
        "repeat for several meters on the line (default 000000000001=it_load)",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument(
        "--ratio",
        type=float,
        default=100.0,
        help="current-transformer ratio: the meter reads primary values / ratio (default 100)",
    )
    parser.add_argument(
        "--fault", choices=FAULTS, default="ok", help="fault mode of every meter (default ok)"
    )
    parser.add_argument(
        "--delay-s", type=float, default=0.02, help="answer delay in seconds (default 0.02)"
    )
    parser.add_argument(
        "--baudrate",
        type=int,
        default=0,
        help="pace answers as a line of this speed would (default 0: as fast as the pty goes)",
    )
    parser.add_argument(
        "--no-wake-up", action="store_true", help="answer without FE FE FE FE in front"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


async def _serve_until_stopped(args: argparse.Namespace) -> None:
    specs: Sequence[tuple[str, str]] = args.meters or [("000000000001", "it_load")]
    meters = [
        EmulatedMeter(
            address,
            simulated_values(f"meter-{address}", circuit=circuit, seed=args.seed, ratio=args.ratio),
            fault=args.fault,
            delay_s=args.delay_s,
        )
        for address, circuit in specs
    ]
    link = open_pty_link()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Dlt645LineEmulator(
            link.master_fd,
            meters,
            wake_up=not args.no_wake_up,
            char_time_s=11 / args.baudrate if args.baudrate > 0 else 0.0,
        ):
            listing = ", ".join(f"{a} ({c})" for a, c in specs)
            print(f"DL/T 645 meters {listing} on {link.path}", flush=True)
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
