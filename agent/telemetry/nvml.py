"""NVML's vocabulary as the GPU source uses it: return codes and constants, which failures mean what
("not supported", "function not found", "GPU is lost"), and the per-GPU record the source keeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# NVML return codes from nvml.h. They are stable across drivers, so classifying by code also works
# with old bindings that lack some of pynvml's NVMLError_* subclasses.
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_NOT_FOUND = 6
_DRIVER_NOT_LOADED = 9
_TIMEOUT = 10
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15
_RESET_REQUIRED = 16
_LIB_RM_VERSION_MISMATCH = 18

_NVML_TEMPERATURE_GPU = 0
_NVML_CLOCK_SM = 1
_NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
_NVML_VOLATILE_ECC = 0
_NVML_DEVICE_MIG_ENABLE = 1
_XID_CRITICAL_EVENT = 0x8  # nvmlEventTypeXidCriticalError
_VALUE_NOT_AVAILABLE = 2**64 - 1  # NVML_VALUE_NOT_AVAILABLE_ulonglong

_INIT_REASONS = {
    _LIBRARY_NOT_FOUND: "NVIDIA driver library not found (no GPU driver on this host)",
    _DRIVER_NOT_LOADED: "NVIDIA driver is not loaded (kernel module not running)",
    _NO_PERMISSION: "no permission to use the NVIDIA driver (check access to /dev/nvidia*)",
    _LIB_RM_VERSION_MISMATCH: (
        "NVIDIA driver and library versions differ (reload the driver or reboot after an upgrade)"
    ),
}
_GONE_REASONS = {_GPU_IS_LOST: "GPU is lost", _RESET_REQUIRED: "GPU requires a reset"}

# Newest first: an old plain binding reads the v1 struct and returns garbage on newer drivers.
_PROCESS_FUNCTIONS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)
_METRIC_FIELDS = (
    "utilization_percent",
    "memory_used_bytes",
    "memory_total_bytes",
    "power_watts",
    "power_limit_watts",
    "temperature_c",
    "sm_clock_mhz",
    "ecc_uncorrected_errors",
    "xid_errors",
    "mig_enabled",
    "processes",
)


class _GpuGone(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Gpu:
    index: int
    handle: Any = None
    name: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    event_set: Any = None
    xid_reason: str | None = None  # why XIDs aren't counted, when they aren't
    opened: bool = False  # static facts read and XID watch set up


def _text(value: Any) -> str:
    # Bindings before 11.5xx return bytes; pci busId is a c_char array, bytes in every version.
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).rstrip("\x00").strip()


def _code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # real pynvml's __str__ calls back into the library
        text = ""
    return text or f"NVML error {_code(exc)}"
