"""The store's schema, as numbered migrations applied in order at start-up.

A migration is never edited once released: add a new one. Timestamps are UTC `TIMESTAMP`s;
the API speaks unix seconds (`epoch(ts)`).
"""

from __future__ import annotations

import time

import duckdb

from agent.store.sqltime import ts_from_unix

# Metrics kept per host sample and per GPU sample; rollups keep avg and max of each.
HOST_COLUMNS = (
    "cpu_percent",
    "load1",
    "memory_used_bytes",
    "memory_percent",
    "swap_used_bytes",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
    "net_recv_bytes_per_s",
    "net_sent_bytes_per_s",
)
GPU_COLUMNS = (
    "utilization_percent",
    "memory_used_bytes",
    "memory_total_bytes",
    "power_watts",
    "temperature_c",
    "sm_clock_mhz",
)


def _cols(names: tuple[str, ...]) -> str:
    return ", ".join(f"{n} DOUBLE" for n in names)


def _rollup_cols(names: tuple[str, ...]) -> str:
    return ", ".join(f"{n} DOUBLE, {n}_max DOUBLE" for n in names)


MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        f"""
        CREATE TABLE host_samples (ts TIMESTAMP NOT NULL, {_cols(HOST_COLUMNS)});
        CREATE TABLE gpu_samples (ts TIMESTAMP NOT NULL, gpu_index INTEGER NOT NULL, uuid VARCHAR,
                                  {_cols(GPU_COLUMNS)});
        CREATE TABLE host_rollup_1m (bucket TIMESTAMP NOT NULL, samples INTEGER,
                                     {_rollup_cols(HOST_COLUMNS)});
        CREATE TABLE gpu_rollup_1m (bucket TIMESTAMP NOT NULL, gpu_index INTEGER NOT NULL, uuid VARCHAR,
                                    samples INTEGER, {_rollup_cols(GPU_COLUMNS)});
        CREATE TABLE agent_alerts (ts TIMESTAMP NOT NULL, severity VARCHAR NOT NULL, kind VARCHAR NOT NULL,
                                   message VARCHAR NOT NULL);
        CREATE TABLE audit_log (seq BIGINT PRIMARY KEY, ts DOUBLE NOT NULL, principal VARCHAR NOT NULL,
                                role VARCHAR NOT NULL, via VARCHAR NOT NULL, action VARCHAR NOT NULL,
                                target VARCHAR NOT NULL, detail VARCHAR NOT NULL, client VARCHAR,
                                prev_hash VARCHAR NOT NULL, hash VARCHAR NOT NULL);
        CREATE TABLE tokens (accessor VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, role VARCHAR NOT NULL,
                             digest VARCHAR NOT NULL UNIQUE, source VARCHAR NOT NULL,
                             created_at DOUBLE NOT NULL, revoked_at DOUBLE);
        CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
        """,
    ),
]

MIGRATIONS.append(
    (
        2,
        """
        -- Model registry. A version row is never updated: (name, version) and its digest are immutable.
        CREATE TABLE model_versions (name VARCHAR NOT NULL, version INTEGER NOT NULL, digest VARCHAR NOT NULL,
                                     size_bytes BIGINT NOT NULL, format VARCHAR NOT NULL,
                                     created_at DOUBLE NOT NULL, created_by VARCHAR NOT NULL,
                                     description VARCHAR NOT NULL, lineage VARCHAR NOT NULL,
                                     signature VARCHAR NOT NULL, tags VARCHAR NOT NULL, metrics VARCHAR NOT NULL,
                                     profile VARCHAR, PRIMARY KEY (name, version));
        -- Alias moves, append-only; the current alias is the latest event per (model, alias).
        CREATE TABLE alias_events (seq BIGINT PRIMARY KEY, ts DOUBLE NOT NULL, model VARCHAR NOT NULL,
                                   alias VARCHAR NOT NULL, from_version INTEGER, to_version INTEGER NOT NULL,
                                   principal VARCHAR NOT NULL, reason VARCHAR NOT NULL);
        -- Endpoint configuration and operator switches, append-only; current state = latest per endpoint.
        CREATE TABLE endpoint_events (seq BIGINT PRIMARY KEY, ts DOUBLE NOT NULL, endpoint VARCHAR NOT NULL,
                                      kind VARCHAR NOT NULL, body VARCHAR NOT NULL, principal VARCHAR NOT NULL);
        -- Prediction log: one row per predicted row. Features in signature order, typed.
        CREATE TABLE predictions (ts TIMESTAMP NOT NULL, request_id VARCHAR NOT NULL, endpoint VARCHAR NOT NULL,
                                  model VARCHAR NOT NULL, version INTEGER, row_idx INTEGER NOT NULL,
                                  num DOUBLE[], cat VARCHAR[], score DOUBLE, label VARCHAR,
                                  latency_ms DOUBLE NOT NULL, status VARCHAR NOT NULL, fallback_reason VARCHAR);
        """,
    )
)

