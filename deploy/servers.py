"""Start and stop real Mosquitto and InfluxDB 1.x processes on 127.0.0.1 ports.
Each server keeps its caller-given data dir and its port across restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

import httpx

HOST = "127.0.0.1"
BOOTSTRAP_HINT = "run `bash deploy/bootstrap.sh` (as root) to install them"

# Non-root shells often lack the sbin directories on PATH, and Debian puts mosquitto there.
_FALLBACK_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
_LOG_TAIL_LINES = 30
_POLL_INTERVAL = 0.1

# MQTT 3.1.1 CONNECT (clean session, keepalive 10 s, empty client id), CONNACK accepted, DISCONNECT.
_MQTT_CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x0a\x00\x00"
_MQTT_CONNACK_OK = b"\x20\x02\x00\x00"
_MQTT_DISCONNECT = b"\xe0\x00"


class ServerStartError(RuntimeError):
    """A server process could not be started or did not become ready."""


class MissingBinaryError(ServerStartError):
    """A server binary is not installed."""


def find_binary(name: str) -> Path:
    """Return the path of executable `name`, or raise MissingBinaryError with an install hint."""
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    for directory in _FALLBACK_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MissingBinaryError(
        f"{name} is not installed (not on PATH nor in /usr/sbin); {BOOTSTRAP_HINT}"
    )


def require_binaries() -> dict[str, Path]:
    """Return paths of mosquitto and influxd; raise MissingBinaryError naming all missing ones."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name in ("mosquitto", "influxd"):
        try:
            found[name] = find_binary(name)
        except MissingBinaryError:
            missing.append(name)
    if missing:
        raise MissingBinaryError(f"missing server binaries: {', '.join(missing)}; {BOOTSTRAP_HINT}")
    return found


def find_free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def toml_str(value: str | Path) -> str:
    # A JSON string literal is a valid TOML basic string, escapes included.
    # Not ASCII-escaped: TOML refuses the surrogate pairs JSON writes for characters beyond
    # the BMP (an emoji in a data dir's path).
    return json.dumps(str(value), ensure_ascii=False)


