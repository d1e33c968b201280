"""A real local HTTP receiver for webhook tests: records every POST, answers from a script."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """`statuses`: the answers to give, in order (the last one repeats). `hang`: never answer
    (until `close`)."""

    def __init__(self, statuses: list[int] | None = None, hang: bool = False) -> None:
        self.statuses = list(statuses or [200])
        self.hang = hang
        self.requests: list[dict] = []
        self.times: list[float] = []
        self.paths: list[str] = []
        self._release = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with outer._lock:
                    outer.times.append(time.monotonic())
                    outer.paths.append(self.path)
                    try:
                        outer.requests.append(json.loads(body))
                    except ValueError:
                        outer.requests.append({"raw": body.decode(errors="replace")})
                    n = len(outer.requests)
                if outer.hang:
                    outer._release.wait(30)
                    return
                code = outer.statuses[min(n - 1, len(outer.statuses) - 1)]
                self.send_response(code)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= n:
                    return list(self.requests)
            time.sleep(0.02)
        raise AssertionError(f"receiver got {len(self.requests)} requests, wanted {n}")

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
