"""Batch transform in the agent: submit (a job of the `batch` pipeline), status, resume, cancel, and the
prediction-log spool of running batches (docs/batch.md).

A batch is a directory, `<data_dir>/batch/<id>/`: `spec.json` (written and fsynced before the job is
submitted, so a batch the API answered survives kill -9), `progress.json` and `predlog/` (written by the
worker). Its job is named `batch-<id>`; resume requeues that job (its next attempt skips the parts
already written), cancel cancels it. The agent never waits on the worker: it reads its files.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path

import orjson

import agent
from agent.batch.state import MARKER, PART, BatchSpec, InputFile, read_progress, write_atomic
from agent.jobs.service import JobError, JobService
from agent.schemas.batch import Batch, BatchFile, BatchList, BatchProgress, BatchState, BatchSubmit
from agent.schemas.jobs import Job, JobProgress, JobSubmit

log = logging.getLogger("watchkeeper.batch")
PIPELINE = "batch"
MAX_DEFAULT_SHARDS = 64  # a Slurm batch without `shards`: one worker per file, up to this many
SPOOL_POLL_S = 1.0
ORPHAN_AFTER_S = 60.0  # a batch's job is submitted right after its spec is written; later, no job means gone
RESERVED = ("score", "label")  # the prediction columns
_STATE: dict[str, BatchState] = {
    "PENDING": "queued", "RUNNING": "running", "COMPLETED": "succeeded", "CANCELLED": "cancelled",
}  # fmt: skip


class BatchError(JobError):
    """A refusal: status, error code, words, the field."""


def _files(path: Path) -> list[InputFile]:
    """The input: one file, or a directory's .parquet/.csv files (sorted: a file's index is its place)."""
    if path.is_dir():
        cands = sorted(p for p in path.iterdir() if p.suffix.lower() in (".parquet", ".pq", ".csv") and p.is_file())
        if not cands:
            raise BatchError(422, "invalid_request", f"{path} holds no .parquet or .csv file", "input")
    elif path.is_file():
        cands = [path]
    else:
        raise BatchError(422, "invalid_request", f"no such file or directory on the agent's host: {path}", "input")
    out = []
    for p in cands:
        fmt = "csv" if p.suffix.lower() == ".csv" else "parquet"
        rows = None
        if fmt == "parquet":
            try:
                import pyarrow.parquet as pq

                rows = pq.ParquetFile(p).metadata.num_rows
            except Exception:  # unreadable: it fails alone when the worker gets to it
                rows = None
        out.append(InputFile(str(p), fmt, rows, p.stat().st_size))
    return out


def _columns_of(f: InputFile) -> list[str] | None:
    """The first file's column names (to check id/keep/features at submit); None when it can't be read."""
    try:
        if f.format == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(f.path).schema_arrow.names)
        with open(f.path, encoding="utf-8", errors="replace") as fh:
            import csv

            return next(csv.reader([fh.readline()]), [])
    except Exception:
        return None


class BatchService:
    def __init__(self, data_dir: Path, jobs: JobService, registry, serving, predlog) -> None:
        self.root = data_dir / "batch"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.jobs = jobs
        self.registry = registry
        self.serving = serving
        self.predlog = predlog
        self.lock = threading.Lock()
        self.logged_rows = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ API

    def submit(self, body: BatchSubmit, principal: str) -> Batch:
        """Check, write the spec (fsynced), submit the job. Raises BatchError (4xx) naming the field."""
        problem = body.target_problem()
        if problem is not None:
            raise BatchError(422, "invalid_request", problem[1], problem[0])
        policy = body.missing_policy
        if body.endpoint is not None:
            ep = self.serving.endpoints.get(body.endpoint) if self.serving is not None else None
            if ep is None:
                raise BatchError(404, "not_found", f"no endpoint {body.endpoint!r}", "endpoint")
            if ep.version is None:
                raise BatchError(409, "conflict", f"endpoint {body.endpoint!r} has no model: {ep.resolve_error}",
                                 "endpoint")  # fmt: skip
            mv, policy = ep.version, policy or ep.config.missing_policy
        else:
            try:
                mv = self.registry.resolve(body.model, body.version)
            except Exception as e:
                raise BatchError(404, "not_found", f"no model version {body.model}:{body.version} ({e})",
                                 "version") from None  # fmt: skip
        for c in body.keep + ([body.id_column] if body.id_column else []):
            if c in RESERVED:
                raise BatchError(422, "invalid_request", f"{c!r} is a prediction column's name; rename it",
                                 "keep" if c in body.keep else "id_column")  # fmt: skip
        files = _files(Path(body.input))
        cols = _columns_of(files[0])
        if cols is not None:
            for c, fld in [(body.id_column, "id_column"), *((k, "keep") for k in body.keep)]:
                if c and c not in cols:
                    raise BatchError(422, "invalid_request", f"{files[0].path} has no column {c!r}", fld)
            absent = [f.name for f in mv.signature.features if f.name not in cols]
            if absent:
                why = f"{files[0].path} lacks the model's feature column {absent[0]!r}"
                raise BatchError(422, "invalid_request", why, "input")
        out = Path(body.output)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BatchError(409, "conflict", f"{out} exists and is not an empty directory (resume a batch with "
                             "POST /batch/{id}/resume)", "output")  # fmt: skip
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BatchError(422, "invalid_request", f"can't create {out}: {e.strerror}", "output") from None
        shards = 1
        if self.jobs.backend_of(PIPELINE) == "slurm":  # one worker per shard, a job array: a file is the unit
            shards = min(len(files), body.shards or min(len(files), MAX_DEFAULT_SHARDS))
        elif body.shards not in (None, 1) or body.parallel is not None:
            fld = "shards" if body.shards not in (None, 1) else "parallel"
            raise BatchError(422, "invalid_request", f"the {PIPELINE} pipeline runs on this host: one worker scores "
                             "every file (shards are the tasks of a Slurm job array)", fld)  # fmt: skip
        bid = "b-" + secrets.token_hex(5)
        spec = BatchSpec(
            id=bid, model=mv.name, version=mv.version, endpoint=body.endpoint,
            artifact=str(self.registry.artifact_path(mv.name, mv.version)), format=mv.format,
            signature=mv.signature.model_dump(mode="json"), missing_policy=policy or "reject", input=body.input,
            output=str(out.resolve()), files=files, id_column=body.id_column, keep=list(body.keep),
            rows_per_batch=body.rows_per_batch, log_sample_rate=body.log_sample_rate,
            threads=max(1, int(body.cpu)), max_rows_per_s=body.max_rows_per_s, submitted_by=principal,
            submitted_at=time.time(), reason=body.reason, shards=shards,
        )  # fmt: skip
        d = self.root / bid
        d.mkdir(mode=0o700)
        write_atomic(out / MARKER, orjson.dumps({"batch": bid}))
        write_atomic(d / "spec.json", spec.to_json().encode(), fsync=True)
        code_root = str(Path(agent.__file__).resolve().parent.parent)
        job = JobSubmit(pipeline=PIPELINE, name=f"batch-{bid}", cpu=body.cpu, mem=body.mem,
                        command=[sys.executable, "-m", "agent.batch.worker", str(d)], workdir=code_root,
                        reason=body.reason or f"batch {bid}", array=shards if shards > 1 else None,
                        array_parallel=body.parallel if shards > 1 else None)  # fmt: skip
        try:
            self.jobs.submit(job, principal)
        except BaseException:  # refused (never_fits, store down): no batch without a job
            shutil.rmtree(d, ignore_errors=True)
            (out / MARKER).unlink(missing_ok=True)
            raise
        return self.get(bid)

    def get(self, bid: str) -> Batch:
        d = self.root / bid
        try:
            spec = BatchSpec.from_json((d / "spec.json").read_text())
        except (OSError, ValueError):
            raise BatchError(404, "not_found", f"no batch {bid!r}", "id") from None
        return self._view(spec, read_progress(d, spec), self.job_of(bid))

    def list(self) -> BatchList:
        out = []
        for d in sorted(self.root.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                out.append(self.get(d.name))
            except BatchError:
                continue
        return BatchList(batches=out)

    def resume(self, bid: str, principal: str, note: str = "") -> Batch:
        b = self.get(bid)
        if b.state in ("queued", "running"):
            raise BatchError(409, "conflict", f"batch {bid} is {b.state}", "id")
        if b.state == "succeeded":
            raise BatchError(409, "conflict", f"batch {bid} is complete: nothing to resume", "id")
        if b.job_id is None:
            raise BatchError(409, "conflict", f"batch {bid} has no job to resume", "id")
        self.jobs.requeue(b.job_id, principal, note or "batch resume")
        return self.get(bid)

    def cancel(self, bid: str, principal: str, note: str = "") -> Batch:
        b = self.get(bid)
        if b.job_id is None or b.state not in ("queued", "running"):
            raise BatchError(409, "conflict", f"batch {bid} is {b.state}", "id")
        self.jobs.cancel(b.job_id, principal, note)
        return self.get(bid)

    def job_of(self, bid: str) -> Job | None:
        name = f"batch-{bid}"
        with self.jobs.lock:
            for rec in self.jobs.jobs.values():
                if rec.job.name == name:
                    return rec.job.model_copy(deep=True)
        return None

    def progress_of(self, job: Job) -> JobProgress | None:
        """A batch job's `progress` in /jobs and the jobs screen (None for other jobs)."""
        if job.pipeline != PIPELINE or not (job.name or "").startswith("batch-b-"):
            return None
        d = self.root / job.name[len("batch-") :]
        try:
            spec = BatchSpec.from_json((d / "spec.json").read_text()) if job.array else None
        except (OSError, ValueError):
            spec = None
        p = read_progress(d, spec)
        if p is None:
            return None
        b = _progress(p, job.state == "RUNNING")
        return JobProgress(done=b.rows_done, total=b.rows_total, rate_per_s=b.rows_per_s, eta_s=b.eta_s)

    # ------------------------------------------------------------------ view

    def _view(self, spec: BatchSpec, p: dict | None, job: Job | None) -> Batch:
        files = [BatchFile(path=f.path, rows=f.rows, rows_done=0, state="pending") for f in spec.files]
        if p is not None:
            files = [
                BatchFile(**{k: x[k] for k in ("path", "rows", "rows_done", "state", "error")}) for x in p["files"]
            ]
        else:  # not started: count what is already written (a resumed batch before its worker wrote)
            for name in os.listdir(spec.output) if os.path.isdir(spec.output) else ():
                m = PART.match(name)
                if m and int(m.group(1)) < len(files):
                    files[int(m.group(1))].rows_done += int(m.group(3))
        running = job is not None and job.state == "RUNNING"
        if job is not None and not running:  # the worker is gone: nothing is "running" in it any more
            for f in files:
                if f.state == "running":
                    f.state = "pending"
        failed = [f.path for f in files if f.state == "failed"]
        state: BatchState = _STATE.get(job.state, "failed") if job is not None else "queued"
        reason = job.reason if job is not None else ""
        if job is None and time.time() - spec.submitted_at > ORPHAN_AFTER_S:
            # Its job is gone from memory (ended before the jobs' log_retention): the worker's last word stands.
            done = p is not None and p.get("state") == "done"
            state = "succeeded" if done else "failed"
            reason = "" if done else "its job is no longer known to this agent; resume is not possible"
        if state == "failed" and failed:
            reason = f"{len(failed)} file(s) could not be read: " + "; ".join(
                f"{f.path}: {f.error}" for f in files if f.state == "failed")[:2000]  # fmt: skip
        return Batch(
            id=spec.id, state=state, reason=reason, job_id=job.id if job else None,
            job_state=job.state if job else None, model=spec.model, version=spec.version, endpoint=spec.endpoint,
            input=spec.input, output=spec.output, rejects=str(Path(spec.output) / "_rejects"),
            progress=_progress(p, running) if p is not None else BatchProgress(
                rows_done=sum(f.rows_done for f in files), rows_total=_sum([f.rows for f in files]),
                rows_rejected=0, rows_per_s=None, eta_s=None),
            files=files, failed_files=failed, submitted_by=spec.submitted_by, submitted_at=spec.submitted_at,
            attempt=job.attempt if job else 1, shards=spec.shards,
        )  # fmt: skip

    # ------------------------------------------------------------------ prediction-log spool

    def start(self) -> None:
        self._thread = threading.Thread(target=self._spool_loop, name="batch-spool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _spool_loop(self) -> None:
        while not self._stop.wait(SPOOL_POLL_S):
            try:
                self.ingest()
            except Exception:
                log.exception("batch: prediction-log spool")

    def ingest(self) -> int:
        """Put the workers' sampled rows into the prediction log (journaled there before the file goes)."""
        n = 0
        for f in self.root.glob("*/predlog/part-*.json"):
            try:
                item = orjson.loads(f.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            if self.predlog is not None:
                self.predlog.log(*item, mode="batch")
                n += len(item[8])
            f.unlink(missing_ok=True)
        self.logged_rows += n
        return n


def _sum(xs: list[int | None]) -> int | None:
    return None if any(x is None for x in xs) else sum(x for x in xs if x is not None)


def _progress(p: dict, running: bool) -> BatchProgress:
    live = running and p.get("state") == "running"  # a killed worker's last rate is no ETA
    return BatchProgress(
        rows_done=p["rows_done"], rows_total=p.get("rows_total"), rows_rejected=p["rows_rejected"],
        rows_per_s=p.get("rows_per_s") if live else None, eta_s=p.get("eta_s") if live else None,
    )  # fmt: skip
