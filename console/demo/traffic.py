"""Demo traffic: serve the shipped flights model on a demo agent, replay real flights at it, and roll out.

Registers `sample_data/flights/model.onnx` as `flights` version 1 (once) and creates three endpoints:
`delays` (healthy, with a fallback), `delays-flaky` (fault injection: 30 % errors, so its breaker and
fallbacks move) and `delays-canary-drill` (healthy, but faults injected into version 3 only). It then
shows rollouts:

- version 2, the sample model retrained on January-June (`sample_data/flights/retrained/`), is rolled
  out to `delays` by a canary [10 %, approval, 50 %, approval, 100 %] started by `ci-bot`, an operator
  token the demo creates: the console's admin is another principal, so under the two-person rule the
  on-call engineer may approve it (`a` on the rollouts screen);
- version 3, the version 1 artifact under a new digest tagged `drill: faulty`, is rolled out to
  `delays-canary-drill`, where it fails every request: its guards abort the rollout by themselves within
  a minute and the `rollout_guard` alert fires. The drill starts again `drill_every_s` after it ended.

Rows of `serving_replay.parquet` (May-December 2013, in time order) are replayed at a gentle rate from a
background thread, so the endpoints screen has real traffic and the drift screen shows real drift away
from the January-April training data (an alert fires on it). The true outcomes of the replayed flights
are posted back as feedback a few seconds later, as labels arrive in production: model quality and
label drift follow. Everything goes through the agent's HTTP API, as any client's would; it is
idempotent on a data dir used before (nothing registered twice, an active rollout left as it is); what
the agent refuses is noted (`notes`, and `demo-traffic.log` in `state_dir`) and the demo carries on;
it stops with the demo.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import random
import threading
import time
from pathlib import Path

import httpx

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "flights"
FALLBACK = {"score": 0.2, "label": "on_time"}
FEEDBACK_DELAY_S = 5.0  # labels "arrive" this long after the predictions, in batches
MODEL = "flights"
CANARY_ENDPOINT = "delays"
DRILL_ENDPOINT = "delays-canary-drill"
CI_BOT = "ci-bot"
CI_BOT_FILE = "ci-bot.token"  # the operator token's secret, kept in state_dir (it is shown once)
# Shares of the replayed requests per endpoint; `delays` gets the rest.
FLAKY_SHARE = 0.2
DRILL_SHARE = 0.2
CANARY_PLAN = [{"set_weight": 10}, {"approval": True}, {"set_weight": 50}, {"approval": True}, {"set_weight": 100}]
# Judged on errors, fallbacks and an absolute latency SLO; a retrain is expected to move the scores, and
# a few dozen requests a window would make the prediction-drift and p99-vs-stable guards flap.
CANARY_GUARDS = {"max_prediction_drift": None, "max_p99_ratio_vs_stable": None, "p99_slo_ms": 250}
DRILL_PLAN = [{"set_weight": 50}, {"approval": True}, {"set_weight": 100}]
# The drill's guards: at the default rate its candidate gets ~0.75 requests/s, 11-15 in a 15 s window
# (5 s slots): judged within ~7 s, aborted ~15 s later.
DRILL_WINDOW_S = 15.0
DRILL_MIN_REQUESTS = 5
DRILL_EVERY_S = 180.0  # a new drill this long after the last one ended

log = logging.getLogger("watchkeeper.demo")
log.addHandler(logging.NullHandler())  # never Python's last-resort stderr handler under the TUI


class DemoTraffic:
    def __init__(
        self,
        base_url: str,
        token: str,
        rate_per_s: float = 8.0,
        sample_dir: Path = SAMPLE,
        feedback_delay_s: float = FEEDBACK_DELAY_S,
        state_dir: Path | None = None,
        drill_window_s: float = DRILL_WINDOW_S,
        drill_every_s: float = DRILL_EVERY_S,
    ) -> None:
        self.base_url = base_url
        self.feedback_delay_s = feedback_delay_s
        self.headers = {"Authorization": f"Bearer {token}"}
        self.rate_per_s = rate_per_s
        self.sample_dir = sample_dir
        self.state_dir = state_dir
        self.drill_window_s = drill_window_s
        self.drill_every_s = drill_every_s
        self.sent = 0
        self.errors = 0
        self.versions: dict[str, int] = {}  # "stable", "retrained", "drill" -> registry version
        self.drill_ready = False  # delays-canary-drill exists: a share of the traffic goes there
        self.notes: collections.deque[str] = collections.deque(maxlen=200)
        self._ci_bot: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def available(self) -> bool:
        return (self.sample_dir / "model.onnx").exists() and (self.sample_dir / "serving_replay.parquet").exists()

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Register the model (if this agent doesn't have it), (re)create the demo endpoints, then the
        rollouts' versions, the ci-bot token and the canary on `delays`. The first part raises when the
        agent refuses it (no demo serving without it); the rollout part notes what fails and goes on."""
        meta = json.loads((self.sample_dir / "metadata.json").read_text())
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as c:
            if c.get(f"/api/v1/models/{MODEL}").status_code == 404:
                r = c.post(
                    f"/api/v1/models/{MODEL}/versions",
                    files={
                        "artifact": ("model.onnx", (self.sample_dir / "model.onnx").read_bytes()),
                        "metadata": (None, json.dumps(meta)),
                    },
                )
                r.raise_for_status()
            self.versions["stable"] = 1
            base = {"model": MODEL, "version": 1, "missing_policy": "impute", "fallback": FALLBACK}
            # `delays` keeps the version it serves (a promoted canary stays promoted on the next run).
            served = c.get(f"/api/v1/endpoints/{CANARY_ENDPOINT}")
            if served.status_code == 200 and served.json().get("config", {}).get("model") == MODEL:
                base_delays = {**base, "version": served.json()["config"].get("version") or 1}
            else:
                base_delays = base
            delays = {**base_delays, "batching": {"enabled": True}}
            c.put(f"/api/v1/endpoints/{CANARY_ENDPOINT}", json=delays).raise_for_status()
            flaky = {**base, "faults": {"error_rate": 0.3}, "breaker": {"min_requests": 10, "open_s": 8}}
            c.put("/api/v1/endpoints/delays-flaky", json=flaky).raise_for_status()
            self._guarded("registering the rollout versions", self._register_versions, c)
            drill = self.versions.get("drill")
            if drill is not None:
                cfg = {**base, "faults": {"error_rate": 1.0, "version": drill}}
                self.drill_ready = self._guarded(f"creating {DRILL_ENDPOINT}", self._put, c, DRILL_ENDPOINT, cfg)
            self._guarded(f"the canary on {CANARY_ENDPOINT}", self._start_canary, c)

    def _guarded(self, what: str, fn, *args) -> bool:
        """Run one optional step of the demo: a refusal or an error is noted, never raised."""
        try:
            fn(*args)
            return True
        except Exception as exc:  # the agent refused, or went away: the rest of the demo still runs
            detail = exc.response.text[:300] if isinstance(exc, httpx.HTTPStatusError) else repr(exc)
            self._note(f"{what}: {detail}", logging.WARNING)
            return False

    def _note(self, msg: str, level: int = logging.INFO) -> None:
        if self.notes and self.notes[-1] == msg:
            return  # the same refusal on every turn of the drill loop: once is enough
        self.notes.append(msg)
        log.log(level, "%s", msg)
        if self.state_dir is not None:
            try:
                with open(self.state_dir / "demo-traffic.log", "a") as f:
                    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")
            except OSError:
                pass

    def _put(self, c: httpx.Client, name: str, cfg: dict) -> None:
        c.put(f"/api/v1/endpoints/{name}", json=cfg).raise_for_status()

    def _register_versions(self, c: httpx.Client) -> None:
        """Version 2: the retrained model; version 3: version 1's artifact under a new digest (an ONNX
        doc_string appended), tagged as the faulty drill candidate. Found by digest when registered before."""
        r = c.get(f"/api/v1/models/{MODEL}")
        r.raise_for_status()
        by_digest = {v["digest"]: v["version"] for v in r.json()}
        retrained = self.sample_dir / "retrained"
        meta1 = json.loads((self.sample_dir / "metadata.json").read_text())
        drill_meta = {
            **meta1,
            "lineage": {**meta1["lineage"], "build_id": meta1["lineage"]["build_id"] + "-drill", "parent_version": 1},
            "description": "The sample model (version 1) under a new digest: the demo's rollout drill, whose "
            f"endpoint {DRILL_ENDPOINT} injects errors into this version only.",
            "tags": {**meta1.get("tags", {}), "drill": "faulty"},
        }
        doc = b"watchkeeper demo: rollout drill candidate (faulty on purpose)"
        wanted = [
            ("drill", _with_onnx_doc((self.sample_dir / "model.onnx").read_bytes(), doc), drill_meta),
        ]
        if (retrained / "model.onnx").exists():
            meta2 = json.loads((retrained / "metadata.json").read_text())
            wanted.insert(0, ("retrained", (retrained / "model.onnx").read_bytes(), meta2))
        else:
            self._note("sample_data/flights/retrained not found: no canary of a retrained model", logging.WARNING)
        for role, artifact, meta in wanted:
            digest = hashlib.sha256(artifact).hexdigest()
            if digest not in by_digest:
                r = c.post(
                    f"/api/v1/models/{MODEL}/versions",
                    files={"artifact": ("model.onnx", artifact), "metadata": (None, json.dumps(meta))},
                )
                r.raise_for_status()
                by_digest[digest] = r.json()["version"]
                self._note(f"registered {MODEL}:{by_digest[digest]} ({role})")
            self.versions[role] = by_digest[digest]

    # ------------------------------------------------------------------ rollouts

    def _ci_bot_token(self, c: httpx.Client) -> str:
        """The ci-bot operator token: created once per agent, its secret kept in state_dir (it is shown only
        when created). An active ci-bot whose secret is lost is revoked and created again."""
        if self._ci_bot is not None:
            return self._ci_bot
        path = self.state_dir / CI_BOT_FILE if self.state_dir is not None else None
        if path is not None and path.exists():
            token = path.read_text().strip()
            who = c.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            if who.status_code == 200 and who.json().get("name") == CI_BOT:
                self._ci_bot = token
                return token
        r = c.get("/api/v1/tokens")
        r.raise_for_status()
        for t in r.json():
            if t["name"] == CI_BOT and t["revoked_at"] is None:
                c.delete(f"/api/v1/tokens/{t['accessor']}").raise_for_status()
                self._note(f"revoked a {CI_BOT} token whose secret this demo no longer has")
        r = c.post("/api/v1/tokens", json={"name": CI_BOT, "role": "operator"})
        r.raise_for_status()
        token = r.json()["token"]
        if path is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
        self._note(f"created the operator token {CI_BOT}")
        self._ci_bot = token
        return token

    def _latest_rollout(self, c: httpx.Client, endpoint: str) -> dict | None:
        r = c.get("/api/v1/rollouts", params={"endpoint": endpoint})
        r.raise_for_status()
        rollouts = r.json()  # newest first
        return rollouts[0] if rollouts else None

    def _start_rollout(self, c: httpx.Client, endpoint: str, body: dict) -> None:
        """Start a rollout as ci-bot unless one is active on `endpoint` (then it is left as it is)."""
        latest = self._latest_rollout(c, endpoint)
        if latest is not None and latest["ended_at"] is None:
            self._note(f"rollout {latest['id']} on {endpoint} is {latest['state']}: left as it is")
            return
        bot = {"Authorization": f"Bearer {self._ci_bot_token(c)}"}
        r = c.post(f"/api/v1/endpoints/{endpoint}/rollouts", json=body, headers=bot)
        r.raise_for_status()
        out = r.json()
        self._note(f"{CI_BOT} started rollout {out['id']} on {endpoint} to {MODEL}:{out['candidate_version']}")

    def _start_canary(self, c: httpx.Client) -> None:
        v2 = self.versions.get("retrained")
        if v2 is None:
            return
        ep = c.get(f"/api/v1/endpoints/{CANARY_ENDPOINT}").json()
        if ep.get("version") == v2:
            self._note(f"{CANARY_ENDPOINT} already serves {MODEL}:{v2}: no canary")
            return
        body = {
            "candidate_version": v2,
            "strategy": "canary",
            "steps": CANARY_PLAN,
            "guards": CANARY_GUARDS,
            "reason": "retrained on January-June 2013 (sample_data/flights/make_retrained.py)",
        }
        self._start_rollout(c, CANARY_ENDPOINT, body)

    def _start_drill(self, c: httpx.Client) -> None:
        """A new drill rollout, unless one is active or the last ended less than drill_every_s ago."""
        v3 = self.versions.get("drill")
        if v3 is None or not self.drill_ready:
            return
        latest = self._latest_rollout(c, DRILL_ENDPOINT)
        if latest is not None and (latest["ended_at"] is None or time.time() - latest["ended_at"] < self.drill_every_s):
            return
        body = {
            "candidate_version": v3,
            "strategy": "canary",
            "steps": DRILL_PLAN,
            "guards": {
                "window_s": self.drill_window_s,
                "min_requests": DRILL_MIN_REQUESTS,
                "max_p99_ratio_vs_stable": None,
            },
            "reason": f"rollout drill: {MODEL}:{v3} fails every request here; its guards should abort it",
        }
        self._start_rollout(c, DRILL_ENDPOINT, body)

    def _drills(self) -> None:
        every = max(0.5, min(10.0, self.drill_every_s / 4))
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as c:
            while not self._stop.is_set():
                self._guarded(f"the drill on {DRILL_ENDPOINT}", self._start_drill, c)
                self._stop.wait(every)

    # ------------------------------------------------------------------ traffic

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._run, name="demo-traffic", daemon=True),
            threading.Thread(target=self._drills, name="demo-drills", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

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
        drill = self.drill_ready
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=5) as c:
            while not self._stop.wait(1.0 / self.rate_per_s):
                n = rng.randint(1, 4)
                start = i if i + n <= len(rows) else 0
                batch = rows[start : start + n]
                i = (start + n) % len(rows)  # months of flights, in time order, round and round
                u = rng.random()
                if u < FLAKY_SHARE:
                    endpoint = "delays-flaky"
                elif drill and u < FLAKY_SHARE + DRILL_SHARE:
                    endpoint = DRILL_ENDPOINT
                else:
                    endpoint = CANARY_ENDPOINT
                try:
                    r = c.post(f"/api/v1/endpoints/{endpoint}/predict", json={"records": batch})
                    self.sent += 1
                    self.errors += r.status_code >= 400
                    if r.status_code == 200 and endpoint == CANARY_ENDPOINT:
                        rid = r.json()["request_id"]
                        labels += [{"request_id": rid, "row_idx": k, "label": truth[start + k]} for k in range(n)]
                    if labels and time.monotonic() >= next_feedback:
                        c.post(f"/api/v1/endpoints/{CANARY_ENDPOINT}/feedback", json={"items": labels})
                        labels, next_feedback = [], time.monotonic() + self.feedback_delay_s
                except httpx.HTTPError:
                    self.errors += 1


def _with_onnx_doc(model: bytes, doc: bytes) -> bytes:
    """An ONNX model with one more `doc_string` (ModelProto field 6, length-delimited) appended: a parser
    keeps the last value of a singular field seen twice, so the graph and weights are untouched and only
    the digest changes."""
    size, n = bytearray(), len(doc)
    while True:  # varint length
        byte, n = n & 0x7F, n >> 7
        size.append(byte | (0x80 if n else 0))
        if not n:
            break
    return model + bytes([(6 << 3) | 2]) + bytes(size) + doc
