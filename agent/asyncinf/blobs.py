"""Bodies and results in append-only segment files: one inode per SEGMENT_BYTES, not one per request.

Creating a file per request cost 25 µs to 1 ms here (an inode, the ext4 journal, and a disk shared
with other work), more than everything else a submission does; an append to an open segment costs a
few µs. A blob is addressed by `[segment, offset, length]` (what the queue's records store). A segment
is deleted once it is sealed (the writer moved on) and no live request refers to it; the queue counts
the references (`ref` / `unref`) and, at start, says which segments are still referred to (`keep`).

Appends come from the serving loop (bodies) or the worker thread (results): a lock orders them.
Like the record file, a write into the page cache survives kill -9; nothing here is fsynced.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

SEGMENT_BYTES = 64 * 2**20
SUFFIX = ".seg"

Ref = list[int]  # [segment, offset, length]


class BlobStore:
    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir = directory
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self.refs: Counter[int] = Counter()
        existing = self.segments()
        self._seq = (max(existing) + 1) if existing else 1
        self._fd = self._open(self._seq)
        self._size = 0

    def segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.iterdir() if p.suffix == SUFFIX and p.stem.isdigit())

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:010d}{SUFFIX}"

    def _open(self, seq: int) -> int:
        return os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def keep(self, referenced: Counter[int]) -> None:
        """At start: the references live requests hold; segments nobody refers to are deleted."""
        self.refs = Counter({s: n for s, n in referenced.items() if n > 0})
        for seq in self.segments():
            if seq != self._seq and seq not in self.refs:
                self._path(seq).unlink(missing_ok=True)

    def append(self, data: bytes) -> Ref:
        """Write one blob (raises OSError); its reference is counted (`unref` when it is no longer needed)."""
        with self._lock:
            if self._size and self._size + len(data) > self.segment_bytes:
                os.close(self._fd)
                old = self._seq
                self._seq += 1
                self._fd = self._open(self._seq)
                self._size = 0
                if not self.refs.get(old):
                    self._path(old).unlink(missing_ok=True)
            off = self._size
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._size += len(data)
            self.refs[self._seq] += 1
            return [self._seq, off, len(data)]

    def read(self, ref: Ref) -> bytes:
        seq, off, length = ref
        fd = os.open(self._path(seq), os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, length, off)
        finally:
            os.close(fd)

    def unref(self, ref: Ref | None) -> None:
        """A blob is no longer needed: its segment goes once sealed and unreferenced."""
        if ref is None:
            return
        with self._lock:
            seq = ref[0]
            self.refs[seq] -= 1
            if self.refs[seq] <= 0:
                del self.refs[seq]
                if seq != self._seq:
                    self._path(seq).unlink(missing_ok=True)

    @property
    def bytes_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.dir.iterdir() if p.suffix == SUFFIX)

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
