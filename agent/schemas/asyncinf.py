"""Asynchronous inference on the wire: an endpoint's async limits, a request's status, the queues' counts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from agent.schemas.common import STRICT_INPUT, WholeInt, _Wire

AsyncState = Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"]
CallbackState = Literal["pending", "delivered", "failed"]
# States after which a request never changes again (its result, if any, is the answer for its id).
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled", "expired"})
PRIORITY_MAX = 9


class AsyncConfig(_Wire):
    """An endpoint's asynchronous queue (`POST /api/v1/endpoints/{name}/async`); see docs/async.md."""

    model_config = STRICT_INPUT
    # Larger than real time's max_payload_bytes: the body streams to a file as it arrives. The worker parses
    # one body at a time, whole: ~5x its bytes as Python objects for `records` (~5x for `columns` too, on a
    # body a third the size), ~8x at peak with the encoded rows. 16 MiB is ~80k records.
    max_body_bytes: WholeInt = Field(default=16 * 2**20, ge=1024, le=2**30)
    max_rows: WholeInt = Field(default=100_000, ge=1, le=10_000_000)
    # A micro-batch's run in the model (and the rest of its processing) longer than this fails its requests.
    processing_timeout_s: float = Field(default=900.0, gt=0, le=3600)
    # Queued longer than this: `expired`, never run.
    max_queue_s: float = Field(default=6 * 3600.0, gt=0, le=7 * 86400)
    # Requests queued or running beyond this are refused: 429 + Retry-After.
    capacity: WholeInt = Field(default=10_000, ge=1, le=1_000_000)
    # A finished request (its state and result) is kept this long, then removed (404).
    result_ttl_s: float = Field(default=86400.0, gt=0, le=30 * 86400)
    # Rows per micro-batch into the model (requests are never split: a big one is a batch of its own).
    batch_rows: WholeInt = Field(default=512, ge=1, le=100_000)
    # Drain control: while paused, requests are taken and wait (max_queue_s still applies); none starts.
    paused: bool = False


class CallbackStatus(_Wire):
    url: str
    state: CallbackState
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: float | None = None  # unix time of the next retry while pending


class AsyncAccepted(_Wire):
    """The 202 of a submission (or the 200 of a resubmission with a known `X-Request-Id`)."""

    id: str
    endpoint: str
    state: AsyncState
    priority: int
    location: str


class AsyncStatus(_Wire):
    """`GET /api/v1/async/{id}`. `result` is the predict answer (with `predictions`) once `succeeded`, the error
    body (`error`, `detail`, `field`) of a request that `failed` on its input or the model, else null."""

    id: str
    endpoint: str
    state: AsyncState
    reason: str | None = None
    priority: int
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0  # runs started (more than 1 only after a restart interrupted a run)
    expires_at: float | None = None  # when a finished request is removed (result_ttl_s)
    result: dict[str, Any] | None = None
    callback: CallbackStatus | None = None


class AsyncQueueStats(_Wire):
    """One endpoint's async queue, for /api/v1/serving and the console."""

    queued: int = 0
    running: int = 0
    oldest_queued_s: float | None = None  # age of the oldest queued request
    capacity: int = 0
    succeeded: int = 0  # since start
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    callbacks_pending: int = 0
    callbacks_failed: int = 0
