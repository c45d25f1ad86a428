"""A gateway whose broker stops answering while the link stays up says so in its log, naming
what it waits for, and says when sending resumes: a station sending nothing is never silent."""

import asyncio
import logging
import os
import signal
from pathlib import Path

import pytest

from collector.config import GatewaySettings
from collector.gateway import Gateway
from deploy.servers import MosquittoServer
from tests.gateway_harness import gateway_settings

STALL_WARN_S = 4.0
"""Well above a loaded machine's pause between acknowledgements (one every ~0.1 s here)."""


async def _logged(caplog: pytest.LogCaptureFixture, words: str, seconds: float) -> str:
    async with asyncio.timeout(seconds):
        while True:
            for record in caplog.records:
                if words in record.getMessage():
                    return record.getMessage()
            await asyncio.sleep(0.1)


async def test_a_broker_that_stops_answering_is_said_and_so_is_the_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ecotel")
    async with MosquittoServer(tmp_path / "broker") as broker:
        config = gateway_settings(broker.port, tmp_path / "state", stall_warn_s=STALL_WARN_S)
        config["broker"]["keepalive_s"] = 60  # the link must look up while the broker is frozen
        gateway = Gateway(GatewaySettings(**config))
        task = asyncio.create_task(gateway.run())
        assert broker.pid is not None
        frozen = False
        try:
            async with asyncio.timeout(20):
                while gateway.stats.messages < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            # Sending normally for longer than the threshold: nothing is said.
            await asyncio.sleep(STALL_WARN_S + 1)
            assert not [r for r in caplog.records if "no message acknowledged" in r.getMessage()]

            os.kill(broker.pid, signal.SIGSTOP)
            frozen = True
            said = await _logged(caplog, "no message acknowledged", 20)
            assert "readings waiting" in said
            assert "in flight: seq " in said, said
            assert gateway.stats.connected

            os.kill(broker.pid, signal.SIGCONT)
            frozen = False
            await _logged(caplog, "sending again after", 20)
        finally:
            if frozen:
                os.kill(broker.pid, signal.SIGCONT)
            gateway.stop()
            async with asyncio.timeout(30):
                await task
