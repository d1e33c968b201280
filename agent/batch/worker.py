"""The batch worker: `python -m agent.batch.worker BATCH_DIR`, run as a job of the `batch` pipeline.

Streams each input file in ranges of `rows_per_batch` rows (Arrow record batches: Parquet by row
groups, CSV by blocks), encodes each range vectorised (`columns.py`), scores it with the model
version's artifact and writes one Parquet part per range (`state.py`: the parts are the checkpoint).
Memory is bounded by the range size, not the dataset. Rows that can't be scored go to `_rejects/`
with their reason; a file that can't be read fails alone and the others go on (exit status 2 then,
naming the files). Progress is written to `BATCH_DIR/progress.json` after every part; a sampled share
of scored rows is spooled to `BATCH_DIR/predlog/` for the agent to put in the prediction log.

A batch split in shards runs as a Slurm job array: task k (SLURM_ARRAY_TASK_ID) scores the files i with
i % shards == k and writes `progress.<k>.json`; the parts are the same checkpoint, so a resumed array
runs again only the tasks that did not complete, each skipping what its earlier run wrote.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from agent.batch.columns import ArrowEncoder, decode
from agent.batch.state import (
    REJECTS_DIR,
    BatchSpec,
    InputFile,
    clean_temporaries,
    done_ranges,
    part_name,
    write_atomic,
    write_progress,
)
from agent.schemas import Signature
from agent.serving.runtimes import load_onnx, load_runtime

log = logging.getLogger("watchkeeper.batch")
SPOOL_DIR = "predlog"
PROGRESS_EVERY_S = 0.5


class FileProblem(Exception):
    """This input file can't be scored (unreadable, a column missing); the others go on."""


def needed_columns(spec: BatchSpec, sig: Signature) -> list[str]:
    cols = [f.name for f in sig.features]
    for c in [spec.id_column, *spec.keep]:
        if c and c not in cols:
            cols.append(c)
    return cols


def csv_rows_estimate(path: str) -> int:
    """Lines less the header: exact unless a quoted field holds a newline (then the count is corrected
    when the file is done)."""
    lines = 0
    last = b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return max(0, lines + (0 if last == b"\n" else 1) - 1)


def read_ranges(f: InputFile, columns: list[str], sig: Signature, n: int) -> Iterator[tuple[int, pa.Table]]:
    """(start row, table of exactly n rows, the last one shorter) over the file's needed columns."""
    try:
        if f.format == "parquet":
            cat_cols = [x.name for x in sig.features if x.dtype == "category"]
            pf = pq.ParquetFile(f.path, read_dictionary=cat_cols)
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise FileProblem(f"no column {missing[0]!r}")
            batches: Iterator[pa.RecordBatch] = pf.iter_batches(batch_size=n, columns=columns)
        else:
            cats = {x.name: pa.string() for x in sig.features if x.dtype == "category"}
            reader = pcsv.open_csv(f.path, read_options=pcsv.ReadOptions(block_size=8 << 20),
                                   convert_options=pcsv.ConvertOptions(column_types=cats))  # fmt: skip
            missing = [c for c in columns if c not in reader.schema.names]
            if missing:
                raise FileProblem(f"no column {missing[0]!r}")
            batches = (b.select(columns) for b in reader)
        buf: list[pa.RecordBatch] = []
        held = start = 0
        for b in batches:
            buf.append(b)
            held += b.num_rows
            while held >= n:
                t = pa.Table.from_batches(buf)
                yield start, t.slice(0, n)
                rest = t.slice(n)
                buf, held, start = rest.to_batches(), held - n, start + n
        if held:
            yield start, pa.Table.from_batches(buf)
    except FileProblem:
        raise
    except (OSError, pa.ArrowException) as e:
        raise FileProblem(str(e).splitlines()[0][:300]) from None


