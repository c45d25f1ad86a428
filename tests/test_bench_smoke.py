"""The ingest benchmark runs end to end on real servers and counts every reading (no speed asserted)."""

import asyncio
import re
import subprocess
import sys

import pytest

from bench.ingest_compare import Scenario, run_scenario
from deploy.servers import require_binaries


@pytest.mark.slow
def test_ingest_benchmark_counts_every_reading_through_ecotel_ingest() -> None:
    require_binaries()
    result = asyncio.run(run_scenario(Scenario("ecotel", batch=50, readings=2_000)))
    assert (result.stored, result.expected) == (2_000, 2_000), result.notes
    # Probes are readings stamped at publish time; the last message always carries one.
    assert result.latencies
    assert all(latency > 0 for latency in result.latencies)
    assert {"ecotel", "mosquitto", "influxd", "publisher"} <= set(result.usage)
    assert result.usage["ecotel"].cpu_s > 0


@pytest.mark.slow
def test_raw_broker_limit_receives_every_message() -> None:
    require_binaries()
    result = asyncio.run(run_scenario(Scenario("broker", batch=1, readings=5_000)))
    assert (result.stored, result.expected) == (5_000, 5_000)


def test_help_lists_every_benchmark_with_what_it_measures() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    listing = done.stdout.split("benchmarks:", 1)[1]
    # Each name on its line, then what it measures (on the same line, or the next when long).
    described = dict(re.findall(r"^    (\S+)\s+(\S.*)$", listing, re.MULTILINE))
    wrapped = re.findall(r"^    (\S+)\n {10,}(\S.*)$", listing, re.MULTILINE)
    described.update(wrapped)
    names = {"decode", "stack", "ingest", "gateway-footprint", "gateway-drain"}
    assert names | {"trace", "derive", "ledger"} <= set(described), done.stdout
    # Those with options of their own still answer their own --help.
    own = subprocess.run(
        [sys.executable, "-m", "bench", "ledger", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert own.returncode == 0, own.stderr
    assert own.stdout.startswith("usage: python -m bench ledger")
