"""Drift and data quality: the agent's histogram drift beside Evidently's DataDriftPreset, same data, one run.

A seeded generator (numpy default_rng) writes a reference and a current set once, as parquet files in a
temp dir that every variant reads: `--ref-rows` (200k) x `--cur-rows` (1M) rows, 20 numeric columns
(n00-n19: normal, lognormal, exponential, uniform, Poisson counts, gamma, a bimodal mix, Student-t with
heavy tails; n03 and n12 have 0.5 % missing values) and 5 categorical ones (c0-c4, 4 to 30 string
categories). The current set is drawn from the same distributions except for what is injected:

    drift    n01 mean +0.5 sd, n05 mean -0.3 sd, n09 mean +0.25 sd, n14 sd x1.5,
             c1 category frequencies 40/30/20/10 % -> 25/30/20/25 %
    quality  n12 missing 0.5 % -> 5 % (the values present are undrifted),
             c3 2 % of rows an unseen category (the seen ones keep their relative frequencies)

The two quality cases are those Evidently's defaults miss. The other 18 columns are untouched: any flag
on them is a false alarm (a quality flag on a drifted column, e.g. values beyond the reference's range
after a shift, is not). Each variant runs in a fresh child process that prints one JSON line; time
excluding imports and data loading is what the variants are compared on (loading and imports are shown
beside it), peak RSS is the child's VmHWM (loading included: that is what running it costs).

    watchkeeper  the agent's `agent.monitoring` as it processes logged windows: `fit_profile` on the
                 reference frame and `WindowHistogram.from_profile` (fit), the current set read in
                 record batches (`ParquetFile(pre_buffer=False).iter_batches` -> `polars.from_arrow`,
                 memory bounded by the batch) into `WindowHistogram.update` (window),
                 `compare(ref, cur, DriftThresholds())` (compare; its first call in a process imports
                 scipy, which is counted as import time). Also: one 10k-row window update on a fresh
                 `WindowHistogram.empty`, median of 21 runs.
    evidently    Evidently 0.7 `Report([DataDriftPreset()])` on pandas frames read from the same parquet,
                 numeric and categorical columns declared through `DataDefinition`, its defaults
                 (Wasserstein / sd and Jensen-Shannon at 0.1 for a reference over 1000 rows). Installed
                 once into its own venv (~/.cache/watchkeeper-bench/evidently-venv, ~1-2 min the first
                 time); the column verdicts are its own per-column drift tests.
    plain        a naive full pass on the raw arrays (polars frames in memory): per numeric column scipy
                 `ks_2samp` and `wasserstein_distance` (flag: Wasserstein / reference sd >= 0.1, Evidently's
                 rule), per categorical column counts and Jensen-Shannon distance (>= 0.1).

Target: watchkeeper >= 50x faster than Evidently (total, imports and loading excluded) at <= 1/4 of its
peak memory, and a 10k-row window update <= 20 ms. A variant that wasn't measured makes it MISS.

    .venv/bin/python bench/drift.py [--ref-rows 200000] [--cur-rows 1000000]
        [--variants watchkeeper,evidently,plain] [--batch-rows 65536] [--skip-install]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVIDENTLY_VENV = Path.home() / ".cache" / "watchkeeper-bench" / "evidently-venv"
# pandas < 3: Evidently 0.7 needs it. pyarrow: pandas reads parquet with it (Evidently doesn't pull it in).
EVIDENTLY_PACKAGES = ("evidently==0.7.*", "pandas<3", "pyarrow")
VARIANTS = {"watchkeeper": "watchkeeper", "evidently": "evidently", "plain": "plain numpy+polars"}
TARGET_SPEEDUP = 50.0
TARGET_MEM_FRACTION = 0.25
TARGET_UPDATE_MS = 20.0
UPDATE_ROWS = 10_000
UPDATE_RUNS = 21
SEED = 20240917

NUMERIC = [f"n{i:02d}" for i in range(20)]
CATEGORICAL = [f"c{i}" for i in range(5)]
# What the current set changes, by column (see the docstring).
MEAN_SHIFT = {"n01": 0.5, "n05": -0.3, "n09": 0.25}  # in reference sd
SD_SCALE = {"n14": 1.5}
MISSING_REF = {"n03": 0.005, "n12": 0.005}
MISSING_CUR = {"n03": 0.005, "n12": 0.05}
FREQ_CHANGE = {"c1": ([0.40, 0.30, 0.20, 0.10], [0.25, 0.30, 0.20, 0.25])}
UNSEEN = {"c3": 0.02}
INJECTED_DRIFT = [*MEAN_SHIFT, *SD_SCALE, *FREQ_CHANGE]
INJECTED_QUALITY = ["n12", "c3"]
UNTOUCHED = [c for c in NUMERIC + CATEGORICAL if c not in INJECTED_DRIFT + INJECTED_QUALITY]
N_CATS = {"c0": 5, "c1": 4, "c2": 12, "c3": 8, "c4": 30}


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def vm_hwm_mib() -> float:
    """Peak resident memory of this process."""
    return _status_mib("VmHWM")


def vm_rss_mib() -> float:
    return _status_mib("VmRSS")


# --------------------------------------------------------------------------- the data


def _numeric(i: int, rng: Any, n: int) -> Any:
    """Column n{i:02d} before any injection: eight shapes, parameters varied by column."""
    kind = i % 8
    if kind == 0:
        return rng.normal(10.0 * i, 1.0 + i / 4, n)
    if kind == 1:
        return rng.lognormal(1.0, 0.6, n)
    if kind == 2:
        return rng.exponential(2.0 + i, n)
    if kind == 3:
        return rng.uniform(-5.0, 5.0 + i, n)
    if kind == 4:
        return rng.poisson(3.0 + i / 4, n).astype("float64")
    if kind == 5:
        return rng.gamma(2.0, 1.5, n)
    if kind == 6:  # two modes, 70/30
        m = rng.random(n) < 0.7
        return rng.normal(0.0, 1.0, n) * m + rng.normal(6.0, 0.5, n) * ~m
    return rng.standard_t(3, n) * 2.0 + 1.0  # heavy tails: a few far outliers per window


def _cat_probs(col: str) -> Any:
    import numpy as np

    if col in FREQ_CHANGE:
        return np.array(FREQ_CHANGE[col][0])
    k = N_CATS[col]
    # c0 uniform; the others Zipf-like: a few common categories and a tail of rare ones
    p = np.full(k, 1.0) if col == "c0" else 1.0 / np.arange(1, k + 1) ** 1.1
    return p / p.sum()


def make_frames(n_ref: int, n_cur: int, seed: int = SEED) -> tuple[Any, Any]:
    """The reference and current frames (polars), drift and quality issues injected as documented."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    ref: dict[str, Any] = {}
    cur: dict[str, Any] = {}
    for i, col in enumerate(NUMERIC):
        r = _numeric(i, rng, n_ref)
        c = _numeric(i, rng, n_cur)
        mu, sd = float(r.mean()), float(r.std())
        if col in MEAN_SHIFT:
            c = c + MEAN_SHIFT[col] * sd
        if col in SD_SCALE:
            c = mu + (c - mu) * SD_SCALE[col]
        ref[col], cur[col] = r, c
    frames = []
    for data, n, missing in ((ref, n_ref, MISSING_REF), (cur, n_cur, MISSING_CUR)):
        df = pl.DataFrame(data)
        masks = {col: rng.random(n) < rate for col, rate in missing.items()}
        df = df.with_columns(
            pl.when(pl.Series(m)).then(None).otherwise(pl.col(col)).alias(col) for col, m in masks.items()
        )
        frames.append(df)
    for col in CATEGORICAL:
        p_ref = _cat_probs(col)
        names = [f"{col}_v{j:02d}" for j in range(len(p_ref))]
        p_cur = np.array(FREQ_CHANGE[col][1]) if col in FREQ_CHANGE else p_ref
        if col in UNSEEN:
            names.append(f"{col}_new")
            p_cur = np.append(p_ref * (1 - UNSEEN[col]), UNSEEN[col])
        lookup = pl.Series(col, names)
        for k, (n, p) in enumerate(((n_ref, p_ref), (n_cur, p_cur))):
            codes = rng.choice(len(p), size=n, p=p)
            frames[k] = frames[k].with_columns(lookup.gather(codes))
    return frames[0], frames[1]


