"""A job's output files: `<data_dir>/jobs/<id>/{stdout,stderr}` (0600 in a 0700 dir), read by offset,
capped in size, removed after the retention.

Offsets are logical: bytes the job has written to the stream since it was submitted. When a file passes
`log_max_bytes` the runner keeps its newest half (the tail is what an engineer reads) and adds what it cut
to `<stream>.dropped`; a read below that offset starts at the first byte still kept and says how many
were dropped. The job writes with O_APPEND, so after the cut its next write lands at the new end; bytes
written during the cut itself (microseconds) may be lost with the dropped ones.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

STREAMS = ("stdout", "stderr")
READ_MAX = 1 << 20  # the most one logs request returns


def job_dir(root: Path, job_id: str) -> Path:
    return root / job_id


def ensure_dir(root: Path, job_id: str) -> Path:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    d = job_dir(root, job_id)
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def dropped(d: Path, stream: str) -> int:
    try:
        return int((d / f"{stream}.dropped").read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def read(d: Path, stream: str, offset: int, max_bytes: int) -> tuple[int, int, bytes, int]:
    """(start offset, next offset, bytes, dropped) of `stream` from logical `offset`."""
    cut = dropped(d, stream)
    start = max(offset, cut)
    try:
        with open(d / stream, "rb") as f:
            # past the end: nothing yet (a seek far beyond it is EINVAL on filesystems with a smaller max size)
            data = b"" if start - cut >= os.fstat(f.fileno()).st_size else _read_at(f, start - cut, max_bytes)
    except FileNotFoundError:
        data = b""
    return start, start + len(data), data, cut


def _read_at(f, pos: int, max_bytes: int) -> bytes:  # type: ignore[no-untyped-def]
    f.seek(pos)
    return f.read(min(max_bytes, READ_MAX))


def cap(d: Path, stream: str, max_bytes: int) -> int:
    """Keep the newest half of a stream past `max_bytes`; returns the bytes cut now (0: under the cap)."""
    path = d / stream
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    if size <= max_bytes:
        return 0
    keep = max_bytes // 2
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        cut = size - keep
        pos = 0
        while pos < keep:
            chunk = os.pread(fd, min(1 << 20, keep - pos), cut + pos)
            if not chunk:
                break
            os.pwrite(fd, chunk, pos)
            pos += len(chunk)
        os.ftruncate(fd, pos)
    finally:
        os.close(fd)
    total = dropped(d, stream) + cut
    tmp = d / f".{stream}.dropped.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, str(total).encode())
    finally:
        os.close(fd)
    os.replace(tmp, d / f"{stream}.dropped")
    return cut


def sweep(root: Path, ended: dict[str, float], retention_s: float, now: float | None = None) -> list[str]:
    """Remove the output directories of jobs that ended more than `retention_s` ago; their ids."""
    now = time.time() if now is None else now
    gone = []
    for job_id, ended_at in ended.items():
        if ended_at + retention_s < now:
            d = job_dir(root, job_id)
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
                gone.append(job_id)
    return gone
