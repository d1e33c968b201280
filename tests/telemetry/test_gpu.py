"""NvmlGpuSource against the fake pynvml module: every failure mode degrades, none raises."""

from __future__ import annotations

import ctypes
import logging

import pytest

from agent.telemetry.gpu import NvmlGpuSource
from tests.telemetry import fake_pynvml as fp
from tests.telemetry.fake_pynvml import FakeGpu, FakeMig, FakeNvml

LOGGER = "watchkeeper.telemetry.gpu"
GIB = 1024**3


def gpu_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def test_fake_errors_mirror_pynvml() -> None:
    # The source classifies by .value; the fake must build errors the way real pynvml does.
    err = fp.NVMLError(fp.NVML_ERROR_NOT_SUPPORTED)
    assert type(err) is fp.NVMLError_NotSupported
    assert isinstance(fp.NVMLError_GpuIsLost(), fp.NVMLError)
    assert fp.NVMLError_GpuIsLost().value == fp.NVML_ERROR_GPU_IS_LOST
    assert fp.NVMLError_FunctionNotFound().value == 13
    assert str(fp.NVMLError_LibraryNotFound()) == "NVML Shared Library Not Found"


def test_healthy_gpu_is_fully_reported() -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-aaaa", processes=[(4242, 3 * GIB)], process_names={4242: "/usr/bin/python3"})])
    src = NvmlGpuSource(nvml=nvml)
    status = src.status()
    assert status.source == "nvml"
    assert status.driver_version == "550.54.15"
    assert status.reason is None and status.simulated is False

    [g] = src.sample()
    assert g.index == 0 and g.uuid == "GPU-aaaa" and g.name == "NVIDIA A100-SXM4-80GB"
    assert g.pci_bus_id == "00000000:07:00.0"
    assert g.utilization_percent == 37.0
    assert (g.memory_used_bytes, g.memory_total_bytes) == (12 * GIB, 80 * GIB)
    assert g.power_watts == 250.0 and g.power_limit_watts == 400.0
    assert g.temperature_c == 55.0 and g.sm_clock_mhz == 1410.0
    assert g.ecc_uncorrected_errors == 0
    assert g.xid_errors == 0
    assert g.mig_enabled is None and g.unavailable == {"mig_enabled": "not supported"}
    assert [(p.pid, p.name, p.used_memory_bytes) for p in g.processes] == [(4242, "python3", 3 * GIB)]


def test_no_driver_is_a_normal_state_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    nvml = FakeNvml(init_error=fp.NVML_ERROR_LIBRARY_NOT_FOUND)
    src = NvmlGpuSource(nvml=nvml, retry_init_s=0)
    for _ in range(5):
        assert src.sample() == []
    status = src.status()
    assert status.source == "none"
    assert status.reason == "NVIDIA driver library not found (no GPU driver on this host)"
    # Retried (a driver may appear) but the same reason is said only once.
    assert nvml.calls["nvmlInit"] == 6
    assert len([r for r in gpu_records(caplog) if "no GPU telemetry" in r.getMessage()]) == 1


def test_driver_not_loaded_and_other_init_errors_have_clear_reasons() -> None:
    src = NvmlGpuSource(nvml=FakeNvml(init_error=fp.NVML_ERROR_DRIVER_NOT_LOADED))
    assert src.status().reason == "NVIDIA driver is not loaded (kernel module not running)"
    src = NvmlGpuSource(nvml=FakeNvml(init_error=fp.NVML_ERROR_UNKNOWN))
    assert src.status().source == "none"
    assert src.status().reason == "NVML initialisation failed: Unknown Error"


def test_init_is_not_retried_before_the_retry_interval() -> None:
    nvml = FakeNvml(init_error=fp.NVML_ERROR_DRIVER_NOT_LOADED)
    src = NvmlGpuSource(nvml=nvml, retry_init_s=3600)
    for _ in range(5):
        src.sample()
    assert nvml.calls["nvmlInit"] == 1


