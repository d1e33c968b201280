"""`watchkeeper loadtest ENDPOINT`: drive an endpoint's predict route and report what it did.

    watchkeeper loadtest flights --agent http://10.0.0.5:7070 --duration 30 --concurrency 16 --rows 1-50

Always bounded: it stops after `--duration` seconds or `--requests` requests, whichever comes
first (with only `--requests`, a time cap of MAX_DURATION_S still applies). Payloads are built
before the clock starts, from `--data FILE` (parquet, CSV or JSON lines, read with polars) or
generated from the model version's signature, so the client spends its time sending, not
building JSON. Requests go over one keep-alive HTTP/1.1 connection pool with `--concurrency`
asyncio workers.

The report has client-side latency percentiles (linear interpolation between closest ranks, as
numpy's default), status codes, fallback answers by reason, and the agent process's CPU use over
the run from `process_cpu_seconds_total` on its /metrics, before and after. The client's own CPU
is shown too: near 100 % of one core, the client was the bottleneck and the rates are a lower
bound on what the agent can do.

Exit codes: 0 every request answered 2xx, 1 any error (non-2xx status or transport failure),
2 usage (unknown endpoint, unreachable agent, bad options), 130 interrupted.

No Textual here; from `agent/` only the wire contract.
"""
