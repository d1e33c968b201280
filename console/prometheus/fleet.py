"""PromQL answers → the fleet table's `AgentStatus` rows (pure: no I/O, tested on recorded answers).

A poll asks Prometheus one query per column for the whole fleet (`QUERIES`) plus its active targets,
and this module joins them by the `instance` label. An agent is known by its scrape target: its
address is the target's scrape URL without the path, its name the fleet file's (matched by
address) or the target's `instance`, shown as the agent's own name (`watchkeeper_agent_info`).

Which targets are agents: those that have exposed `watchkeeper_agent_info` in the last hour, every
other target of the same scrape jobs (an agent down since Prometheus started never said who it is),
and whatever the fleet file lists (missing from Prometheus: down, "not a Prometheus target").
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.schemas import CpuSample, GpuSample, GpuStatus, MemorySample, Snapshot
from console.core.config import AgentSpec
from console.core.poller import DEFAULT_SAMPLE_INTERVAL_S, STALE_INTERVALS, AgentState, AgentStatus
from console.prometheus.client import Sample, Target

MIB = 1024 * 1024

# One instant query per column, each for the whole fleet. The agent exposes node_exporter and DCGM
# names (agent/api/metrics.py), so these also read hosts scraped through those exporters' names.
QUERIES: dict[str, str] = {
    "up": "up",
    "scraped_at": "timestamp(up)",
    "agent": "last_over_time(watchkeeper_agent_info[1h])",
    "sample_ts": "watchkeeper_last_sample_timestamp_seconds",
    "cpu": "watchkeeper_cpu_utilization_percent",
    # Only real hosts expose per-CPU counters: no count here means a simulated host.
    "cpus": 'count by (instance) (node_cpu_seconds_total{mode="idle"})',
    "mem_total": "node_memory_MemTotal_bytes",
    "mem_avail": "node_memory_MemAvailable_bytes",
    "load1": "node_load1",
    "gpu_util": "DCGM_FI_DEV_GPU_UTIL",
    "gpu_used": "DCGM_FI_DEV_FB_USED",
    "gpu_free": "DCGM_FI_DEV_FB_FREE",
    # Alerts firing or pending per agent: which agents' alert lists are worth asking for.
    "alerts": 'sum by (instance) ({__name__=~"watchkeeper_alerts_(firing|pending)"})',
    "now": "time()",
}

# History for the host screen's sparklines: the agent's series names → PromQL for one instance.
SERIES_QUERIES: dict[str, str] = {
    "cpu_percent": 'watchkeeper_cpu_utilization_percent{{instance="{instance}"}}',
    "memory_percent": (
        '100 * (1 - node_memory_MemAvailable_bytes{{instance="{instance}"}}'
        ' / node_memory_MemTotal_bytes{{instance="{instance}"}})'
    ),
    "memory_used_bytes": (
        'node_memory_MemTotal_bytes{{instance="{instance}"}} - node_memory_MemAvailable_bytes{{instance="{instance}"}}'
    ),
    "load1": 'node_load1{{instance="{instance}"}}',
    "gpu_utilization_percent": 'DCGM_FI_DEV_GPU_UTIL{{instance="{instance}"}}',
    "gpu_memory_used_bytes": f'DCGM_FI_DEV_FB_USED{{{{instance="{{instance}}"}}}} * {MIB}',
}


def series_query(metric: str, instance: str) -> str:
    """The PromQL for one agent's `metric` history; KeyError for a metric Prometheus cannot chart."""
    escaped = instance.replace("\\", "\\\\").replace('"', '\\"')
    return SERIES_QUERIES[metric].format(instance=escaped)


@dataclass(frozen=True)
class Answers:
    """One poll's raw answers: Prometheus's clock, its active targets, and each column's samples."""

    now: float
    targets: Sequence[Target]
    columns: Mapping[str, Sequence[Sample]]


@dataclass(frozen=True)
class Member:
    """One agent of the fleet as Prometheus sees it (target None: Prometheus does not scrape it)."""

    name: str
    url: str
    instance: str | None
    target: Target | None
    spec: AgentSpec | None = None
    agent_name: str = ""


@dataclass
class Memory:
    """What a source remembers between polls, so a down agent still shows its last figures."""

    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    last_seen: dict[str, float] = field(default_factory=dict)


def agent_url(target: Target) -> str:
    """The agent's address: the target's scrape URL without its path (`/metrics`)."""
    parts = urlsplit(target.scrape_url)
    if parts.scheme and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return f"http://{target.labels.get('instance', '')}"