def test_driver_appearing_later_is_picked_up() -> None:
    nvml = FakeNvml([FakeGpu()], init_error=fp.NVML_ERROR_DRIVER_NOT_LOADED)
    src = NvmlGpuSource(nvml=nvml, retry_init_s=0)
    assert src.sample() == []
    nvml.init_error = None
    assert len(src.sample()) == 1
    assert src.status().source == "nvml"


def test_not_supported_metrics_are_none_with_reason() -> None:
    gpu = FakeGpu(
        errors={
            "nvmlDeviceGetPowerUsage": fp.NVML_ERROR_NOT_SUPPORTED,
            "nvmlDeviceGetTotalEccErrors": fp.NVML_ERROR_NOT_SUPPORTED,
            "nvmlDeviceGetMemoryInfo": fp.NVML_ERROR_NOT_SUPPORTED,
        }
    )
    nvml = FakeNvml([gpu])
    src = NvmlGpuSource(nvml=nvml)
    for _ in range(3):
        [g] = src.sample()
        assert g.power_watts is None and g.ecc_uncorrected_errors is None
        assert g.memory_used_bytes is None and g.memory_total_bytes is None
        assert g.unavailable["power_watts"] == "not supported"
        assert g.unavailable["ecc_uncorrected_errors"] == "not supported"
        assert g.unavailable["memory_total_bytes"] == "not supported"
        # Everything else is still there.
        assert g.temperature_c == 55.0 and g.power_limit_watts == 400.0
        assert "temperature_c" not in g.unavailable


def test_memory_total_zero_is_reported_as_missing_not_zero() -> None:
    [g] = NvmlGpuSource(nvml=FakeNvml([FakeGpu(memory_total=0, memory_used=0)])).sample()
    assert g.memory_used_bytes is None and g.memory_total_bytes is None
    assert "total is 0" in g.unavailable["memory_total_bytes"]


def test_function_not_found_is_logged_once_and_not_called_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    gpus = [
        FakeGpu(uuid=f"GPU-{i}", errors={"nvmlDeviceGetClockInfo": fp.NVML_ERROR_FUNCTION_NOT_FOUND}) for i in range(2)
    ]
    nvml = FakeNvml(gpus)
    src = NvmlGpuSource(nvml=nvml)
    for _ in range(10):
        samples = src.sample()
        assert [g.sm_clock_mhz for g in samples] == [None, None]
        assert all("sm_clock_mhz" in g.unavailable for g in samples)
        assert all(g.temperature_c == 55.0 for g in samples)
    assert nvml.calls["nvmlDeviceGetClockInfo"] == 1
    mentions = [r for r in gpu_records(caplog) if "nvmlDeviceGetClockInfo" in r.getMessage()]
    assert len(mentions) == 1


def test_missing_binding_attribute_falls_back_to_older_function() -> None:
    nvml = FakeNvml([FakeGpu()], missing={"nvmlDeviceGetEnforcedPowerLimit"})
    src = NvmlGpuSource(nvml=nvml)
    [g] = src.sample()
    assert g.power_limit_watts == 400.0
    assert nvml.calls["nvmlDeviceGetPowerManagementLimit"] == 1


