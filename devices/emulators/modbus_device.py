"""Modbus devices played by pymodbus's own server, over TCP on loopback or RTU on a pty:
registers set by hand or from a device kind's simulator, faults (silence, bad CRC) on demand."""

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Literal, Self, get_args

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from devices import KINDS, Role
from devices.drivers.modbus import (
    REGISTERS,
    DataType,
    RegisterTable,
    WordOrder,
    encode_registers,
)
from devices.emulators.null_modem import NullModem
from devices.simulators import make_simulator

log = logging.getLogger(__name__)

Fault = Literal["ok", "silent", "bad_crc"]
FAULTS: Final[tuple[Fault, ...]] = get_args(Fault)

_READ_HOLDING, _READ_INPUT = 3, 4


@dataclass
class ModbusUnit:
    """One device (unit id) on the server; change registers or ``fault`` while it runs."""

    unit: int
    holding: dict[int, int] = field(default_factory=dict)
    """Register address -> 16-bit value; an address not here answers 'illegal data address'."""
    input: dict[int, int] = field(default_factory=dict)
    fault: Fault = "ok"
    refresh: Callable[["ModbusUnit"], None] | None = None
    """Called before each request is served (a simulator writes its values here)."""
    requests: int = 0

    def set(
        self,
        table: RegisterTable,
        address: int,
        value: float,
        data_type: DataType = "uint16",
        word_order: WordOrder = "big",
    ) -> Self:
        registers = self.holding if table == "holding" else self.input
        for offset, word in enumerate(encode_registers(value, data_type, word_order)):
            registers[address + offset] = word
        return self

    def _sim_device(self) -> SimDevice:
        if not self.holding and not self.input:
            raise ValueError(f"unit {self.unit} has no registers")
        no_bits = [SimData(0, values=False, datatype=SimType.BITS)]
        return SimDevice(
            self.unit,
            simdata=(no_bits, no_bits, _blocks(self.holding), _blocks(self.input)),
            action=self._serve,
        )

    async def _serve(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # pymodbus keeps its own copy of the registers: bring it up to date before it answers.
        if self.refresh is not None:
            self.refresh(self)
        source = self.holding if function_code == _READ_HOLDING else self.input
        if function_code in (_READ_HOLDING, _READ_INPUT):
            for at in range(address, address + count):
                if at in source and 0 <= at - start_address < len(registers):
                    registers[at - start_address] = source[at]
        return None


def _blocks(registers: dict[int, int]) -> list[SimData]:
    """Runs of adjacent addresses; the gaps between them are invalid (an exception answer)."""
    if not registers:
        return [SimData(0, datatype=SimType.INVALID)]
    blocks: list[SimData] = []
    run: list[int] = []
    for address in sorted(registers):
        if run and address != run[-1] + 1:
            blocks.append(_run(run, registers))
            run = []
        run.append(address)
    blocks.append(_run(run, registers))
    return blocks


def _run(addresses: list[int], registers: dict[int, int]) -> SimData:
    values = [registers[a] for a in addresses]
    return SimData(addresses[0], values=values, datatype=SimType.REGISTERS)


class ModbusEmulator:
    """pymodbus's server playing ``units``: Modbus TCP on 127.0.0.1, or RTU on one end of a
    null-modem pty pair whose other end (``path``) a driver opens."""

    def __init__(
        self,
        units: Iterable[ModbusUnit],
        *,
        transport: Literal["tcp", "rtu"] = "tcp",
        port: int = 0,
        baudrate: int = 9600,
    ) -> None:
        self.units = {u.unit: u for u in units}
        if not self.units:
            raise ValueError("an emulator needs at least one unit")
        self.transport = transport
        self.port = port
        """The TCP port; 0 (the default) picks a free one, known once started."""
        self._baudrate = baudrate
        self._modem: NullModem | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    @property
    def path(self) -> str:
        """The serial port a driver opens (RTU only)."""
        if self._modem is None:
            raise RuntimeError("the RTU emulator is not running")
        return self._modem.path_b

    def unit(self, unit: int) -> ModbusUnit:
        return self.units[unit]

    async def start(self) -> None:
        devices = [u._sim_device() for u in self.units.values()]
        if self.transport == "tcp":
            self._server = ModbusTcpServer(
                devices,
                address=("127.0.0.1", self.port),
                trace_packet=self._trace_packet,
                trace_pdu=self._trace_pdu,
            )
        else:
            self._modem = NullModem()
            await self._modem.__aenter__()
            # Linux ptys refuse parity settings (termios EINVAL): the emulated line is 8N1.
            self._server = ModbusSerialServer(
                devices,
                port=self._modem.path_a,
                baudrate=self._baudrate,
                parity="N",
                trace_packet=self._trace_packet,
                trace_pdu=self._trace_pdu,
            )
        await self._server.serve_forever(background=True)
        if self.transport == "tcp" and self.port == 0:
            listener = self._server.transport
            sockets: Sequence[socket.socket] = getattr(listener, "sockets", ())
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped
            self._server = None
        if self._modem is not None:
            await self._modem.__aexit__(None, None, None)
            self._modem = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending and pdu.dev_id in self.units:
            self.units[pdu.dev_id].requests += 1
        return pdu

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:
        if not sending or not packet:
            return packet
        # The unit id: first byte of an RTU frame, seventh of a TCP one (after the MBAP header).
        unit_id = packet[0] if self.transport == "rtu" else packet[6]
        unit = self.units.get(unit_id)
        if unit is None or unit.fault == "silent":
            # A unit that is not on an RS-485 line does not answer; pymodbus would.
            return b""
        if unit.fault == "bad_crc" and self.transport == "rtu":
            crc = FramerRTU.compute_CRC(packet[:-2]) ^ 0x0101
            return packet[:-2] + crc.to_bytes(2, "big")
        return packet


# --- a device kind's quantities as registers, for trying the gateway without hardware ------


@dataclass(frozen=True)
class KindRegister:
    """Where the emulator holds one of a kind's quantities: a number as float32 (two registers,
    big word order), a state as a uint16 code, its index among the quantity's states."""

    name: str
    address: int
    data_type: DataType
    states: tuple[str, ...] = ()


def kind_register_map(kind: str) -> list[KindRegister]:
    """The kind's quantities in catalog order, in holding registers from 0 without gaps."""
    layout: list[KindRegister] = []
    address = 0
    for q in KINDS[kind].quantities():
        data_type: DataType = "uint16" if q.role == Role.STATE else "float32"
        layout.append(KindRegister(q.name, address, data_type, q.states))
        address += REGISTERS[data_type]
    return layout


def simulated_unit(unit: int, kind: str, *, seed: int = 0) -> tuple[ModbusUnit, str | None]:
    """A unit whose registers follow the kind's simulator (its first channel, if it has
    channels), refreshed at every request; and that channel."""
    simulator = make_simulator(kind, f"modbus-{unit}", seed=seed)
    layout = kind_register_map(kind)
    channel = simulator.sample(datetime.now(UTC))[0].channel

    def refresh(target: ModbusUnit) -> None:
        reading = simulator.sample(datetime.now(UTC))[0]
        for register in layout:
            value = reading.values.get(register.name)
            if register.states:
                # A state the simulator left out (optional) reads as code 0.
                code = register.states.index(value) if value in register.states else 0
                target.set("holding", register.address, code, "uint16")
            else:
                number = float(value) if isinstance(value, int | float) else 0.0
                target.set("holding", register.address, number, "float32")

    device = ModbusUnit(unit)
    refresh(device)
    device.refresh = refresh
    return device, channel


def sample_config(
    unit: int, kind: str, channel: str | None, source: dict[str, object], interval_s: float = 10
) -> str:
    """A gateway TOML device entry reading ``unit`` as the emulator lays it out."""
    lines = [
        "[[devices]]",
        f'id = "modbus-{unit}"',
        f'kind = "{kind}"',
        f"interval_s = {interval_s:g}",
    ]
    if channel is not None:
        lines.append(f'channel = "{channel}"')
    lines += ["", "[devices.source]"]
    for key, value in source.items():
        lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
    lines.append(f"unit = {unit}")
    for register in kind_register_map(kind):
        lines += [
            "",
            "[[devices.source.fields]]",
            f'field = "{register.name}"',
            f"address = {register.address}",
            f'data_type = "{register.data_type}"',
        ]
        if register.states:
            codes = ", ".join(f'{code} = "{state}"' for code, state in enumerate(register.states))
            lines.append(f"states = {{ {codes} }}")
    return "\n".join(lines) + "\n"


def _unit_spec(text: str) -> tuple[int, str]:
    unit_text, _, kind = text.partition("=")
    if not unit_text.isdigit() or not 1 <= int(unit_text) <= 247:
        raise argparse.ArgumentTypeError(f"unit id must be 1-247, got {unit_text!r}")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return int(unit_text), kind


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devices.emulators.modbus_device",
        description="Emulate Modbus devices with pymodbus's server (TCP on 127.0.0.1 or RTU on a "
        "pseudo-terminal); each unit holds a device kind's simulated values in holding registers "
        "(numbers as float32, states as uint16 codes). Prints a gateway configuration for each "
        "unit.",
    )
    parser.add_argument(
        "--unit",
        dest="units",
        action="append",
        type=_unit_spec,
        metavar="ID=KIND",
        help="a unit and its kind, e.g. 1=water_quality (repeatable; default 1=water_quality)",
    )
    parser.add_argument("--transport", choices=("tcp", "rtu"), default="tcp")
    parser.add_argument("--port", type=int, default=5020, help="TCP port (default 5020)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    parser.add_argument(
        "--fault", choices=FAULTS, default="ok", help="fault mode of every unit (default ok)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log pymodbus's traffic")
    return parser


