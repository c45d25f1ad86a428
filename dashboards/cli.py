"""``ecotel-dashboards``: write the generated Grafana dashboards and provisioning files."""

import argparse
import sys
from pathlib import Path

from dashboards.provisioning import write_provisioning


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecotel-dashboards",
        description="Generate ecotel's Grafana dashboards (one per domain) from the device "
        "catalog, with the InfluxDB datasource and the dashboard provider, as provisioning files.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write dashboards/*.json and provisioning/*/ecotel.yaml")
    write.add_argument("--out", type=Path, required=True, help="output folder")
    write.add_argument(
        "--influx-url",
        default="http://127.0.0.1:8086",
        help="InfluxDB URL as Grafana reaches it (default http://127.0.0.1:8086)",
    )
    write.add_argument("--database", default="ecotel", help="InfluxDB database (default ecotel)")
    write.add_argument(
        "--dashboards-dir",
        help="where Grafana sees the JSON files, if not where they are written "
        "(e.g. /var/lib/grafana/dashboards/ecotel)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    written = write_provisioning(
        args.out,
        influx_url=args.influx_url,
        database=args.database,
        dashboards_dir=args.dashboards_dir,
    )
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
