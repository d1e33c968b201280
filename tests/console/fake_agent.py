"""A stand-in for `watchkeeper-agent run` that starts in milliseconds (for demo tests).

Accepts the flags `watchkeeper demo` passes, writes `admin.token`, serves /readyz and the
telemetry endpoints over TCP and the Unix socket, and starts a grandchild that ignores SIGTERM in its
process group, so tests can check that stopping the demo reaches the whole group. Writes
`pids` (own pid, grandchild pid) into the data dir.

The grandchild is left running when the fake exits (a leaky agent the demo must still clean up).
Environment: FAKE_AGENT_FAIL=1 exits at once with an error; FAKE_AGENT_IGNORE_TERM=1 ignores
SIGTERM (the demo must then SIGKILL it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.console.wk_fakes import make_host, make_snapshot


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("command")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--listen", action="append", default=[])
    p.add_argument("--name", default="fake")
    p.add_argument("--simulate-gpus", type=int, default=0)
    p.add_argument("--simulate-host", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    # The demo writes an agent.toml (short drift windows, quick alert rules); this stand-in ignores it.
    p.add_argument("--config", default=None)
    args = p.parse_args()
    if os.environ.get("FAKE_AGENT_FAIL"):
        print("fake agent: refusing to start (FAKE_AGENT_FAIL)", flush=True)
        return 3
    ignore_term = bool(os.environ.get("FAKE_AGENT_IGNORE_TERM"))
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        # Blocked in every thread so sigwait() below receives it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    token = f"token-{args.name}"
    (data / "admin.token").write_text(token + "\n")
    # A stubborn grandchild: ignores SIGTERM and outlives us, like a leaky agent's worker. Only the
    # demo's SIGKILL sweep of the process group reaches it.
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}),
    )
    (data / "pids").write_text(json.dumps([os.getpid(), child.pid]))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def address_string(self) -> str:
            return "local"

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path in ("/readyz", "/healthz"):
                body: object = {"status": "ok", "agent_name": args.name, "version": "0.0-fake"}
            elif path.startswith("/api/v1/") and self.headers.get("authorization") != f"Bearer {token}":
                return self._send(401, {"error": "unauthorized"})
            elif path == "/api/v1/host":
                body = json.loads(make_host(args.name, gpus=args.simulate_gpus).model_dump_json())
            elif path == "/api/v1/snapshot":
                snap = make_snapshot(args.name, ts=time.time() - 0.2, gpu_utils=[30.0] * args.simulate_gpus)
                body = json.loads(snap.model_dump_json())
            else:
                return self._send(404, {"error": "not found"})
            self._send(200, body)

        def _send(self, code: int, body: object) -> None:
            payload = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    servers: list[socketserver.BaseServer] = []
    for listen in args.listen:
        if listen.startswith("unix:"):
            path = listen[len("unix:") :]
            if os.path.exists(path):
                os.unlink(path)
            servers.append(UnixServer(path, Handler))
        else:
            host, port = listen.rsplit(":", 1)
            servers.append(ThreadingHTTPServer((host, int(port)), Handler))
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(f"fake agent {args.name} listening on {', '.join(args.listen)}", flush=True)
    if ignore_term:
        time.sleep(3600)
    else:
        signal.sigwait({signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