async def _serve_until_stopped(args: argparse.Namespace) -> None:
    specs: Sequence[tuple[int, str]] = args.units or [(1, "water_quality")]
    units = []
    configs = []
    for unit_id, kind in specs:
        unit, channel = simulated_unit(unit_id, kind, seed=args.seed)
        unit.fault = args.fault
        units.append(unit)
        configs.append((unit_id, kind, channel))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with ModbusEmulator(units, transport=args.transport, port=args.port) as emulator:
        source: dict[str, object]
        if args.transport == "tcp":
            where = f"127.0.0.1:{emulator.port}"
            source = {"type": "modbus_tcp", "host": "127.0.0.1", "port": emulator.port}
        else:
            where = emulator.path
            source = {"type": "modbus_rtu", "port": emulator.path, "baudrate": 9600}
            source |= {"parity": "N"}
        listing = ", ".join(f"unit {u} ({k})" for u, k in specs)
        print(f"Modbus {args.transport.upper()} {listing} on {where}", flush=True)
        for unit_id, kind, channel in configs:
            print("\n" + sample_config(unit_id, kind, channel, source), flush=True)
        print("Ctrl-C stops", file=sys.stderr, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pymodbus logs every request for a unit it does not have as an error with a traceback.
    logging.getLogger("pymodbus").setLevel(logging.DEBUG if args.verbose else logging.CRITICAL)
    asyncio.run(_serve_until_stopped(args))


if __name__ == "__main__":
    main()