def write_data(tmp: Path, n_ref: int, n_cur: int) -> tuple[Path, Path]:
    ref, cur = make_frames(n_ref, n_cur)
    paths = tmp / "reference.parquet", tmp / "current.parquet"
    ref.write_parquet(paths[0])
    cur.write_parquet(paths[1])
    return paths


# --------------------------------------------------------------------------- the variants (children)


def child_watchkeeper(ref_path: Path, cur_path: Path, batch_rows: int) -> dict[str, Any]:
    t = time.perf_counter()
    import polars as pl
    import pyarrow.parquet as pq

    from agent.monitoring.drift import DriftThresholds, compare
    from agent.monitoring.profile import fit_profile
    from agent.monitoring.window import WindowHistogram

    import_s = time.perf_counter() - t
    import_rss = vm_rss_mib()

    t = time.perf_counter()
    ref = pl.read_parquet(ref_path)
    load_s = time.perf_counter() - t

    t = time.perf_counter()
    prof = fit_profile(ref, numeric=NUMERIC, categorical=CATEGORICAL)
    ref_h = WindowHistogram.from_profile(prof)
    fit_s = time.perf_counter() - t

    cur = WindowHistogram.empty(prof)
    window_s = 0.0
    batches = rows = 0
    # pre_buffer off: with it on, pyarrow holds whole row groups' buffers and the reader alone adds ~130 MiB
    # of peak RSS (measured: 1M rows, 344 -> 246 MiB for reading and converting alone), none of it the agent's.
    it = pq.ParquetFile(cur_path, pre_buffer=False).iter_batches(batch_size=batch_rows)
    while True:
        t = time.perf_counter()
        rb = next(it, None)
        if rb is None:
            load_s += time.perf_counter() - t
            break
        df = pl.from_arrow(rb)
        t1 = time.perf_counter()
        cur.update(df)
        t2 = time.perf_counter()
        load_s += t1 - t
        window_s += t2 - t1
        batches += 1
        rows += df.height
        del rb, df

    # The first compare in a process imports scipy (p-value tails): an import cost, counted as such. The
    # comparison itself is the second call (pure computation on counts, same result).
    t = time.perf_counter()
    compare(ref_h, cur, DriftThresholds())
    compare_cold_s = time.perf_counter() - t
    t = time.perf_counter()
    report = compare(ref_h, cur, DriftThresholds())
    compare_s = time.perf_counter() - t
    import_s += max(0.0, compare_cold_s - compare_s)

    drift: list[str] = []
    quality: dict[str, list[str]] = {}
    order = {n: i for i, n in enumerate(NUMERIC + CATEGORICAL)}
    for f in sorted(report.features, key=lambda f: order.get(f.name, len(order))):
        if _is_drift(f.verdict):
            drift.append(f.name)
        issues = [_issue(f, q) for q in f.quality_issues]
        if issues:
            quality[f.name] = issues

    # One logged window of 10k rows, as the agent would fold it in: a fresh histogram each time.
    window = pl.from_arrow(next(pq.ParquetFile(cur_path).iter_batches(batch_size=UPDATE_ROWS)))
    update_ms = []
    for _ in range(UPDATE_RUNS):
        h = WindowHistogram.empty(prof)
        t = time.perf_counter()
        h.update(window)
        update_ms.append((time.perf_counter() - t) * 1000)
    return {
        "import_s": import_s,
        "load_s": load_s,
        "fit_s": fit_s,
        "window_s": window_s,
        "compare_s": compare_s,
        "compare_cold_s": compare_cold_s,
        "total_s": fit_s + window_s + compare_s,
        "batches": batches,
        "rows": rows,
        "update_10k_ms": statistics.median(update_ms),
        "update_10k_max_ms": max(update_ms),
        "drift": drift,
        "quality": quality,
        "peak_rss_mib": vm_hwm_mib(),
        "import_rss_mib": import_rss,
    }


