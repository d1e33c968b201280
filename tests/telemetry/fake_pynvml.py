"""A stand-in for the `pynvml` module (nvidia-ml-py), configurable per device.

Error classes are generated the way real pynvml does it (`_extractNVMLErrorsAsClasses`), so
`NVMLError(NVML_ERROR_NOT_SUPPORTED)` comes out as an `NVMLError_NotSupported` with `.value == 3`,
and return structs are ctypes structures with the real field names. `FakeNvml` is an object
standing in for the module: pass it as `NvmlGpuSource(nvml=FakeNvml(...))`.
"""

from __future__ import annotations

import ctypes
import string
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_DEVICE_MIG_DISABLE = 0x0
NVML_DEVICE_MIG_ENABLE = 0x1
NVML_VALUE_NOT_AVAILABLE_ulonglong = ctypes.c_ulonglong(-1)
nvmlEventTypeXidCriticalError = 0x0000000000000008
nvmlEventTypeSingleBitEccError = 0x0000000000000001


class NVMLError(Exception):
    _valClassMapping: dict[int, type] = {}
    _errcode_to_string = {
        NVML_ERROR_UNINITIALIZED: "Uninitialized",
        NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
        NVML_ERROR_NOT_SUPPORTED: "Not Supported",
        NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
        NVML_ERROR_NOT_FOUND: "Not Found",
        NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
        NVML_ERROR_TIMEOUT: "Timeout",
        NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        NVML_ERROR_FUNCTION_NOT_FOUND: "Function Not Found",
        NVML_ERROR_GPU_IS_LOST: "GPU is lost",
        NVML_ERROR_RESET_REQUIRED: "GPU requires restart",
        NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
        NVML_ERROR_UNKNOWN: "Unknown Error",
    }

    def __new__(typ, value):
        # As in pynvml: NVMLError(code) picks the subclass registered for that code.
        if typ == NVMLError:
            typ = NVMLError._valClassMapping.get(value, typ)
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self):
        return self._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other):
        return self.value == other.value

    __hash__ = Exception.__hash__


