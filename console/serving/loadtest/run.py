"""One loadtest run: prepare the bodies, announce, drive, report; and the `loadtest` subcommand's entry."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from typing import IO, Any
from urllib.parse import quote

import httpx

from agent.schemas import API_PREFIX, EndpointInfo, FeatureSpec, ModelVersion
from console.core.client import AgentClient, http_client
from console.core.errors import AgentError
from console.serving.loadtest.drive import cpu_seconds, drive
from console.serving.loadtest.options import (
    EXIT_ERRORS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    LoadtestError,
    Options,
    options_from_args,
)
from console.serving.loadtest.payloads import Body, build_bodies, generated_rows, pool_size, read_data, sampled_rows
from console.serving.loadtest.report import Report, describe_bounds, render_report


async def _scrape_cpu(client: AgentClient) -> tuple[float | None, str | None]:
    try:
        text = await client.metrics_text()
    except AgentError as exc:
        return None, f"/metrics: {exc.message}"
    value = cpu_seconds(text)
    return (value, None) if value is not None else (None, "/metrics has no process_cpu_seconds_total")


async def prepare(options: Options, client: AgentClient) -> tuple[EndpointInfo, list[Body], dict[str, Any], list[str]]:
    """Check the endpoint exists and build the request bodies (before the clock starts)."""
    try:
        info = await client.endpoint(options.endpoint)
    except AgentError as exc:
        if exc.status_code == 404:
            raise LoadtestError(f"no endpoint {options.endpoint!r} on {options.spec.url}") from None
        raise LoadtestError(f"cannot read endpoint {options.endpoint!r} from {options.spec.url}: {exc}") from None
    warnings: list[str] = []
    features: list[FeatureSpec] | None = None
    signature_error = None
    if info.version is None:
        signature_error = info.resolve_error or "the endpoint's model does not resolve"
    else:
        try:
            mv: ModelVersion = await client.model_version(info.model, info.version)
            features = list(mv.signature.features)
        except AgentError as exc:
            signature_error = f"model {info.model}:{info.version}: {exc}"
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    payload: dict[str, Any] = {
        "format": "columns" if options.columnar else "records",
        "missing_rate": options.missing_rate,
        "seed": seed,
    }
    if options.data is not None:
        rows, data_warnings = await asyncio.to_thread(
            read_data, options.data, [f.name for f in features] if features else None
        )
        warnings.extend(data_warnings)
        make_row = sampled_rows(rows)
        payload.update(source="file", file=str(options.data), file_rows=len(rows))
    else:
        if features is None:
            raise LoadtestError(f"cannot generate payloads ({signature_error}); pass --data FILE")
        make_row = generated_rows(features)
        payload.update(source="generated", features=len(features))
    if options.rows[1] > info.config.max_rows:
        warnings.append(f"--rows up to {options.rows[1]:,} exceeds the endpoint's max_rows {info.config.max_rows:,}")
    count = pool_size(options.requests, options.rows[1])
    bodies = await asyncio.to_thread(
        build_bodies,
        make_row,
        rng,
        rows=options.rows,
        count=count,
        missing_rate=options.missing_rate,
        columnar=options.columnar,
    )
    biggest = max(b.content.__len__() for b in bodies)
    if biggest > info.config.max_payload_bytes:
        warnings.append(
            f"some bodies ({biggest:,} bytes) exceed the endpoint's max_payload_bytes "
            f"{info.config.max_payload_bytes:,}: expect 413"
        )
    return info, bodies, payload, warnings


async def run(options: Options, *, out: IO[str], err: IO[str], stop: asyncio.Event | None = None) -> int:
    """Prepare, announce, drive, report. Returns the exit code."""
    note = err if options.as_json else out
    stop = stop or asyncio.Event()
    client = AgentClient(options.spec)
    try:
        try:
            info, bodies, payload, warnings = await prepare(options, client)
        except LoadtestError as exc:
            err.write(f"watchkeeper loadtest: error: {exc}\n")
            return EXIT_USAGE
        version = f"{info.model}:{info.version}" if info.version is not None else f"{info.model} (unresolved)"
        note.write(f"loadtest {options.endpoint} ({version}) on {options.spec.url}\n")
        note.write(f"  {describe_bounds(options)}; payloads: {_payload_text(payload, len(bodies))}\n")
        for w in warnings:
            note.write(f"  warning: {w}\n")
        note.flush()

        limits = httpx.Limits(
            max_connections=options.concurrency, max_keepalive_connections=options.concurrency, keepalive_expiry=30
        )
        load = http_client(options.spec, timeout_s=options.timeout_s, limits=limits)
        load.headers["Content-Type"] = "application/json"
        path = f"{API_PREFIX}/endpoints/{quote(options.endpoint, safe='')}/predict"
        interrupted = False
        try:
            cpu0, cpu_error = await _scrape_cpu(client)
            wall0, proc0 = time.perf_counter(), time.process_time()
            with _stop_on_sigint(stop):
                tally, elapsed, aborted = await drive(
                    load,
                    path,
                    bodies,
                    concurrency=options.concurrency,
                    duration_s=options.duration_s,
                    requests=options.requests,
                    timeout_s=options.timeout_s,
                    stop=stop,
                    run_id=f"lt-{payload['seed']:x}",
                )
            interrupted = stop.is_set() and aborted is None
            wall1, proc1 = time.perf_counter(), time.process_time()
            cpu1, cpu_error1 = await _scrape_cpu(client)
        finally:
            await load.aclose()
        agent_cpu = None
        if cpu0 is not None and cpu1 is not None:
            agent_cpu = max(0.0, cpu1 - cpu0) / max(wall1 - wall0, 1e-9) * 100.0
        report = Report(
            target=options.spec.url,
            endpoint=options.endpoint,
            model=info.model,
            version=info.version,
            bounds={
                "duration_s": options.duration_s,
                "requests": options.requests,
                "concurrency": options.concurrency,
                "rows_min": options.rows[0],
                "rows_max": options.rows[1],
                "timeout_s": options.timeout_s,
            },
            payload=payload,
            tally=tally,
            elapsed_s=elapsed,
            agent_cpu_percent=agent_cpu,
            agent_cpu_error=cpu_error or cpu_error1,
            client_cpu_percent=(proc1 - proc0) / max(wall1 - wall0, 1e-9) * 100.0,
            interrupted=interrupted,
            aborted=aborted,
            warnings=warnings,
        )
        if options.as_json:
            out.write(json.dumps(report.as_json(), indent=2) + "\n")
        else:
            out.write(render_report(report) + "\n")
        if interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if report.ok else EXIT_ERRORS
    finally:
        await client.aclose()


def _payload_text(payload: dict[str, Any], bodies: int) -> str:
    source = (
        f"rows from {payload['file']} ({payload['file_rows']:,} read)"
        if payload["source"] == "file"
        else f"generated from the signature ({payload['features']} features)"
    )
    missing = f", {payload['missing_rate']:.1%} missing" if payload["missing_rate"] else ""
    return f"{source}, {bodies} distinct {payload['format']} bodies, seed {payload['seed']}{missing}"


@contextlib.contextmanager
def _stop_on_sigint(stop: asyncio.Event):  # type: ignore[no-untyped-def]
    """Ctrl+C ends the run early (partial report) instead of a traceback."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _skip_missing_sniffio() -> None:
    # httpcore runs `import sniffio` on every request to learn the event loop; without sniffio
    # installed each of those is a failed import that searches sys.path (~70 us, several times
    # per request: a fifth of the client's CPU). A None entry makes the same ImportError instant.
    import importlib.util

    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def main_from_args(args: argparse.Namespace) -> int:
    """The `loadtest` subcommand."""
    _skip_missing_sniffio()
    try:
        options = options_from_args(args)
    except LoadtestError as exc:
        print(f"watchkeeper loadtest: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(run(options, out=sys.stdout, err=sys.stderr))
