"""``ecotel-stack query ... | head``: the reader leaving early ends the query quietly, as the trace CLI does."""

import asyncio
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deploy.servers import InfluxServer
from deploy.stack_ingest_config import DATABASE

pytestmark = pytest.mark.slow


async def test_query_piped_into_head_ends_without_a_traceback(tmp_path: Path) -> None:
    # A stopped stack's data: InfluxDB's files under data/influxdb, with a few thousand rows.
    data = tmp_path / "data"
    async with (
        InfluxServer(data / "influxdb") as influx,
        httpx.AsyncClient(base_url=influx.url, trust_env=False) as http,
    ):
        await http.post("/query", data={"q": f'CREATE DATABASE "{DATABASE}"'})
        lines = "\n".join(f"weather,site=S air_temperature={i}.0 {i}000000000" for i in range(5000))
        response = await http.post("/write", params={"db": DATABASE}, content=lines)
        assert response.status_code == 204, response.text
    command = (
        f"{sys.executable} -m deploy.stack_cli query --data-dir {data} "
        "'SELECT * FROM weather' | head -n 3"
    )
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.splitlines()[0] == "weather", done.stdout
    assert len(done.stdout.splitlines()) == 3
    assert "Traceback" not in done.stderr, done.stderr
    assert "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode in (0, 141), (done.returncode, done.stderr)  # 141: ended by SIGPIPE