def _issue(f: Any, issue: str) -> str:
    """A quality issue with the numbers behind it, e.g. "missing_rate 0.5% -> 5.0%"."""
    if issue == "missing_rate" and f.missing_rate_cur is not None:
        return f"{issue} {f.missing_rate_ref or 0:.1%} -> {f.missing_rate_cur:.1%}"
    share = {"unseen": f.unseen_share, "out_of_range": f.out_of_range_share}.get(issue)
    return issue if share is None else f"{issue} {share:.1%}"


def _is_drift(verdict: Any) -> bool:
    """Verdicts are "ok", "drift", "quality", "drift+quality" or "no data" (agent.schemas.DriftVerdict)."""
    return "drift" in str(verdict).split("+")


def child_evidently(ref_path: Path, cur_path: Path) -> dict[str, Any]:
    t = time.perf_counter()
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently import __version__ as version
    from evidently.presets import DataDriftPreset

    import_s = time.perf_counter() - t
    import_rss = vm_rss_mib()

    t = time.perf_counter()
    ref = pd.read_parquet(ref_path)
    cur = pd.read_parquet(cur_path)
    load_s = time.perf_counter() - t

    t = time.perf_counter()
    definition = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
    current = Dataset.from_pandas(cur, data_definition=definition)
    reference = Dataset.from_pandas(ref, data_definition=definition)
    snapshot = Report([DataDriftPreset()], include_tests=True).run(current, reference)
    total_s = time.perf_counter() - t
    result = snapshot.dict()

    # Its own per-column verdicts: the "drift" test of each ValueDrift metric (FAIL = drift detected).
    drift = []
    scores = {}
    for test in result.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if test.get("id") == "drift" and "column" in params and test.get("status") == "FAIL":
            drift.append(params["column"])
    for m in result.get("metrics", []):
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith("ValueDrift"):
            scores[cfg["column"]] = [cfg.get("method"), m.get("value"), cfg.get("threshold")]
    if not any(t.get("id") == "drift" for t in result.get("tests", [])):
        # No per-column tests in this version's output: its rule from score and threshold instead.
        for col, (method, value, threshold) in scores.items():
            pvalue = "p_value" in str(method)
            if value is not None and threshold is not None and (value < threshold if pvalue else value >= threshold):
                drift.append(col)
    return {
        "version": version,
        "import_s": import_s,
        "load_s": load_s,
        "total_s": total_s,
        "drift": sorted(drift),
        "quality": {},
        "scores": scores,
        "peak_rss_mib": vm_hwm_mib(),
        "import_rss_mib": import_rss,
    }