def test_other_nvml_errors_are_logged_once_per_function(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    nvml = FakeNvml([FakeGpu(errors={"nvmlDeviceGetTemperature": fp.NVML_ERROR_NO_PERMISSION})])
    src = NvmlGpuSource(nvml=nvml)
    for _ in range(5):
        [g] = src.sample()
        assert g.temperature_c is None
        assert g.unavailable["temperature_c"] == "Insufficient Permissions"
    # Unlike function-not-found this may clear up, so it is retried, but said once.
    assert nvml.calls["nvmlDeviceGetTemperature"] == 5
    assert len([r for r in gpu_records(caplog) if "nvmlDeviceGetTemperature" in r.getMessage()]) == 1


def test_unexpected_exception_in_binding_costs_one_metric() -> None:
    nvml = FakeNvml([FakeGpu()])

    def broken(handle):
        raise TypeError("ctypes argument mismatch")

    nvml.nvmlDeviceGetUtilizationRates = broken
    [g] = NvmlGpuSource(nvml=nvml).sample()
    assert g.utilization_percent is None
    assert "TypeError" in g.unavailable["utilization_percent"]
    assert g.power_watts == 250.0


def test_gpu_lost_reports_everything_none_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    good, bad = FakeGpu(uuid="GPU-good"), FakeGpu(uuid="GPU-bad", bus_id=b"00000000:0F:00.0")
    nvml = FakeNvml([good, bad])
    src = NvmlGpuSource(nvml=nvml)
    assert src.sample()[1].utilization_percent == 37.0

    bad.lost = True
    for _ in range(5):
        g0, g1 = src.sample()
        assert g0.utilization_percent == 37.0 and g0.unavailable == {"mig_enabled": "not supported"}
        # Known facts stay, so the console can say which GPU fell off.
        assert (g1.uuid, g1.name, g1.pci_bus_id) == ("GPU-bad", "NVIDIA A100-SXM4-80GB", "00000000:0F:00.0")
        assert g1.unavailable["gpu"] == "GPU is lost"
        for metric in (
            "utilization_percent",
            "memory_used_bytes",
            "power_watts",
            "temperature_c",
            "sm_clock_mhz",
            "ecc_uncorrected_errors",
            "xid_errors",
            "mig_enabled",
        ):
            assert getattr(g1, metric) is None
            assert g1.unavailable[metric] == "GPU is lost"
        assert g1.processes == [] and g1.mig_devices == []
    lost_logs = [r for r in gpu_records(caplog) if "GPU is lost" in r.getMessage()]
    assert len(lost_logs) == 1 and lost_logs[0].levelno == logging.WARNING

    bad.lost = False
    assert src.sample()[1].utilization_percent == 37.0


def test_gpu_lost_before_enumeration_is_reported_and_recovers() -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-x", lost=True)])
    src = NvmlGpuSource(nvml=nvml)
    [g] = src.sample()
    assert g.uuid == "GPU-unknown-0" and g.unavailable["gpu"] == "GPU is lost"
    nvml.gpus[0].lost = False
    [g] = src.sample()
    assert g.uuid == "GPU-x" and g.utilization_percent == 37.0 and g.xid_errors == 0


def test_reset_required_is_a_device_level_reason() -> None:
    nvml = FakeNvml([FakeGpu(errors={"nvmlDeviceGetUtilizationRates": fp.NVML_ERROR_RESET_REQUIRED})])
    [g] = NvmlGpuSource(nvml=nvml).sample()
    assert g.unavailable["gpu"] == "GPU requires a reset" and g.memory_used_bytes is None


def test_mig_devices_are_listed_from_occupied_slots() -> None:
    gpu = FakeGpu(
        mig_mode=(fp.NVML_DEVICE_MIG_ENABLE, fp.NVML_DEVICE_MIG_ENABLE),
        mig_devices={0: FakeMig("MIG-a", 20 * GIB, 5 * GIB), 3: FakeMig(b"MIG-b", 10 * GIB, 0)},
        errors={"nvmlDeviceGetUtilizationRates": fp.NVML_ERROR_NOT_SUPPORTED},  # as on a MIG parent
        processes=[(77, None)],
    )
    [g] = NvmlGpuSource(nvml=FakeNvml([gpu])).sample()
    assert g.mig_enabled is True
    assert [(m.index, m.uuid, m.memory_total_bytes, m.memory_used_bytes) for m in g.mig_devices] == [
        (0, "MIG-a", 20 * GIB, 5 * GIB),
        (3, "MIG-b", 10 * GIB, 0),
    ]
    assert g.utilization_percent is None and g.unavailable["utilization_percent"] == "not supported"
    assert "mig_enabled" not in g.unavailable
    # Per-process memory is N/A under MIG: None, not 0.
    assert [(p.pid, p.used_memory_bytes) for p in g.processes] == [(77, None)]


def test_mig_disabled_lists_no_mig_devices() -> None:
    gpu = FakeGpu(mig_mode=(fp.NVML_DEVICE_MIG_DISABLE, fp.NVML_DEVICE_MIG_ENABLE), mig_devices={0: FakeMig()})
    nvml = FakeNvml([gpu])
    [g] = NvmlGpuSource(nvml=nvml).sample()
    assert g.mig_enabled is False and g.mig_devices == []
    assert nvml.calls["nvmlDeviceGetMigDeviceHandleByIndex"] == 0


def test_process_memory_none_and_not_available_marker() -> None:
    marker = fp.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
    gpu = FakeGpu(processes=[(10, None), (11, marker), (12, 512)], process_names={12: b"/opt/bin/trainer"})
    [g] = NvmlGpuSource(nvml=FakeNvml([gpu])).sample()
    assert [(p.pid, p.name, p.used_memory_bytes) for p in g.processes] == [
        (10, None, None),
        (11, None, None),
        (12, "trainer", 512),
    ]


def test_bytes_from_old_bindings_are_decoded() -> None:
    nvml = FakeNvml([FakeGpu(name=b"Tesla V100-SXM2-16GB", uuid=b"GPU-bytes")], driver_version=b"470.82.01")
    src = NvmlGpuSource(nvml=nvml)
    [g] = src.sample()
    assert g.name == "Tesla V100-SXM2-16GB" and g.uuid == "GPU-bytes"
    assert g.pci_bus_id == "00000000:07:00.0"
    assert src.status().driver_version == "470.82.01"


def test_process_query_falls_back_through_versions() -> None:
    gpu = FakeGpu(
        processes=[(5, 100)],
        errors={"nvmlDeviceGetComputeRunningProcesses_v2": fp.NVML_ERROR_FUNCTION_NOT_FOUND},
    )
    nvml = FakeNvml([gpu], missing={"nvmlDeviceGetComputeRunningProcesses_v3"})
    src = NvmlGpuSource(nvml=nvml)
    for _ in range(3):
        [g] = src.sample()
        assert [(p.pid, p.used_memory_bytes) for p in g.processes] == [(5, 100)]
        assert "processes" not in g.unavailable
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 1
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses"] == 3


def test_newest_process_query_is_preferred() -> None:
    nvml = FakeNvml([FakeGpu(processes=[(5, 100)])])
    src = NvmlGpuSource(nvml=nvml)
    src.sample()
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 0
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses"] == 0


def test_all_process_queries_missing_says_why() -> None:
    nvml = FakeNvml(
        [FakeGpu(processes=[(5, 100)])],
        missing={
            "nvmlDeviceGetComputeRunningProcesses_v3",
            "nvmlDeviceGetComputeRunningProcesses_v2",
            "nvmlDeviceGetComputeRunningProcesses",
        },
    )
    [g] = NvmlGpuSource(nvml=nvml).sample()
    assert g.processes == [] and "not available" in g.unavailable["processes"]


def test_device_that_disappears_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    nvml = FakeNvml([FakeGpu(uuid="GPU-0"), FakeGpu(uuid="GPU-1", bus_id=b"00000000:0F:00.0")])
    src = NvmlGpuSource(nvml=nvml)
    assert [g.uuid for g in src.sample()] == ["GPU-0", "GPU-1"]
    nvml.gpus.pop(0)
    for _ in range(3):
        [g] = src.sample()
        # Re-read by index: the survivor is now index 0 with its own facts, not the old cache.
        assert (g.index, g.uuid, g.pci_bus_id) == (0, "GPU-1", "00000000:0F:00.0")
    assert len([r for r in gpu_records(caplog) if "count changed" in r.getMessage()]) == 1
    # The event sets of the old enumeration are released.
    assert sum(not s.freed for s in nvml.event_sets) == 1

    nvml.gpus.append(FakeGpu(uuid="GPU-new"))
    assert [g.uuid for g in src.sample()] == ["GPU-1", "GPU-new"]


def test_zero_gpus_is_nvml_with_reason() -> None:
    src = NvmlGpuSource(nvml=FakeNvml([]))
    assert src.sample() == []
    assert src.status().source == "nvml"
    assert "reports no GPUs" in (src.status().reason or "")


def test_xid_events_are_counted_per_gpu(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    a, b = FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b")
    nvml = FakeNvml([a, b])
    src = NvmlGpuSource(nvml=nvml)
    assert [g.xid_errors for g in src.sample()] == [0, 0]
    b.xid_events += [79, 79, 48]
    assert [g.xid_errors for g in src.sample()] == [0, 3]
    assert [g.xid_errors for g in src.sample()] == [0, 3]  # a counter, not a per-sample rate
    xid_logs = [r for r in gpu_records(caplog) if "XID" in r.getMessage()]
    assert [(r.levelno, r.getMessage().split()[-1]) for r in xid_logs] == [
        (logging.WARNING, "79"),
        (logging.DEBUG, "79"),
        (logging.WARNING, "48"),
    ]


def test_xid_unsupported_or_missing_is_none_with_reason() -> None:
    gpu = FakeGpu(errors={"nvmlDeviceRegisterEvents": fp.NVML_ERROR_NOT_SUPPORTED})
    [g] = NvmlGpuSource(nvml=FakeNvml([gpu])).sample()
    assert g.xid_errors is None and g.unavailable["xid_errors"] == "not supported"

    nvml = FakeNvml([FakeGpu()], missing={"nvmlEventSetCreate"})
    [g] = NvmlGpuSource(nvml=nvml).sample()
    assert g.xid_errors is None and "not available" in g.unavailable["xid_errors"]


def test_close_shuts_nvml_down_and_later_samples_are_empty() -> None:
    nvml = FakeNvml([FakeGpu()])
    src = NvmlGpuSource(nvml=nvml)
    assert len(src.sample()) == 1
    src.close()
    src.close()
    assert nvml.calls["nvmlShutdown"] == 1 and not nvml.initialised
    assert all(s.freed for s in nvml.event_sets)
    assert src.sample() == []
    assert src.status().source == "none"


def test_status_before_sample_initialises_once() -> None:
    nvml = FakeNvml([FakeGpu()])
    src = NvmlGpuSource(nvml=nvml)
    src.status()
    src.sample()
    src.status()
    assert nvml.calls["nvmlInit"] == 1
    assert nvml.calls["nvmlDeviceGetUUID"] == 1  # static facts are read once, not every sample


def test_real_pynvml_without_driver_reports_none() -> None:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        pass
    else:
        pytest.skip("this host has an NVIDIA driver")
    src = NvmlGpuSource()  # the installed nvidia-ml-py, imported lazily
    assert src.sample() == []
    status = src.status()
    assert status.source == "none"
    assert status.reason == "NVIDIA driver library not found (no GPU driver on this host)"
    src.close()


def test_bindings_blowing_up_during_enumeration_never_raise() -> None:
    nvml = FakeNvml([FakeGpu()])

    def count():
        raise RuntimeError("corrupt ctypes state")

    nvml.nvmlDeviceGetCount = count
    src = NvmlGpuSource(nvml=nvml)
    assert src.sample() == []
    status = src.status()
    assert status.source == "none" and "corrupt ctypes state" in (status.reason or "")
    assert not nvml.initialised  # NVML was shut down again rather than left half set up
