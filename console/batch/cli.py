"""`watchkeeper batch …`: score a dataset with an endpoint's model or a model version (docs/batch.md).

    watchkeeper batch run ENDPOINT|MODEL:VERSION --input PATH --output PATH [--id-column COL] [--keep COL,...]
                          [--rows-per-batch N] [--log-sample-rate R] [--max-rows-per-s N] [--cpu N] [--mem SIZE]
                          [--missing-policy reject|impute] [--shards N] [--parallel K] [--reason TEXT]
                          [--agent NAME] [--detach]
    watchkeeper batch status ID [--follow]      watchkeeper batch list
    watchkeeper batch resume ID [--detach]      watchkeeper batch cancel ID [--reason TEXT]

Paths are on the agent's host. `run` and `resume` follow the batch with a progress bar on stderr (rows
done/total, rows/s, ETA) until it ends, unless `--detach`. Every verb takes `--agents`/`--fleet` and
`--json` (the final batch on stdout). `run` goes to the agent named by `--agent`, or the only one;
the other verbs look for the id on every agent.

Exit codes: 0 the batch succeeded (or was submitted, with --detach; or was read, for status/list);
1 it failed or was cancelled, or an agent could not be read; 2 usage; 3 the agent refused (4xx: the
reason names the field).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import IO, Any

from console.rollouts.cli_common import EXIT_FAILED, EXIT_OK, EXIT_REJECTED, add_common, emit_json, guarded, why_failed
from console.rollouts.cli_common import RolloutsUsageError as UsageError

HELP = "score a dataset (Parquet/CSV) with an endpoint's model or a model version, as a job: run, status, resume"
POLL_S = 1.0
PLAIN_EVERY_S = 10.0  # not a terminal: one progress line this often
FINAL = ("succeeded", "failed", "cancelled")


def configure(p: argparse.ArgumentParser) -> None:
    verbs = p.add_subparsers(dest="batch_verb", metavar="VERB", parser_class=type(p))
    verbs.required = True
    r = verbs.add_parser("run", help="score a dataset on one agent", description="score a dataset on one agent")
    add_common(r)
    r.add_argument("target", metavar="ENDPOINT|MODEL:VERSION")
    r.add_argument("--input", required=True, help="a Parquet or CSV file, or a directory of them (agent's host)")
    r.add_argument("--output", required=True, help="a new or empty directory for the Parquet parts")
    r.add_argument("--id-column", help="an input column carried to every output row (the join key)")
    r.add_argument("--keep", default="", metavar="COL,...", help="more input columns carried to the output")
    r.add_argument("--rows-per-batch", type=int, default=65536, help="rows per range: memory and checkpoint unit")
    r.add_argument("--log-sample-rate", type=float, default=0.01, help="share of rows into the prediction log")
    r.add_argument("--max-rows-per-s", type=float, help="throttle (a host shared with serving)")
    r.add_argument("--missing-policy", choices=("reject", "impute"), help="default: the endpoint's, else reject")
    r.add_argument("--cpu", type=float, default=1.0, help="cores for the job (and ONNX Runtime threads)")
    r.add_argument("--mem", metavar="SIZE", help="the job's memory limit (default: the agent's default_mem)")
    r.add_argument("--shards", type=int, help="where the batch pipeline runs in Slurm: workers (array tasks) the "
                   "files are split among (default: one per file, up to 64)")  # fmt: skip
    r.add_argument("--parallel", type=int, help="at most this many shards at once (Slurm's --array=...%%K)")
    r.add_argument("--reason", default="", help="why (in the audit log)")
    r.add_argument("--agent", metavar="NAME", help="the agent to run it on (default: the only one)")
    r.add_argument("--detach", action="store_true", help="answer once submitted; don't follow")
    r.set_defaults(batch_run=guarded("batch run", _run_run))
    ls = verbs.add_parser("list", help="every agent's batches, newest first")
    add_common(ls)
    ls.set_defaults(batch_run=guarded("batch list", _run_list))
    for verb, help_ in (("status", "a batch's progress"), ("resume", "continue a stopped batch where it stopped"),
                        ("cancel", "stop a batch (written parts stay; resume goes on from them)")):  # fmt: skip
        v = verbs.add_parser(verb, help=help_, description=help_)
        add_common(v)
        v.add_argument("id")
        v.add_argument("--agent", metavar="NAME", help="look only on this agent")
        if verb == "status":
            v.add_argument("--follow", "-f", action="store_true", help="follow until it ends")
        else:
            v.add_argument("--reason", default="")
        if verb == "resume":
            v.add_argument("--detach", action="store_true")
        v.set_defaults(batch_run=guarded(f"batch {verb}", _run_action))


def run(args: argparse.Namespace) -> int:
    return int(args.batch_run(args))


def parse_target(target: str) -> dict[str, Any]:
    """`delays` -> endpoint; `flights:3` -> model and version."""
    if ":" in target:
        model, _, version = target.rpartition(":")
        if not model or not version.isdigit():
            raise UsageError(f"not MODEL:VERSION: {target!r} (e.g. flights:3)")
        return {"model": model, "version": int(version)}
    return {"endpoint": target}


def _specs(args: argparse.Namespace, agent: str | None) -> list[Any]:
    from console.rollouts.cli_common import specs_of

    specs = specs_of(args)
    if not specs:
        raise UsageError("no agents: give --agents or --fleet (or set $WATCHKEEPER_FLEET)")
    if agent is not None:
        specs = [s for s in specs if s.name == agent]
        if not specs:
            raise UsageError(f"no agent {agent!r} in the fleet")
    return specs


def _client(spec: Any) -> Any:
    from console.batch.client import BatchClient

    return BatchClient(spec)


def _refused(exc: Exception) -> bool:
    code = getattr(exc, "status_code", None)
    return code is not None and 400 <= code < 500


async def _follow(client: Any, b: Any, err: IO[str]) -> Any:
    from console.batch.progress import progress_line

    tty = err.isatty()
    last_plain = 0.0
    while True:
        now = time.monotonic()
        if tty:
            err.write("\r" + progress_line(b) + "\033[K")
            err.flush()
        elif now - last_plain >= PLAIN_EVERY_S or b.state in FINAL:
            err.write(progress_line(b) + "\n")
            last_plain = now
        if b.state in FINAL:
            if tty:
                err.write("\n")
            return b
        await asyncio.sleep(POLL_S)
        b = await client.batch(b.id)


def _finish(args: argparse.Namespace, agent: str, b: Any, out: IO[str]) -> int:
    from console.batch.progress import as_json, summary_lines

    if args.json:
        emit_json(out, as_json(agent, b))
    else:
        out.write("\n".join(summary_lines(b)) + "\n")
    return EXIT_OK if b.state in ("succeeded", "queued", "running") else EXIT_FAILED


def _run_run(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from pydantic import ValidationError

    from agent.schemas import BatchSubmit

    specs = _specs(args, args.agent)
    if len(specs) > 1:
        raise UsageError(f"{len(specs)} agents: say which runs the batch with --agent")
    body: dict[str, Any] = {**parse_target(args.target), "input": args.input, "output": args.output,
                            "id_column": args.id_column, "keep": [k for k in args.keep.split(",") if k],
                            "rows_per_batch": args.rows_per_batch, "log_sample_rate": args.log_sample_rate,
                            "max_rows_per_s": args.max_rows_per_s, "missing_policy": args.missing_policy,
                            "cpu": args.cpu, "mem": args.mem, "reason": args.reason, "shards": args.shards,
                            "parallel": args.parallel}  # fmt: skip
    try:
        submit = BatchSubmit.model_validate({k: v for k, v in body.items() if v is not None}, strict=False)
    except ValidationError as e:
        first = e.errors()[0]
        raise UsageError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    spec = specs[0]

    async def go() -> Any:
        client = _client(spec)
        try:
            b = await client.submit_batch(submit)
            err.write(f"{b.id} submitted on {spec.name} (job {b.job_id})\n")
            return b if args.detach else await _follow(client, b, err)
        finally:
            await client.aclose()

    try:
        b = asyncio.run(go())
    except Exception as e:
        err.write(f"watchkeeper batch run: {spec.name}: {why_failed(e)}\n")
        return EXIT_REJECTED if _refused(e) else EXIT_FAILED
    return _finish(args, spec.name, b, out)


def _run_action(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    verb = args.batch_verb
    specs = _specs(args, args.agent)

    async def go() -> tuple[str, Any] | list[str]:
        clients = [_client(s) for s in specs]
        try:
            from console.core.errors import capture

            found = await asyncio.gather(*(capture(c.batch(args.id)) for c in clients))
            hits = [(c, b) for c, b in zip(clients, found, strict=True) if not isinstance(b, Exception)]
            if not hits:
                return [f"{c.spec.name}: {why_failed(b)}" for c, b in zip(clients, found, strict=True)]
            if len(hits) > 1:
                raise UsageError(f"batch {args.id!r} is on several agents: say which with --agent")
            client, b = hits[0]
            if verb in ("resume", "cancel"):
                b = await client.batch_action(args.id, verb, args.reason)
            if (verb == "resume" and not args.detach) or (verb == "status" and args.follow):
                b = await _follow(client, b, err)
            return client.spec.name, b
        finally:
            await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    try:
        got = asyncio.run(go())
    except UsageError:
        raise
    except Exception as e:
        err.write(f"watchkeeper batch {verb}: {why_failed(e)}\n")
        return EXIT_REJECTED if _refused(e) else EXIT_FAILED
    if isinstance(got, list):
        for line in got:
            err.write(f"watchkeeper batch {verb}: {line}\n")
        return EXIT_FAILED
    agent, b = got
    if verb == "status" and not args.follow:
        code = _finish(args, agent, b, out)
        return EXIT_OK if code == EXIT_OK or b.state in FINAL else code
    return _finish(args, agent, b, out)


def _run_list(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from console.batch.progress import as_json, progress_line

    specs = _specs(args, None)

    async def go() -> list[Any]:
        from console.core.errors import capture

        clients = [_client(s) for s in specs]
        try:
            return list(await asyncio.gather(*(capture(c.batches()) for c in clients)))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    answers = asyncio.run(go())
    rows: list[tuple[str, Any]] = []
    failed = 0
    for spec, a in zip(specs, answers, strict=True):
        if isinstance(a, Exception):
            err.write(f"watchkeeper batch list: {spec.name}: {why_failed(a)}\n")
            failed += 1
        else:
            rows.extend((spec.name, b) for b in a.batches)
    if args.json:
        emit_json(out, {"batches": [as_json(n, b) for n, b in rows]})
    elif rows:
        for name, b in rows:
            out.write(f"{name:<12} {b.id}  {b.model}:{b.version:<4} {progress_line(b)}\n")
    else:
        out.write("no batches\n")
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(2)
