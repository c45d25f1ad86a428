"""``ecotel-ingest dead-letters list`` as an operator pages through a store: nothing hidden."""

import asyncio
import subprocess
import sys
from pathlib import Path

from pipelines.dead_letter import DeadLetterStore


def _cli(config: Path, *args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-m", "pipelines", "--config", str(config), "dead-letters", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _fill(path: Path) -> None:
    async with DeadLetterStore(path) as store:
        for n in range(5):
            reason = "bad_json" if n % 2 else "out_of_range"
            await store.add_message(f"ecotel/v1/s/gw/readings#{n}", b"{", reason, f"letter {n}")


def test_list_pages_and_says_what_it_left_out(tmp_path: Path) -> None:
    store = tmp_path / "dead.sqlite3"
    asyncio.run(_fill(store))
    config = tmp_path / "ingest.toml"
    config.write_text(f'[dead_letter]\npath = "{store}"\n', encoding="utf-8")

    first = _cli(config, "list", "--limit", "2")
    assert first.returncode == 0, first.stderr
    assert [line.split()[0] for line in first.stdout.splitlines()] == ["1", "2"]
    assert "--after 2 for the next 2" in first.stderr
    rest = _cli(config, "list", "--after", "2")
    assert [line.split()[0] for line in rest.stdout.splitlines()] == ["3", "4", "5"]
    assert rest.stderr == ""  # the last page: nothing more to say

    unknown = _cli(config, "list", "--reason", "nope")
    assert unknown.returncode == 0
    assert "no dead letters of reason 'nope'" in unknown.stdout
    assert "its reasons: bad_json, out_of_range" in unknown.stdout
    past = _cli(config, "list", "--after", "5")
    assert "no dead letters after id 5" in past.stdout

    for bad in ("0", "-3"):
        refused = _cli(config, "list", "--limit", bad)
        assert refused.returncode == 2
        assert "less than 1" in refused.stderr
