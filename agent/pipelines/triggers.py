"""Continuous-training triggers: a cron schedule (croniter), an alert firing (past its `for`), a new
version of a registered dataset. Each is turned into an event with a stable key — the scheduled
minute, the alert's firing episode, the dataset version — so repeated sightings of one event start
one run (PipelineService.trigger also folds events into an active run and keeps the min interval)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from croniter import croniter

from agent.pipelines.service import PipelineService
from agent.schemas.pipelines import TriggerSpec

log = logging.getLogger("watchkeeper.pipelines")


class TriggerLoop:
    """Looks at every pipeline's triggers each `tick_s`; cheap (no I/O but the alert list)."""

    def __init__(self, svc: PipelineService, alerts: Callable[[], Any] | None = None, tick_s: float = 1.0) -> None:
        self.svc, self.alerts, self.tick_s = svc, alerts, tick_s
        self._next_cron: dict[tuple[str, str, int], float] = {}
        self._seen_ds: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pipeline-triggers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick(time.time())
            except Exception:
                log.exception("pipeline triggers")

    def tick(self, now: float) -> list[str]:
        """Check every trigger once; returns the runs started."""
        started = []
        with self.svc.lock:
            pipelines = list(self.svc.pipelines.values())
        firing = None
        for spec in pipelines:
            for i, t in enumerate(spec.triggers):
                if t.kind == "alert" and firing is None:
                    firing = self._firing()
                for event, detail in self._events(spec.name, spec.version, i, t, now, firing or []):
                    res = self.svc.trigger(spec.name, t.kind, event, detail, t.params, t.min_interval_s)
                    if res.started and res.run_id:
                        log.info("pipeline %s: %s started run %s", spec.name, detail, res.run_id)
                        started.append(res.run_id)
        return started

    def _firing(self) -> list[Any]:
        eng = self.alerts() if self.alerts else None
        if eng is None:
            return []
        return [a for a in eng.list(state="firing")]

    def _events(self, name: str, version: str, i: int, t: TriggerSpec, now: float,
                firing: list[Any]) -> list[tuple[str, str]]:  # fmt: skip
        if t.kind == "cron" and t.cron:
            key = (name, version, i)
            nxt = self._next_cron.get(key)
            if nxt is None:  # from now on: a schedule missed while the agent was down is not made up
                self._next_cron[key] = croniter(t.cron, now).get_next(float)
                return []
            if now < nxt:
                return []
            self._next_cron[key] = croniter(t.cron, now).get_next(float)
            return [(f"cron:{name}:{i}:{int(nxt)}", f"cron {t.cron} ({time.strftime('%H:%M', time.gmtime(nxt))} UTC)")]
        if t.kind == "alert":
            return [(f"alert:{name}:{a.fingerprint}:{a.firing_at or a.started_at}",
                     f"alert {a.rule} firing" + (f" on {a.endpoint}" if a.endpoint else "") + f": {a.summary[:200]}")
                    for a in firing
                    if a.rule == t.alert and (t.endpoint is None or a.endpoint == t.endpoint)]  # fmt: skip
        if t.kind == "dataset" and t.dataset and self.svc.datasets is not None:
            try:
                ver = self.svc.datasets.get(t.dataset).version
            except Exception:
                return []
            key2 = (name, t.dataset)
            seen = self._seen_ds.setdefault(key2, ver)  # the version there when we started is not news
            if ver <= seen:
                return []
            self._seen_ds[key2] = ver
            return [(f"dataset:{name}:{t.dataset}:{ver}", f"dataset {t.dataset} version {ver} registered")]
        return []
