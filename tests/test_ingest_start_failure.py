"""A worker that fails at start exits (its supervisor restarts it) instead of hanging on an open file."""

import asyncio
import socket
import sys
import uuid
from pathlib import Path

from deploy.servers import InfluxServer


async def _run_to_exit(config: Path, *args: str) -> tuple[int, str]:
    """``ecotel-ingest run`` until it exits by itself: its exit code and stderr."""
    ingest = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "pipelines", "--config", str(config), "run", *args],
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Not a measure of speed: a generous bound that only a hung process reaches.
        async with asyncio.timeout(120):
            _, stderr = await ingest.communicate()
    finally:
        if ingest.returncode is None:
            ingest.kill()
            await ingest.wait()
    assert ingest.returncode is not None
    return ingest.returncode, stderr.decode()


async def test_a_worker_whose_old_derive_file_is_unreadable_exits(
    influxdb: InfluxServer, tmp_path: Path, free_port: int
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    # A per-worker file from before the group shared one, damaged (not SQLite).
    (state / "derive-worker1.sqlite3").write_bytes(b"not a database" * 300)
    config = tmp_path / "ingest.toml"
    config.write_text(
        f'[mqtt]\nport = {free_port}\nclient_id = "start-fail"\nshared_group = "g"\n'
        f'[influx]\nurl = "{influxdb.url}"\ndatabase = "sf_{uuid.uuid4().hex[:8]}"\n'
        f'[dead_letter]\npath = "{state / "dead.sqlite3"}"\n',
        encoding="utf-8",
    )
    returncode, err = await _run_to_exit(config, "--worker", "0")
    assert returncode == 1
    assert f"cannot open {state / 'derive-worker1.sqlite3'}: file is not a database" in err
    assert "Traceback" not in err


async def test_an_api_port_in_use_is_one_line_naming_the_file_and_keys(
    influxdb: InfluxServer, tmp_path: Path, free_port: int
) -> None:
    config = tmp_path / "ingest.toml"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        config.write_text(
            f'[mqtt]\nport = {free_port}\nclient_id = "api-taken"\n'
            f'[influx]\nurl = "{influxdb.url}"\ndatabase = "sf_{uuid.uuid4().hex[:8]}"\n'
            f'[dead_letter]\npath = "{tmp_path / "state" / "dead.sqlite3"}"\n'
            f"[api]\nenabled = true\nport = {taken.getsockname()[1]}\n",
            encoding="utf-8",
        )
        returncode, err = await _run_to_exit(config)
    assert returncode == 1
    assert f"{config}: api: cannot listen on 127.0.0.1:" in err
    assert "(api.host, api.port)" in err
    assert "Traceback" not in err