class Worker:
    def __init__(self, batch_dir: Path, shard: int | None = None) -> None:
        """`shard`: this worker's index among the batch's `shards` (a Slurm array task's); None: unsharded."""
        self.dir = batch_dir
        self.spec = BatchSpec.from_json((batch_dir / "spec.json").read_text())
        self.shard = shard
        self.sig = Signature.model_validate(self.spec.signature)
        self.encoder = ArrowEncoder(self.sig, self.spec.missing_policy)
        self.out = Path(self.spec.output)
        self.rejects = self.out / REJECTS_DIR
        self.spool = batch_dir / SPOOL_DIR
        self.rng = random.Random()
        self.runtime = None
        self.progress: dict = {}
        self._last_write = 0.0

    def load_model(self) -> None:
        path = Path(self.spec.artifact)
        self.runtime = load_onnx(path, self.spec.threads) if self.spec.format == "onnx" else load_runtime(
            path, self.spec.format)  # fmt: skip

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.rejects.mkdir(exist_ok=True)
        self.spool.mkdir(exist_ok=True)
        clean_temporaries(self.out)
        done = done_ranges(self.out)
        rejected = 0
        for p in self.rejects.glob("rejects-*.parquet"):  # only ranges whose part is in place count
            middle, count = p.stem[len("rejects-") :].rsplit("-n", 1)
            if self._mine(int(middle[1:6])) and (self.out / f"part-{middle}.parquet").exists():
                rejected += int(count)
        files = []
        for i, f in enumerate(self.spec.files):
            if not self._mine(i):  # another shard's: not counted here
                files.append({"path": f.path, "rows": 0, "rows_done": 0, "state": "elsewhere", "error": None})
                continue
            rows = f.rows
            if rows is None:
                try:
                    rows = csv_rows_estimate(f.path)
                except OSError:
                    rows = None
            d = sum(done.get(i, {}).values())
            files.append({"path": f.path, "rows": rows, "rows_done": d, "state": "pending", "error": None})
        rows_done = sum(f["rows_done"] for f in files)
        self.progress = {
            "pid": os.getpid(), "state": "running", "rows_done": rows_done, "rows_rejected": rejected,
            "rows_total": None, "files": files, "run_started_at": time.time(), "run_rows_at_start": rows_done,
            "rows_per_s": None, "eta_s": None,
        }  # fmt: skip
        self._total()
        self.load_model()
        self._write(force=True)
        columns = needed_columns(self.spec, self.sig)
        t_run = time.monotonic()
        for i, f in enumerate(self.spec.files):
            if not self._mine(i):
                continue
            st = files[i]
            mine = done.get(i, {})
            st["state"] = "running"
            try:
                todo = ((s, t) for s, t in read_ranges(f, columns, self.sig, self.spec.rows_per_batch) if s not in mine)
                for start, tbl, enc in prefetched(((s, t, self.encoder.encode(t)) for s, t in todo)):
                    self._range(i, f, start, tbl, enc)
                    self._throttle(t_run)
                st["state"] = "done"
                st["rows"] = st["rows_done"]  # exact now (a CSV's estimate may have been off)
            except FileProblem as e:
                st["state"], st["error"] = "failed", str(e)
                print(f"batch: {f.path}: {e}", file=sys.stderr, flush=True)
            self._total()
            self._write(force=True)
        failed = [x["path"] for x in files if x["state"] == "failed"]
        self.progress["state"] = "failed" if failed else "done"
        self._write(force=True)
        if failed:
            print(f"batch: {len(failed)} file(s) failed: {', '.join(failed)}", file=sys.stderr, flush=True)
            return 2
        print(f"batch: done, {self.progress['rows_done']} rows ({self.progress['rows_rejected']} rejected)",
              flush=True)  # fmt: skip
        return 0

    def _mine(self, file_idx: int) -> bool:
        return self.shard is None or self.spec.shard_of(file_idx) == self.shard

    def _range(self, i: int, f: InputFile, start: int, tbl: pa.Table, enc) -> None:
        good_idx = np.nonzero(enc.good)[0]
        if len(good_idx):
            assert self.runtime is not None
            out = self.runtime.run(enc.matrix)
            scores, labels, nonfinite = decode(out, self.sig)
            if nonfinite.any():  # real time answers 502 for these: never a score in the output
                for r in good_idx[nonfinite].tolist():
                    enc.reasons[r] = ("", "the model answered a non-finite score")
                keep = ~nonfinite
                good_idx, scores = good_idx[keep], scores.filter(pa.array(keep))
                labels = labels.filter(pa.array(keep)) if labels is not None else None
        else:
            scores, labels = pa.array([], pa.float64()), pa.array([], pa.string())
        passthrough = [c for c in [self.spec.id_column, *self.spec.keep] if c]
        cols = {c: tbl.column(c).take(pa.array(good_idx)) for c in passthrough}
        cols["score"] = scores
        if labels is not None:
            cols["label"] = labels
        stem = part_name(i, start, tbl.num_rows)[: -len(".parquet")]
        if len(good_idx) and self.spec.log_sample_rate > 0:
            self._spool(stem, enc, good_idx, scores, labels)
        if enc.reasons:
            bad = sorted(enc.reasons)
            rej = {c: tbl.column(c).take(pa.array(bad)) for c in passthrough}
            rej["_file"] = pa.array([f.path] * len(bad))
            rej["_row"] = pa.array([start + r for r in bad], pa.int64())
            rej["_field"] = pa.array([enc.reasons[r][0] or None for r in bad], pa.string())
            rej["_reason"] = pa.array([enc.reasons[r][1] for r in bad], pa.string())
            _write_parquet(pa.table(rej), self.rejects / f"rejects-{stem[5:]}-n{len(bad)}.parquet")
        # The part last: its rename is the range's commit.
        _write_parquet(pa.table(cols), self.out / f"{stem}.parquet")
        st = self.progress["files"][i]
        st["rows_done"] += tbl.num_rows
        self.progress["rows_done"] += tbl.num_rows
        self.progress["rows_rejected"] += len(enc.reasons)
        self._write()

    def _spool(self, stem: str, enc, good_idx: np.ndarray, scores: pa.Array, labels: pa.Array | None) -> None:
        """A sampled share of this range's scored rows, as one prediction-log request (the agent logs it)."""
        k = int(np.random.default_rng().binomial(len(good_idx), self.spec.log_sample_rate))
        if k == 0:
            return
        pick = np.sort(self.rng.sample(range(len(good_idx)), k))
        rows = good_idx[pick]
        num = np.column_stack([r[rows] for r in enc.raw_num]) if enc.raw_num else np.zeros((k, 0))
        num_flat = [None if x != x else x for x in num.ravel().tolist()]
        cats = [c.take(pa.array(rows)).to_pylist() for c in enc.raw_cat]
        cat_flat = [v for row in zip(*cats, strict=True) for v in row] if cats else []
        sc = scores.take(pa.array(pick)).to_pylist()
        lab = labels.take(pa.array(pick)).to_pylist() if labels is not None else [None] * k
        s = self.spec
        item = [f"batch-{s.id}-{stem[5:]}", s.endpoint or f"batch:{s.model}", s.model, s.version,
                num_flat, len(self.encoder.numeric_names), cat_flat, len(self.encoder.category_names),
                sc, lab, 0.0, "ok", None]  # fmt: skip
        write_atomic(self.spool / f"{stem}.json", orjson.dumps(item))

    def _throttle(self, t_run: float) -> None:
        cap = self.spec.max_rows_per_s
        if cap:
            done = self.progress["rows_done"] - self.progress["run_rows_at_start"]
            ahead = done / cap - (time.monotonic() - t_run)
            if ahead > 0:
                time.sleep(ahead)

    def _total(self) -> None:
        rows = [f["rows"] for f in self.progress["files"] if f["state"] not in ("failed", "elsewhere")]
        self.progress["rows_total"] = None if any(r is None for r in rows) else sum(rows)

    def _write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_write = now
        p = self.progress
        took = now - p["run_started_at"]
        did = p["rows_done"] - p["run_rows_at_start"]
        p["rows_per_s"] = did / took if took > 0 and did else None
        left = (p["rows_total"] - p["rows_done"]) if p["rows_total"] is not None else None
        p["eta_s"] = left / p["rows_per_s"] if left is not None and p["rows_per_s"] else None
        write_progress(self.dir, p, self.shard)


def prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """`items`, produced one ahead on a thread: the next range is read and encoded (Arrow's reads and numpy
    release the GIL) while this one is scored and written. At most depth + 2 ranges are held at once."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for it in items:
                while not stop.is_set():
                    try:
                        q.put((it, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((end, None))
        except BaseException as e:  # handed to the consumer, raised there
            q.put((end, e))

    t = threading.Thread(target=produce, name="batch-read", daemon=True)
    t.start()
    try:
        while True:
            it, err = q.get()
            if it is end:
                if err is not None:
                    raise err
                return
            yield it
    finally:
        stop.set()


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    # Dictionary-encode only what is already a dictionary or text: trying it on the scores (all distinct)
    # doubled the write time (measured: 15 -> 7.7 ms per 65,536 rows).
    dict_cols = [f.name for f in table.schema if pa.types.is_dictionary(f.type) or pa.types.is_string(f.type)]
    pq.write_table(table, tmp, use_dictionary=dict_cols)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m agent.batch.worker BATCH_DIR", file=sys.stderr)
        return 64
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    worker = Worker(Path(args[0]))
    if worker.spec.shards > 1:  # one task of the batch's Slurm job array: its index says which files are its
        task = os.environ.get("SLURM_ARRAY_TASK_ID", "")
        if not task.isdigit() or int(task) >= worker.spec.shards:
            print(f"batch: a worker of a batch in {worker.spec.shards} shards runs as a Slurm array task "
                  f"(SLURM_ARRAY_TASK_ID is {task!r})", file=sys.stderr)  # fmt: skip
            return 64
        worker.shard = int(task)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
