"""The async requests in memory, folded from the record file: their states, each endpoint's queue in
priority order (higher first, FIFO within a priority: by submission sequence), and counts.

Bodies and results are on disk (agent/asyncinf/blobs.py, queue.py); an entry holds only where.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

from agent.schemas import FINAL_STATES, AsyncQueueStats, CallbackStatus


@dataclass
class Entry:
    id: str
    endpoint: str
    priority: int
    seq: int
    submitted_at: float
    principal: str
    callback_url: str | None
    body_bytes: int
    rows: int  # 0 when not known at submission (a body too large to check then)
    state: str = "queued"
    reason: str | None = None
    attempts: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    callback_state: str | None = None  # pending | delivered | failed, None without a callback
    callback_attempts: int = 0
    callback_error: str | None = None
    callback_next_at: float | None = None
    body_ref: list[int] | None = None  # [segment, offset, length] in the body segments; None: bodies/<id>
    result_ref: list[int] | None = None  # the answer in the result segments (succeeded and failed)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def callback(self) -> CallbackStatus | None:
        if self.callback_url is None or self.callback_state is None:
            return None
        return CallbackStatus(
            url=self.callback_url,
            state=self.callback_state,  # type: ignore[arg-type]
            attempts=self.callback_attempts,
            last_error=self.callback_error,
            next_attempt_at=self.callback_next_at,
        )

    def records(self) -> list[list]:
        """The records that rebuild this entry (for compaction)."""
        out: list[list] = [
            ["s", self.id, self.endpoint, self.priority, self.seq, self.submitted_at, self.principal,
             self.callback_url, self.body_bytes, self.rows, None if self.final else self.body_ref],
        ]  # fmt: skip
        if self.attempts:
            out.append(["r", self.id, self.attempts, self.started_at])
        if self.final:
            out.append(["d", self.id, self.state, self.reason, self.finished_at, self.result_ref])
        if self.callback_state not in (None, "pending") or self.callback_attempts:
            out.append(["c", self.id, self.callback_state, self.callback_attempts, self.callback_error,
                        self.callback_next_at])  # fmt: skip
        return out


@dataclass
class EndpointQueue:
    heap: list[tuple[int, int, str]] = field(default_factory=list)  # (-priority, seq, id); stale ids skipped
    queued: int = 0
    running: int = 0
    done: Counter = field(default_factory=Counter)  # final states since start


class AsyncTable:
    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.queues: dict[str, EndpointQueue] = {}
        self.seq = 0

    def q(self, endpoint: str) -> EndpointQueue:
        eq = self.queues.get(endpoint)
        if eq is None:
            eq = self.queues[endpoint] = EndpointQueue()
        return eq

    # ------------------------------------------------------------------ folding records (start-up and live)

    def apply(self, rec: list, live: bool = True) -> Entry | None:
        """Apply one record. At start-up (`live` False) counts of finished states are not "since start"."""
        kind, rid = rec[0], rec[1]
        if kind == "s":
            _, rid, ep, prio, seq, ts, principal, cb, size, rows = rec[:10]
            e = Entry(rid, ep, prio, seq, ts, principal, cb, size, rows, body_ref=rec[10] if len(rec) > 10 else None)
            if cb is not None:
                e.callback_state = "pending"
            self.entries[rid] = e
            self.seq = max(self.seq, seq)
            eq = self.q(ep)
            heapq.heappush(eq.heap, (-prio, seq, rid))
            eq.queued += 1
            return e
        e = self.entries.get(rid)
        if e is None:
            return None
        eq = self.q(e.endpoint)
        if kind == "r":
            if e.state == "queued":
                eq.queued -= 1
                eq.running += 1
            e.state, e.attempts, e.started_at = "running", rec[2], rec[3]
        elif kind == "d":
            if e.state == "queued":
                eq.queued -= 1
            elif e.state == "running":
                eq.running -= 1
            e.state, e.reason, e.finished_at = rec[2], rec[3], rec[4]
            e.result_ref = rec[5] if len(rec) > 5 else None
            if live:
                eq.done[e.state] += 1
        elif kind == "c":
            e.callback_state, e.callback_attempts, e.callback_error, e.callback_next_at = rec[2:6]
        elif kind == "x":
            if e.state == "queued":
                eq.queued -= 1
            elif e.state == "running":
                eq.running -= 1
            del self.entries[rid]
        return e

    def requeue_running(self) -> list[Entry]:
        """After a restart: runs that were interrupted go back to their queue (at-least-once)."""
        out = []
        for e in self.entries.values():
            if e.state == "running":
                eq = self.q(e.endpoint)
                eq.running -= 1
                eq.queued += 1
                e.state = "queued"
                heapq.heappush(eq.heap, (-e.priority, e.seq, e.id))
                out.append(e)
        return out

    # ------------------------------------------------------------------ the queues

    def pop(self, endpoint: str) -> Entry | None:
        """The next queued request of `endpoint` (highest priority, then oldest), removed from its heap."""
        eq = self.queues.get(endpoint)
        while eq is not None and eq.heap:
            _, _, rid = heapq.heappop(eq.heap)
            e = self.entries.get(rid)
            if e is not None and e.state == "queued":
                return e
        return None

    def peek(self, endpoint: str) -> Entry | None:
        eq = self.queues.get(endpoint)
        while eq is not None and eq.heap:
            e = self.entries.get(eq.heap[0][2])
            if e is not None and e.state == "queued":
                return e
            heapq.heappop(eq.heap)
        return None

    def push_back(self, e: Entry) -> None:
        """A popped request that could not run now (its model not loaded): back in its place."""
        heapq.heappush(self.q(e.endpoint).heap, (-e.priority, e.seq, e.id))

    def stats(self, endpoint: str, capacity: int, now: float) -> AsyncQueueStats:
        eq = self.q(endpoint)
        oldest = min((e.submitted_at for e in self.entries.values() if e.endpoint == endpoint and e.state == "queued"),
                     default=None)  # fmt: skip
        cb = Counter(e.callback_state for e in self.entries.values() if e.endpoint == endpoint and e.callback_url)
        return AsyncQueueStats(
            queued=eq.queued, running=eq.running, oldest_queued_s=None if oldest is None else max(0.0, now - oldest),
            capacity=capacity, succeeded=eq.done["succeeded"], failed=eq.done["failed"],
            cancelled=eq.done["cancelled"], expired=eq.done["expired"], callbacks_pending=cb["pending"],
            callbacks_failed=cb["failed"],
        )  # fmt: skip
