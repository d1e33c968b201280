"""Demo traffic: serve the shipped flights model on a demo agent and replay real flights at it.

Registers `sample_data/flights/model.onnx` (once), creates two endpoints — `delays` (healthy, with
a fallback) and `delays-flaky` (fault injection: 30 % errors, so its breaker and fallbacks move) —
and replays rows of `serving_replay.parquet` (May-December 2013, in time order) at a gentle rate from a
background thread, so the endpoints screen has real traffic and the drift screen shows real drift away
from the January-April training data (an alert fires on it). The true outcomes of the replayed flights
are posted back as feedback a few seconds later, as labels arrive in production: model quality and
label drift follow. Everything goes through the agent's HTTP API, as any client's would; it stops with
the demo.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import httpx

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "flights"
FALLBACK = {"score": 0.2, "label": "on_time"}
FEEDBACK_DELAY_S = 5.0  # labels "arrive" this long after the predictions, in batches


class DemoTraffic:
    def __init__(
        self,
        base_url: str,
        token: str,
        rate_per_s: float = 8.0,
        sample_dir: Path = SAMPLE,
        feedback_delay_s: float = FEEDBACK_DELAY_S,
    ) -> None:
        self.base_url = base_url
        self.feedback_delay_s = feedback_delay_s
        self.headers = {"Authorization": f"Bearer {token}"}
        self.rate_per_s = rate_per_s
        self.sample_dir = sample_dir
        self.sent = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def available(self) -> bool:
        return (self.sample_dir / "model.onnx").exists() and (self.sample_dir / "serving_replay.parquet").exists()

    def setup(self) -> None:
        """Register the model (if this agent doesn't have it) and (re)create the demo endpoints."""
        meta = json.loads((self.sample_dir / "metadata.json").read_text())
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as c:
            if c.get("/api/v1/models/flights").status_code == 404:
                r = c.post(
                    "/api/v1/models/flights/versions",
                    files={
                        "artifact": ("model.onnx", (self.sample_dir / "model.onnx").read_bytes()),
                        "metadata": (None, json.dumps(meta)),
                    },
                )
                r.raise_for_status()
            base = {"model": "flights", "version": 1, "missing_policy": "impute", "fallback": FALLBACK}
            c.put("/api/v1/endpoints/delays", json={**base, "batching": {"enabled": True}}).raise_for_status()
            flaky = {**base, "faults": {"error_rate": 0.3}, "breaker": {"min_requests": 10, "open_s": 8}}
            c.put("/api/v1/endpoints/delays-flaky", json=flaky).raise_for_status()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import polars as pl

        meta = json.loads((self.sample_dir / "metadata.json").read_text())
        names = [f["name"] for f in meta["signature"]["features"]]
        replay = pl.read_parquet(self.sample_dir / "serving_replay.parquet")
        rows = replay.select(names).to_dicts()
        truth = ["delayed" if d else "on_time" for d in replay["delayed"].to_list()]
        rng = random.Random(7)
        i = 0
        labels: list[dict] = []
        next_feedback = time.monotonic() + self.feedback_delay_s
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=5) as c:
            while not self._stop.wait(1.0 / self.rate_per_s):
                n = rng.randint(1, 4)
                start = i if i + n <= len(rows) else 0
                batch = rows[start : start + n]
                i = (start + n) % len(rows)  # months of flights, in time order, round and round
                endpoint = "delays-flaky" if rng.random() < 0.3 else "delays"
                try:
                    r = c.post(f"/api/v1/endpoints/{endpoint}/predict", json={"records": batch})
                    self.sent += 1
                    self.errors += r.status_code >= 400
                    if r.status_code == 200 and endpoint == "delays":
                        rid = r.json()["request_id"]
                        labels += [{"request_id": rid, "row_idx": k, "label": truth[start + k]} for k in range(n)]
                    if labels and time.monotonic() >= next_feedback:
                        c.post("/api/v1/endpoints/delays/feedback", json={"items": labels})
                        labels, next_feedback = [], time.monotonic() + self.feedback_delay_s
                except httpx.HTTPError:
                    self.errors += 1
