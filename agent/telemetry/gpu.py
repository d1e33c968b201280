"""GPU telemetry from NVML (the library behind nvidia-smi), degrading to "no GPU" without fuss.

A host without an NVIDIA driver is a normal state: `status()` says why and `sample()` returns [].
Failures are classified the way nvitop does it:

* "not supported" is a property of the device (no ECC on consumer cards, no utilization on a MIG
  parent): that metric is None with `unavailable[metric] = "not supported"`, every sample.
* "function not found" / a missing binding is a property of the driver and bindings pair: the
  function is logged once and never called again; versioned variants are tried in order.
* "GPU is lost" takes the whole device out: it is reported with every metric None until it
  answers again.

Every distinct reason is logged once, never per sample; `sample()` never raises.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Protocol

from agent.schemas import GpuProcess, GpuSample, GpuStatus, MigDevice
from agent.telemetry.nvml import (
    _FUNCTION_NOT_FOUND,
    _GONE_REASONS,
    _INIT_REASONS,
    _LIBRARY_NOT_FOUND,
    _METRIC_FIELDS,
    _NOT_SUPPORTED,
    _NVML_CLOCK_SM,
    _NVML_DEVICE_MIG_ENABLE,
    _NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
    _NVML_TEMPERATURE_GPU,
    _NVML_VOLATILE_ECC,
    _PROCESS_FUNCTIONS,
    _VALUE_NOT_AVAILABLE,
    _code,
    _describe,
    _Gpu,
    _GpuGone,
    _text,
)
from agent.telemetry.xid import MAX_XID_EVENTS_PER_SAMPLE, XidEvents

__all__ = ["INIT_RETRY_S", "MAX_XID_EVENTS_PER_SAMPLE", "GpuSource", "NvmlGpuSource"]

log = logging.getLogger("watchkeeper.telemetry.gpu")

INIT_RETRY_S = 60.0


class GpuSource(Protocol):
    """What the sampler needs from a GPU source, real or simulated."""

    def status(self) -> GpuStatus: ...

    def sample(self) -> list[GpuSample]: ...

    def close(self) -> None: ...


class NvmlGpuSource(XidEvents):
    """NVIDIA GPUs through NVML (`nvidia-ml-py`); pass `nvml` to use another module (tests)."""

    def __init__(self, nvml: Any = None, *, retry_init_s: float = INIT_RETRY_S) -> None:
        """Nothing is loaded here; NVML is initialised on the first `status()` or `sample()`, and
        re-tried every `retry_init_s` while it fails (a driver may be installed later)."""
        self._nvml = nvml
        self._retry_init_s = retry_init_s
        self._lock = threading.Lock()
        self._initialised = False
        self._closed = False
        self._next_init_at = -float("inf")
        self._status = GpuStatus(source="none", reason="NVML not initialised yet")
        self._error_type: type[BaseException] = Exception
        self._gpus: list[_Gpu] = []
        self._dead_functions: set[str] = set()
        self._logged: set[tuple] = set()
        self._gone: dict[int, str] = {}  # index -> reason, for logging on change only
        self._xid_counts: dict[str, int] = {}  # by uuid, so re-enumeration keeps the counts
        self._xid_seen: set[tuple[str, int]] = set()
        self._process_names: dict[int, str | None] = {}

    # ------------------------------------------------------------------ public

    def status(self) -> GpuStatus:
        """Where GPU data comes from, or why there is none."""
        with self._lock:
            self._ensure_init()
            return self._status

    def sample(self) -> list[GpuSample]:
        """One sample per GPU; [] when there is no NVML. Never raises."""
        with self._lock:
            try:
                if not self._ensure_init():
                    return []
                self._follow_device_count()
                samples = [self._sample_gpu(gpu) for gpu in self._gpus]
                seen = {p.pid for s in samples for p in s.processes}
                for pid in self._process_names.keys() - seen:
                    del self._process_names[pid]
                return samples
            except Exception as exc:  # last resort: the sampler must keep running
                self._log_once(
                    ("sample", type(exc).__name__),
                    logging.ERROR,
                    "GPU sampling failed: %r",
                    exc,
                    exc_info=True,
                )
                return []

    def close(self) -> None:
        """Release NVML; later calls report no GPUs. Safe to call twice."""
        with self._lock:
            if self._initialised:
                self._free_event_sets()
                try:
                    self._nvml.nvmlShutdown()
                except Exception as exc:
                    log.debug("nvmlShutdown failed: %r", exc)
            self._initialised = False
            self._closed = True
            self._gpus = []
            self._status = GpuStatus(source="none", reason="GPU source closed")

    # ------------------------------------------------------------------ init, enumeration

    def _ensure_init(self) -> bool:
        if self._initialised:
            return True
        now = time.monotonic()
        if self._closed or now < self._next_init_at:
            return False
        self._next_init_at = now + self._retry_init_s
        try:
            reason, level = self._init()
        except Exception as exc:  # status() and sample() must not raise, whatever the bindings do
            reason, level = f"NVML initialisation failed: {exc!r}", logging.WARNING
        if reason is None:
            return True
        self._status = GpuStatus(source="none", reason=reason)
        self._log_once(("init", reason), level, "no GPU telemetry: %s", reason)
        return False

    def _init(self) -> tuple[str | None, int]:
        if self._nvml is None:
            try:
                # Imported here: megabytes of ctypes bindings that only GPU hosts need.
                import pynvml
            except ImportError:
                return "nvidia-ml-py (pynvml) is not installed", logging.WARNING
            self._nvml = pynvml
        nvml = self._nvml
        self._error_type = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
        except self._error_type as exc:
            code = _code(exc)
            reason = _INIT_REASONS.get(code) if code is not None else None
            if reason is None:
                reason = f"NVML initialisation failed: {_describe(exc)}"
            # No driver is an ordinary CPU host; anything else is worth a warning.
            return reason, logging.INFO if code == _LIBRARY_NOT_FOUND else logging.WARNING
        except Exception as exc:
            return f"NVML initialisation failed: {exc!r}", logging.WARNING

        try:
            self._enumerate()
        except Exception as exc:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass
            return f"NVML started but listing GPUs failed: {_describe(exc)}", logging.WARNING

        driver = self._query(None, ("nvmlSystemGetDriverVersion",), (), {}, (), log_errors=False, with_handle=False)
        self._initialised = True
        self._status = GpuStatus(source="nvml", driver_version=_text(driver) if driver is not None else None)
        self._update_status_reason()
        log.info("NVML ready: driver %s, %d GPU(s)", self._status.driver_version, len(self._gpus))
        return None, logging.INFO

    def _enumerate(self) -> None:
        self._free_event_sets()
        count = int(self._nvml.nvmlDeviceGetCount())
        gpus = [_Gpu(index=i) for i in range(count)]
        for gpu in gpus:
            try:
                self._open(gpu)
            except _GpuGone:
                pass  # sampled as gone; opening is retried on each sample
        self._gpus = gpus

    def _open(self, gpu: _Gpu) -> None:
        """Get the handle and the static facts (name, UUID, bus id) once, then watch for XIDs."""
        if gpu.handle is None:
            scratch: dict[str, str] = {}
            gpu.handle = self._query(gpu.index, ("nvmlDeviceGetHandleByIndex",), (), scratch, ("gpu",))
            if gpu.handle is None:
                raise _GpuGone(scratch["gpu"])
        if gpu.opened:
            return
        uuid = self._query(gpu.handle, ("nvmlDeviceGetUUID",), (), {}, ())
        name = self._query(gpu.handle, ("nvmlDeviceGetName",), (), {}, ())
        pci = self._query(gpu.handle, ("nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetPciInfo"), (), {}, ())
        gpu.uuid = _text(uuid) if uuid is not None else None
        gpu.name = _text(name) if name is not None else None
        bus_id = getattr(pci, "busId", None) if pci is not None else None
        gpu.pci_bus_id = _text(bus_id) if bus_id is not None else None
        self._watch_xid(gpu)
        gpu.opened = True

    def _follow_device_count(self) -> None:
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except Exception:
            return  # keep the devices we know; their own calls will say what is wrong
        if count != len(self._gpus):
            self._log_once(
                ("count", len(self._gpus), count),
                logging.WARNING,
                "GPU count changed from %d to %d; re-reading devices",
                len(self._gpus),
                count,
            )
            self._enumerate()
            self._update_status_reason()

    def _update_status_reason(self) -> None:
        reason = None if self._gpus else "the NVIDIA driver is loaded but reports no GPUs"
        self._status = self._status.model_copy(update={"reason": reason})

    # ------------------------------------------------------------------ per GPU

    def _sample_gpu(self, gpu: _Gpu) -> GpuSample:
        un: dict[str, str] = {}
        try:
            self._open(gpu)
            h = gpu.handle
            q = self._query
            util = q(h, ("nvmlDeviceGetUtilizationRates",), (), un, ("utilization_percent",))
            mem = q(h, ("nvmlDeviceGetMemoryInfo",), (), un, ("memory_used_bytes", "memory_total_bytes"))
            power = q(h, ("nvmlDeviceGetPowerUsage",), (), un, ("power_watts",))
            limit = q(
                h,
                ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit"),
                (),
                un,
                ("power_limit_watts",),
            )
            temp = q(h, ("nvmlDeviceGetTemperature",), (_NVML_TEMPERATURE_GPU,), un, ("temperature_c",))
            clock = q(h, ("nvmlDeviceGetClockInfo",), (_NVML_CLOCK_SM,), un, ("sm_clock_mhz",))
            ecc = q(
                h,
                ("nvmlDeviceGetTotalEccErrors",),
                (_NVML_MEMORY_ERROR_TYPE_UNCORRECTED, _NVML_VOLATILE_ECC),
                un,
                ("ecc_uncorrected_errors",),
            )
            mig_mode = q(h, ("nvmlDeviceGetMigMode",), (), un, ("mig_enabled",))
            mig_enabled = None
            mig_devices: list[MigDevice] = []
            if mig_mode is not None:
                current = mig_mode[0] if isinstance(mig_mode, list | tuple) else mig_mode
                mig_enabled = int(current) == _NVML_DEVICE_MIG_ENABLE
                if mig_enabled:
                    mig_devices = self._mig_devices(h, un)
            processes = self._processes(h, un)
            xid = self._drain_xid(gpu, un)
        except _GpuGone as gone:
            return self._gone_sample(gpu, gone.reason)

        if self._gone.pop(gpu.index, None) is not None:
            log.warning("GPU %d (%s) answers again", gpu.index, gpu.uuid)

        mem_used = mem_total = None
        if mem is not None:
            total = int(mem.total)
            if total > 0:
                mem_used, mem_total = int(mem.used), total
            else:  # unified-memory parts (GH200) and some vGPUs report zeros
                un["memory_used_bytes"] = un["memory_total_bytes"] = "not reported (total is 0)"
        return GpuSample(
            index=gpu.index,
            uuid=gpu.uuid or f"GPU-unknown-{gpu.index}",
            name=gpu.name or "unknown",
            pci_bus_id=gpu.pci_bus_id,
            utilization_percent=float(util.gpu) if util is not None else None,
            memory_used_bytes=mem_used,
            memory_total_bytes=mem_total,
            power_watts=power / 1000.0 if power is not None else None,
            power_limit_watts=limit / 1000.0 if limit is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            sm_clock_mhz=float(clock) if clock is not None else None,
            ecc_uncorrected_errors=int(ecc) if ecc is not None else None,
            xid_errors=xid,
            mig_enabled=mig_enabled,
            mig_devices=mig_devices,
            processes=processes,
            unavailable=un,
        )

    def _gone_sample(self, gpu: _Gpu, reason: str) -> GpuSample:
        if self._gone.get(gpu.index) != reason:
            self._gone[gpu.index] = reason
            log.warning("GPU %d (%s): %s", gpu.index, gpu.uuid or "uuid unknown", reason)
        return GpuSample(
            index=gpu.index,
            uuid=gpu.uuid or f"GPU-unknown-{gpu.index}",
            name=gpu.name or "unknown",
            pci_bus_id=gpu.pci_bus_id,
            unavailable={"gpu": reason, **dict.fromkeys(_METRIC_FIELDS, reason)},
        )

    def _mig_devices(self, h: Any, un: dict[str, str]) -> list[MigDevice]:
        slots = self._query(h, ("nvmlDeviceGetMaxMigDeviceCount",), (), un, ("mig_devices",))
        out = []
        for i in range(int(slots or 0)):
            # NOT_FOUND is an empty slot, the normal case for most of them.
            mh = self._query(h, ("nvmlDeviceGetMigDeviceHandleByIndex",), (i,), {}, (), log_errors=False)
            if mh is None:
                continue
            uuid = self._query(mh, ("nvmlDeviceGetUUID",), (), {}, ())
            mem = self._query(mh, ("nvmlDeviceGetMemoryInfo",), (), {}, ())
            out.append(
                MigDevice(
                    index=i,
                    uuid=_text(uuid) if uuid is not None else None,
                    memory_used_bytes=int(mem.used) if mem is not None else None,
                    memory_total_bytes=int(mem.total) if mem is not None else None,
                )
            )
        return out

    def _processes(self, h: Any, un: dict[str, str]) -> list[GpuProcess]:
        infos = self._query(h, _PROCESS_FUNCTIONS, (), un, ("processes",))
        out = []
        for info in infos or ():
            pid = int(info.pid)
            used = getattr(info, "usedGpuMemory", None)
            # None under MIG and on WDDM; old bindings hand back the raw "not available" marker.
            if used is not None and int(used) >= _VALUE_NOT_AVAILABLE:
                used = None
            out.append(
                GpuProcess(
                    pid=pid,
                    name=self._process_name(pid),
                    used_memory_bytes=int(used) if used is not None else None,
                )
            )
        return out

    def _process_name(self, pid: int) -> str | None:
        if pid not in self._process_names:
            raw = self._query(pid, ("nvmlSystemGetProcessName",), (), {}, (), log_errors=False)
            name = None
            if raw is not None:
                # NVML gives the executable's path; the console shows names like psutil's.
                name = os.path.basename(_text(raw)) or None
            self._process_names[pid] = name
        return self._process_names[pid]

    # ------------------------------------------------------------------ calling NVML

    def _query(
        self,
        handle: Any,
        names: tuple[str, ...],
        args: tuple,
        unavailable: dict[str, str],
        metrics: tuple[str, ...],
        *,
        log_errors: bool = True,
        with_handle: bool = True,
    ) -> Any:
        """Return the first usable function of `names` applied to `handle`; None with a reason under
        each of `metrics` when there is no value. Raises _GpuGone when the device is gone."""
        reason = "not available with this driver and nvidia-ml-py"
        for name in names:
            if name in self._dead_functions:
                continue
            fn = getattr(self._nvml, name, None)
            if fn is None:
                self._bury(name, "missing from the installed nvidia-ml-py")
                continue
            try:
                return fn(handle, *args) if with_handle else fn(*args)
            except self._error_type as exc:
                code = _code(exc)
                if code == _FUNCTION_NOT_FOUND:
                    self._bury(name, "the driver's NVML library does not have it")
                    continue
                if code in _GONE_REASONS:
                    raise _GpuGone(_GONE_REASONS[code]) from exc
                if code == _NOT_SUPPORTED:
                    reason = "not supported"
                else:
                    reason = _describe(exc)
                    if log_errors:
                        self._log_once(("call", name, code), logging.WARNING, "%s failed: %s", name, reason)
                break
            except AttributeError as exc:  # bindings expect a struct field this driver lacks
                self._bury(name, f"bindings and driver disagree ({exc})")
                continue
            except Exception as exc:  # ctypes surprises: one metric lost, not the sampler
                reason = f"error: {exc!r}"
                if log_errors:
                    self._log_once(("call", name, type(exc).__name__), logging.WARNING, "%s raised %r", name, exc)
                break
        for metric in metrics:
            unavailable[metric] = reason
        return None

    def _bury(self, name: str, why: str) -> None:
        self._dead_functions.add(name)
        log.info("NVML function %s is unavailable (%s); not calling it again", name, why)

    def _log_once(self, key: tuple, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, msg, *args, exc_info=exc_info)
