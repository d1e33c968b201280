"""A short training run of the sample model's task, as a job (`watchkeeper demo` submits it).

Trains a departure-delay classifier on the shipped flights data for a time budget (`--seconds`, default
40): the training rows are `sample_data/flights/reference.parquet` (January-April, the sample model's
months), validation the first rows of `serving_replay.parquet` (May onwards, labelled). Features are
encoded with the sample model's own signature (`metadata.json`: imputes, categories). The model is the
sample's shape, an MLP 32/16, with torch when it is installed; without torch, a logistic regression in
numpy. Each epoch prints its loss and validation AUC (what the jobs screen's log pane tails); the last
line is a JSON summary. With `--min-auc` it exits 2 when the validation AUC stays below the bar (the
demo's failing validation job); with `--out DIR` it saves the weights there.

Run it by hand: `.venv/bin/python console/demo/train_flights.py --seconds 20`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "flights"
VAL_ROWS = 20_000
BATCH = 64
PRINT_EVERY_S = 1.0  # one progress line a second at most: a log to tail, not a flood


def encode(path: Path, signature: list[dict], rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (numerics imputed, categories one-hot in the signature's order) and the label."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if rows is not None:
        table = table.slice(0, rows)
    cols: list[np.ndarray] = []
    for f in signature:
        values = table.column(f["name"]).to_pylist()
        if f["dtype"] == "category":
            cats = f["categories"]
            codes = np.array([cats.index(v) if v in cats else cats.index(f["impute"]) for v in values])
            cols.append(np.eye(len(cats), dtype=np.float32)[codes])
        else:
            cols.append(np.array([f["impute"] if v is None else v for v in values], dtype=np.float32)[:, None])
    y = np.array(table.column("delayed").to_pylist(), dtype=np.float32)
    return np.concatenate(cols, axis=1), y


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def progress(epoch: int, loss: float, val: float, best: float, start: float, last: float) -> tuple[float, float]:
    """Print a progress line (at most every PRINT_EVERY_S); the best validation AUC so far and when we printed."""
    best = val if not best >= val else best
    now = time.monotonic()
    if now - last >= PRINT_EVERY_S:
        print(f"epoch {epoch} loss {loss:.4f} val_auc {val:.4f} best {best:.4f} {now - start:.0f}s", flush=True)
        last = now
    return best, last


def train_torch(x, y, xv, yv, seconds: float, out: Path | None) -> tuple[int, float, float]:
    import torch
    from torch import nn

    torch.set_num_threads(1)  # the job's CPU request is one core
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(x.shape[1], 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt, xvt = torch.from_numpy(x), torch.from_numpy(y)[:, None], torch.from_numpy(xv)
    rng = np.random.default_rng(0)
    start, epoch, loss, val = time.monotonic(), 0, float("nan"), float("nan")
    best, last = float("nan"), 0.0
    while time.monotonic() - start < seconds:
        epoch += 1
        perm = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad()
            batch_loss = loss_fn(model(xt[idx]), yt[idx])
            batch_loss.backward()
            opt.step()
            total += batch_loss.item() * len(idx)
        loss = total / len(x)
        with torch.no_grad():
            val = auc(yv, model(xvt).numpy().ravel())
        best, last = progress(epoch, loss, val, best, start, last)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "model.pt")
    return epoch, loss, best


def train_numpy(x, y, xv, yv, seconds: float, out: Path | None) -> tuple[int, float, float]:
    w, b = np.zeros(x.shape[1], dtype=np.float64), 0.0
    rng = np.random.default_rng(0)
    start, epoch, loss, val = time.monotonic(), 0, float("nan"), float("nan")
    best, last = float("nan"), 0.0
    lr = 0.05
    while time.monotonic() - start < seconds:
        epoch += 1
        perm = rng.permutation(len(x))
        total = 0.0
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            p = 1 / (1 + np.exp(-(x[idx] @ w + b)))
            grad = p - y[idx]
            w -= lr * (x[idx].T @ grad) / len(idx)
            b -= lr * float(grad.mean())
            total += float(-(y[idx] * np.log(p + 1e-9) + (1 - y[idx]) * np.log(1 - p + 1e-9)).sum())
        loss = total / len(x)
        val = auc(yv, xv @ w + b)
        best, last = progress(epoch, loss, val, best, start, last)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "model.npz", w=w, b=b)
    return epoch, loss, best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=40.0, help="training time budget")
    p.add_argument("--min-auc", type=float, help="exit 2 when the validation AUC is below this")
    p.add_argument("--out", type=Path, help="save the weights here")
    p.add_argument("--numpy", action="store_true", help="the numpy fallback even when torch is installed")
    p.add_argument("--data", type=Path, default=SAMPLE)
    args = p.parse_args(argv)

    signature = json.loads((args.data / "metadata.json").read_text())["signature"]["features"]
    x, y = encode(args.data / "reference.parquet", signature)
    xv, yv = encode(args.data / "serving_replay.parquet", signature, VAL_ROWS)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6  # standardised on the training rows
    x, xv = (x - mean) / std, (xv - mean) / std
    try:
        if args.numpy:
            raise ImportError
        import torch  # noqa: F401

        how = "torch"
    except ImportError:
        how = "numpy"
    print(f"training on {len(x)} rows ({how}), validating on {len(xv)}, for {args.seconds:g}s", flush=True)
    trainer = train_torch if how == "torch" else train_numpy
    epochs, loss, val = trainer(x, y, xv, yv, args.seconds, args.out)
    summary = {"trainer": how, "epochs": epochs, "loss": round(loss, 4), "best_val_auc": round(val, 4)}
    print(json.dumps(summary), flush=True)
    if args.min_auc is not None and not val >= args.min_auc:
        print(f"validation AUC {val:.4f} is below the bar {args.min_auc:g}: failing", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