def child_plain(ref_path: Path, cur_path: Path) -> dict[str, Any]:
    t = time.perf_counter()
    import numpy as np
    import polars as pl
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import ks_2samp, wasserstein_distance

    import_s = time.perf_counter() - t
    import_rss = vm_rss_mib()

    t = time.perf_counter()
    ref = pl.read_parquet(ref_path)
    cur = pl.read_parquet(cur_path)
    load_s = time.perf_counter() - t

    t = time.perf_counter()
    drift = []
    for col in NUMERIC:
        r = ref[col].drop_nulls().to_numpy()
        c = cur[col].drop_nulls().to_numpy()
        ks_2samp(r, c)
        if wasserstein_distance(r, c) / max(float(r.std()), 1e-12) >= 0.1:
            drift.append(col)
    for col in CATEGORICAL:
        rc = ref[col].value_counts()
        cc = cur[col].value_counts()
        both = rc.join(cc, on=col, how="full", coalesce=True).fill_null(0)
        p = both["count"].to_numpy().astype(np.float64)
        q = both["count_right"].to_numpy().astype(np.float64)
        if jensenshannon(p / p.sum(), q / q.sum()) >= 0.1:
            drift.append(col)
    total_s = time.perf_counter() - t
    return {
        "import_s": import_s,
        "load_s": load_s,
        "total_s": total_s,
        "drift": drift,
        "quality": {},
        "peak_rss_mib": vm_hwm_mib(),
        "import_rss_mib": import_rss,
    }


# --------------------------------------------------------------------------- Evidently's venv


def ensure_evidently(skip_install: bool) -> tuple[Path | None, str]:
    """Evidently in its own venv (its pins must not touch ours). Returns (python, version or why not)."""
    py = EVIDENTLY_VENV / "bin" / "python"
    check = [str(py), "-c", "import evidently, pandas, pyarrow; print(evidently.__version__, pandas.__version__)"]

    def version() -> str | None:
        if not py.exists():
            return None
        r = subprocess.run(check, capture_output=True, text=True, timeout=300)
        return r.stdout.strip() if r.returncode == 0 else None

    v = version()
    if v:
        return py, v
    if skip_install:
        return None, f"no working Evidently venv at {EVIDENTLY_VENV} (--skip-install)"
    print(f"installing Evidently into {EVIDENTLY_VENV} (once; ~1-2 min) ...", file=sys.stderr)
    shutil.rmtree(EVIDENTLY_VENV, ignore_errors=True)
    EVIDENTLY_VENV.parent.mkdir(parents=True, exist_ok=True)
    base_py = shutil.which("python3") or sys.executable
    try:
        subprocess.run([base_py, "-m", "venv", str(EVIDENTLY_VENV)], check=True, capture_output=True, timeout=300)
        r = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *EVIDENTLY_PACKAGES],
            capture_output=True,
            text=True,
            timeout=1200,
        )
    except (subprocess.SubprocessError, OSError) as e:
        shutil.rmtree(EVIDENTLY_VENV, ignore_errors=True)
        return None, f"venv/pip failed: {e}"
    if r.returncode != 0:
        errs = [ln for ln in r.stderr.splitlines() if ln.startswith("ERROR")] or r.stderr.splitlines()[-2:]
        shutil.rmtree(EVIDENTLY_VENV, ignore_errors=True)
        return None, "pip install evidently failed: " + " ".join(errs)[:200]
    v = version()
    if not v:
        return None, "evidently installed but does not import"
    return py, v