MIGRATIONS.append(
    (
        3,
        """
        -- Labels and outcomes, arriving late and in any order; joined to predictions on (request_id, row_idx).
        CREATE TABLE feedback (ts TIMESTAMP NOT NULL, received_at DOUBLE NOT NULL, endpoint VARCHAR NOT NULL,
                               request_id VARCHAR NOT NULL, row_idx INTEGER NOT NULL, label VARCHAR,
                               value DOUBLE, principal VARCHAR NOT NULL);
        -- One mergeable histogram per endpoint, model version and window (agent.monitoring.window JSON):
        -- drift over any time range merges these, never re-scans predictions.
        CREATE TABLE drift_windows (endpoint VARCHAR NOT NULL, model VARCHAR NOT NULL, version INTEGER NOT NULL,
                                    window_start DOUBLE NOT NULL, window_end DOUBLE NOT NULL,
                                    rows BIGINT NOT NULL, histogram VARCHAR NOT NULL,
                                    PRIMARY KEY (endpoint, version, window_start));
        -- Per-window scores against the reference and against the previous window (sparklines, alerts).
        CREATE TABLE drift_scores (endpoint VARCHAR NOT NULL, model VARCHAR NOT NULL, version INTEGER NOT NULL,
                                   window_end DOUBLE NOT NULL, baseline VARCHAR NOT NULL, feature VARCHAR NOT NULL,
                                   kind VARCHAR NOT NULL, method VARCHAR NOT NULL, score DOUBLE,
                                   drifted BOOLEAN NOT NULL, verdict VARCHAR NOT NULL, missing_rate DOUBLE,
                                   out_of_range_share DOUBLE, unseen_share DOUBLE);
        -- Alert instances by fingerprint (rule + labels); state changes are rows in alert_events.
        CREATE TABLE alerts (fingerprint VARCHAR PRIMARY KEY, body VARCHAR NOT NULL, state VARCHAR NOT NULL,
                             updated_at DOUBLE NOT NULL);
        CREATE TABLE alert_events (ts DOUBLE NOT NULL, fingerprint VARCHAR NOT NULL, event VARCHAR NOT NULL,
                                   detail VARCHAR NOT NULL);
        """,
    )
)

MIGRATIONS.append(
    (
        4,
        """
        -- Rollouts as append-only events; a rollout's state is the replay of its events (survives kill -9).
        CREATE TABLE rollout_events (seq BIGINT PRIMARY KEY, ts DOUBLE NOT NULL, rollout_id VARCHAR NOT NULL,
                                     endpoint VARCHAR NOT NULL, kind VARCHAR NOT NULL, body VARCHAR NOT NULL,
                                     principal VARCHAR NOT NULL);
        -- Registered datasets (validation sets for rollout gates): immutable name + version + digest.
        CREATE TABLE datasets (name VARCHAR NOT NULL, version INTEGER NOT NULL, digest VARCHAR NOT NULL,
                               rows BIGINT NOT NULL, columns VARCHAR NOT NULL, size_bytes BIGINT NOT NULL,
                               created_at DOUBLE NOT NULL, created_by VARCHAR NOT NULL, PRIMARY KEY (name, version));
        """,
    )
)

