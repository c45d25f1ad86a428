"""The gateway benchmarks' commands for ``python -m bench``: ``gateway-footprint`` and ``gateway-drain``."""

import argparse

from bench import gateway_drain, gateway_footprint


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    footprint = sub.add_parser(
        "gateway-footprint", help="RSS and CPU of ecotel-gateway with 100 devices at 1 Hz"
    )
    footprint.add_argument("--devices", type=int, default=100)
    footprint.add_argument("--warmup", type=float, default=15.0, help="seconds before sampling")
    footprint.add_argument("--window", type=float, default=60.0, help="seconds sampled")
    drain = sub.add_parser(
        "gateway-drain", help="readings/s a gateway drains a backlog into Mosquitto, none lost"
    )
    drain.add_argument("--devices", type=int, default=100)
    drain.add_argument("--hours", type=float, default=24.0, help="length of the outage")


def run_selected(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Figures of the gateway benchmark ``args.which`` names; none for another command."""
    if args.which == "gateway-footprint":
        figures = gateway_footprint.run(args.devices, args.warmup, args.window)
        return {f"gateway footprint devices={args.devices}": figures}
    if args.which == "gateway-drain":
        figures = gateway_drain.run(args.devices, args.hours)
        return {f"gateway drain devices={args.devices} hours={args.hours:g}": figures}
    return {}
