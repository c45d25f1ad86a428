"""The main job as a user runs it: ``ecotel-stack`` for a few seconds, then ``ecotel-stack query``."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from collector.process_lock import lock_exclusively
from devices import KINDS, Domain
from pipelines.config import load_ingest_config

STACK = [sys.executable, "-m", "deploy.stack_cli"]


def _run(*argv: str, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    """A command as a user types it; its exit code is each test's to check."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def stack_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data = tmp_path_factory.mktemp("stack") / "data"
    done = _run(
        *STACK, "run", "--data-dir", str(data), "--duration", "6", "--interval", "1", timeout=120
    )
    assert done.returncode == 0, done.stderr
    return data, done.stdout


def test_stack_shows_progress_per_domain_and_a_final_count(stack_output: tuple[Path, str]) -> None:
    data, out = stack_output
    assert f"data under {data}" in out
    progress = [line for line in out.splitlines() if "stored/s:" in line]
    assert progress, out
    for domain in Domain:
        assert f"{domain.value} " in progress[-1]
    assert "0 readings and 0 whole messages rejected" in out
    for kind in KINDS:
        match = re.search(rf"^  {kind}\s+\w+\s+([\d,]+) points$", out, re.MULTILINE)
        assert match, f"no stored count for {kind} in:\n{out}"
        assert int(match.group(1).replace(",", "")) > 0, kind
    assert "ecotel-stack query" in out


def test_dashboards_are_written_for_grafana(stack_output: tuple[Path, str]) -> None:
    data, _ = stack_output
    names = {p.name for p in (data / "grafana" / "dashboards").glob("*.json")}
    assert {f"ecotel-{d.value}.json" for d in Domain} <= names
    assert list((data / "grafana" / "provisioning" / "datasources").glob("*.yaml"))


def test_query_reads_a_stopped_stacks_data(stack_output: tuple[Path, str]) -> None:
    data, _ = stack_output
    done = _run(*STACK, "query", "--data-dir", str(data), "SELECT count(ph) FROM water_quality")
    assert done.returncode == 0, done.stderr
    count = int(done.stdout.strip().splitlines()[-1].split("\t")[-1])
    assert count > 0


def test_the_printed_dead_letter_command_reaches_the_stacks_store(
    stack_output: tuple[Path, str],
) -> None:
    data, out = stack_output
    config = data / "ingest" / "ingest.toml"
    assert f"--config {config} dead-letters list" in out
    assert config.stat().st_mode & 0o077 == 0  # it holds the operator's API token
    done = _run(
        sys.executable, "-m", "pipelines", "--config", str(config), "dead-letters", "counts"
    )
    assert done.returncode == 0, done.stderr
    assert str(data / "ingest" / "dead-letters.sqlite3") in done.stdout + done.stderr


def test_the_stacks_ingest_has_the_shipped_sample_meter_map(
    stack_output: tuple[Path, str],
) -> None:
    data, _ = stack_output
    written = load_ingest_config(data / "ingest" / "ingest.toml")
    sample = load_ingest_config(Path(__file__).parent.parent / "deploy" / "ingest" / "ingest.toml")
    assert written.derive == sample.derive
    assert written.dead_letter.path == data / "ingest" / "dead-letters.sqlite3"


def test_help_answers() -> None:
    done = _run(*STACK, "run", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--duration", "--data-dir", "--fresh", "--interval", "--scale"):
        assert option in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("option", "said"),
    [
        ("--interval=-1", "-1 must be at least 0"),
        ("--scale=0", "0 must be at least 1"),
        ("--duration=0", "0 must be more than 0"),
        ("--scale=x", "'x' is not a whole number"),
        ("--log-level=loud", "invalid choice: 'LOUD' (choose from 'DEBUG', 'INFO', 'WARNING'"),
    ],
)
def test_impossible_options_are_refused_before_anything_starts(
    tmp_path: Path, option: str, said: str
) -> None:
    data = tmp_path / "data"
    done = _run(*STACK, "run", "--data-dir", str(data), option)
    assert done.returncode == 2
    assert said in done.stderr
    assert "Traceback" not in done.stderr
    assert not data.exists()


