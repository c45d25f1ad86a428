"""Test load for the ingest: numbered hydrology messages of one gateway, and how many of their
readings InfluxDB holds."""

import json
from datetime import datetime, timedelta

from pipelines.influx_query import influx_query


def hydrology_message(gateway: str, seq: int, per_message: int, t0: datetime) -> bytes:
    """Message ``seq`` of ``gateway``: ``per_message`` readings one second apart, none shared."""
    readings = [
        {
            "device": "hydro-1",
            "kind": "hydrology",
            "time": (t0 + timedelta(seconds=seq * per_message + i)).isoformat(),
            "values": {"stage": 1.0 + i / 100, "discharge": 50.0, "water_temperature": 4.0},
        }
        for i in range(per_message)
    ]
    envelope = {
        "schema": 1,
        "gateway": gateway,
        "site": "site",
        "seq": seq,
        "sent_at": t0.isoformat(),
        "readings": readings,
    }
    return json.dumps(envelope).encode()


async def stored_stages(url: str, database: str) -> int:
    """Hydrology readings in ``database``; 0 while the ingest has not created it yet."""
    try:
        series = await influx_query(url, "SELECT count(stage) FROM hydrology", database=database)
    except Exception:
        return 0
    return int(series[0].values[0][1]) if series else 0
