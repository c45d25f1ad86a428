"""A readings topic's site and gateway levels must be names (devices/identifiers.py), or it is ``bad_topic``."""

import re

from collector import wire
from devices.identifiers import IDENTIFIER_PATTERN
from pipelines.decode import Rejection

_NAME = re.compile(IDENTIFIER_PATTERN)


def bad_topic(topic: str) -> Rejection | None:
    """``bad_topic`` if no gateway could speak on ``topic``: its payload could never name the
    site and gateway the topic gives (the HTTP path plays the topic; replays check again)."""
    try:
        site, gateway, _ = wire.parse_topic(topic)
    except wire.TopicError as exc:
        return Rejection("bad_topic", str(exc))
    for part, level in (("site", site), ("gateway", gateway)):
        # fullmatch: the pattern's '$' would also match before a final newline.
        if _NAME.fullmatch(level) is None:
            return Rejection(
                "bad_topic",
                f"{part} {level!r} of topic {topic!r} is not a name (1-64 characters, no "
                "control characters, / + # \\, no leading $, no blank edges)",
            )
    return None