def _start(data: Path, interval: str, *, new_session: bool = False) -> subprocess.Popen[str]:
    """A stack of 60 s on ``data``, its output read by the test."""
    return subprocess.Popen(
        [*STACK, "run", "--data-dir", str(data), "--duration", "60", "--interval", interval],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def test_a_running_stack_holds_its_data_dir_and_answers_queries(tmp_path: Path) -> None:
    data = tmp_path / "data"
    running = _start(data, "1")
    try:
        assert running.stdout is not None
        for line in running.stdout:
            if "Ctrl-C stops" in line:
                break
        # A second stack would start a second Mosquitto and InfluxDB on the same files.
        second = _run(*STACK, "run", "--data-dir", str(data), "--duration", "1")
        assert second.returncode == 1
        assert f"in use by another process (pid {running.pid}" in second.stderr
        # A query goes to the running stack's own InfluxDB.
        query = _run(*STACK, "query", "--data-dir", str(data), "SHOW MEASUREMENTS")
        assert query.returncode == 0, query.stderr
        assert "measurements" in query.stdout
    finally:
        running.send_signal(signal.SIGINT)
        out, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    assert "stopped after" in out


def test_query_where_no_stack_ran_says_so_and_creates_nothing(tmp_path: Path) -> None:
    done = _run(*STACK, "query", "--data-dir", str(tmp_path / "none"), "SHOW MEASUREMENTS")
    assert done.returncode == 1
    assert "no stack data under" in done.stderr
    assert not (tmp_path / "none").exists()


def test_a_stack_gateway_whose_outbox_another_process_holds_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data"
    outbox_lock = data / "gateways" / "tuotuohe-gw1.outbox.sqlite3.lock"
    with contextlib.closing(lock_exclusively(outbox_lock, "a test's hold")):
        done = _run(*STACK, "run", "--data-dir", str(data), "--duration", "5", timeout=120)
    assert done.returncode == 1
    assert f"is in use by another process (pid {os.getpid()}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hang-up"])
def test_a_terminals_signal_to_the_whole_job_stops_the_stack_in_order(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # A terminal signals its whole foreground job (Ctrl-C: SIGINT; closing it: SIGHUP), not
    # the stack alone: the servers must outlive the ingest's last write, then be stopped.
    psutil = pytest.importorskip("psutil")
    data = tmp_path / "data"
    running = _start(data, "0.5", new_session=True)
    try:
        assert running.stdout is not None
        for line in running.stdout:
            if re.search(r"stored [1-9]", line):
                break
        servers = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(data) in " ".join(p.info["cmdline"] or []) and p.pid != running.pid
        ]
        assert len(servers) == 2, servers  # Mosquitto and InfluxDB
        os.killpg(running.pid, sig)
        out, err = running.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.pid, signal.SIGKILL)
    assert running.returncode == 0, err
    assert "Traceback" not in err
    stopped = re.search(r"(\d+) readings published, (\d+) written to InfluxDB", out)
    assert stopped is not None, out
    assert stopped[1] == stopped[2]
    _, alive = psutil.wait_procs(servers, timeout=10)
    assert not alive, f"left running: {alive}"


@pytest.mark.slow
def test_readings_posted_to_the_stacks_api_are_not_reported_as_repeats(tmp_path: Path) -> None:
    data = tmp_path / "data"
    running = _start(data, "1")
    try:
        assert running.stdout is not None
        api = ""
        for line in running.stdout:
            api = api or (re.findall(r"ingest API (http://\S+)", line) or [""])[0]
            if "Ctrl-C stops" in line:
                break
        token = (data / "ingest" / "api-token").read_text(encoding="utf-8").strip()
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        readings = [
            {
                "device": "hydro-9",
                "kind": "hydrology",
                "time": (start + timedelta(seconds=n)).isoformat(),
                "values": {"stage": 2.0, "discharge": 40.0, "water_temperature": 4.0},
            }
            for n in range(7)
        ]
        message = {"schema": 1, "site": "Madoi", "gateway": "by-hand", "seq": 1}
        message |= {"sent_at": start.isoformat(), "readings": readings}
        posted = httpx.post(
            f"{api}/v1/readings/Madoi/by-hand",
            content=json.dumps(message),
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=30,
        )
        assert posted.json() == {"stored": 7, "refused": []}, posted.text
    finally:
        running.send_signal(signal.SIGINT)
        out, err = running.communicate(timeout=60)
    assert running.returncode == 0, err
    counted = re.search(r"([\d,]+) readings published, ([\d,]+) written to InfluxDB", out)
    assert counted is not None, out
    published, written = (int(n.replace(",", "")) for n in counted.groups())
    assert written - published >= 7, out
    note = re.search(
        r"^  \(([\d,]+) more written than the stack's gateways published; (.*)\.$", out, re.M
    )
    assert note is not None, out
    assert int(note[1].replace(",", "")) == written - published
    assert note[2] == "not repeats: no message came twice"
    assert "readings posted to its API" in out
