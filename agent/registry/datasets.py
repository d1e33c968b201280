"""Registered datasets: immutable, versioned Parquet files (a rollout gate's fixed validation set).

A dataset version is `(name, integer version, sha256 digest)`, numbered max + 1 under a lock, like a model
version. The upload is read with polars before it is accepted (a file polars can't read, or one without
rows, is refused), then moved to `<data_dir>/datasets/<name>/<version>.parquet`, mode 0444, fsynced, and
its row committed through the store writer. Neither is ever changed or removed through the API; a
second upload of the same bytes under the same name is refused (409, naming the version that has them).

Reads come from memory (the rows are cached at start and after each commit). Files without a committed
row (a crash between placing and committing) are removed at start. polars is imported lazily.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from agent.registry.store import (
    Conflict,
    Invalid,
    NotFound,
    StoreUnavailable,
    _fsync_path,
    check_name,
    file_sha256,
)
from agent.schemas import DatasetInfo
from agent.store.writer import StoreWriter

log = logging.getLogger("watchkeeper.datasets")

AuditHook = Callable[[dict], None]


class DatasetStore:
    """Datasets by name and version; see the module docstring. Thread-safe."""

    def __init__(self, writer: StoreWriter, con: duckdb.DuckDBPyConnection, root: Path) -> None:
        self._writer = writer
        self._con = con
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._by_name: dict[str, dict[int, DatasetInfo]] = {}
        self._load()
        self._sweep_orphans()

    def _load(self) -> None:
        cur = self._con.cursor()
        try:
            rows = cur.execute(
                "SELECT name, version, digest, rows, columns, size_bytes, created_at, created_by FROM datasets "
                "ORDER BY name, version"
            ).fetchall()
        finally:
            cur.close()
        out: dict[str, dict[int, DatasetInfo]] = {}
        for name, version, digest, n, cols, size, created_at, created_by in rows:
            out.setdefault(name, {})[version] = DatasetInfo(
                name=name, version=version, digest=digest, rows=n, columns=json.loads(cols), size_bytes=size,
                created_at=created_at, created_by=created_by,
            )  # fmt: skip
        self._by_name = out

    def _sweep_orphans(self) -> None:
        for d in self.root.iterdir():
            if not d.is_dir():
                continue
            known = self._by_name.get(d.name, {})
            for f in d.iterdir():
                stem = f.name.removesuffix(".parquet")
                if f.suffix == ".parquet" and stem.isdigit() and int(stem) in known:
                    continue
                log.warning("removing unregistered dataset file %s (left by an interrupted registration)", f)
                try:
                    f.unlink()
                except OSError as e:
                    log.warning("cannot remove %s: %s", f, e)

    # ------------------------------------------------------------------ reads

    def list(self) -> list[DatasetInfo]:
        return [info for name in sorted(self._by_name) for info in self._by_name[name].values()]

    def get(self, name: str, version: int | None = None) -> DatasetInfo:
        """A version of `name` (None: its latest)."""
        versions = self._by_name.get(name)
        if not versions:
            raise NotFound(f"no dataset named {name!r}", "name")
        if version is None:
            return versions[max(versions)]
        info = versions.get(version)
        if info is None:
            raise NotFound(f"dataset {name!r} has no version {version} (latest is {max(versions)})", "version")
        return info

    def path(self, name: str, version: int) -> Path:
        return self.root / name / f"{version}.parquet"

    def load_frame(self, info: DatasetInfo) -> Any:
        """The dataset as a polars DataFrame, checked against its recorded digest."""
        import polars as pl

        path = self.path(info.name, info.version)
        if file_sha256(path) != info.digest:
            raise StoreUnavailable(f"dataset {info.name} version {info.version} does not match its digest", "digest")
        return pl.read_parquet(path)

    # ------------------------------------------------------------------ register

    def register(self, name: str, src: Path, principal_name: str, *, audit: AuditHook | None = None) -> DatasetInfo:
        """Register the Parquet file at `src` as the next version of `name`; `src` is moved on success.

        `audit(detail)` is called once the version number is known and before the dataset becomes
        visible; if it raises, nothing is registered.
        """
        import polars as pl

        check_name(name)
        try:
            size = src.stat().st_size
        except OSError as e:
            raise Invalid(f"data not readable: {e.strerror or e}", "data") from None
        try:
            frame = pl.read_parquet(src)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise Invalid(f"the data part is not a Parquet file polars can read: {first}", "data") from None
        if frame.height == 0:
            raise Invalid("the dataset has no rows", "data")
        columns = list(frame.columns)
        digest = file_sha256(src)
        with self._lock:
            existing = self._by_name.get(name, {})
            for info in existing.values():
                if info.digest == digest:
                    raise Conflict(
                        f"these bytes (sha256 {digest[:16]}...) are already {name} version {info.version}",
                        "data",
                        error="duplicate_dataset",
                    )
            version = max(existing, default=0) + 1
            info = DatasetInfo(
                name=name, version=version, digest=digest, rows=frame.height, columns=columns, size_bytes=size,
                created_at=round(time.time(), 6), created_by=principal_name,
            )  # fmt: skip
            if audit is not None:
                audit({"version": version, "digest": digest, "rows": frame.height, "columns": columns})
            final = self._place(src, name, version)
            row = [name, version, digest, frame.height, json.dumps(columns), size, info.created_at, principal_name]
            try:
                self._writer.call(lambda con: con.execute("INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row))
            except Exception as e:
                final.unlink(missing_ok=True)
                raise StoreUnavailable(f"could not record the dataset: {e}") from e
            self._by_name = {**self._by_name, name: {**existing, version: info}}
        log.info("registered dataset %s version %d (%d rows, sha256 %s) by %s", name, version, info.rows, digest,
                 principal_name)  # fmt: skip
        return info

    def _place(self, src: Path, name: str, version: int) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
        final = self.path(name, version)
        try:
            if final.exists():  # an orphan of a crash: no row commits without the file in place first
                final.unlink()
            os.chmod(src, 0o444)
            _fsync_path(src)
            os.replace(src, final)
            _fsync_path(d, directory=True)
        except OSError as e:
            raise StoreUnavailable(f"could not store the dataset: {e.strerror or e}") from e
        return final
