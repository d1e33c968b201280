"""XID events (the driver's error reports, e.g. 79 "fallen off the bus"): one NVML event set per GPU, drained
at each sample without blocking; counted per sample, at most MAX_XID_EVENTS_PER_SAMPLE.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.telemetry.nvml import (
    _GONE_REASONS,
    _NOT_SUPPORTED,
    _TIMEOUT,
    _XID_CRITICAL_EVENT,
    _code,
    _describe,
    _Gpu,
    _GpuGone,
)

log = logging.getLogger("watchkeeper.telemetry.gpu")

MAX_XID_EVENTS_PER_SAMPLE = 64


class XidEvents:
    """XID watching; mixed into NvmlGpuSource (agent/telemetry/gpu.py), whose NVML calls it uses."""

    # ------------------------------------------------------------------ XID events

    def _watch_xid(self, gpu: _Gpu) -> None:
        # NVML has no XID counter; XIDs arrive as events, counted here from when we start watching.
        nvml = self._nvml
        create = getattr(nvml, "nvmlEventSetCreate", None)
        register = getattr(nvml, "nvmlDeviceRegisterEvents", None)
        if create is None or register is None or self._wait_function() is None:
            gpu.xid_reason = "not available in these NVML bindings"
            return
        event_set = None
        try:
            event_set = create()
            register(gpu.handle, _XID_CRITICAL_EVENT, event_set)
        except Exception as exc:
            code = _code(exc)
            if code in _GONE_REASONS:
                gpu.xid_reason = _GONE_REASONS[code]
            elif code == _NOT_SUPPORTED:
                gpu.xid_reason = "not supported"
            else:
                gpu.xid_reason = f"cannot watch XID events: {_describe(exc)}"
                self._log_once(("xid-watch", code), logging.INFO, "GPU %d: %s", gpu.index, gpu.xid_reason)
            if event_set is not None:
                self._free_event_set(event_set)
            return
        gpu.event_set = event_set
        gpu.xid_reason = None
        self._xid_counts.setdefault(gpu.uuid or str(gpu.index), 0)

    def _wait_function(self) -> Any:
        for name in ("nvmlEventSetWait_v2", "nvmlEventSetWait"):
            fn = getattr(self._nvml, name, None)
            if fn is not None:
                return fn
        return None

    def _drain_xid(self, gpu: _Gpu, un: dict[str, str]) -> int | None:
        if gpu.event_set is None:
            un["xid_errors"] = gpu.xid_reason or "not watched"
            return None
        key = gpu.uuid or str(gpu.index)
        wait = self._wait_function()
        for _ in range(MAX_XID_EVENTS_PER_SAMPLE):
            try:
                event = wait(gpu.event_set, 0)
            except Exception as exc:
                code = _code(exc)
                if code == _TIMEOUT:
                    break  # no more events: the normal way out
                if code in _GONE_REASONS:
                    raise _GpuGone(_GONE_REASONS[code]) from exc
                self._log_once(
                    ("xid-wait", code),
                    logging.WARNING,
                    "GPU %d: reading XID events failed, no longer watching: %s",
                    gpu.index,
                    _describe(exc),
                )
                self._free_event_set(gpu.event_set)
                gpu.event_set = None
                gpu.xid_reason = f"reading XID events failed: {_describe(exc)}"
                un["xid_errors"] = gpu.xid_reason
                return None
            if int(event.eventType) & _XID_CRITICAL_EVENT:
                self._xid_counts[key] = self._xid_counts.get(key, 0) + 1
                xid = int(event.eventData)
                # First time per GPU and XID code as a warning; a storm of the same one is debug.
                level = logging.DEBUG if (key, xid) in self._xid_seen else logging.WARNING
                self._xid_seen.add((key, xid))
                log.log(level, "GPU %d (%s): XID %d", gpu.index, key, xid)
        return self._xid_counts.get(key, 0)

    def _free_event_set(self, event_set: Any) -> None:
        try:
            self._nvml.nvmlEventSetFree(event_set)
        except Exception as exc:
            log.debug("nvmlEventSetFree failed: %r", exc)

    def _free_event_sets(self) -> None:
        for gpu in self._gpus:
            if gpu.event_set is not None:
                self._free_event_set(gpu.event_set)
                gpu.event_set = None
