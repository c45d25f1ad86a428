"""The command-line tools fail with a message naming what is wrong (file, URL, setting), not a traceback."""

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.servers import InfluxServer
from tests.trace_fixtures import TRACES

TRACE_CLI = [sys.executable, "-m", "deploy.traces"]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args",
    [
        ["inspect"],
        ["trim", "-o", "cut.trace.gz"],
        ["replay", "--port", "1", "--max-speed"],
    ],
)
def test_trace_commands_name_a_missing_file(args: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.trace.gz"
    out = _run(
        *TRACE_CLI, *[a if a != "cut.trace.gz" else str(tmp_path / a) for a in args], str(missing)
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert str(missing) in out.stderr
    assert "No such file" in out.stderr


def test_trace_inspect_into_a_closed_pipe_exits_quietly() -> None:
    # The reader is gone before the first write (as `| head` once it has its lines).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run(
            [*TRACE_CLI, "inspect", str(TRACES / "backlog.trace.gz")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode == 128 + signal.SIGPIPE


DASHBOARDS_CLI = [sys.executable, "-m", "dashboards.cli"]


async def _run_async(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_preview_names_a_database_the_server_has_not(
    influxdb: InfluxServer, tmp_path: Path
) -> None:
    out = tmp_path / "previews"
    code, err = await _run_async(
        *DASHBOARDS_CLI,
        "preview",
        "--out",
        str(out),
        "--influx-url",
        influxdb.url,
        "--database",
        "no_such_db",
    )
    assert code == 1
    assert "Traceback" not in err
    assert f"InfluxDB at {influxdb.url}" in err
    assert "no database 'no_such_db'" in err
    assert not out.exists()


async def test_preview_names_an_unreachable_influxdb(free_port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port}"
    code, err = await _run_async(
        *DASHBOARDS_CLI, "preview", "--out", str(tmp_path), "--influx-url", url
    )
    assert code == 1
    assert "Traceback" not in err
    assert f"InfluxDB at {url}" in err


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "pipelines", "run", "--log-level", "loud"],
        [*TRACE_CLI, "--log-level", "loud", "inspect", str(TRACES / "backlog.trace.gz")],
    ],
)
def test_an_unknown_log_level_is_refused_naming_the_levels(argv: list[str]) -> None:
    out = _run(*argv)
    assert out.returncode == 2, out.stderr
    assert "invalid choice: 'LOUD' (choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')" in out.stderr
    assert "Traceback" not in out.stderr
