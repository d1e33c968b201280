# Watchkeeper tasks. `just` itself comes from the dev extra (rust-just on PyPI).
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv/bin"

# Lint, then the whole test suite.
test: lint
    {{venv}}/python -m pytest -q

lint:
    {{venv}}/ruff check .
    {{venv}}/ruff format --check agent console bench
    {{venv}}/lint-imports

# Three local agents (one real host, two simulated) and the console on them.
demo:
    {{venv}}/watchkeeper demo

# Agent CPU/RSS beside prometheus-node-exporter, 60 s each, one run.
bench-overhead seconds="60":
    {{venv}}/python bench/agent_overhead.py --seconds {{seconds}}

# Agent predict path vs bare FastAPI and BentoML (own venv), wrk at c=1/8/32/64.
bench-serving *args:
    {{venv}}/python bench/serving.py {{args}}

# Prediction-log ingest rate of the store writer vs the naive inserts.
bench-ingest *args:
    {{venv}}/python bench/ingest.py {{args}}

# Request formats: records vs columns through parse + validate + encode.
bench-encode *args:
    {{venv}}/python bench/encode.py {{args}}

# Drift + data quality vs Evidently (own venv) and a plain numpy pass, 200k x 1M rows.
bench-drift *args:
    {{venv}}/python bench/drift.py {{args}}

# Update Textual snapshot baselines after an intended UI change.
snapshots:
    {{venv}}/python -m pytest -q tests/console --snapshot-update

# Jobs: submit -> RUNNING, submits/s, CPU with 50 running jobs; the agent's executor beside a single-node Slurm.
bench-jobs *args:
    {{venv}}/python bench/jobs.py {{args}}

# Predict path at 1x/4x/10x of capacity and at many connections: goodput, p99, shed, peak RSS.
bench-overload *args:
    {{venv}}/python bench/overload.py {{args}}

# Pipelines: per-step overhead (50-step chain, in-process and isolated), a cached 10-step re-run, beside Prefect 3 (own venv).
bench-pipelines *args:
    {{venv}}/python bench/pipelines.py {{args}}

# Async inference: 202 latency, drain rate beside real time, real time's p99 beside a draining backlog.
bench-async *args:
    {{venv}}/python bench/async.py {{args}}
