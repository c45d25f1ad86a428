"""``ecotel-gateway run`` under systemd's notify protocol: READY=1 only once its outbox is open."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.process_lock import InUse, lock_exclusively
from deploy.servers import MosquittoServer

GATEWAY = "notify-gw"


def _config(tmp_path: Path, broker_port: int | None = None) -> Path:
    config = tmp_path / "gw.toml"
    broker = f"[broker]\nport = {broker_port}\n" if broker_port else ""
    config.write_text(
        f'[gateway]\nid = "{GATEWAY}"\nsite = "svc"\nstate_dir = "{tmp_path / "state"}"\n'
        f"{broker}"
        '[[devices]]\nid = "aws"\nkind = "weather"\ninterval_s = 1\n'
        'source = { type = "simulator", seed = 1 }\n',
        encoding="utf-8",
    )
    return config


@contextlib.contextmanager
def _notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        yield sock


def _gateway(config: Path, sock: socket.socket, **env: str) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [sys.executable, "-m", "collector", "run", "--config", str(config)],
        env={**os.environ, "NOTIFY_SOCKET": sock.getsockname(), **env},
        stderr=subprocess.PIPE,
        text=True,
    )


def _next(sock: socket.socket, timeout_s: float = 30.0) -> str:
    sock.settimeout(timeout_s)
    return sock.recv(100).decode()


def test_ready_comes_once_the_outbox_is_open_and_stopping_on_sigterm(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    lock = tmp_path / "state" / f"{GATEWAY}.outbox.sqlite3.lock"
    with _notify_socket(tmp_path) as sock:
        gateway = _gateway(_config(tmp_path, mosquitto.port), sock, WATCHDOG_USEC="400000")
        try:
            # The first word: the watchdog is fed from READY=1 on (TimeoutStartSec bounds a start).
            assert _next(sock) == "READY=1"
            # Said while the gateway holds its outbox: a reading taken from now on is kept.
            with pytest.raises(InUse, match=rf"pid {gateway.pid};"):
                lock_exclusively(lock, "the test's probe").close()
            # The watchdog is fed on (every 0.2 s here), then STOPPING=1 once SIGTERM comes.
            assert _next(sock) == "WATCHDOG=1"
            gateway.send_signal(signal.SIGTERM)
            after = [_next(sock)]
            while after[-1] == "WATCHDOG=1":
                after.append(_next(sock))
            assert after[-1] == "STOPPING=1", after
            _, err = gateway.communicate(timeout=60)
            assert gateway.returncode == 0, err
            # Nothing after STOPPING=1: the watchdog is not fed through the drain.
            sock.settimeout(0)
            with pytest.raises(BlockingIOError):
                sock.recv(100)
        finally:
            with contextlib.suppress(ProcessLookupError):
                gateway.kill()
            gateway.communicate()


def test_a_gateway_that_cannot_open_its_outbox_never_says_ready(tmp_path: Path) -> None:
    # Another process holds the outbox (a gateway left running by hand): systemd must not
    # take this one as started.
    lock = tmp_path / "state" / f"{GATEWAY}.outbox.sqlite3.lock"
    with (
        contextlib.closing(lock_exclusively(lock, "the test's hold")),
        _notify_socket(tmp_path) as sock,
    ):
        gateway = _gateway(_config(tmp_path), sock)
        _, err = gateway.communicate(timeout=60)
        assert gateway.returncode == 2, err
        assert f"in use by another process (pid {os.getpid()}" in err
        assert _next(sock, timeout_s=1) == "STOPPING=1"
        sock.settimeout(0)
        with pytest.raises(BlockingIOError):
            sock.recv(100)


def test_a_notify_socket_nobody_listens_on_costs_a_warning_not_the_gateway(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    # A NOTIFY_SOCKET left in the environment of a shell, or systemd's socket gone.
    gone = tmp_path / "gone.sock"
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector",
            "run",
            "--config",
            str(_config(tmp_path, mosquitto.port)),
        ],
        env={**os.environ, "NOTIFY_SOCKET": str(gone)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert gateway.stderr is not None
        for line in gateway.stderr:
            if "connected to" in line:
                break
        gateway.send_signal(signal.SIGTERM)
        _, err = gateway.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            gateway.kill()
    assert gateway.returncode == 0, err
    assert f"could not tell systemd STOPPING=1 at NOTIFY_SOCKET={gone}: " in err
    assert "Traceback" not in err
