"""Judging a gateway's message numbers once the grace is over: which are missing, which repeat.

Pure functions over the numbers a shared group received (pipelines/sequence_ledger.py
keeps them); no I/O, so the rules are tested apart from SQLite.
"""

from collections.abc import Collection, Container
from dataclasses import dataclass


@dataclass(frozen=True)
class Judged:
    """What is settled of one gateway: every number below ``watermark`` is judged.

    ``baseline`` is the lowest number the group received before its first
    judgment; numbers below it are never missing, and arriving they repeat
    (as the single worker's SequenceTracker counts them).
    """

    baseline: int
    watermark: int


@dataclass(frozen=True)
class Verdict:
    judged: Judged
    gaps: list[range]
    """Numbers newly judged missing (ranges: a gateway's jump of millions stays cheap)."""
    found: list[int]
    """Numbers judged missing before that have now arrived: no longer missing."""
    repeats: int
    """Receptions now judged repeats beyond the extra copies counted on arrival: a number
    below the watermark that was not missing had been received and pruned already."""

    @property
    def missing(self) -> int:
        return sum(len(gap) for gap in self.gaps)


def judge(
    judged: Judged | None, received: Collection[int], lost: Container[int], upto: int | None
) -> Verdict | None:
    """Judge every number up to ``upto`` and every received number below the watermark.

    ``received``: the numbers in the ledger not yet judged (each once, however
    many copies came; numbers above what is judged here are ignored); ``lost``:
    the numbers judged missing earlier (at least those of ``received``);
    ``upto``: a number received long enough ago (the grace) that any number
    below it not received by now counts as missing; None: no such evidence yet.
    None when there is nothing to judge (no baseline and no evidence).
    """
    if judged is None:
        if upto is None:
            return None
        base = min((n for n in received if n <= upto), default=upto)
        judged = Judged(baseline=base, watermark=base)
    watermark = judged.watermark
    new_watermark = max(watermark, upto + 1) if upto is not None else watermark
    found: list[int] = []
    repeats = 0
    fresh: list[int] = []
    for n in received:
        if n < watermark:
            if n in lost:
                found.append(n)
            else:
                repeats += 1
        elif n < new_watermark:
            fresh.append(n)
    gaps: list[range] = []
    expected = watermark
    for n in sorted(fresh):
        if n > expected:
            gaps.append(range(expected, n))
        expected = n + 1
    if new_watermark > expected:
        gaps.append(range(expected, new_watermark))
    return Verdict(Judged(judged.baseline, new_watermark), gaps, sorted(found), repeats)


def bound(judged: Judged | None, upto: int | None) -> int | None:
    """The highest number ``judge`` will judge with this evidence; None: nothing to judge."""
    if judged is None:
        return upto
    below = judged.watermark - 1
    return below if upto is None else max(below, upto)


def describe(numbers: list[range]) -> str:
    """``7, 23, 40-41``: numbers for a log line, runs as ranges, at most 20 items."""
    parts = [str(r.start) if len(r) == 1 else f"{r.start}-{r[-1]}" for r in numbers]
    more = f" and {len(parts) - 20} more runs" if len(parts) > 20 else ""
    return ", ".join(parts[:20]) + more
