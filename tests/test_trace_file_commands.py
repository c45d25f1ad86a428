"""inspect, trim and import-pcap as a user runs them: gaps and notes kept and shown, truncation said,
exact +SECONDS, empty and non-trace files named, an existing output refused before any work."""

import gzip
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from deploy.traces.file_format import TraceHeader, TraceRecord, TraceWriter, load_trace, write_trace

CLI = [sys.executable, "-m", "deploy.traces"]
T0 = 1_795_000_000_000_000
SESSION = TraceHeader(
    broker="mqtt://field", filters=["site/#"], started_at=datetime(2026, 11, 22, tzinfo=UTC),
    note="pH spikes after the flood",
)  # fmt: skip
GAP = TraceHeader(
    broker="mqtt://field", filters=["site/#"], started_at=datetime.fromtimestamp(5.5 + T0 / 1e6, UTC),
    note="reconnected after the broker link was lost: messages published in between are not in this trace",
)  # fmt: skip


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=False)


def _records(seconds: list[float]) -> list[TraceRecord]:
    return [
        TraceRecord(T0 + round(s * 1e6), f"site/{i}", f"m{i}".encode(), 1)
        for i, s in enumerate(seconds)
    ]


def _trace_with_a_gap(path: Path) -> list[TraceRecord]:
    """A session with a note, then a reconnect header, as the recorder writes them."""
    records = _records([0, 1, 2, 3, 4, 6, 7, 8])
    with TraceWriter(path, SESSION) as writer:
        for rec in records[:5]:
            writer.write(rec)
        writer.buffer_header(GAP)
        for rec in records[5:]:
            writer.write(rec)
    return records


def test_trim_keeps_the_session_note_and_the_reconnect_gap(tmp_path: Path) -> None:
    source = tmp_path / "field.trace.gz"
    records = _trace_with_a_gap(source)
    out = tmp_path / "cut.trace.gz"
    done = _cli("trim", str(source), "-o", str(out), "--from", "+2", "--to", "+7.5")
    assert done.returncode == 0, done.stderr
    kept, stats = load_trace([out])
    assert kept == records[2:7]
    assert [h.source for h in stats.headers] == ["trim", "record", "record"]
    assert [h.note for h in stats.headers[1:]] == [SESSION.note, GAP.note]
    # The gap header is where it was: between the last message before it and the first after.
    lines = [json.loads(line) for line in gzip.decompress(out.read_bytes()).splitlines()]
    assert [line.get("note") == GAP.note for line in lines].index(True) == 2 + 3
    text = _cli("inspect", str(out)).stdout
    assert f"note: {SESSION.note}" in text
    assert f"note: {GAP.note}" in text


def test_trim_of_a_truncated_trace_says_so_on_screen_and_in_the_trace(tmp_path: Path) -> None:
    source = tmp_path / "killed.trace.gz"
    with TraceWriter(source, SESSION) as writer:
        for rec in _records([0, 1, 2]):
            writer.write(rec)
        writer.flush()
        for rec in _records([3 + i / 100 for i in range(200)]):
            writer.write(rec)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) - 200])
    out = tmp_path / "cut.trace.gz"
    done = _cli("trim", str(source), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert f"warning: {source} ends in a truncated member" in done.stderr
    _, stats = load_trace([out])
    assert stats.headers[0].note is not None
    assert "killed.trace.gz ended in a truncated member" in stats.headers[0].note


def test_trim_plus_seconds_and_iso_times_are_exact_to_the_microsecond(tmp_path: Path) -> None:
    source = tmp_path / "t.trace.gz"
    records = _records([0, 67.105999, 67.106, 67.106001])
    write_trace(source, SESSION, records)
    for bound, want in [("--to", records[:2]), ("--from", records[2:])]:
        out = tmp_path / f"{bound[2:]}.trace.gz"
        assert _cli("trim", str(source), "-o", str(out), bound, "+67.106").returncode == 0
        assert load_trace([out])[0] == want, bound
    for index, rec in enumerate(records):
        out = tmp_path / f"iso{index}.trace.gz"
        assert (
            _cli("trim", str(source), "-o", str(out), "--from", rec.arrived.isoformat()).returncode
            == 0
        )
        assert load_trace([out])[0] == records[index:]
    done = _cli("trim", str(source), "-o", str(tmp_path / "x.trace.gz"), "--from", "+ten")
    assert done.returncode == 2
    assert "'+ten': not +SECONDS" in done.stderr


def test_empty_files_are_named_and_an_empty_trace_is_said(tmp_path: Path) -> None:
    zero = tmp_path / "zero.trace.gz"
    zero.write_bytes(b"")
    empty_gzip = tmp_path / "empty.trace.gz"
    empty_gzip.write_bytes(gzip.compress(b""))
    for path, why in [(zero, "empty file (0 bytes)"), (empty_gzip, "no header line")]:
        done = _cli("inspect", str(path))
        assert done.returncode == 2
        assert f"{path}: {why}" in done.stderr
        assert "not an ecotel trace" in done.stderr
    header_only = tmp_path / "quiet.trace.gz"
    write_trace(header_only, SESSION, [])
    done = _cli("inspect", str(header_only))
    assert done.returncode == 0, done.stderr
    assert "empty trace: no messages" in done.stdout
    assert "None" not in done.stdout


def test_import_pcap_refuses_an_existing_output_before_reading_the_capture(tmp_path: Path) -> None:
    capture = tmp_path / "capture.pcap"
    capture.write_bytes(b"not read: the output check comes first")
    out = tmp_path / "site.trace.gz"
    out.write_bytes(b"an earlier trace")
    done = _cli("import-pcap", str(capture), "-o", str(out))
    assert done.returncode == 2
    assert f"{out} exists; choose another name" in done.stderr
    assert "--append" not in done.stderr
    assert out.read_bytes() == b"an earlier trace"
