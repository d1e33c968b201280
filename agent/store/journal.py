"""An append-only journal of records that must survive a crash of the agent before the writer commits them.

The prediction log answers a request before the writer's next flush; without this, `kill -9` lost
every row answered since the last flush (up to `flush_interval`). The request path now `os.write`s
each record here before the answer goes out. A write into the page cache outlives the process, so
no fsync per request: a crash of the agent loses nothing, a power loss can lose what the kernel had
not yet written back (see docs/operations.md).

Layout: `<dir>/<seq>.wkj`, numbered segments. A record is framed as `<u32 length><u32 crc32>` and
its payload; a torn or corrupt tail (a power loss mid-write) fails its check and ends the segment's
replay. The writer seals the current segment when it takes a batch, and after the batch's DuckDB
commit, which also records the highest sealed segment number in `meta` in the same transaction,
deletes the sealed segments. At start, segments above that number are replayed into DuckDB (with
the number moved in the same transaction), so each record lands exactly once.

Not thread-safe by itself: the caller serialises `append` and `seal` (the prediction log holds
its queue lock around both, so a record and its queue entry can't fall on different sides of a seal).
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

log = logging.getLogger("watchkeeper.store")

SUFFIX = ".wkj"
_HEADER = struct.Struct("<II")
# A record larger than this is taken for a corrupt length field, not a real record.
MAX_RECORD = 256 * 2**20
# Uncommitted journal bytes past which records are no longer written (a wedged writer must not fill
# the disk): ~1 GiB is minutes of the writer's full ingest rate; past it the log is not crash-safe, and says so.
MAX_PENDING_BYTES = 2**30


@dataclass
class Segment:
    seq: int
    path: Path


@dataclass
class SegmentRecords:
    seq: int
    records: list[bytes]
    torn_bytes: int  # bytes after the last good record (a torn or corrupt tail), 0 when clean


def segments(directory: Path) -> list[Segment]:
    """The journal's segments, oldest first (files that aren't segments are ignored)."""
    out = []
    if not directory.is_dir():
        return out
    for p in directory.iterdir():
        if p.suffix == SUFFIX and p.stem.isdigit():
            out.append(Segment(int(p.stem), p))
    return sorted(out, key=lambda s: s.seq)


def read_records(data: bytes) -> tuple[list[bytes], int]:
    """The complete, intact records of a segment's bytes, and how many bytes after them were unusable."""
    out: list[bytes] = []
    at, end = 0, len(data)
    while at + _HEADER.size <= end:
        length, crc = _HEADER.unpack_from(data, at)
        start = at + _HEADER.size
        if length > MAX_RECORD or start + length > end:
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            break
        out.append(payload)
        at = start + length
    return out, end - at


def committed_seq(con: duckdb.DuckDBPyConnection, key: str) -> int:
    """The highest segment number whose records are committed (-1 before any)."""
    row = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return int(row[0]) if row else -1


def set_committed_seq(con: duckdb.DuckDBPyConnection, key: str, seq: int) -> None:
    """Record `seq` as committed; call inside the transaction that commits its records."""
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, str(seq)])


def pending_segments(con: duckdb.DuckDBPyConnection, directory: Path, key: str) -> Iterator[SegmentRecords]:
    """Records of the segments not yet committed (those at or below the committed number are skipped)."""
    done = committed_seq(con, key)
    for seg in segments(directory):
        if seg.seq <= done:
            continue
        try:
            data = seg.path.read_bytes()
        except OSError as e:
            log.error("journal segment %s unreadable: %s", seg.path, e)
            continue
        records, torn = read_records(data)
        yield SegmentRecords(seg.seq, records, torn)


@dataclass
class Replay:
    journal: Journal  # open for writing, numbered past everything replayed
    records: int = 0  # records found in the pending segments
    applied: int = 0  # what `apply` said it put back (rows)
    problem: str | None = None  # set when the records could not be put back (their segments moved aside)