class _ManagedServer:
    """Shared lifecycle of one server process: config file, spawn, readiness poll, stop."""

    binary: ClassVar[str]
    scheme: ClassVar[str]
    config_name: ClassVar[str]
    log_name: ClassVar[str]

    def __init__(
        self,
        data_dir: Path,
        port: int | None,
        extra_config: str,
        start_timeout: float,
        stop_timeout: float,
    ) -> None:
        # Absolute, because the servers resolve relative paths against their own cwd.
        self.data_dir = Path(data_dir).absolute()
        self.extra_config = extra_config
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._port_fixed = port is not None
        self._port = port if port is not None else find_free_port()
        self._proc: asyncio.subprocess.Process | None = None
        self._started_once = False

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{HOST}:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def config_path(self) -> Path:
        return self.data_dir / self.config_name

    @property
    def log_path(self) -> Path:
        return self.data_dir / self.log_name

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state} data_dir={self.data_dir}>"

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

    def _render_config(self) -> str:
        raise NotImplementedError

    def _command(self, binary: Path) -> list[str]:
        raise NotImplementedError

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _reroll_ports(self) -> bool:
        """Pick fresh values for auto-chosen ports; return whether anything changed."""
        if self._port_fixed:
            return False
        self._port = find_free_port()
        return True

    async def _wait_ready(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        """Start the process (no-op if running) and return once it serves requests."""
        if self.running:
            return
        binary = await asyncio.to_thread(find_binary, self.binary)
        # Auto-chosen ports can be taken between find_free_port() and bind(); the first start
        # may pick others, but a restart must keep the address clients already know.
        attempts = 1 if self._started_once else 3
        for attempt in range(1, attempts + 1):
            try:
                await self._start_once(binary)
            except ServerStartError as exc:
                if (
                    attempt < attempts
                    and "address already in use" in str(exc).lower()
                    and self._reroll_ports()
                ):
                    continue
                raise
            break
        self._started_once = True

    async def _start_once(self, binary: Path) -> None:
        await asyncio.to_thread(self._prepare_dirs)
        await asyncio.to_thread(self.config_path.write_text, self._render_config())
        log = await asyncio.to_thread(self.log_path.open, "ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._command(binary),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Out of the caller's process group: a terminal's Ctrl-C or hang-up goes to the
                # program that started it, which stops it in order (after the ingest has
                # written what it holds), not to the server at the same instant.
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            await self._wait_ready()
        except BaseException:
            # Never leave a half-started server behind, also when the caller is cancelled.
            proc, self._proc = self._proc, None
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            raise

    async def _poll(self, probe: Callable[[], Awaitable[bool]]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while True:
            proc = self._proc
            assert proc is not None
            if proc.returncode is not None:
                raise await self._failure(f"exited with code {proc.returncode} during start")
            if await probe() and proc.returncode is None:
                return
            if loop.time() >= deadline:
                raise await self._failure(f"not ready after {self.start_timeout:g} s")
            await asyncio.sleep(_POLL_INTERVAL)

    async def _failure(self, reason: str) -> ServerStartError:
        tail = await asyncio.to_thread(self._log_tail)
        return ServerStartError(
            f"{self.binary} on {HOST}:{self._port} {reason}; last lines of {self.log_path}:\n{tail}"
        )

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-_LOG_TAIL_LINES:]) or "(log is empty)"

    async def stop(self) -> None:
        """SIGTERM the process so it flushes its data, SIGKILL it after stop_timeout."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await proc.wait()

    async def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        await self.stop()
        await self.start()


class MosquittoServer(_ManagedServer):
    """A mosquitto broker on 127.0.0.1 with persistence in `data_dir`."""

    binary = "mosquitto"
    scheme = "mqtt"
    config_name = "mosquitto.conf"
    log_name = "mosquitto.log"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        extra_config: str = "",
        *,
        start_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(data_dir, port, extra_config, start_timeout, stop_timeout)

    @property
    def persistence_dir(self) -> Path:
        return self.data_dir / "persistence"

    def _prepare_dirs(self) -> None:
        self.persistence_dir.mkdir(parents=True, exist_ok=True)

    def _render_config(self) -> str:
        lines = [
            "# Written by deploy/servers.py on every start; edits are overwritten.",
            # Each listener has its own security settings, so a TLS listener with
            # passwords can sit beside the plain loopback one (extra_config).
            "per_listener_settings true",
            f"listener {self._port} {HOST}",
            "allow_anonymous true",
            "persistence true",
            # mosquitto joins location and file name without a separator.
            f"persistence_location {self.persistence_dir}/",
            "autosave_interval 10",
            # The default queue of 1000 per persistent session silently drops the NEWEST
            # messages once full, so a consumer that is away for a while loses recent data.
            "max_queued_messages 1000000",
            # A wider in-flight window lets a reconnecting consumer drain its backlog faster.
            "max_inflight_messages 1000",
            # Without it small PUBLISHes wait on Nagle's algorithm: recorded arrival times
            # trail the wire by up to ~40 ms.
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # mosquitto 2 otherwise drops to user "mosquitto", which cannot write our data dir.
            lines.append("user root")
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def _command(self, binary: Path) -> list[str]:
        return [str(binary), "-c", str(self.config_path)]

    async def _wait_ready(self) -> None:
        # A full CONNECT/CONNACK proves the broker serves MQTT, not merely that a port is open.
        await self._poll(self._mqtt_handshake)

    async def _mqtt_handshake(self) -> bool:
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_connection(HOST, self._port)
                try:
                    writer.write(_MQTT_CONNECT)
                    await writer.drain()
                    ack = await reader.readexactly(len(_MQTT_CONNACK_OK))
                    writer.write(_MQTT_DISCONNECT)
                    await writer.drain()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return False
        return ack == _MQTT_CONNACK_OK


class InfluxServer(_ManagedServer):
    """An influxd 1.x on 127.0.0.1 with meta, data and WAL in `data_dir`.

    `extra_config` is appended at the end of the TOML file, so start it with a [section] header.
    """

    binary = "influxd"
    scheme = "http"
    config_name = "influxdb.conf"
    log_name = "influxd.log"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        extra_config: str = "",
        *,
        rpc_port: int | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
        auth_enabled: bool = False,
    ) -> None:
        super().__init__(data_dir, port, extra_config, start_timeout, stop_timeout)
        # With auth on, influxd takes only CREATE USER ... WITH ALL PRIVILEGES until an admin exists.
        self.auth_enabled = auth_enabled
        self._rpc_port_fixed = rpc_port is not None
        self._rpc_port = rpc_port if rpc_port is not None else self._other_free_port()

    @property
    def rpc_port(self) -> int:
        """Port of the backup/restore RPC service (top-level bind-address)."""
        return self._rpc_port

    def _other_free_port(self) -> int:
        while True:
            port = find_free_port()
            if port != self._port:
                return port

    def _reroll_ports(self) -> bool:
        changed = super()._reroll_ports()
        if not self._rpc_port_fixed:
            self._rpc_port = self._other_free_port()
            changed = True
        return changed

    def _render_config(self) -> str:
        data = self.data_dir
        return f"""\
# Written by deploy/servers.py on every start; edits are overwritten.
# Upstream 1.6 reads reporting-disabled; Debian's build renamed it to reporting-enabled and
# silently ignores unknown keys, so both are set.
reporting-disabled = true
reporting-enabled = false
# Backup/restore RPC; its default 8088 would collide between several servers.
bind-address = {toml_str(f"{HOST}:{self._rpc_port}")}

[meta]
  dir = {toml_str(data / "meta")}

[data]
  dir = {toml_str(data / "data")}
  wal-dir = {toml_str(data / "wal")}
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = {toml_str(f"{HOST}:{self._port}")}
  log-enabled = false
  unix-socket-enabled = false
  auth-enabled = {"true" if self.auth_enabled else "false"}

[ifql]
  enabled = false

[logging]
  level = "warn"

[continuous_queries]
  log-enabled = false

# graphite, collectd, opentsdb and udp listeners stay at their default: disabled.
{self.extra_config}
"""

    def _command(self, binary: Path) -> list[str]:
        return [str(binary), "-config", str(self.config_path)]

    async def _wait_ready(self) -> None:
        # trust_env=False: a proxy from the environment must never see loopback traffic.
        async with httpx.AsyncClient(trust_env=False, timeout=1.0) as client:

            async def ping() -> bool:
                try:
                    response = await client.get(f"{self.url}/ping")
                except httpx.HTTPError:
                    return False
                return response.status_code == 204

            await self._poll(ping)