def _extractNVMLErrorsAsClasses():
    this_module = sys.modules[__name__]
    for err_name in [x for x in dir(this_module) if x.startswith("NVML_ERROR_")]:
        class_name = "NVMLError_" + string.capwords(err_name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        err_val = getattr(this_module, err_name)

        def gen_new(val):
            def new(typ, *args):
                return NVMLError.__new__(typ, val)

            return new

        new_error_class = type(class_name, (NVMLError,), {"__new__": gen_new(err_val)})
        new_error_class.__module__ = __name__
        setattr(this_module, class_name, new_error_class)
        NVMLError._valClassMapping[err_val] = new_error_class


_extractNVMLErrorsAsClasses()


class c_nvmlMemory_t(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class c_nvmlUtilization_t(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class nvmlPciInfo_t(ctypes.Structure):
    _fields_ = [
        ("busIdLegacy", ctypes.c_char * 16),
        ("domain", ctypes.c_uint),
        ("bus", ctypes.c_uint),
        ("device", ctypes.c_uint),
        ("pciDeviceId", ctypes.c_uint),
        ("pciSubSystemId", ctypes.c_uint),
        ("busId", ctypes.c_char * 32),
    ]


class c_nvmlEventData_t(ctypes.Structure):
    _fields_ = [
        ("device", ctypes.c_void_p),
        ("eventType", ctypes.c_ulonglong),
        ("eventData", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


class nvmlFriendlyObject:
    """What pynvml's process queries return: a plain object built from the ctypes struct."""

    def __init__(self, dictionary):
        for x in dictionary:
            setattr(self, x, dictionary[x])


# ----------------------------------------------------------------------------- configuration


@dataclass
class FakeMig:
    uuid: str = "MIG-fake-0"
    memory_total: int = 10 * 1024**3
    memory_used: int = 1 * 1024**3


@dataclass
class FakeGpu:
    """One device. `errors` maps a pynvml function name to the NVML error code it raises."""

    name: str | bytes = "NVIDIA A100-SXM4-80GB"
    uuid: str | bytes = "GPU-00000000-0000-0000-0000-000000000000"
    bus_id: bytes = b"00000000:07:00.0"
    utilization: int = 37
    memory_total: int = 80 * 1024**3
    memory_used: int = 12 * 1024**3
    power_mw: int = 250_000
    power_limit_mw: int = 400_000
    temperature: int = 55
    sm_clock: int = 1410
    ecc_uncorrected: int = 0
    mig_mode: tuple[int, int] | None = None  # None: MIG not supported (most GPUs)
    mig_slots: int = 7
    mig_devices: dict[int, FakeMig] = field(default_factory=dict)  # slot -> device
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, usedGpuMemory)
    process_names: dict[int, str | bytes] = field(default_factory=dict)
    xid_events: list[int] = field(default_factory=list)  # queued XID codes, consumed by waits
    errors: dict[str, int] = field(default_factory=dict)
    lost: bool = False


@dataclass(eq=False)
class _Handle:
    gpu: FakeGpu
    mig: FakeMig | None = None


@dataclass(eq=False)
class _EventSet:
    gpus: list[FakeGpu] = field(default_factory=list)
    freed: bool = False


_EXPORTED = {
    name: value
    for name, value in dict(globals()).items()
    if name.startswith(("NVML", "nvml", "c_nvml")) and name != "nvmlFriendlyObject"
}
_EXPORTED["nvmlFriendlyObject"] = nvmlFriendlyObject


class FakeNvml:
    """The fake module. Functions named in `missing` raise AttributeError, as with old bindings."""

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        init_error: int | None = None,
        missing: set[str] | frozenset[str] = frozenset(),
        driver_version: str | bytes = "550.54.15",
    ) -> None:
        self.__dict__.update(_EXPORTED)
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.missing = set(missing)
        self.driver_version = driver_version
        self.calls: Counter[str] = Counter()
        self.initialised = False
        self.event_sets: list[_EventSet] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml") and name in object.__getattribute__(self, "missing"):
            raise AttributeError(f"module 'pynvml' has no attribute '{name}'")
        return object.__getattribute__(self, name)

    # -- helpers

    def _enter(self, fn: str, handle: _Handle | None = None) -> FakeGpu | None:
        self.calls[fn] += 1
        if not self.initialised and fn != "nvmlInit":
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        if handle is None:
            return None
        gpu = handle.gpu
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if fn in gpu.errors:
            raise NVMLError(gpu.errors[fn])
        return gpu

    # -- library

    def nvmlInit(self):
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self):
        self._enter("nvmlShutdown")
        self.initialised = False

    def nvmlSystemGetDriverVersion(self):
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetProcessName(self, pid):
        self._enter("nvmlSystemGetProcessName")
        for gpu in self.gpus:
            if pid in gpu.process_names:
                return gpu.process_names[pid]
        raise NVMLError(NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetCount(self):
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return _Handle(gpu)

    # -- device

    def nvmlDeviceGetName(self, handle):
        return self._enter("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle):
        gpu = self._enter("nvmlDeviceGetUUID", handle)
        return handle.mig.uuid if handle.mig is not None else gpu.uuid

    def nvmlDeviceGetPciInfo_v3(self, handle):
        gpu = self._enter("nvmlDeviceGetPciInfo_v3", handle)
        info = nvmlPciInfo_t()
        info.busId = gpu.bus_id
        return info

    def nvmlDeviceGetPciInfo(self, handle):
        return self.nvmlDeviceGetPciInfo_v3(handle)

    def nvmlDeviceGetUtilizationRates(self, handle):
        gpu = self._enter("nvmlDeviceGetUtilizationRates", handle)
        return c_nvmlUtilization_t(gpu=gpu.utilization, memory=gpu.utilization // 2)

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        gpu = self._enter("nvmlDeviceGetMemoryInfo", handle)
        src = handle.mig if handle.mig is not None else gpu
        total, used = src.memory_total, src.memory_used
        return c_nvmlMemory_t(total=total, used=used, free=max(0, total - used))

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._enter("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._enter("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle):
        return self._enter("nvmlDeviceGetPowerManagementLimit", handle).power_limit_mw

    def nvmlDeviceGetTemperature(self, handle, sensor):
        gpu = self._enter("nvmlDeviceGetTemperature", handle)
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetClockInfo(self, handle, type):
        gpu = self._enter("nvmlDeviceGetClockInfo", handle)
        if type != NVML_CLOCK_SM:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.sm_clock

    def nvmlDeviceGetTotalEccErrors(self, handle, errorType, counterType):
        gpu = self._enter("nvmlDeviceGetTotalEccErrors", handle)
        if (errorType, counterType) != (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.ecc_uncorrected

    def nvmlDeviceGetMigMode(self, device):
        gpu = self._enter("nvmlDeviceGetMigMode", device)
        if gpu.mig_mode is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return list(gpu.mig_mode)

    def nvmlDeviceGetMaxMigDeviceCount(self, device):
        return self._enter("nvmlDeviceGetMaxMigDeviceCount", device).mig_slots

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device, index):
        gpu = self._enter("nvmlDeviceGetMigDeviceHandleByIndex", device)
        if index not in gpu.mig_devices:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return _Handle(gpu, gpu.mig_devices[index])

    def _processes(self, fn, handle):
        gpu = self._enter(fn, handle)
        return [
            nvmlFriendlyObject({"pid": pid, "usedGpuMemory": used, "gpuInstanceId": 0, "computeInstanceId": 0})
            for pid, used in gpu.processes
        ]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle):
        return self._processes("nvmlDeviceGetComputeRunningProcesses_v3", handle)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle):
        return self._processes("nvmlDeviceGetComputeRunningProcesses_v2", handle)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self._processes("nvmlDeviceGetComputeRunningProcesses", handle)

    # -- events

    def nvmlEventSetCreate(self):
        self._enter("nvmlEventSetCreate")
        event_set = _EventSet()
        self.event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(self, handle, eventTypes, eventSet):
        gpu = self._enter("nvmlDeviceRegisterEvents", handle)
        if not eventTypes & nvmlEventTypeXidCriticalError:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        eventSet.gpus.append(gpu)

    def nvmlEventSetWait_v2(self, eventSet, timeoutms):
        self._enter("nvmlEventSetWait_v2")
        if eventSet.freed:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        for gpu in eventSet.gpus:
            if gpu.lost:
                raise NVMLError(NVML_ERROR_GPU_IS_LOST)
            if gpu.xid_events:
                return c_nvmlEventData_t(eventType=nvmlEventTypeXidCriticalError, eventData=gpu.xid_events.pop(0))
        raise NVMLError(NVML_ERROR_TIMEOUT)

    def nvmlEventSetWait(self, eventSet, timeoutms):
        return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    def nvmlEventSetFree(self, eventSet):
        self._enter("nvmlEventSetFree")
        eventSet.freed = True
