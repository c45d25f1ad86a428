"""Repeated and missing message numbers per gateway, against a brute-force count."""

from hypothesis import given
from hypothesis import strategies as st

from pipelines.sequence_tracker import Seen, SequenceTracker


def test_a_clean_stream_has_no_repeats_or_gaps() -> None:
    tracker = SequenceTracker()
    outcomes = [tracker.observe("s", "g", n) for n in range(5, 10)]
    assert outcomes == [Seen.FIRST, *[Seen.NEXT] * 4]
    assert tracker.repeats[("s", "g")] == 0
    assert tracker.missing("s", "g") == 0


def test_gap_then_late_arrival_then_redelivery() -> None:
    tracker = SequenceTracker()
    for n in (0, 1, 4):
        tracker.observe("s", "g", n)
    assert tracker.missing("s", "g") == 2
    assert tracker.observe("s", "g", 2) is Seen.LATE
    assert tracker.missing("s", "g") == 1
    assert tracker.observe("s", "g", 4) is Seen.REPEAT
    assert tracker.repeats[("s", "g")] == 1
    assert tracker.missing("other", "g") == 0


@given(st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=80))
def test_counts_match_a_brute_force_count(seqs: list[int]) -> None:
    tracker = SequenceTracker()
    for n in seqs:
        tracker.observe("s", "g", n)
    first = seqs[0]
    seen_after_first = {n for n in seqs if n >= first}
    expected_missing = len(set(range(first, max(seqs) + 1)) - seen_after_first)
    # A repeat: any sighting after the first of a number, or one below the baseline.
    counted: set[int] = set()
    expected_repeats = 0
    for n in seqs:
        if n in counted or n < first:
            expected_repeats += 1
        counted.add(n)
    assert tracker.missing("s", "g") == expected_missing
    assert tracker.repeats[("s", "g")] == expected_repeats
