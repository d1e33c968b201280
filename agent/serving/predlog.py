"""The prediction log: every served row (or a sampled share of requests) into DuckDB via the store writer.

The request path only appends tuples to the writer's buffer (no disk, no lock held across I/O).
The writer's buffer is bounded; past the bound the oldest rows are dropped and counted
(`watchkeeper_store_rows_dropped_total{table="predictions"}`), so a slow disk costs log rows,
never memory or latency.
"""

from __future__ import annotations

import random
import time

from agent.store.writer import StoreWriter

COLUMNS = (
    "ts", "request_id", "endpoint", "model", "version", "row_idx", "num", "cat", "score", "label",
    "latency_ms", "status", "fallback_reason",
)  # fmt: skip


class PredictionLog:
    def __init__(self, writer: StoreWriter) -> None:
        self._writer = writer
        self.rows_logged = 0
        self.requests_skipped = 0

    def sampled(self, rate: float) -> bool:
        if rate >= 1.0:
            return True
        if random.random() < rate:
            return True
        self.requests_skipped += 1
        return False

    def log(
        self,
        request_id: str,
        endpoint: str,
        model: str,
        version: int | None,
        num: list[list[float | None]],
        cat: list[list[str | None]],
        scores: list[float | None],
        labels: list[str | None],
        latency_ms: float,
        status: str,
        fallback_reason: str | None,
    ) -> None:
        ts = time.time()
        rows = [
            (ts, request_id, endpoint, model, version, i, num[i] if i < len(num) else None,
             cat[i] if i < len(cat) else None, scores[i], labels[i], latency_ms, status, fallback_reason)
            for i in range(len(scores))
        ]  # fmt: skip
        self._writer.append("predictions", COLUMNS, rows)
        self.rows_logged += len(rows)

    @property
    def rows_committed(self) -> int:
        return self._writer.stats.written_by_table.get("predictions", 0)

    @property
    def rows_dropped(self) -> int:
        return self._writer.stats.dropped_by_table.get("predictions", 0)
