"""The command-line tools fail with a message naming what is wrong (file, URL, setting), not a traceback."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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
