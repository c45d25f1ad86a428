"""The shared group's ledger of gateways' message numbers: one SQLite file per host, loss and repeats group-wide.

Each worker of a shared subscription sees only part of every gateway's
numbers, so none can judge gaps alone (pipelines/sequence_tracker.py). Here
each records what it received, in batches, and any of them judges once the
grace is over (pipelines/sequence_judge.py); every worker reads the same figures.
"""

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from collector.durable_sqlite import DurableSqlite
from pipelines.acks import Done
from pipelines.sequence_judge import Judged, bound, describe, judge

log = logging.getLogger("ecotel.ingest.sequences")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gateways (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    gateway TEXT NOT NULL,
    baseline INTEGER,
    watermark INTEGER,
    repeats INTEGER NOT NULL DEFAULT 0,
    missing INTEGER NOT NULL DEFAULT 0,
    UNIQUE (site, gateway)
);
CREATE TABLE IF NOT EXISTS seen (
    gateway_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    copies INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (gateway_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (
    bucket INTEGER NOT NULL,
    gateway_id INTEGER NOT NULL,
    top INTEGER NOT NULL,
    PRIMARY KEY (bucket, gateway_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lost (
    gateway_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (gateway_id, seq)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS seen_again AFTER UPDATE OF copies ON seen
BEGIN
    UPDATE gateways SET repeats = repeats + 1 WHERE id = NEW.gateway_id;
END;
"""
# seen: numbers received and not yet judged, with how many copies came (a copy
# beyond the first is a repeat, counted at once by the trigger). marks: per
# second saved (bucket) and gateway, the highest number saved: once a bucket
# is older than the grace, every number below its top that is still absent is
# missing. lost: numbers judged missing, remembered so that a late one is found.

FLUSH_INTERVAL_S = 0.5
FLUSH_MESSAGES = 2_000
MAX_SEQ = 2**63 - 1
MAX_REMEMBERED_LOST = 100_000
"""Per gateway, as the single worker's tracker: beyond, the oldest count as lost for good."""


@dataclass(frozen=True)
class GroupFigures:
    """One gateway as the whole group saw it, since the ledger was created."""

    repeats: int
    missing: int
    judged_below: int | None
    """Every number below this is judged; None before the first judgment."""


class _Batch:
    """Numbers received since the last save, and the PUBACKs waiting for them to be saved."""

    __slots__ = ("numbers", "saved", "size", "waiting")

    def __init__(self) -> None:
        self.numbers: dict[tuple[str, str], list[int]] = {}
        self.waiting: list[Done] = []
        self.saved = False
        self.size = 0


class SequenceLedger(DurableSqlite):
    """The numbers the workers of one group on one host received; the group's figures in ``view``.

    ``record`` is all a message costs the event loop (a list append and a
    closure); ``run`` saves every ``flush_interval_s`` in one transaction, and
    judges what has waited ``grace_s``. A message's PUBACK waits until its
    number is saved, so a kill -9 cannot lose a number the broker will not
    deliver again (it would count as missing). A save that fails (the file
    locked beyond the busy timeout, a full disk) is retried: those PUBACKs wait.
    """

    schema = _SCHEMA

    def __init__(
        self,
        path: Path,
        *,
        grace_s: float,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        flush_messages: int = FLUSH_MESSAGES,
        max_lost: int = MAX_REMEMBERED_LOST,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(path)
        self.grace_s = grace_s
        self.flush_interval_s = flush_interval_s
        self.flush_messages = flush_messages
        self.max_lost = max_lost
        # Wall-clock time: the buckets are compared across the workers' processes.
        self.clock = clock
        self.view: dict[tuple[str, str], GroupFigures] = {}
        self._batch = _Batch()
        self._unsaved: list[_Batch] = []
        self._soon = asyncio.Event()
        self._ids: dict[tuple[str, str], int] = {}
        self._watermarks: dict[int, int] = {}

    async def opened(self) -> None:
        await self.refresh_view()

    def record(self, site: str, gateway: str, seq: int, done: Done) -> Done:
        """Note a received number; returns ``done`` held back until the number is saved."""
        if seq > MAX_SEQ:
            # SQLite's integers end here; a gateway is far from it (2**63 messages).
            log.warning("gateway %s at %s: seq %d beyond the ledger's range", gateway, site, seq)
            return done
        batch = self._batch
        numbers = batch.numbers.get((site, gateway))
        if numbers is None:
            numbers = batch.numbers[(site, gateway)] = []
        numbers.append(seq)
        batch.size += 1
        if batch.size >= self.flush_messages:
            self._soon.set()

        def saved() -> None:
            if batch.saved:
                done()
            else:
                batch.waiting.append(done)
                # Its readings are durable: save now rather than hold the PUBACK.
                self._soon.set()

        return saved

    async def run(self) -> None:
        """Save, judge and refresh ``view`` until cancelled."""
        loop = asyncio.get_running_loop()
        judged_at = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval_s):
                    await self._soon.wait()
            self._soon.clear()
            # A save for waiting PUBACKs comes with every InfluxDB write: judging and
            # reading the view back only every interval keeps those saves cheap.
            due = loop.time() - judged_at >= self.flush_interval_s
            try:
                await self.flush(judge=due)
                if due:
                    judged_at = loop.time()
                    await self.refresh_view()
            except sqlite3.Error as exc:
                log.warning(
                    "sequence ledger %s: %s; retrying (PUBACKs wait for it)", self.path, exc
                )

    async def flush(self, *, judge: bool = True) -> None:
        """Save the numbers received so far and (``judge``) judge what is due, in one
        transaction. A number below what is judged is judged as it is saved, always."""
        if self._batch.size:
            self._unsaved.append(self._batch)
            self._batch = _Batch()
        now = self.clock()
        # A bucket holds numbers saved within [bucket, bucket + 1): older than the grace
        # once bucket + 1 <= now - grace.
        due_bucket = math.floor(now - self.grace_s) - 1
        judge = judge and (bool(self._unsaved) or await self._any_due(due_bucket))
        if not self._unsaved and not judge:
            return
        batches = self._unsaved
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            below = await self._save(batches, math.floor(now))
            due: dict[int, int] = {}
            if judge:
                async with db.execute(
                    "SELECT gateway_id, max(top) FROM marks WHERE bucket <= ? GROUP BY gateway_id",
                    (due_bucket,),
                ) as cur:
                    due = {int(gid): int(top) for gid, top in await cur.fetchall()}
                await db.execute("DELETE FROM marks WHERE bucket <= ?", (due_bucket,))
            if due or below:
                await self._judge({gid: due.get(gid) for gid in due.keys() | below})
            await db.commit()
        except BaseException:
            await db.rollback()
            # Ids and watermarks learnt in the transaction may be gone with it.
            self._ids.clear()
            self._watermarks.clear()
            raise
        self._unsaved = []
        for batch in batches:
            batch.saved = True
            for done in batch.waiting:
                done()
            batch.waiting.clear()

    async def refresh_view(self) -> None:
        """Read every gateway's figures, as the whole group's workers saved and judged them."""
        async with self.db.execute(
            "SELECT id, site, gateway, repeats, missing, watermark FROM gateways"
        ) as cur:
            rows = await cur.fetchall()
        view = {}
        for gid, site, gateway, repeats, missing, watermark in rows:
            judged = None if watermark is None else int(watermark)
            view[(str(site), str(gateway))] = GroupFigures(int(repeats), int(missing), judged)
            if judged is not None:
                # Other workers judge too: a late number below their watermark is judged
                # at once here as well.
                self._watermarks[int(gid)] = judged
        self.view = view

    async def missing_numbers(self, site: str, gateway: str) -> list[int]:
        """The remembered numbers of a gateway judged missing (at most ``max_lost``)."""
        async with self.db.execute(
            "SELECT l.seq FROM lost l JOIN gateways g ON g.id = l.gateway_id "
            "WHERE g.site = ? AND g.gateway = ? ORDER BY l.seq",
            (site, gateway),
        ) as cur:
            return [int(row[0]) for row in await cur.fetchall()]

    async def _any_due(self, due_bucket: int) -> bool:
        async with self.db.execute(
            "SELECT 1 FROM marks WHERE bucket <= ? LIMIT 1", (due_bucket,)
        ) as cur:
            return await cur.fetchone() is not None

    async def _save(self, batches: list[_Batch], bucket: int) -> set[int]:
        """Insert the batches' numbers and marks; the gateways that got a number already judged."""
        merged: dict[tuple[str, str], list[int]] = {}
        for batch in batches:
            for key, numbers in batch.numbers.items():
                merged.setdefault(key, []).extend(numbers)
        rows: list[tuple[int, str]] = []
        marks: list[tuple[int, int, int]] = []
        below: set[int] = set()
        for key, numbers in merged.items():
            gid = self._ids.get(key)
            if gid is None:
                gid = self._ids[key] = await self._gateway_id(key)
            # One JSON array per gateway, not a bound row per number: a third less CPU.
            rows.append((gid, json.dumps(numbers)))
            marks.append((bucket, gid, max(numbers)))
            watermark = self._watermarks.get(gid)
            if watermark is not None and min(numbers) < watermark:
                # A late or repeated number below what is judged: judge it now, no grace.
                below.add(gid)
        await self.db.executemany(
            # WHERE true: SQLite's rule for an upsert's SELECT (parsing ambiguity).
            "INSERT INTO seen (gateway_id, seq) SELECT ?, value FROM json_each(?) WHERE true "
            "ON CONFLICT DO UPDATE SET copies = copies + 1",
            rows,
        )
        await self.db.executemany(
            "INSERT INTO marks (bucket, gateway_id, top) VALUES (?, ?, ?) "
            "ON CONFLICT DO UPDATE SET top = max(top, excluded.top)",
            marks,
        )
        return below

    async def _gateway_id(self, key: tuple[str, str]) -> int:
        await self.db.execute(
            "INSERT INTO gateways (site, gateway) VALUES (?, ?) ON CONFLICT DO NOTHING", key
        )
        async with self.db.execute(
            "SELECT id, watermark FROM gateways WHERE site = ? AND gateway = ?", key
        ) as cur:
            row = await cur.fetchone()
        assert row is not None  # inserted just above, in this transaction
        if row[1] is not None:
            self._watermarks[int(row[0])] = int(row[1])
        return int(row[0])

    async def _judge(self, upto: dict[int, int | None]) -> None:
        """Judge these gateways, each up to its evidence (None: only numbers below its
        watermark). A few statements for all of them: a round trip per gateway would cost
        ~0.5 ms each, more than the interval with a thousand gateways."""
        db = self.db
        async with db.execute(
            "SELECT id, site, gateway, baseline, watermark FROM gateways "
            "WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(upto)),),
        ) as cur:
            rows = await cur.fetchall()
        plans: dict[int, tuple[str, str, Judged | None, int]] = {}
        for gid, site, gateway, baseline, watermark in rows:
            judged = None if watermark is None else Judged(int(baseline), int(watermark))
            top = bound(judged, upto[int(gid)])
            if top is not None:
                plans[int(gid)] = (str(site), str(gateway), judged, top)
        if not plans:
            return
        received: dict[int, list[int]] = {gid: [] for gid in plans}
        async with db.execute(
            # CROSS JOIN: the gateways outside, each one's numbers by the primary key.
            "SELECT s.gateway_id, s.seq FROM json_each(?) j CROSS JOIN seen s "
            "ON s.gateway_id = json_extract(j.value, '$[0]') "
            "AND s.seq <= json_extract(j.value, '$[1]')",
            (json.dumps([[gid, plan[3]] for gid, plan in plans.items()]),),
        ) as cur:
            for gid, seq in await cur.fetchall():
                received[int(gid)].append(int(seq))
        # Numbers below a watermark: late if judged missing before, else repeats.
        below = [
            [gid, n]
            for gid, (_, _, judged, _) in plans.items()
            if judged is not None
            for n in received[gid]
            if n < judged.watermark
        ]
        lost: dict[int, set[int]] = {gid: set() for gid in plans}
        if below:
            async with db.execute(
                "SELECT l.gateway_id, l.seq FROM json_each(?) j CROSS JOIN lost l "
                "ON l.gateway_id = json_extract(j.value, '$[0]') "
                "AND l.seq = json_extract(j.value, '$[1]')",
                (json.dumps(below),),
            ) as cur:
                for gid, seq in await cur.fetchall():
                    lost[int(gid)].add(int(seq))
        pruned: list[tuple[int, int]] = []
        found: list[tuple[int, int]] = []
        gaps: list[tuple[int, int]] = []
        capped: list[tuple[int, int]] = []
        figures: list[tuple[int, int, int, int, int]] = []
        for gid, (site, gateway, judged, _) in plans.items():
            verdict = judge(judged, received[gid], lost[gid], upto[gid])
            if verdict is None:
                continue
            settled = verdict.judged
            pruned.append((gid, settled.watermark))
            found.extend((gid, n) for n in verdict.found)
            if verdict.gaps:
                gaps.extend((gid, n) for n in _latest(verdict.gaps, self.max_lost))
                capped.append((gid, self.max_lost - 1))
            missing = verdict.missing - len(verdict.found)
            figures.append((settled.baseline, settled.watermark, verdict.repeats, missing, gid))
            self._watermarks[gid] = settled.watermark
            self._log(site, gateway, verdict.gaps, verdict.found)
        await db.executemany("DELETE FROM seen WHERE gateway_id = ? AND seq < ?", pruned)
        await db.executemany("DELETE FROM lost WHERE gateway_id = ? AND seq = ?", found)
        await db.executemany("INSERT OR IGNORE INTO lost (gateway_id, seq) VALUES (?, ?)", gaps)
        await db.executemany(
            "DELETE FROM lost WHERE gateway_id = ?1 AND seq < (SELECT seq FROM lost "
            "WHERE gateway_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            capped,
        )
        await db.executemany(
            "UPDATE gateways SET baseline = ?, watermark = ?, repeats = repeats + ?, "
            "missing = missing + ? WHERE id = ?",
            figures,
        )

    def _log(self, site: str, gateway: str, gaps: list[range], found: list[int]) -> None:
        if gaps:
            log.warning(
                "gateway %s at %s: messages %s missing (the whole group: none received them "
                "within %g s)",
                gateway,
                site,
                describe(gaps),
                self.grace_s,
            )
        if found:
            log.info(
                "gateway %s at %s: messages %s arrived late, no longer missing",
                gateway,
                site,
                describe([range(n, n + 1) for n in found]),
            )


def _latest(gaps: list[range], limit: int) -> list[int]:
    """The highest ``limit`` numbers of the gaps (ascending ranges)."""
    numbers: list[int] = []
    for gap in reversed(gaps):
        take = gap[-(limit - len(numbers)) :]
        numbers.extend(take)
        if len(numbers) >= limit:
            break
    return numbers