# --------------------------------------------------------------------------- the parent


def run_child(variant: str, python: str, paths: tuple[Path, Path], args: argparse.Namespace) -> dict[str, Any]:
    cmd = [python, __file__, "--child", variant, "--data", str(paths[0].parent), "--batch-rows", str(args.batch_rows)]
    env = {**os.environ, "DO_NOT_TRACK": "1"}  # Evidently's usage telemetry
    if python != sys.executable:
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {args.timeout:.0f} s"}
    for line in out.stdout.splitlines():
        if line.startswith("DRIFTJSON "):
            return json.loads(line[len("DRIFTJSON ") :])
    err = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    return {"skipped": f"failed (rc {out.returncode}): {' | '.join(err[-3:])[-300:]}"}


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def recall(r: dict[str, Any]) -> str:
    flagged = set(r["drift"]) | set(r["quality"])
    drift_caught = [c for c in INJECTED_DRIFT if c in r["drift"]]
    quality_caught = [c for c in INJECTED_QUALITY if c in flagged]
    missed = [c for c in INJECTED_DRIFT if c not in drift_caught] + [c for c in INJECTED_QUALITY if c not in flagged]
    false = [c for c in UNTOUCHED if c in flagged]
    return (
        f"drift {len(drift_caught)}/{len(INJECTED_DRIFT)}, quality {len(quality_caught)}/{len(INJECTED_QUALITY)} "
        f"caught; missed: {', '.join(missed) or 'none'}; false alarms: {', '.join(false) or 'none'}"
    )


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, gen_s: float) -> None:
    print(
        f"\nDrift and data quality, {args.ref_rows:,} reference x {args.cur_rows:,} current rows, "
        f"{len(NUMERIC)} numeric + {len(CATEGORICAL)} categorical columns ({os.cpu_count()} cores; each variant "
        f"in a fresh process; data generated in {gen_s:.1f} s)"
    )
    print(
        f"injected drift: {', '.join(INJECTED_DRIFT)}; quality: n12 missing 0.5% -> 5%, c3 2% unseen category; "
        f"untouched: the other {len(UNTOUCHED)}\n"
    )
    ev = results.get("evidently", {})
    ev_ok = "total_s" in ev
    hdr = (
        f"{'variant':<20} {'total s':>8} {'fit s':>7} {'window s':>9} {'compare s':>9} {'load s':>7} "
        f"{'import s':>8} {'peak RSS MiB':>12} {'flagged drift/quality':>21} {'x faster':>9} {'mem frac':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for v, r in results.items():
        if "skipped" in r:
            print(f"{VARIANTS[v]:<20} not measured: {r['skipped']}")
            continue
        speed = f"{ev['total_s'] / r['total_s']:.1f}x" if ev_ok and r["total_s"] > 0 else "-"
        mem = f"{r['peak_rss_mib'] / ev['peak_rss_mib']:.2f}" if ev_ok else "-"
        flags = f"{len(r['drift'])} / {len(r['quality'])}"
        print(
            f"{VARIANTS[v]:<20} {r['total_s']:>8.2f} {_s(r.get('fit_s')):>7} {_s(r.get('window_s')):>9} "
            f"{_s(r.get('compare_s')):>9} {r['load_s']:>7.2f} {r['import_s']:>8.2f} {r['peak_rss_mib']:>12.0f} "
            f"{flags:>21} {speed:>9} {mem:>8}"
        )
    print(
        "\ntotal = fit + window + compare, imports and data loading excluded (shown beside it); x faster and mem "
        "frac are against Evidently's total and peak RSS; flagged = columns with a drift verdict / with a quality issue"
    )
    base = [f"{VARIANTS[v]} {r['import_rss_mib']:.0f}" for v, r in results.items() if "import_rss_mib" in r]
    if base:
        print(f"RSS after imports, before any data (MiB): {', '.join(base)}")
    wk = results.get("watchkeeper", {})
    if "total_s" in wk:
        print(
            f"watchkeeper: {wk['rows']:,} current rows in {wk['batches']} batches of <= {args.batch_rows:,}; "
            f"{UPDATE_ROWS // 1000}k-row window update median {wk['update_10k_ms']:.2f} ms "
            f"(max {wk['update_10k_max_ms']:.2f} ms, {UPDATE_RUNS} runs); first compare in the process "
            f"{wk['compare_cold_s']:.2f} s (its lazy scipy import counted under import s)"
        )
    if ev_ok:
        sc = ev.get("scores", {})
        why = "; ".join(f"{c} {sc[c][0]} {sc[c][1]:.3f} (threshold {sc[c][2]:g})" for c in INJECTED_QUALITY if c in sc)
        print(f"evidently {ev['version']}" + (f"; its scores on the quality cases: {why}" if why else ""))
    print()
    order = {c: i for i, c in enumerate(NUMERIC + CATEGORICAL)}
    for v, r in results.items():
        if "skipped" in r:
            continue
        r["drift"] = sorted(r["drift"], key=lambda c: order.get(c, len(order)))
        q = "; ".join(f"{c}: {', '.join(i)}" for c, i in r["quality"].items())
        print(f"{VARIANTS[v]:<20} drift: {', '.join(r['drift']) or 'none'}" + (f" | quality: {q}" if q else ""))
    print()
    for v, r in results.items():
        if "skipped" not in r:
            print(f"recall {VARIANTS[v]:<20} {recall(r)}")

    verdicts = []
    ok = ev_ok and "total_s" in wk
    if ok:
        speed = ev["total_s"] / wk["total_s"]
        frac = wk["peak_rss_mib"] / ev["peak_rss_mib"]
        ok = speed >= TARGET_SPEEDUP and frac <= TARGET_MEM_FRACTION and wk["update_10k_ms"] <= TARGET_UPDATE_MS
        verdicts.append(f"{speed:.0f}x at {frac:.2f} of its memory, 10k update {wk['update_10k_ms']:.1f} ms")
    else:
        if "total_s" in wk:
            verdicts.append(f"10k update {wk['update_10k_ms']:.1f} ms")
        missing = [v for v in ("watchkeeper", "evidently") if "total_s" not in results.get(v, {})]
        verdicts.append(f"unverified: {' and '.join(missing)} not measured")
    print(
        f"\ntarget: >= {TARGET_SPEEDUP:.0f}x faster than Evidently at <= 1/{1 / TARGET_MEM_FRACTION:.0f} of its peak "
        f"memory, and a {UPDATE_ROWS // 1000}k-row window update <= {TARGET_UPDATE_MS:.0f} ms "
        f"({'; '.join(verdicts)}) -> {'PASS' if ok else 'MISS'}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref-rows", type=int, default=200_000)
    ap.add_argument("--cur-rows", type=int, default=1_000_000)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--batch-rows", type=int, default=65_536, help="record batch size of the watchkeeper variant")
    ap.add_argument("--skip-install", action="store_true", help="don't install Evidently if its venv is missing")
    ap.add_argument("--timeout", type=float, default=1800, help="per variant, seconds")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        data = Path(args.data)
        paths = data / "reference.parquet", data / "current.parquet"
        if args.child == "watchkeeper":
            res = child_watchkeeper(*paths, args.batch_rows)
        elif args.child == "evidently":
            res = child_evidently(*paths)
        else:
            res = child_plain(*paths)
        print("DRIFTJSON " + json.dumps(res))
        return 0

    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = set(wanted) - set(VARIANTS)
    if bad:
        ap.error(f"unknown variants {sorted(bad)} (have {', '.join(VARIANTS)})")
    pythons: dict[str, str | None] = {v: sys.executable for v in wanted}
    why: dict[str, str] = {}
    if "evidently" in wanted:
        py, info = ensure_evidently(args.skip_install)
        pythons["evidently"] = str(py) if py else None
        if py is None:
            why["evidently"] = info
    tmp = Path(tempfile.mkdtemp(prefix="wk-drift-"))
    try:
        print(f"generating {args.ref_rows:,} + {args.cur_rows:,} rows ...", file=sys.stderr)
        t = time.perf_counter()
        paths = write_data(tmp, args.ref_rows, args.cur_rows)
        gen_s = time.perf_counter() - t
        results: dict[str, dict[str, Any]] = {}
        for v in wanted:
            python = pythons[v]
            if python is None:
                results[v] = {"skipped": why[v]}
                continue
            print(f"measuring {VARIANTS[v]} ...", file=sys.stderr)
            results[v] = run_child(v, python, paths, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, args, gen_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
