"""The ``--log-level`` option every ecotel command takes: a level name in any case, checked by argparse."""

import argparse

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def add_log_level(parser: argparse.ArgumentParser, default: str, note: str = "") -> None:
    """``--log-level LEVEL``, upper-cased, one of LEVELS; an unknown one is refused naming them."""
    parser.add_argument(
        "--log-level",
        default=default,
        type=str.upper,
        choices=LEVELS,
        metavar="LEVEL",
        help=f"{', '.join(LEVELS[:-1])} or {LEVELS[-1]} (default {default}{note})",
    )