def _by_instance(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.labels.get("instance", "")].append(s)
    return out


def _first(samples: Mapping[str, list[Sample]], instance: str) -> float | None:
    for s in samples.get(instance, ()):
        if not math.isnan(s.value):
            return s.value
    return None


def members(answers: Answers, specs: Sequence[AgentSpec]) -> list[Member]:
    """The fleet: the fleet file's agents in its order, then the other agents Prometheus scrapes."""
    info = _by_instance(answers.columns.get("agent", ()))
    agent_names = {inst: s[0].labels.get("agent", "") for inst, s in info.items() if s}
    jobs = {t.labels.get("job") for t in answers.targets if t.labels.get("instance") in agent_names}
    by_url: dict[str, Target] = {}
    for t in answers.targets:
        by_url.setdefault(agent_url(t), t)
    out: list[Member] = []
    taken: set[str] = set()
    for spec in specs:
        t = by_url.get(spec.url)
        inst = t.labels.get("instance") if t else None
        out.append(Member(spec.name, spec.url, inst, t, spec, agent_names.get(inst or "", "")))
        taken.add(spec.url)
    for url, t in sorted(by_url.items()):
        inst = t.labels.get("instance", url)
        if url in taken or (inst not in agent_names and t.labels.get("job") not in jobs):
            continue
        out.append(Member(inst, url, inst, t, None, agent_names.get(inst, "")))
    return out


def _gpus(instance: str, cols: Mapping[str, Mapping[str, list[Sample]]]) -> tuple[list[GpuSample], bool]:
    by_gpu: dict[str, dict[str, Sample]] = defaultdict(dict)
    for key in ("gpu_util", "gpu_used", "gpu_free"):
        for s in cols[key].get(instance, ()):
            by_gpu[s.labels.get("gpu", "0")][key] = s
    gpus: list[GpuSample] = []
    simulated = False
    for index in sorted(by_gpu, key=lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g)):
        got = by_gpu[index]
        labels = next(iter(got.values())).labels
        simulated = simulated or labels.get("source") == "simulated"
        used = got.get("gpu_used")
        free = got.get("gpu_free")
        used_b = None if used is None or math.isnan(used.value) else int(used.value * MIB)
        total_b = None if used_b is None or free is None or math.isnan(free.value) else used_b + int(free.value * MIB)
        util = got.get("gpu_util")
        gpus.append(
            GpuSample(
                index=int(index) if index.isdigit() else len(gpus),
                uuid=labels.get("UUID", ""),
                name=labels.get("modelName", ""),
                pci_bus_id=labels.get("pci_bus_id") or None,
                utilization_percent=None if util is None or math.isnan(util.value) else util.value,
                memory_used_bytes=used_b,
                memory_total_bytes=total_b,
            )
        )
    return gpus, simulated


def snapshot_for(member: Member, answers: Answers, cols: Mapping[str, Mapping[str, list[Sample]]]) -> Snapshot | None:
    """The agent's figures from the column answers, as the `Snapshot` the table renders (None: no sample)."""
    inst = member.instance or ""
    ts = _first(cols["sample_ts"], inst)
    if ts is None:
        return None
    total = _first(cols["mem_total"], inst)
    avail = _first(cols["mem_avail"], inst)
    gpus, simulated_gpus = _gpus(inst, cols)
    hostname = next((s.labels.get("Hostname") for s in cols["gpu_util"].get(inst, ()) if s.labels.get("Hostname")), "")
    total_b = int(total or 0)
    avail_b = int(avail if avail is not None else total_b)
    return Snapshot(
        ts=ts,
        hostname=hostname or (urlsplit(member.url).hostname or inst),
        agent_name=member.agent_name or member.name,
        host_simulated=_first(cols["cpus"], inst) is None,
        cpu=CpuSample(
            percent=_first(cols["cpu"], inst) or 0.0,
            per_core=[],
            load1=_first(cols["load1"], inst) or 0.0,
            load5=0.0,
            load15=0.0,
        ),
        memory=MemorySample(
            total_bytes=total_b,
            available_bytes=avail_b,
            used_bytes=max(0, total_b - avail_b),
            percent=100.0 * (1 - avail_b / total_b) if total_b else 0.0,
            swap_total_bytes=0,
            swap_used_bytes=0,
        ),
        gpus=gpus,
        gpu_status=GpuStatus(
            source="simulated" if simulated_gpus else ("nvml" if gpus else "none"), simulated=simulated_gpus
        ),
    )


