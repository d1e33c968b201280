"""`watchkeeper async`: asynchronous inference on one agent from the command line (docs/async.md).

    watchkeeper async submit ENDPOINT --data FILE.json|- [--id ID] [--priority 0-9] [--callback URL]
                                      [--wait [SECONDS]] [--json]
    watchkeeper async get ID [--json]
    watchkeeper async cancel ID [--json]

`--data` is the predict body (`{"records": [...]}` or `{"columns": {...}}`), streamed from the file.
Which agent and its token: as for `watchkeeper models` (`--agent`, `$WATCHKEEPER_AGENT`, the fleet file);
the agent is chosen and errors are worded by `console/models/cli.py`'s public `pick_agent` and
`describe_error`. Exit codes: 0 done (for `submit --wait`: succeeded); 1 the agent refused, could not
be reached, or the request ended otherwise than succeeded; 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from console.models.cli import ModelsFailure, ModelsUsageError, describe_error, pick_agent

HELP = "submit a prediction to an endpoint's async queue, poll it, cancel it"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FINAL = ("succeeded", "failed", "cancelled", "expired")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `async` actions to its subcommand's parser."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--agent", metavar="URL|NAME", default=argparse.SUPPRESS, help="the agent (URL or fleet name)")
        p.add_argument("--agents", metavar="URL,...", default=argparse.SUPPRESS, help="used if it names one agent")
        p.add_argument("--fleet", metavar="FILE", default=argparse.SUPPRESS, help="TOML fleet file (tokens, names)")
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
        p.add_argument("--timeout", type=float, metavar="S", default=argparse.SUPPRESS, help="request timeout (s)")

    common(parser)
    sub = parser.add_subparsers(dest="async_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True
    p = sub.add_parser("submit", help="queue a predict body; prints its id (202)")
    common(p)
    p.add_argument("endpoint")
    p.add_argument("--data", required=True, metavar="FILE|-", help="the predict body as JSON ('-': stdin)")
    p.add_argument("--id", help="X-Request-Id: the idempotency key (a resubmission returns the same request)")
    p.add_argument("--priority", type=int, choices=range(10), metavar="0-9", help="higher runs first (default 0)")
    p.add_argument("--callback", metavar="URL", help="POST the outcome here (operator tokens only)")
    p.add_argument("--wait", type=float, nargs="?", const=600.0, metavar="S", help="poll until it finishes")
    for name, what in (("get", "a request's state and result"), ("cancel", "cancel a queued request")):
        p = sub.add_parser(name, help=what)
        common(p)
        p.add_argument("id")


def run(args: argparse.Namespace, out: IO[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run one `async` action; returns the exit code (errors: one line on stderr)."""
    out = out or sys.stdout
    env = os.environ if env is None else env
    try:
        spec = pick_agent(args, env)
        with _client(spec, getattr(args, "timeout", None)) as http:
            return _ACTIONS[args.async_command](http, spec.name, args, out)
    except ModelsUsageError as e:
        print(f"watchkeeper: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ModelsFailure as e:
        print(f"watchkeeper async {args.async_command}: {e}", file=sys.stderr)
        return EXIT_FAILED


def _client(spec: Any, timeout: float | None) -> Any:
    import httpx

    from agent.schemas import API_PREFIX

    headers = {"User-Agent": "watchkeeper-async"}
    if spec.token:
        headers["Authorization"] = f"Bearer {spec.token}"
    kw: dict[str, Any] = {}
    base = spec.url
    if getattr(spec, "socket_path", None):
        kw["transport"] = httpx.HTTPTransport(uds=spec.socket_path)
        base = "http://agent"
    elif spec.url.startswith("https://") and spec.verify is not True:
        import ssl

        kw["verify"] = False if spec.verify is False else ssl.create_default_context(cafile=str(spec.verify))
    return httpx.Client(base_url=base + API_PREFIX, headers=headers, timeout=timeout or max(spec.timeout_s, 30), **kw)


def _call(http: Any, agent: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    import httpx

    try:
        r = http.request(method, path, **kw)
    except httpx.HTTPError as e:
        raise ModelsFailure(f"cannot reach agent {agent}: {type(e).__name__}: {e}") from None
    if r.status_code >= 400:
        raise ModelsFailure(describe_error(r.status_code, r.content))
    return r.status_code, r.json()


def _submit(http: Any, agent: str, args: argparse.Namespace, out: IO[str]) -> int:
    headers = {"content-type": "application/json"}
    if args.id:
        headers["x-request-id"] = args.id
    if args.priority is not None:
        headers["x-priority"] = str(args.priority)
    if args.callback:
        headers["x-callback-url"] = args.callback
    try:
        fh = sys.stdin.buffer if args.data == "-" else open(Path(args.data), "rb")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ModelsUsageError(f"--data {args.data}: cannot read: {e.strerror or e}") from None
    try:  # streamed: the agent writes it to disk as it comes (a body may be far larger than real time's)
        chunks = iter(lambda: fh.read(65536), b"")
        status, acc = _call(http, agent, "POST", f"/endpoints/{args.endpoint}/async", content=chunks, headers=headers)
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()
    if args.wait is None:
        if getattr(args, "json", False):
            out.write(json.dumps(acc, indent=2, sort_keys=True) + "\n")
        else:
            again = " (already submitted: this id's request)" if status == 200 else ""
            out.write(f"{acc['state']} {acc['id']} on {agent} (priority {acc['priority']}){again}\n")
        return EXIT_OK
    deadline = time.monotonic() + args.wait
    while True:
        _, st = _call(http, agent, "GET", f"/async/{acc['id']}")
        if st["state"] in FINAL or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    _show(st, args, out)
    return EXIT_OK if st["state"] == "succeeded" else EXIT_FAILED


def _show(st: dict, args: argparse.Namespace, out: IO[str]) -> None:
    if getattr(args, "json", False):
        out.write(json.dumps(st, indent=2, sort_keys=True) + "\n")
        return
    line = f"{st['id']} {st['endpoint']}: {st['state']}"
    if st.get("reason"):
        line += f" ({st['reason']})"
    out.write(line + f", priority {st['priority']}, attempts {st['attempts']}\n")
    res = st.get("result")
    if st["state"] == "succeeded" and res:
        preds = res.get("predictions", [])
        out.write(f"  {len(preds)} predictions by {res.get('model')}:{res.get('version')}, "
                  f"{res.get('latency_ms', 0) / 1000:.2f} s after submission\n")  # fmt: skip
        for p in preds[:10]:
            out.write(f"  {json.dumps(p, sort_keys=True)}\n")
        if len(preds) > 10:
            out.write(f"  … {len(preds) - 10} more (--json for all)\n")
    elif res:
        out.write(f"  {res.get('error')} ({res.get('field')}): {res.get('detail')}\n")
    cb = st.get("callback")
    if cb:
        err = f", last error {cb['last_error']}" if cb.get("last_error") else ""
        out.write(f"  callback {cb['state']} after {cb['attempts']} attempt(s){err}: {cb['url']}\n")


def _get(http: Any, agent: str, args: argparse.Namespace, out: IO[str]) -> int:
    _show(_call(http, agent, "GET", f"/async/{args.id}")[1], args, out)
    return EXIT_OK


def _cancel(http: Any, agent: str, args: argparse.Namespace, out: IO[str]) -> int:
    _show(_call(http, agent, "DELETE", f"/async/{args.id}")[1], args, out)
    return EXIT_OK


_ACTIONS = {"submit": _submit, "get": _get, "cancel": _cancel}
