"""The batch half of the agents' API (`/api/v1/batch`): `JobsClient` plus submit, read, resume, cancel.

Like `console.core.client` this imports no Textual and nothing from `agent/` but the wire contract.
"""

from __future__ import annotations

from urllib.parse import quote

from pydantic import TypeAdapter

from agent.schemas import API_PREFIX, Batch, BatchAction, BatchList, BatchSubmit
from console.jobs.client import JobsClient

BATCH_PATH = f"{API_PREFIX}/batch"
_BATCH = TypeAdapter(Batch)
_BATCHES = TypeAdapter(BatchList)


class BatchClient(JobsClient):
    """`JobsClient` plus the batch routes; refusals carry the agent's reason and field (`JobRefused`)."""

    async def submit_batch(self, submit: BatchSubmit) -> Batch:
        """`POST /api/v1/batch` (operator; audited): 201 with the batch."""
        body = submit.model_dump_json(exclude_none=True).encode()
        return self.parse(BATCH_PATH, _BATCH, await self._jobs_request("POST", BATCH_PATH, body=body))

    async def batch(self, batch_id: str) -> Batch:
        path = f"{BATCH_PATH}/{quote(batch_id, safe='')}"
        return self.parse(path, _BATCH, await self._jobs_request("GET", path))

    async def batches(self) -> BatchList:
        return self.parse(BATCH_PATH, _BATCHES, await self._jobs_request("GET", BATCH_PATH))

    async def batch_action(self, batch_id: str, action: str, reason: str = "") -> Batch:
        """`POST /api/v1/batch/{id}/resume|cancel` (operator; audited)."""
        if action not in ("resume", "cancel"):
            raise ValueError(f"unknown batch action {action!r}")
        path = f"{BATCH_PATH}/{quote(batch_id, safe='')}/{action}"
        body = BatchAction(reason=reason).model_dump_json().encode()
        return self.parse(path, _BATCH, await self._jobs_request("POST", path, body=body))
