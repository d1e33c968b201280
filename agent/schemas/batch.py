"""Batch transform: `POST /api/v1/batch` and what `/api/v1/batch/{id}` answers (docs/batch.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.schemas.common import STRICT_INPUT, WholeInt, _Wire
from agent.schemas.jobs import Size

BatchState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
_COL = Field(default=None, min_length=1, max_length=256)


class BatchSubmit(_Wire):
    """Score a dataset with an endpoint's model (its version and missing policy) or a model version.

    `input` and `output` are paths on the agent's host. Give `endpoint`, or `model` and `version`."""

    model_config = STRICT_INPUT

    endpoint: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    model: str | None = Field(default=None, min_length=1, max_length=128)
    version: WholeInt | None = Field(default=None, ge=1)
    missing_policy: Literal["reject", "impute"] | None = None  # default: the endpoint's, else "reject"
    input: str = Field(min_length=1, max_length=4096)
    output: str = Field(min_length=1, max_length=4096)
    id_column: str | None = _COL
    keep: list[str] = Field(default_factory=list, max_length=256)
    rows_per_batch: WholeInt = Field(default=65536, ge=1, le=1_000_000)
    log_sample_rate: float = Field(default=0.01, ge=0, le=1)  # share of rows into the prediction log
    max_rows_per_s: float | None = Field(default=None, gt=0)  # throttle (a shared host)
    cpu: float = Field(default=1.0, gt=0, le=256)  # per worker (per shard)
    mem: Size | None = None
    reason: str = Field(default="", max_length=1024)
    # Where the batch pipeline runs in Slurm: the input files split among this many workers, one job array
    # (default: one per file, up to 64), at most `parallel` at once. A local batch has one worker.
    shards: WholeInt | None = Field(default=None, ge=1, le=1000)
    parallel: WholeInt | None = Field(default=None, ge=1, le=1000)

    def target_problem(self) -> tuple[str, str] | None:
        """(field, why) when the target is not one endpoint or one model version (a 422 naming the field)."""
        if self.endpoint is None and self.model is None:
            return "endpoint", "give endpoint, or model and version"
        if self.endpoint is not None and self.model is not None:
            return "model", "give endpoint or model, not both"
        if self.model is not None and self.version is None:
            return "version", "required with model"
        return None


class BatchAction(_Wire):
    """`POST /api/v1/batch/{id}/resume` and `/cancel`."""

    model_config = STRICT_INPUT

    reason: str = Field(default="", max_length=1024)


class BatchFile(_Wire):
    path: str
    rows: int | None  # None: not known yet (a CSV before the worker counted it)
    rows_done: int
    state: Literal["pending", "running", "done", "failed"]
    error: str | None = None


class BatchProgress(_Wire):
    rows_done: int  # input rows whose range is written (scored or rejected)
    rows_total: int | None
    rows_rejected: int
    rows_per_s: float | None  # this run's rate
    eta_s: float | None


class Batch(_Wire):
    id: str
    state: BatchState
    reason: str = ""  # why it failed, or the job's reason
    job_id: str | None
    job_state: str | None
    model: str
    version: int
    endpoint: str | None
    input: str
    output: str
    rejects: str  # the directory of rejected rows (one Parquet file per range that had any)
    progress: BatchProgress
    files: list[BatchFile]
    failed_files: list[str]
    submitted_by: str
    submitted_at: float
    attempt: int = 1  # the job's attempt: 1 + resumes
    shards: int = 1  # workers (Slurm array tasks) the files are split among; file i goes to shard i % shards


class BatchList(_Wire):
    batches: list[Batch]
