"""Default guards measure what a shadow or A/B test is there to measure instead of aborting on it (issue 9).

The numbers are real: the shipped sample model (stable) and its retrained version
(`sample_data/flights/retrained/`, the demo's candidate) both score the same replayed flights with ONNX
Runtime, and the engine (with the fakes of tests/rollouts/fakes.py and a fake clock) judges that window.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import polars as pl
import pytest

from agent.rollouts.guards import prediction_drift
from agent.schemas import ModelVersionCreate, RolloutAction, RolloutCreate
from agent.serving.encode import Encoder
from agent.serving.service import RouteMetrics
from agent.serving.stats import ShadowWindow, VersionWindow
from tests.rollouts.fakes import FLIGHTS, OLGA, World, world

ROWS = 2000


@pytest.fixture
def w() -> Iterator[World]:
    wd = world()
    yield wd
    wd.writer.stop()
    wd.con.close()


def _score(model_dir, records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    meta = ModelVersionCreate.model_validate(json.loads((model_dir / "metadata.json").read_text()))
    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    matrix = Encoder(meta.signature, "impute").encode_records(records).matrix
    out = sess.run(None, {sess.get_inputs()[0].name: matrix})[0]
    scores = (out[:, -1] if out.shape[1] > 1 else out[:, 0]).astype(np.float64)
    return scores, scores >= meta.signature.output.threshold


@pytest.fixture(scope="module")
def retrained_shadow() -> tuple[RouteMetrics, float, float]:
    """Stable's live window and the retrained candidate's mirrored window over the same replayed rows."""
    if not (FLIGHTS / "retrained" / "model.onnx").exists():
        pytest.skip("sample_data/flights/retrained not built")
    names = [f["name"] for f in json.loads((FLIGHTS / "metadata.json").read_text())["signature"]["features"]]
    records = pl.read_parquet(FLIGHTS / "serving_replay.parquet").head(ROWS).select(names).to_dicts()
    st_scores, st_labels = _score(FLIGHTS, records)
    ca_scores, ca_labels = _score(FLIGHTS / "retrained", records)
    disagree = int((st_labels != ca_labels).sum())
    st = VersionWindow(1, requests=ROWS, p99_ms=2.0, scores=st_scores.tolist())
    sh = ShadowWindow(
        requests=ROWS, rows=ROWS, disagreements=disagree, disagreement_rate=disagree / ROWS, p99_ms=2.5,
        errors=0, scores=ca_scores.tolist(),
    )  # fmt: skip
    return RouteMetrics(st, VersionWindow(2), sh), disagree / ROWS, prediction_drift(st_scores, ca_scores)


def _shadow(**kw) -> RolloutCreate:
    return RolloutCreate.model_validate({"candidate_version": 2, "strategy": "shadow", **kw})


def test_the_retrained_model_in_a_default_shadow_rollout_is_measured_not_aborted(w: World, retrained_shadow):
    metrics, rate, drift = retrained_shadow
    assert rate > 0.10 and drift > 0.2  # what the old defaults (0.10 and 0.2) aborted on
    eng = w.engine()
    rid = eng.create("delays", _shadow(), OLGA).id  # the default plan and default guards
    w.serving.metrics = metrics
    start = w.clock.t
    for s in range(0, 301, 1):  # the whole analysis step (300 s), well past the 30 s guard window
        w.clock.t = start + s
        eng.tick()
    out = eng.get(rid)
    assert out.state == "awaiting_approval" and out.awaiting_approval_for == 2, out.end_reason
    g = {m.name: m for m in out.guards}
    assert g["shadow_disagreement"].candidate == pytest.approx(rate)  # reported...
    assert g["shadow_disagreement"].limit is None and not g["shadow_disagreement"].breached  # ...not judged
    assert "prediction_drift" not in g
    assert g["error_rate"].candidate == 0.0 and g["p99_vs_stable"].candidate == 2.5  # errors, latency judged
    assert ("watchkeeper-agent", "rollout.abort") not in w.audit.actions()


def test_a_shadow_plan_that_asks_for_a_disagreement_limit_gets_it(w: World, retrained_shadow):
    metrics, rate, _ = retrained_shadow
    eng = w.engine()
    rid = eng.create("delays", _shadow(guards={"max_shadow_disagreement": 0.10}), OLGA).id
    w.serving.metrics = metrics
    start = w.clock.t
    for s in range(0, 3):
        w.clock.t = start + s
        eng.tick()
    out = eng.get(rid)  # the default plan's analysis step fails on any breach, at once
    assert out.state == "aborted" and "guard shadow_disagreement candidate" in out.end_reason, out.end_reason
    assert f"{rate:.4g}" in out.end_reason


def test_ab_arms_are_not_judged_on_drift_between_them(w: World):
    # Two arms that score different callers' rows: their outputs differ though the model is the same.
    rng = np.random.default_rng(9)
    st = VersionWindow(1, requests=400, p99_ms=2.0, scores=rng.beta(2, 5, 400).tolist())
    ca = VersionWindow(2, requests=400, p99_ms=2.0, scores=rng.beta(3, 4, 400).tolist())
    assert prediction_drift(st.scores, ca.scores) > 0.2
    w.serving.metrics = RouteMetrics(st, ca, ShadowWindow())
    eng = w.engine()
    ab = RolloutCreate.model_validate({"candidate_version": 2, "strategy": "ab"})
    rid = eng.create("delays", ab, OLGA).id
    for _ in range(40):
        w.clock.t += 1
        eng.tick()
    out = eng.get(rid)
    assert out.state == "awaiting_approval" and "prediction_drift" not in {m.name for m in out.guards}
    eng.act(rid, "abort", RolloutAction(), OLGA)
    # Asked for explicitly, the drift guard is applied (and, here, aborts).
    ab = RolloutCreate.model_validate(
        {"candidate_version": 2, "strategy": "ab", "guards": {"max_prediction_drift": 0.2}}
    )
    rid = eng.create("delays", ab, OLGA).id
    for _ in range(40):
        w.clock.t += 1
        eng.tick()
    assert eng.get(rid).end_reason.startswith("guard prediction_drift breached")
    # A canary keeps its default drift guard (its arms are random shares of the same callers).
    rid = eng.create("delays", RolloutCreate.model_validate({"candidate_version": 2, "strategy": "canary"}), OLGA).id
    w.clock.t += 1
    eng.tick()
    (drift,) = [m for m in eng.get(rid).guards if m.name == "prediction_drift"]
    assert drift.limit == 0.2 and drift.breached