def replay(
    con: duckdb.DuckDBPyConnection,
    directory: Path,
    key: str,
    apply: Callable[[duckdb.DuckDBPyConnection, list[bytes]], int],
    label: str,
) -> Replay:
    """Put back what a crash left in a journal, then open it for writing. Runs at start, before the writer.

    One transaction runs `apply` on every pending segment's records (in order) and moves the committed mark
    past them, so a crash during replay replays again and a crash after it replays nothing twice. Records that
    can't be put back are moved aside (`<seq>.wkj.failed-<time>`) rather than stop the agent from starting."""
    records: list[bytes] = []
    upto = None
    torn = 0
    for seg in pending_segments(con, directory, key):
        upto = seg.seq
        torn += seg.torn_bytes
        records.extend(seg.records)
    if torn:
        log.warning("%s: %d bytes of torn or corrupt records at segment ends were skipped", label, torn)
    out = Replay(journal=None, records=len(records))  # type: ignore[arg-type]
    if upto is not None:
        con.begin()
        try:
            out.applied = apply(con, records)
            set_committed_seq(con, key, upto)
            con.commit()
        except Exception as e:
            con.rollback()
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for seg in segments(directory):
                seg.path.rename(seg.path.with_name(f"{seg.path.name}.failed-{stamp}"))
            out.problem = f"{label} replay failed ({str(e).splitlines()[0][:200]}); segments kept as *.failed-{stamp}"
            out.applied = 0
            log.critical(out.problem)
    out.journal = Journal.after_replay(con, directory, key, label=label)
    return out


class Journal:
    """The writing side: append records, seal segments for a batch, delete them once committed."""

    def __init__(
        self,
        directory: Path,
        key: str,
        first_seq: int,
        max_pending_bytes: int = MAX_PENDING_BYTES,
        label: str = "prediction journal",
    ) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir = directory
        self.key = key
        self.label = label
        # What a record not written means for the caller, in the log line that says so.
        self.unwritten = "answered requests are not crash-safe"
        self._seq = first_seq
        self._fd: int | None = None
        self._dirty = False
        self._sealed: list[int] = []
        self._sizes: dict[int, int] = {}  # bytes per segment not yet released
        self.pending_bytes = 0
        self.max_pending_bytes = max_pending_bytes
        self.records = 0
        self.bytes = 0
        self.errors = 0
        self.skipped = 0
        self._last_error_log = 0.0
        self._open()

    @classmethod
    def after_replay(
        cls, con: duckdb.DuckDBPyConnection, directory: Path, key: str, label: str = "prediction journal"
    ) -> Journal:
        """Start a journal numbered past everything committed and everything on disk.

        Call once the pending segments are replayed and committed: the files left are deleted."""
        last = committed_seq(con, key)
        for seg in segments(directory):
            last = max(last, seg.seq)
            seg.path.unlink(missing_ok=True)
        return cls(directory, key, last + 1, label=label)

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:012d}{SUFFIX}"

    def _open(self) -> None:
        try:
            self._fd = os.open(self._path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as e:
            self._fd = None
            self._error(e)

    def _error(self, e: OSError) -> None:
        self.errors += 1
        self._complain(e)

    def _complain(self, e: OSError | str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 60:
            self._last_error_log = now
            log.error("%s %s: %s (%s until it recovers)", self.label, self.dir, e, self.unwritten)

    def append(self, payload: bytes) -> bool:
        """Write one record (into the page cache: it survives a crash of this process). False when it could not
        be written (counted and logged): the caller decides whether to go on without it."""
        if self.pending_bytes >= self.max_pending_bytes:
            self.skipped += 1
            self._complain(f"{self.pending_bytes} bytes not yet committed to the store (is the writer stuck?)")
            return False
        if self._fd is None:
            self._open()
            if self._fd is None:
                return False
        frame = [_HEADER.pack(len(payload), zlib.crc32(payload)), payload]
        want = _HEADER.size + len(payload)
        try:
            n = os.writev(self._fd, frame)
            if n != want:  # a short write (disk full): finish it, or the segment's tail is torn
                os.write(self._fd, (frame[0] + payload)[n:])
        except OSError as e:
            self._error(e)
            return False
        self._dirty = True
        self.records += 1
        self.bytes += want
        self.pending_bytes += want
        self._sizes[self._seq] = self._sizes.get(self._seq, 0) + want
        return True

    def seal(self) -> int | None:
        """Start a new segment; return the highest sealed segment (it holds every record appended so far)."""
        if self._dirty:
            self._close_fd()
            self._sealed.append(self._seq)
            self._seq += 1
            self._dirty = False
            self._open()
        return self._sealed[-1] if self._sealed else None

    def release(self, upto: int) -> None:
        """The records of segments up to `upto` are committed: delete those segments."""
        keep = []
        for seq in self._sealed:
            if seq <= upto:
                self.pending_bytes -= self._sizes.pop(seq, 0)
                try:
                    self._path(seq).unlink(missing_ok=True)
                except OSError as e:
                    self._error(e)
            else:
                keep.append(seq)
        self._sealed = keep

    @property
    def sealed(self) -> list[int]:
        return list(self._sealed)

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def close(self) -> None:
        """Stop writing. An empty current segment is removed; anything uncommitted stays for the next start."""
        self._close_fd()
        if not self._dirty:
            self._path(self._seq).unlink(missing_ok=True)
