"""Pipelines and runs in DuckDB, through the writer thread (committed before we answer)."""

from __future__ import annotations

import time

import duckdb

from agent.schemas.pipelines import PipelineSpec, Run
from agent.store.writer import StoreWriter


class PipelineStoreError(Exception):
    """Not committed: the caller must not act as if it were (503)."""


class PipelineStore:
    def __init__(self, writer: StoreWriter, con: duckdb.DuckDBPyConnection) -> None:
        self._writer, self._con = writer, con

    def _commit(self, sql: str, row: tuple) -> None:
        try:
            self._writer.call(lambda con: con.execute(sql, row), timeout=30)
        except Exception as e:
            raise PipelineStoreError(f"could not record it: {e}") from e

    def save_pipeline(self, spec: PipelineSpec, content: str) -> None:
        self._commit("INSERT OR REPLACE INTO pipelines VALUES (?, ?, ?, ?, ?)",
                     (spec.name, spec.version, spec.registered_at, spec.model_dump_json(), content))  # fmt: skip

    def save_run(self, run: Run, trigger_event: str | None = None) -> None:
        self._commit(
            "INSERT OR REPLACE INTO pipeline_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run.id, run.pipeline, run.state, run.created_at, time.time(), trigger_event, run.model_dump_json()),
        )

    def load_pipelines(self) -> list[PipelineSpec]:
        """The newest registered version of each pipeline."""
        cur = self._con.cursor()
        try:
            rows = cur.execute(
                "SELECT body FROM (SELECT *, row_number() OVER (PARTITION BY name ORDER BY registered_at DESC) rn"
                " FROM pipelines) WHERE rn = 1"
            ).fetchall()
        finally:
            cur.close()
        return [PipelineSpec.model_validate_json(r[0]) for r in rows]

    def load_runs(self) -> list[tuple[Run, str | None]]:
        """Every run (oldest first) with its trigger event."""
        cur = self._con.cursor()
        try:
            rows = cur.execute("SELECT body, trigger_event FROM pipeline_runs ORDER BY created_at").fetchall()
        finally:
            cur.close()
        return [(Run.model_validate_json(b), ev) for b, ev in rows]

    def load_versions(self, name: str) -> list[PipelineSpec]:
        """Every registered version of one pipeline (a run resumed at start may use an older one)."""
        cur = self._con.cursor()
        try:
            rows = cur.execute("SELECT body FROM pipelines WHERE name = ? ORDER BY registered_at", [name]).fetchall()
        finally:
            cur.close()
        return [PipelineSpec.model_validate_json(r[0]) for r in rows]
