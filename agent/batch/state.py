"""A batch's files: its spec (written by the agent), its progress (written by the worker), its output parts.

The checkpoint is the output itself. Input file i is cut into ranges of `rows_per_batch` rows; range k
of file i becomes exactly one part, `part-f<i>-r<start>-n<rows>.parquet`, written to a temporary name
and renamed into place, so a part is either whole or absent. The rejected rows of a range go to
`_rejects/` the same way, renamed before the part: a part present means its range is done. A resumed
worker skips the ranges whose parts exist and writes the others: no row twice, none missing, whatever
the moment it was killed. The worker is a separate process and never opens the agent's DuckDB (one
writer process); the agent reads `progress.json` and ingests the sampled prediction-log spool files.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PART = re.compile(r"^part-f(\d{5})-r(\d{12})-n(\d+)\.parquet$")
REJECTS_DIR = "_rejects"
MARKER = "_watchkeeper_batch.json"  # in the output dir: which batch owns it


@dataclass
class InputFile:
    path: str
    format: str  # "parquet" | "csv"
    rows: int | None  # None: unknown until read (CSV)
    size: int


@dataclass
class BatchSpec:
    """What the worker needs; written once by the agent (`<data_dir>/batch/<id>/spec.json`)."""

    id: str
    model: str
    version: int
    endpoint: str | None
    artifact: str
    format: str
    signature: dict
    missing_policy: str
    input: str
    output: str
    files: list[InputFile]
    id_column: str | None = None
    keep: list[str] = field(default_factory=list)
    rows_per_batch: int = 65536
    log_sample_rate: float = 0.01
    threads: int = 1
    max_rows_per_s: float | None = None
    submitted_by: str = ""
    submitted_at: float = 0.0
    reason: str = ""
    shards: int = 1  # workers the files are split among (a Slurm job array): file i is shard i % shards's

    def shard_of(self, file_idx: int) -> int:
        return file_idx % self.shards

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> BatchSpec:
        d = json.loads(text)
        d["files"] = [InputFile(**f) for f in d["files"]]
        return cls(**d)


def write_atomic(path: Path, data: bytes, fsync: bool = False) -> None:
    """Write to a temporary name in the same directory, then rename: readers see the old or the new."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def part_name(file_idx: int, start: int, rows: int) -> str:
    return f"part-f{file_idx:05d}-r{start:012d}-n{rows}.parquet"


def done_ranges(output: Path) -> dict[int, dict[int, int]]:
    """file index -> {start row: rows} of the parts already in place."""
    out: dict[int, dict[int, int]] = {}
    try:
        names = os.listdir(output)
    except FileNotFoundError:
        return out
    for name in names:
        m = PART.match(name)
        if m:
            out.setdefault(int(m.group(1)), {})[int(m.group(2))] = int(m.group(3))
    return out


def clean_temporaries(output: Path) -> None:
    """Half-written parts of a killed worker (never renamed into place, so never counted)."""
    for d in (output, output / REJECTS_DIR):
        if d.is_dir():
            for p in d.glob(".tmp-*"):
                p.unlink(missing_ok=True)


def progress_file(shard: int | None) -> str:
    return "progress.json" if shard is None else f"progress.{shard}.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_progress(batch_dir: Path, spec: BatchSpec | None = None) -> dict[str, Any] | None:
    """The worker's progress; for a sharded batch, its shards' merged: each file as its own shard last wrote
    it (pending, with the rows of its parts in place, where that shard has not started), the counts summed,
    the rate of the shards still running summed. None before any worker wrote."""
    if spec is None or spec.shards <= 1:
        return _read(batch_dir / "progress.json")
    shards = [_read(batch_dir / progress_file(k)) for k in range(spec.shards)]
    if not any(shards):
        return None
    done = done_ranges(Path(spec.output))
    files = []
    for i, f in enumerate(spec.files):
        p = shards[spec.shard_of(i)]
        if p is not None:
            files.append(p["files"][i])
        else:
            files.append({"path": f.path, "rows": f.rows, "rows_done": sum(done.get(i, {}).values()),
                          "state": "pending", "error": None})  # fmt: skip
    live = [p for p in shards if p is not None and p.get("state") == "running"]
    states = {p.get("state") if p is not None else "pending" for p in shards}
    state = "running" if states & {"running", "pending"} else "failed" if "failed" in states else "done"
    rows = [x["rows"] for x in files if x["state"] != "failed"]
    total = None if any(r is None for r in rows) else sum(rows)
    rows_done = sum(x["rows_done"] for x in files)
    rate = sum(p["rows_per_s"] or 0 for p in live) or None
    left = total - rows_done if total is not None else None
    return {
        "state": state, "files": files, "rows_done": rows_done, "rows_total": total,
        "rows_rejected": sum(p["rows_rejected"] for p in shards if p is not None), "rows_per_s": rate,
        "eta_s": left / rate if left is not None and rate else None, "shards": [
            None if p is None else {"state": p.get("state"), "rows_per_s": p.get("rows_per_s")} for p in shards],
    }  # fmt: skip


def write_progress(batch_dir: Path, progress: dict[str, Any], shard: int | None = None) -> None:
    progress["updated_at"] = time.time()
    write_atomic(batch_dir / progress_file(shard), json.dumps(progress).encode())
