"""Callbacks: POST a finished request's status (and result) to its `X-Callback-Url`, retried with backoff.

One thread, one attempt at a time, in due order. A 2xx is `delivered`; a connection error, a timeout,
408, 425, 429 or a 5xx is retried after 1, 2, 4, 8, 16 s (±20 %); another status, or the last attempt
failing, is `failed`. Redirects are not followed (a callback URL must not become a way to reach
somewhere else). Each attempt's outcome is handed to the loop (`AsyncQueue.callback_progress`), recorded
and shown in `GET /api/v1/async/{id}`; a callback still pending at a crash is sent again after the
restart (at least once, like the run: receivers key on `id`).

Only `http` and `https` URLs are taken, and only from callers who may operate the agent (the route
checks): the agent POSTing where a caller says is a server-side request a viewer must not be able to aim.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("watchkeeper.async")

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)  # after attempts 1..5; attempt 6 is the last
TIMEOUT_S = 10.0
RETRY_STATUSES = frozenset({408, 425, 429})

# (rid, state, attempts, last_error, next_attempt_at)
Progress = Callable[[str, str, int, str | None, float | None], None]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None  # a 3xx is then an HTTPError: not delivered


class CallbackSender:
    def __init__(self, progress: Progress, result_of: Callable[[str], Any]) -> None:
        self._progress = progress
        self._result_of = result_of
        self._heap: list[tuple[float, int, str, str, dict, int]] = []  # (due, n, id, url, status, attempt)
        self._n = 0
        self._cv = threading.Condition()
        self._stop = False
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._thread = threading.Thread(target=self._run, name="async-callbacks", daemon=True)
        self.sent = self.delivered = self.failed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()

    def enqueue(self, rid: str, url: str, status: dict, attempts_done: int = 0) -> None:
        """Deliver `status` (the GET answer without its result; the result file is read at send time)."""
        with self._cv:
            self._n += 1
            heapq.heappush(self._heap, (time.time(), self._n, rid, url, status, attempts_done + 1))
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and (not self._heap or self._heap[0][0] > time.time()):
                    self._cv.wait(timeout=None if not self._heap else max(0.0, self._heap[0][0] - time.time()))
                if self._stop:
                    return
                _, _, rid, url, status, attempt = heapq.heappop(self._heap)
            try:
                self._attempt(rid, url, status, attempt)
            except Exception:
                log.exception("async callback %s: unexpected error", rid)

    def _attempt(self, rid: str, url: str, status: dict, attempt: int) -> None:
        body = dict(status)
        if status.get("state") in ("succeeded", "failed"):
            body["result"] = self._result_of(rid)
        req = urllib.request.Request(url, data=orjson.dumps(body), method="POST", headers={
            "content-type": "application/json", "user-agent": "watchkeeper-agent", "x-request-id": rid,
        })  # fmt: skip
        self.sent += 1
        error: str | None = None
        retry = False
        try:
            with self._opener.open(req, timeout=TIMEOUT_S) as resp:
                resp.read(1024)
        except urllib.error.HTTPError as e:
            error = f"HTTP {e.code}"
            retry = e.code >= 500 or e.code in RETRY_STATUSES
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            error = str(getattr(e, "reason", e))[:200]
            retry = True
        if error is None:
            self.delivered += 1
            self._progress(rid, "delivered", attempt, None, None)
            return
        if retry and attempt <= len(BACKOFF_S):
            due = time.time() + BACKOFF_S[attempt - 1] * random.uniform(0.8, 1.2)
            self._progress(rid, "pending", attempt, error, due)
            with self._cv:
                self._n += 1
                heapq.heappush(self._heap, (due, self._n, rid, url, status, attempt + 1))
            return
        self.failed += 1
        log.warning("async callback for %s to %s failed after %d attempts: %s", rid, url, attempt, error)
        self._progress(rid, "failed", attempt, error, None)
