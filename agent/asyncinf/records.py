"""The async queue's record file: every state change of every request, appended before it is acted on.

Why not DuckDB: a durable commit through the store writer (`StoreWriter.call`) measured p50 1.3 ms and
p99 7.6 ms per request here, serialised on the one writer thread that also flushes the prediction log;
an `os.write` of a record to this file costs ~1-4 µs. As with the prediction journal
(agent/store/journal.py), a write into the page cache survives a crash of the process, so no fsync per
request: kill -9 loses nothing written; a power loss can lose what the kernel had not written back.

Framing is the journal's (`<u32 length><u32 crc32>` + payload; a torn tail fails its check and ends the
read). A payload is an orjson list whose first element names the record:

  ["s", id, endpoint, priority, seq, submitted_at, principal, callback_url, body_bytes, rows, body_ref]
                                                     submitted (body_ref null: the body is bodies/<id>)
  ["r", id, attempt, started_at]                                                              running
  ["d", id, state, reason, finished_at, result_ref]                                          finished
  ["c", id, callback_state, attempts, last_error, next_attempt_at]                    callback progress
  ["x", id]                                                                   removed (TTL passed)

`compact` rewrites the file with only what the live requests need (tmp file, fsync, rename, fsync dir).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import orjson

from agent.store.journal import read_records

log = logging.getLogger("watchkeeper.async")

_HEADER = struct.Struct("<II")  # the prediction journal's framing (agent/store/journal.py)


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


class RecordFile:
    """Append-only; one writer (the serving loop's thread). `append` returns once the record is in the page cache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.bytes = os.fstat(self._fd).st_size
        self.records = 0
        self.errors = 0

    @staticmethod
    def read(path: Path) -> tuple[list[list], int]:
        """Every intact record of the file, and how many bytes at its end were torn or corrupt."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return [], 0
        raw, torn = read_records(data)
        out = []
        for payload in raw:
            try:
                rec = orjson.loads(payload)
            except orjson.JSONDecodeError:
                torn += len(payload)
                continue
            if isinstance(rec, list) and rec:
                out.append(rec)
        return out, torn

    def append(self, rec: list) -> None:
        """Write one record. Raises OSError (the caller answers 503: nothing was promised yet)."""
        data = frame(orjson.dumps(rec))
        try:
            n = os.write(self._fd, data)
            if n != len(data):  # a short write (disk full): finish it, or the file's tail is torn
                os.write(self._fd, data[n:])
        except OSError:
            self.errors += 1
            raise
        self.bytes += len(data)
        self.records += 1

    def compact(self, records: list[list]) -> None:
        """Replace the file with `records` (the live state), atomically: a crash leaves the old or the new one."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(frame(orjson.dumps(r)) for r in records)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        old, self._fd = self._fd, os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        os.close(old)
        self.bytes = len(data)
        self.records = len(records)

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
