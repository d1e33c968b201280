"""Asynchronous inference: requests queued durably, run later in micro-batches, answered by poll or callback.

`records.py` the queue's append-only record file (what survives kill -9), `blobs.py` bodies and results in
segment files, `table.py` the in-memory state
folded from it (priority order, counts), `queue.py` submit / status / cancel / expiry / TTL, `worker.py` the
drainer into the model (yields to real time), `callbacks.py` webhook delivery with retries,
`metrics.py` its /metrics families. The routes are `agent/api/routes/asyncinf.py`; see docs/async.md.
"""