def agent_statuses(
    answers: Answers, specs: Sequence[AgentSpec], memory: Memory, console_now: float
) -> tuple[AgentStatus, ...]:
    """Every agent's status from one poll's answers; `memory` keeps last-known figures across polls."""
    cols = {k: _by_instance(answers.columns.get(k, ())) for k in QUERIES}
    out: list[AgentStatus] = []
    for m in members(answers, specs):
        out.append(_status(m, answers, cols, memory, console_now))
    return tuple(out)


def _status(
    m: Member, answers: Answers, cols: Mapping[str, Mapping[str, list[Sample]]], memory: Memory, console_now: float
) -> AgentStatus:
    t = m.target
    interval = max(t.scrape_interval_s or 0.0, DEFAULT_SAMPLE_INTERVAL_S) if t else DEFAULT_SAMPLE_INTERVAL_S
    snap = snapshot_for(m, answers, cols) if t is not None else None
    if snap is not None:
        memory.snapshots[m.name] = snap
    last = memory.snapshots.get(m.name)
    base = {
        "name": m.name,
        "url": m.url,
        # Named by the fleet file: that name; found in Prometheus: the agent's own name over `instance`.
        "display_name": "" if m.spec is not None else m.agent_name,
        "snapshot": last,
        "sample_interval_s": interval,
        "sample_age_s": None if last is None else max(0.0, answers.now - last.ts),
    }
    up = _first(cols["up"], m.instance or "") if t is not None else None
    if t is None:
        return AgentStatus(
            state=AgentState.DOWN, reason="not a Prometheus target", last_seen=memory.last_seen.get(m.name), **base
        )
    if up is None or t.health == "unknown":
        reason = t.last_error or "not scraped yet"
        return AgentStatus(state=AgentState.DOWN, reason=reason, last_seen=memory.last_seen.get(m.name), **base)
    if up < 1:
        reason = f"scrape failed: {_short(t.last_error)}" if t.last_error else "scrape failed (up == 0)"
        return AgentStatus(state=AgentState.DOWN, reason=reason, last_seen=memory.last_seen.get(m.name), **base)
    memory.last_seen[m.name] = console_now
    if snap is None:
        return AgentStatus(state=AgentState.DOWN, reason="no sample yet", last_seen=console_now, **base)
    scraped = _first(cols["scraped_at"], m.instance or "")
    scrape_age = None if scraped is None else max(0.0, answers.now - scraped)
    limit = STALE_INTERVALS * interval
    if scrape_age is not None and scrape_age > limit:
        return AgentStatus(
            state=AgentState.STALE, reason=f"last scrape {scrape_age:.0f}s old", last_seen=console_now, **base
        )
    age = base["sample_age_s"]
    if age is not None and age > limit:
        return AgentStatus(state=AgentState.STALE, reason=f"last sample {age:.0f}s old", last_seen=console_now, **base)
    return AgentStatus(state=AgentState.UP, last_seen=console_now, **base)


def _short(error: str) -> str:
    """Prometheus's Go error, shortened to what an operator reads ("connect: connection refused")."""
    for phrase in ("connection refused", "context deadline exceeded", "no such host", "connection reset"):
        if phrase in error:
            return "timed out" if phrase == "context deadline exceeded" else phrase
    return error


def alert_counts(answers: Answers) -> dict[str, float]:
    """Alerts firing or pending per `instance` (absent: the agent exports no alerting)."""
    return {s.labels.get("instance", ""): s.value for s in answers.columns.get("alerts", ()) if not math.isnan(s.value)}


def unreachable(previous: Sequence[AgentStatus], specs: Sequence[AgentSpec], reason: str) -> tuple[AgentStatus, ...]:
    """Prometheus did not answer: every agent we knew (or the fleet file lists) is stale, not down.

    We no longer know anything about the agents; calling them down would send someone to fix hosts
    that are fine."""
    known = {a.name: a for a in previous}
    out = [AgentStatus(**{**_fields(known[a.name]), "state": AgentState.STALE, "reason": reason}) for a in previous]
    for spec in specs:
        if spec.name not in known:
            out.append(AgentStatus(name=spec.name, url=spec.url, state=AgentState.STALE, reason=reason))
    return tuple(out)


def _fields(status: AgentStatus) -> dict:
    from dataclasses import fields

    return {f.name: getattr(status, f.name) for f in fields(status)}
