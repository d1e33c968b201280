"""A window counts the prediction of only the rows a model answered (fallbacks are not predictions)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.monitoring.profile import fit_profile
from agent.monitoring.window import WindowHistogram


def test_prediction_counted_for_answered_rows_only_and_round_trips():
    rng = np.random.default_rng(1)
    ref = {"x": rng.normal(size=2000), "c": rng.choice(["a", "b"], 2000), "p": rng.random(2000)}
    prof = fit_profile(ref, numeric=["x"], categorical=["c"], prediction="p")
    w = WindowHistogram.empty(prof)
    w.update({"x": rng.normal(size=300), "c": rng.choice(["a", "b"], 300)}, columns=prof.features)
    w.update({"p": rng.random(240)}, columns=[prof.prediction])  # 60 rows fell back: no prediction
    assert w.rows == 300
    assert w.columns["p"].n == 240 and w.columns["p"].missing == 0
    assert w.columns["x"].n == 300
    again = WindowHistogram.from_json(w.to_json(), prof)
    assert again == w
    bad = w.to_json()
    bad["rows"] = 200  # fewer rows than a column counted: refused
    with pytest.raises(ValueError):
        WindowHistogram.from_json(bad, prof)
