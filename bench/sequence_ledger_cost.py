"""``python -m bench ledger``: cost per message of a shared group's sequence ledger: noting a
number in the event loop, saving it (SQLite) and judging (figures in docs/ingest.md)."""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from pipelines.sequence_ledger import SequenceLedger


async def measure(total: int, per_flush: int, gateways: int) -> None:
    clock = [1_000_000.0]
    with tempfile.TemporaryDirectory() as tmp:
        async with SequenceLedger(
            Path(tmp) / "l.sqlite3", grace_s=300, clock=lambda: clock[0]
        ) as ledger:
            acked = 0

            def done() -> None:
                nonlocal acked
                acked += 1

            keys = [("site", f"gw-{g}") for g in range(gateways)]
            record_s = save_cpu = save_wall = 0.0
            for start in range(0, total, per_flush):
                t0 = time.perf_counter()
                gated = []
                for i in range(start, min(start + per_flush, total)):
                    site, gw = keys[i % gateways]
                    gated.append(ledger.record(site, gw, i // gateways, done))
                for g in gated:
                    g()  # the writer's done: waits for the save
                record_s += time.perf_counter() - t0
                c0, w0 = time.process_time(), time.perf_counter()
                await ledger.flush(judge=False)  # as a save for waiting PUBACKs
                save_cpu += time.process_time() - c0
                save_wall += time.perf_counter() - w0
                clock[0] += per_flush / 2000  # 2,000 messages/s
            assert acked == total
            clock[0] += 400
            c0, w0 = time.process_time(), time.perf_counter()
            await ledger.flush()
            judge_cpu, judge_wall = time.process_time() - c0, time.perf_counter() - w0
            await ledger.refresh_view()
            assert sum(f.missing for f in ledger.view.values()) == 0
    us = 1e6 / total
    print(f"{total} messages, {gateways} gateways, {per_flush} per save:")
    print(f"  event loop (record + PUBACK release): {record_s * us:.2f} us/message")
    print(
        f"  save (CPU, all threads):              {save_cpu * us:.2f} us/message ({save_wall * us:.2f} wall)"
    )
    print(
        f"  judge + prune (CPU):                  {judge_cpu * us:.2f} us/message ({judge_wall * us:.2f} wall)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench ledger", description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--per-save", type=int, default=1_000, help="numbers per save")
    # Judging costs per gateway judged as well as per number: try a fleet's size.
    parser.add_argument("--gateways", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(measure(args.messages, args.per_save, args.gateways))


if __name__ == "__main__":
    main()
