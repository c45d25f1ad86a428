"""``ecotel-dashboards``: write the Grafana provisioning files, push them to a Grafana, draw previews."""

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from grafana_client.api import GrafanaApi

from dashboards.provisioning import write_provisioning
from dashboards.sites import DEFAULT_SITES

DEFAULT_GRAFANA = "http://127.0.0.1:3000"


def grafana_url(given: str | None) -> tuple[str, str]:
    """The Grafana URL to push to and where it came from (option, environment or default)."""
    if given:
        return given, "--grafana-url"
    if os.environ.get("GRAFANA_URL"):
        return os.environ["GRAFANA_URL"], "GRAFANA_URL"
    return DEFAULT_GRAFANA, "the default: neither --grafana-url nor GRAFANA_URL is set"


def _shown(url: str) -> str:
    """The URL without its password, fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecotel-dashboards",
        description="ecotel's Grafana dashboards (one per domain and the fleet's), datasources "
        "and alert rules, generated from the device catalog.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser(
        "write", help="write dashboards/*.json and provisioning/{datasources,dashboards,alerting}"
    )
    write.add_argument("--out", type=Path, required=True, help="output folder")
    write.add_argument(
        "--dashboards-dir",
        help="where Grafana sees the JSON files, if not where they are written "
        "(e.g. /var/lib/grafana/dashboards/ecotel)",
    )
    write.add_argument(
        "--sites", type=Path, default=DEFAULT_SITES, help="stations file for the map (TOML)"
    )
    push = sub.add_parser(
        "push", help="create or update them in a running Grafana (folder 'ecotel') over its API"
    )
    push.add_argument(
        "--grafana-url",
        help=f"Grafana base URL (else env GRAFANA_URL, else {DEFAULT_GRAFANA}; "
        "user:password@ in it works too)",
    )
    push.add_argument(
        "--dry-run", action="store_true", help="show what would change (a diff); change nothing"
    )
    preview = sub.add_parser("preview", help="draw an SVG preview of each dashboard")
    preview.add_argument("--out", type=Path, required=True, help="output folder")
    preview.add_argument("--hours", type=float, default=1.0, help="time range to draw (hours)")
    for p in (write, push, preview):
        p.add_argument(
            "--influx-url",
            default="http://127.0.0.1:8086",
            help="InfluxDB URL as Grafana reaches it (default http://127.0.0.1:8086)",
        )
        p.add_argument("--database", default="ecotel", help="InfluxDB database (default ecotel)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "write":
        written = write_provisioning(
            args.out,
            influx_url=args.influx_url,
            database=args.database,
            dashboards_dir=args.dashboards_dir,
            sites=args.sites,
        )
        for path in written:
            print(path)
        return 0
    if args.command == "push":
        from dashboards.push import PushError, push

        url, source = grafana_url(args.grafana_url)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            print(
                f"ecotel-dashboards push: {_shown(url)} (from {source}) is not an http:// or "
                "https:// address with a host, e.g. http://grafana:3000",
                file=sys.stderr,
            )
            return 2
        # A token (service account) from the environment, never on the command line.
        token = os.environ.get("GRAFANA_TOKEN")
        if token:
            auth = "token from GRAFANA_TOKEN"
        elif urlsplit(url).password is not None:
            auth = "user:password from the URL"
        else:
            auth = "no credentials"
        print(f"Grafana {_shown(url)} (from {source}; {auth})", file=sys.stderr)
        api = GrafanaApi.from_url(url, credential=token)
        try:
            changes = push(
                api, influx_url=args.influx_url, database=args.database, dry_run=args.dry_run
            )
        except PushError as exc:
            hint = (
                "; set GRAFANA_TOKEN to a service-account token (Editor role, Admin for alert "
                "rules) or put user:password@ in the URL"
                if exc.auth
                else ""
            )
            print(
                f"ecotel-dashboards push: Grafana at {_shown(url)} (from {source}; {auth}) {exc}{hint}",
                file=sys.stderr,
            )
            return 1
        for change in changes:
            verb = (
                f"would {change.action}"
                if args.dry_run and change.action != "unchanged"
                else change.action
            )
            print(f"{verb:>16}  {change.kind} {change.uid}")
            if args.dry_run and change.diff:
                print(change.diff, end="")
        return 0
    from dashboards.preview import PreviewError, write_previews

    try:
        written = write_previews(args.out, args.influx_url, args.database, hours=args.hours)
    except PreviewError as exc:
        print(f"ecotel-dashboards preview: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
