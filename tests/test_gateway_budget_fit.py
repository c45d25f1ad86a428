"""The outbox's budget follows the disk: capped while the disk is too small for it, restored once
space is freed (or the drop policy would go on deleting readings the disk has room for)."""

import logging
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from collector.config import GatewaySettings
from collector.gateway import Gateway

Usage = namedtuple("Usage", "total used free")


def _gateway(state_dir: Path) -> Gateway:
    return Gateway(
        GatewaySettings.model_validate(
            {
                "gateway": {
                    "id": "gw-budget",
                    "site": "budget-site",
                    "state_dir": str(state_dir),
                    "outbox_max_mb": 512,
                },
                "broker": {"host": "127.0.0.1", "port": 1},
                "devices": [{"id": "h-1", "kind": "hydrology", "source": {"type": "simulator"}}],
            }
        )
    )


async def test_a_capped_budget_is_restored_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    free = {"bytes": 3_000_000}
    # The disk's free space as the kernel would report it (a small filesystem needs root).
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: Usage(10**10, 10**10 - free["bytes"], free["bytes"])
    )
    gateway = _gateway(tmp_path / "state")
    caplog.set_level(logging.INFO, logger="ecotel.gateway")
    async with gateway.outbox:
        await gateway._fit_budget_to_disk()
        # A reserve of a quarter of the free space is kept aside; a third of the rest.
        assert (tmp_path / "state" / "gw-budget.outbox.sqlite3.reserve").stat().st_size == 750_000
        assert gateway.outbox.max_bytes == 750_000
        assert "does not fit on" in caplog.text
        free["bytes"] = 3_000_000_000
        await gateway._fit_budget_to_disk()
        assert gateway.outbox.max_bytes == 512_000_000
        assert "budget is gateway.outbox_max_mb (512 MB) again" in caplog.text
