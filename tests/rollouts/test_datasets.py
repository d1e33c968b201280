"""Registered datasets: immutable versions, digests, read-only files, refusals that name the part."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import duckdb
import polars as pl
import pytest

from agent.registry.datasets import DatasetStore
from agent.registry.store import Conflict, Invalid, NotFound
from agent.store.migrations import migrate
from agent.store.writer import StoreWriter


@pytest.fixture
def store(tmp_path: Path):
    con = duckdb.connect(str(tmp_path / "wk.duckdb"))
    migrate(con)
    w = StoreWriter(con, flush_interval=60)
    w.start()
    yield con, w, tmp_path
    w.stop()
    con.close()


def upload(tmp: Path, df: pl.DataFrame, name: str = "up.parquet") -> Path:
    p = tmp / name
    df.write_parquet(p)
    return p


def test_register_versions_digest_and_read_only_files(store):
    con, w, tmp = store
    ds = DatasetStore(w, con, tmp / "datasets")
    df = pl.DataFrame({"x": [1.0, 2.0, 3.0], "label": [0, 1, 1]})
    src = upload(tmp, df)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    audited = []
    info = ds.register("val", src, "olga", audit=audited.append)
    assert (info.version, info.rows, info.columns, info.digest) == (1, 3, ["x", "label"], digest)
    assert info.created_by == "olga"
    assert audited == [{"version": 1, "digest": digest, "rows": 3, "columns": ["x", "label"]}]
    path = ds.path("val", 1)
    assert not src.exists() and stat.S_IMODE(path.stat().st_mode) == 0o444
    assert ds.load_frame(info).equals(df)
    with pytest.raises(Conflict) as ei:
        ds.register("val", upload(tmp, df), "olga")
    assert ei.value.error == "duplicate_dataset" and "version 1" in ei.value.detail
    info2 = ds.register("val", upload(tmp, df.head(2)), "olga")
    assert info2.version == 2 and ds.get("val").version == 2 and ds.get("val", 1).rows == 3
    # A restart reads them back; a file without its row (a crash mid-registration) is swept away.
    (tmp / "datasets" / "val" / "3.parquet").write_bytes(b"orphan")
    again = DatasetStore(w, con, tmp / "datasets")
    assert [(d.name, d.version) for d in again.list()] == [("val", 1), ("val", 2)]
    assert not (tmp / "datasets" / "val" / "3.parquet").exists()


def test_refusals(store):
    con, w, tmp = store
    ds = DatasetStore(w, con, tmp / "datasets")
    bad = tmp / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(Invalid) as ei:
        ds.register("val", bad, "olga")
    assert ei.value.field == "data"
    with pytest.raises(Invalid, match="no rows"):
        ds.register("val", upload(tmp, pl.DataFrame({"x": []}, schema={"x": pl.Float64})), "olga")
    with pytest.raises(Invalid):
        ds.register("../etc", upload(tmp, pl.DataFrame({"x": [1]})), "olga")
    with pytest.raises(NotFound):
        ds.get("val")

    def refuse(_detail: dict) -> None:
        raise RuntimeError("audit down")

    src = upload(tmp, pl.DataFrame({"x": [1]}))
    with pytest.raises(RuntimeError):
        ds.register("val", src, "olga", audit=refuse)
    assert ds.list() == [] and src.exists()  # nothing registered, nothing moved