MIGRATIONS.append(
    (
        5,
        """
        -- Jobs: one row per attempt (a requeue or retry is attempt + 1 under the same id); the newest attempt is
        -- the job. `job` is the whole wire Job (agent.schemas.jobs.Job) as JSON, `spec` what the queue needs
        -- beyond it (retry policy, hold, eligible_at, launch record), `handle` the tier's JobHandle once launched.
        -- Written through the writer thread and committed before the API answers (agent/jobs/store.py).
        CREATE TABLE jobs (id VARCHAR NOT NULL, attempt INTEGER NOT NULL, pipeline VARCHAR NOT NULL,
                           state VARCHAR NOT NULL, reason VARCHAR NOT NULL, exit_code INTEGER,
                           submitted_at DOUBLE NOT NULL, started_at DOUBLE, ended_at DOUBLE,
                           updated_at DOUBLE NOT NULL, job VARCHAR NOT NULL, spec VARCHAR NOT NULL,
                           handle VARCHAR, PRIMARY KEY (id, attempt));
        -- Usage samples of running jobs (about one per second per job), buffered like telemetry.
        CREATE TABLE job_usage (ts TIMESTAMP NOT NULL, job_id VARCHAR NOT NULL, attempt INTEGER NOT NULL,
                                pipeline VARCHAR NOT NULL, cpu_seconds DOUBLE, cpu_now DOUBLE, rss_bytes BIGINT,
                                gpu_mem_bytes BIGINT);
        -- Per pipeline and resource: allocated (running jobs' requests), measured use, the quota's limit.
        CREATE TABLE quota_usage (ts TIMESTAMP NOT NULL, pipeline VARCHAR NOT NULL, resource VARCHAR NOT NULL,
                                  allocated DOUBLE, used DOUBLE, limit_value DOUBLE);
        -- Quotas set over the API (PUT/DELETE), append-only; the newest row per pipeline wins over agent.toml.
        CREATE TABLE quota_events (seq BIGINT PRIMARY KEY, ts DOUBLE NOT NULL, pipeline VARCHAR NOT NULL,
                                   body VARCHAR, principal VARCHAR NOT NULL);
        """,
    )
)

MIGRATIONS.append(
    (
        6,
        """
        -- What the agent itself did or saw that no other table records: starts and stops (with the config's
        -- digest, so a changed config shows), circuit-breaker transitions, GPU XID errors. The incident
        -- timeline (agent/timeline/) reads it; `endpoint` is NULL for host-wide events.
        CREATE TABLE agent_events (ts TIMESTAMP NOT NULL, kind VARCHAR NOT NULL, endpoint VARCHAR,
                                   summary VARCHAR NOT NULL, detail VARCHAR NOT NULL);
        """,
    )
)

MIGRATIONS.append(
    (
        7,
        """
        -- Pipelines (agent/pipelines/store.py): each registered version of a file (`body` the wire PipelineSpec,
        -- `content` the file's text), and each run as its wire Run (steps included), rewritten on every change
        -- and committed before the API answers. `trigger_event` dedups triggers across restarts.
        CREATE TABLE pipelines (name VARCHAR NOT NULL, version VARCHAR NOT NULL, registered_at DOUBLE NOT NULL,
                                body VARCHAR NOT NULL, content VARCHAR NOT NULL, PRIMARY KEY (name, version));
        CREATE TABLE pipeline_runs (id VARCHAR PRIMARY KEY, pipeline VARCHAR NOT NULL, state VARCHAR NOT NULL,
                                    created_at DOUBLE NOT NULL, updated_at DOUBLE NOT NULL,
                                    trigger_event VARCHAR, body VARCHAR NOT NULL);
        """,
    )
)

MIGRATIONS.append(
    (
        8,
        """
        -- How a logged row was asked for: 'realtime' (predict), 'async' (the async queue, docs/async.md) or 'batch'
        -- (a batch transform's sampled rows, docs/batch.md).
        ALTER TABLE predictions ADD COLUMN mode VARCHAR DEFAULT 'realtime';
        """,
    )
)

LATEST_VERSION = MIGRATIONS[-1][0]


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Bring the schema to the latest version; returns it. Each migration is one transaction."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    row = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
    current = row[0] if row and row[0] is not None else 0
    if current > LATEST_VERSION:
        raise RuntimeError(
            f"store schema version {current} is newer than this agent knows ({LATEST_VERSION}); upgrade the agent"
        )
    for version, sql in MIGRATIONS:
        if version <= current:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql)
            con.execute(f"INSERT INTO schema_migrations VALUES (?, {ts_from_unix('?')})", [version, time.time()])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        current = version
    return current
