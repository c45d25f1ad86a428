"""What every simulator is built from: hashed noise that is a function of time, clock helpers,
and a base class that turns model values into catalog-rounded readings."""

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue

from devices.identifiers import Identifier
from devices.kind import KindValues
from devices.reading import Reading

LOCAL_UTC_OFFSET_S = 8 * 3_600.0
"""China Standard Time, the clock people (and rush hours) follow everywhere in ecotel's field."""

DAY_S = 86_400.0
YEAR_DAYS = 365.2422
_J2000_S = 946_684_800.0  # 2000-01-01T00:00Z, a 1 January the seasonal clock counts from

Values = dict[str, float | str | None]
"""One reading's values as a model computes them, before rounding; None leaves an optional out."""


def local_hour(t: float) -> float:
    """Hour of the day (0-24, fractional) on the UTC+8 clock for Unix time ``t``."""
    return ((t + LOCAL_UTC_OFFSET_S) % DAY_S) / 3_600.0


def local_day(t: float) -> int:
    """Days since 1970-01-01 on the UTC+8 calendar."""
    return math.floor((t + LOCAL_UTC_OFFSET_S) / DAY_S)


def is_weekend(t: float) -> bool:
    """Saturday or Sunday on the UTC+8 calendar (1970-01-01 was a Thursday)."""
    return (local_day(t) + 3) % 7 >= 5


def day_of_year(t: float) -> float:
    """Days since 1 January, fractional; drifts under a day over a leap cycle, which no season notices."""
    return ((t - _J2000_S) / DAY_S) % YEAR_DAYS


def annual_wave(t: float, peak_day: float) -> float:
    """A cosine over the year: 1 on day ``peak_day`` (0 = 1 January), -1 half a year away."""
    return math.cos(2 * math.pi * (day_of_year(t) - peak_day) / YEAR_DAYS)


def periodic_bump(x: float, centre: float, width: float, period: float) -> float:
    """A Gaussian peak of height 1 on a circle (hours of a day, days of a year)."""
    distance = (x - centre + period / 2) % period - period / 2
    return math.exp(-0.5 * (distance / width) ** 2)


def clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


class Noise:
    """Deterministic noise: every value is a hash of the key and its arguments, so gauges are
    functions of time and a replay of the same instants gives the same numbers.

    blake2b rather than ``hash()``: Python salts str hashes per process.
    """

    def __init__(self, *key: Hashable, within: "Noise | None" = None) -> None:
        parent = within._key if within is not None else b""
        self._key: bytes = hashlib.blake2b(_encode(key), digest_size=32, key=parent).digest()

    def child(self, *key: Hashable) -> "Noise":
        """An independent stream for one part (a lane, a rack, a circuit) of the same device."""
        return Noise(*key, within=self)

    def unit(self, *parts: Hashable) -> float:
        """Uniform in [0, 1)."""
        digest = hashlib.blake2b(_encode(parts), digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    def signed(self, *parts: Hashable) -> float:
        """Uniform in [-1, 1)."""
        return 2.0 * self.unit(*parts) - 1.0

    def smooth(self, name: str, t: float, period_s: float) -> float:
        """Bounded noise in [-1, 1] that wanders on the scale of ``period_s``: random knots every
        ``period_s`` joined by smoothstep, so it has no jumps for a dashboard to show."""
        position = t / period_s
        knot = math.floor(position)
        f = position - knot
        a = self.signed(name, period_s, knot)
        b = self.signed(name, period_s, knot + 1)
        return a + (b - a) * f * f * (3.0 - 2.0 * f)

    def white(self, name: str, t: float) -> float:
        """Independent per instant (millisecond), in [-1, 1): sensor jitter."""
        return self.signed(name, round(t * 1_000))

    def episode(
        self,
        name: str,
        t: float,
        *,
        block_days: int,
        probability: float,
        start_hours: tuple[float, float],
        duration_hours: tuple[float, float],
    ) -> tuple[float, float]:
        """A rare event (a fog bank, a cooling fault): each block of ``block_days`` local days holds
        one with ``probability``, starting on one of its days between ``start_hours`` (UTC+8) and
        lasting ``duration_hours``. Returns (strength 0..1, rising then falling; severity 0..1).
        """
        block = local_day(t) // block_days
        strength = severity = 0.0
        # An episode late in the previous block may still be running.
        for b in (block - 1, block):
            if self.unit(name, "happens", b) >= probability:
                continue
            day = b * block_days + math.floor(self.unit(name, "day", b) * block_days)
            lo, hi = start_hours
            start = (
                day * DAY_S
                - LOCAL_UTC_OFFSET_S
                + 3_600.0 * (lo + (hi - lo) * self.unit(name, "start", b))
            )
            dlo, dhi = duration_hours
            length = 3_600.0 * (dlo + (dhi - dlo) * self.unit(name, "length", b))
            if start <= t < start + length:
                s = math.sin(math.pi * (t - start) / length) ** 2
                if s > strength:
                    strength, severity = s, self.unit(name, "severity", b)
        return strength, severity


def _encode(parts: Sequence[Hashable]) -> bytes:
    return "\x1f".join(f"{type(p).__name__}:{p}" for p in parts).encode()


ItemT = TypeVar("ItemT", str, int)


def distinct(values: tuple[ItemT, ...]) -> tuple[ItemT, ...]:
    """Validator of an option list: each item once."""
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"listed twice: {', '.join(repeated)}")
    return values


Channels = Annotated[tuple[Identifier, ...], Field(min_length=1), AfterValidator(distinct)]
"""Channel names a simulator reports (lanes, racks, circuits): distinct valid identifiers."""


class SimulatorOptions(BaseModel):
    """Options of one simulator; a key it does not know is an error naming that key."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=SimulatorOptions)


class BaseSimulator(ABC, Generic[OptionsT]):
    """One simulated device of the catalog kind ``values_model``; subclasses compute the values."""

    values_model: ClassVar[type[KindValues]]
    options_model: ClassVar[type[SimulatorOptions]]

    def __init__(self, device: str, *, seed: int, interval_s: float, options: OptionsT) -> None:
        self.kind: str = self.values_model.kind
        self.device: str = device
        self.interval_s = interval_s
        self.options = options
        self.noise = Noise(seed, device, self.kind)
        self._decimals = {q.name: q.decimals for q in self.values_model.quantities()}

    def sample(self, at: datetime) -> list[Reading]:
        """The device's readings at ``at`` (an aware datetime): one per channel."""
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"{self.kind} simulator {self.device!r}: time {at} has no time zone")
        at = at.astimezone(UTC)
        return [
            Reading(
                device=self.device,
                kind=self.kind,
                time=at,
                channel=channel,
                values=self._rounded(values),
            )
            for channel, values in self._values(at.timestamp())
        ]

    @abstractmethod
    def _values(self, t: float) -> list[tuple[str | None, Values]]:
        """(channel, values) for Unix time ``t``, unrounded."""

    def quantize(self, name: str, value: float) -> float:
        """``value`` rounded to the catalog's decimals for quantity ``name``."""
        # + 0.0 turns a rounded -0.0 into 0.0, which nobody wants to see on a dashboard.
        return round(float(value), self._decimals[name]) + 0.0

    def _rounded(self, values: Values) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {}
        for name, value in values.items():
            if isinstance(value, str):
                out[name] = value
            elif value is not None:
                out[name] = self.quantize(name, value)
        return out
