"""Repeated and missing message numbers per gateway, against a brute-force count."""

from hypothesis import given
from hypothesis import strategies as st

from pipelines.sequence_judge import Judged, bound, describe, judge
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


# The shared group's judgment (pipelines/sequence_judge.py), run against a model of the ledger.


class _Ledger:
    """What pipelines/sequence_ledger.py keeps, in memory: unjudged numbers, lost ones, totals."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.lost: set[int] = set()
        self.repeats = 0
        self.missing = 0
        self.judged: Judged | None = None

    def arrive(self, n: int) -> None:
        if n in self.seen:
            self.repeats += 1  # the ledger's trigger: a copy beyond the first
        else:
            self.seen.add(n)
        if self.judged is not None and n < self.judged.watermark:
            self.judge(None)  # the ledger judges a number below its watermark as it saves it

    def judge(self, upto: int | None) -> None:
        top = bound(self.judged, upto)
        received = {n for n in self.seen if top is not None and n <= top}
        verdict = judge(self.judged, received, self.lost, upto)
        if verdict is None:
            assert self.judged is None
            return
        self.judged = verdict.judged
        self.seen = {n for n in self.seen if n >= verdict.judged.watermark}
        self.lost -= set(verdict.found)
        self.lost |= {n for gap in verdict.gaps for n in gap}
        self.repeats += verdict.repeats
        self.missing += verdict.missing - len(verdict.found)


# Arrivals (a number) and judgments (pick the evidence among numbers arrived so far).
_events = st.lists(
    st.one_of(
        st.integers(min_value=0, max_value=40).map(lambda n: ("arrive", n)),
        st.integers(min_value=0, max_value=10_000).map(lambda i: ("judge", i)),
    ),
    min_size=1,
    max_size=120,
)


@given(_events)
def test_group_judgment_matches_a_brute_force_count(events: list[tuple[str, int]]) -> None:
    ledger = _Ledger()
    arrived: list[int] = []
    before_first_judgment: list[int] = []
    for what, n in events:
        if what == "arrive":
            ledger.arrive(n)
            arrived.append(n)
            if ledger.judged is None:
                before_first_judgment.append(n)
        elif arrived:
            ledger.judge(arrived[n % len(arrived)])
        else:
            ledger.judge(None)
        # Never a number judged missing that had arrived; the total is what is remembered.
        assert not ledger.lost & set(arrived)
        assert ledger.missing == len(ledger.lost)
    if not arrived:
        assert ledger.judged is None
        return
    ledger.judge(max(arrived))
    assert ledger.judged is not None
    base = ledger.judged.baseline
    assert base == min(before_first_judgment)
    received = set(arrived)
    assert ledger.lost == set(range(base, max(arrived) + 1)) - received
    # A repeat: every copy after the first of a number, and every copy of one below the
    # baseline (as the single worker's tracker counts them).
    assert ledger.repeats == len(arrived) - len({n for n in received if n >= base})
    assert not ledger.seen, "everything judged is pruned"


def test_a_late_number_is_found_and_a_pruned_one_repeats() -> None:
    first = judge(None, {0, 1, 3, 6}, set(), upto=6)
    assert first is not None
    assert first.judged == Judged(baseline=0, watermark=7)
    assert [list(g) for g in first.gaps] == [[2], [4, 5]]
    later = judge(first.judged, {4, 1}, {2, 4, 5}, upto=None)
    assert later is not None
    assert later.found == [4]
    assert later.repeats == 1, "1 was received and pruned: its copy repeats"
    assert later.judged == first.judged
    assert judge(None, {5}, set(), upto=None) is None, "no evidence, no judgment"


def test_a_jump_of_millions_is_judged_as_ranges() -> None:
    verdict = judge(Judged(0, 10), {10, 5_000_000_000}, set(), upto=5_000_000_000)
    assert verdict is not None
    assert verdict.gaps == [range(11, 5_000_000_000)]
    assert verdict.missing == 5_000_000_000 - 11
    assert describe(verdict.gaps) == "11-4999999999"
