"""The agent's one settings model: a TOML file, then command-line flags, validated before anything starts.

Every key is optional. A mistake (unknown key, wrong type, unwritable data dir, port in use) is
reported as one line naming the key and the agent exits non-zero before it opens the store or binds.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from agent.schemas.common import parse_size

Role = Literal["viewer", "operator", "approver", "admin"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(Exception):
    """A problem with the agent's configuration or environment, fit for one line on stderr."""


def _duration(value: object) -> object:
    """Accept seconds as a number or a string like "90s", "15m", "24h", "30d"."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 24h, 30d)")
        return float(m.group(1)) * _UNIT_S[m.group(2)]
    return value


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
Hold = Annotated[float, BeforeValidator(_duration), Field(ge=0)]  # a duration that may be zero


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class TokenConfig(_Strict):
    """A bearer token given by its SHA-256 digest; the secret itself never sits in the config."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AuthConfig(_Strict):
    tokens: list[TokenConfig] = Field(default_factory=list)
    health_public: bool = True
    metrics_public: bool = True
    # uid (as a string key, TOML keys are strings) -> role for callers on the Unix socket.
    # The agent's own uid is an admin unless listed otherwise.
    unix_peers: dict[str, Role] = Field(default_factory=dict)
    socket_mode: str = Field(default="0660", pattern=r"^0?[0-7]{3}$")

    @field_validator("unix_peers")
    @classmethod
    def _uids_are_numbers(cls, v: dict[str, Role]) -> dict[str, Role]:
        for key in v:
            if not key.isdigit():
                raise ValueError(f"unix_peers keys are numeric uids, got {key!r}")
        return v


class RetentionConfig(_Strict):
    raw: Duration = 24 * 3600.0
    rollup: Duration = 30 * 86400.0
    # The prediction log and the labels posted for it (drift windows are kept `monitoring.keep`).
    predictions: Duration = 7 * 86400.0


class SimulateConfig(_Strict):
    """Demo/test data sources. Clearly labelled as simulated everywhere they show up."""

    gpus: int = Field(default=0, ge=0, le=16)
    host: bool = False
    seed: int = 0


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]


class ServingConfig(_Strict):
    # Loaded models are evicted least-recently-used beyond this (estimated resident memory).
    pool_budget: Size = 2 * 2**30


class MonitoringConfig(_Strict):
    """Drift windows cut from the prediction log."""

    # Each endpoint's logged rows are histogrammed per window of this length, once it has closed.
    window: Duration = 60.0
    # How often the monitor looks for closed windows (and new feedback).
    interval: Duration = 10.0
    # Windows kept (histograms and scores); merged ranges reach back this far.
    keep: Duration = 30 * 86400.0


AlertKind = Literal[
    "feature_drift", "prediction_drift", "label_drift", "data_quality", "latency_p99", "error_rate",
    "fallback_rate", "outage", "quality_drop", "rollout_guard", "job_failed", "job_duration", "job_pending",
    "quota_near_limit",
]  # fmt: skip


class AlertRuleConfig(_Strict):
    """One alert rule. `threshold` means what its kind says (docs/monitoring.md); `for` holds it."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: AlertKind
    threshold: float | None = None
    for_s: Hold = Field(default=0.0, alias="for")
    severity: Literal["info", "warning", "critical"] = "warning"
    endpoints: list[str] = Field(default_factory=list)  # empty: every endpoint
    metric: str | None = None  # quality_drop: accuracy | auc | f1 | mae | rmse
    # One alert per endpoint listing its subjects (features), or one per subject. None: the kind's
    # default (agent/alerting/rules.py GROUPED_KINDS: per endpoint for feature_drift and data_quality).
    group_by: Literal["endpoint", "subject"] | None = None
    # A firing alert resolves only after its condition has stayed clear this long (Prometheus'
    # keep_firing_for), so a flapping one does not fire and resolve every window. None: the kind's
    # default (rules.py KEEP_FIRING_S).
    keep_firing_for: Hold | None = None


class WebhookConfig(_Strict):
    name: str = Field(min_length=1, max_length=64)
    url: str = Field(pattern=r"^https?://")
    format: Literal["slack", "alertmanager"] = "alertmanager"
    min_severity: Literal["info", "warning", "critical"] = "warning"
    timeout: Duration = 5.0
    max_attempts: int = Field(default=6, ge=1, le=100)


class AlertingConfig(_Strict):
    # How often rules are evaluated.
    interval: Duration = 15.0
    # None: the built-in rules (agent/alerting/rules.py DEFAULT_RULES); [] turns them all off.
    rules: list[AlertRuleConfig] | None = None
    webhooks: list[WebhookConfig] = Field(default_factory=list)


class AuditConfig(_Strict):
    # HMAC key of the audit chain, kept outside the data dir (root-only file). None: systemd's
    # $CREDENTIALS_DIRECTORY/audit-key when present, else an unkeyed chain (warned at start and in /readyz).
    key_file: Path | None = None


SLURM_NAME = r"^[A-Za-z0-9_.+-]{1,64}$"  # a partition, account or QOS name (never an option of its own)


class SlurmConfig(_Strict):
    """`[jobs.slurm]`: how the agent reaches Slurm (docs/jobs.md "Slurm backend")."""

    bin_dir: Path | None = None  # where sbatch, squeue, scancel, scontrol are (None: PATH, then /usr/bin)
    conf: Path | None = None  # SLURM_CONF for those commands (None: Slurm's own default)
    poll_interval: Duration = 2.0  # one `squeue --json` per interval, for all of the agent's Slurm jobs
    command_timeout: Duration = 30.0  # sbatch with slurmctld down fails after ~9 s (MessageTimeout)
    partition: str | None = Field(default=None, pattern=SLURM_NAME)  # defaults for pipelines without their own
    account: str | None = Field(default=None, pattern=SLURM_NAME)
    qos: str | None = Field(default=None, pattern=SLURM_NAME)
    # slurmctld's jobcomp/filetxt file, read for a job Slurm no longer lists that left no rc file (None: asked of
    # `scontrol show config`, JobCompLoc when JobCompType is jobcomp/filetxt). Readable from a submit host
    # only where it is shared with the controller (or is the controller).
    jobcomp_file: Path | None = None


class QuotaConfig(_Strict):
    """One pipeline's quota (`[[quotas]]`); the fields are `agent.schemas.jobs.QuotaSpec`'s (config sits
    beside the schemas, not above them, so the jobs service converts). A missing limit: unlimited."""

    pipeline: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    cpu: float | None = Field(default=None, gt=0, le=4096)
    mem: Size | None = None
    gpus: int | list[str] | None = None
    gpu_mem: Size | None = None
    max_running_jobs: int | None = Field(default=None, ge=1, le=100_000)
    priority: int = Field(default=0, ge=-1000, le=1000)
    share_gpus: bool = False
    near_limit: float = Field(default=0.9, gt=0, le=1)
    # Where the pipeline's jobs run (None: `[jobs] backend`); Slurm's partition/account/qos for them.
    backend: Literal["local", "slurm"] | None = None
    partition: str | None = Field(default=None, pattern=SLURM_NAME)
    account: str | None = Field(default=None, pattern=SLURM_NAME)
    qos: str | None = Field(default=None, pattern=SLURM_NAME)


class DefaultQuotaConfig(QuotaConfig):
    """`[jobs.default_quota]`: what a pipeline without a `[[quotas]]` entry gets."""

    pipeline: str = "*"


class JobsConfig(_Strict):
    """`[jobs]`: the job executor (docs/jobs.md)."""

    enabled: bool = True
    default_cpu: float = Field(default=1.0, gt=0, le=4096)  # cores a job gets when it asks for none
    default_mem: Size = 2**30
    max_pids: int = Field(default=4096, ge=16, le=4_194_304)
    log_max_bytes: Size = 64 * 2**20  # per stream; past it the file keeps its tail
    log_retention: Duration = 7 * 86400.0  # finished jobs' output directories
    # Kept for serving: jobs together never take it (admission, and the tier's jobs root).
    serving_reserve_cpu: float = Field(default=0.0, ge=0, le=4096)
    serving_reserve_mem: Size = 0
    # Jobs run in the host's idle CPU class (cgroup cpu.idle): any other task, serving first, preempts them at
    # once. False: they keep CPU weight 10 to other work's 100 (agent/jobs/tiers/base.py says why).
    cpu_idle: bool = True
    tier: Literal["auto", "systemd", "cgroup-v2", "cgroup-v1", "psutil"] = "auto"
    # The tiers' parent cgroup. Default: `watchkeeper.jobs.<agent name>`, so two agents on one host (the demo,
    # tests) never write each other's pipeline limits.
    jobs_root: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    tick: Duration = 0.1  # the runner's period; submit and cancel wake it at once
    usage_interval: Duration = 1.0
    terminate_grace: Hold = 5.0
    default_quota: DefaultQuotaConfig = Field(default_factory=DefaultQuotaConfig)
    # "slurm": every pipeline's jobs go to Slurm unless its `[[quotas]]` says `backend = "local"`.
    backend: Literal["local", "slurm"] = "local"
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    # The account local jobs run as (None: the agent's own). An agent running as root, as the cgroup and systemd
    # tiers need, should name an unprivileged one: the agent's account owns the store, tokens and audit chain.
    run_as: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")


class AgentConfig(_Strict):
    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    data_dir: Path = Field(default_factory=lambda: default_data_dir())
    listen: list[str] = Field(default_factory=list)
    sample_interval: Duration = 1.0
    sample_jitter: float = Field(default=0.1, ge=0, le=0.5)
    flush_interval: Duration = 5.0
    top_processes: int = Field(default=5, ge=0, le=50)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    simulate: SimulateConfig = Field(default_factory=SimulateConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    alerting: AlertingConfig = Field(default_factory=AlertingConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    quotas: list[QuotaConfig] = Field(default_factory=list)

    @field_validator("quotas")
    @classmethod
    def _one_quota_per_pipeline(cls, v: list[QuotaConfig]) -> list[QuotaConfig]:
        seen: set[str] = set()
        for q in v:
            if q.pipeline in seen:
                raise ValueError(f"pipeline {q.pipeline!r} has two [[quotas]] entries")
            seen.add(q.pipeline)
        return v

    @field_validator("listen")
    @classmethod
    def _valid_addresses(cls, v: list[str]) -> list[str]:
        for addr in v:
            parse_listen(addr)
        return v

    @property
    def db_path(self) -> Path:
        return self.data_dir / "watchkeeper.duckdb"

    def listen_addresses(self) -> list[ListenAddress]:
        """The configured addresses, or the defaults: loopback TCP 7070 and a socket in the data dir."""
        addrs = self.listen or ["127.0.0.1:7070", f"unix:{self.data_dir / 'agent.sock'}"]
        return [parse_listen(a) for a in addrs]


@dataclass(frozen=True)
class ListenAddress:
    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(addr: str) -> ListenAddress:
    """Parse `HOST:PORT`, `[V6]:PORT` or `unix:PATH`."""
    if addr.startswith("unix:"):
        path = addr[5:]
        if not path:
            raise ValueError(f"listen address {addr!r}: empty socket path")
        return ListenAddress("unix", path=os.path.abspath(path))
    m = re.match(r"^(?:\[([0-9a-fA-F:]+)\]|([^:\[\]]*)):(\d{1,5})$", addr)
    if not m:
        raise ValueError(f"listen address {addr!r}: expected HOST:PORT or unix:PATH")
    port = int(m.group(3))
    if port > 65535:
        raise ValueError(f"listen address {addr!r}: port out of range")
    return ListenAddress("tcp", host=m.group(1) or m.group(2) or "127.0.0.1", port=port)


def default_data_dir() -> Path:
    """systemd's StateDirectory when run as a unit, /var/lib for root, else the XDG data home."""
    if state := os.environ.get("STATE_DIRECTORY"):
        return Path(state.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/watchkeeper")
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "watchkeeper"


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def load_config(path: Path | None, overrides: dict | None = None) -> AgentConfig:
    """Read the TOML file (if any), apply flag overrides, validate. Raises ConfigError."""
    raw: dict = {}
    source = str(path) if path else "config"
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_one_line(e, source)) from None


def prepare_data_dir(cfg: AgentConfig) -> None:
    """Create the data dir (0700) and prove it is writable now, not at the first flush."""
    d = cfg.data_dir
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = d / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"data_dir {d}: not writable: {e.strerror or e}") from None


def bind_listeners(cfg: AgentConfig) -> list[socket.socket]:
    """Bind every listen address now, so 'port in use' is a start-up error and not a log line later."""
    socks: list[socket.socket] = []
    try:
        for addr in cfg.listen_addresses():
            socks.append(_bind(addr, int(cfg.auth.socket_mode, 8)))
    except ConfigError:
        for s in socks:
            s.close()
        raise
    return socks


def _bind(addr: ListenAddress, mode: int) -> socket.socket:
    if addr.kind == "unix":
        path = Path(addr.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"listen {addr}: cannot create directory: {e.strerror}") from None
        if path.exists():
            # A live agent answers on the socket; a stale file from a crash is safe to replace.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                raise ConfigError(f"listen {addr}: another process is listening on this socket")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)
            except OSError as e:
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"listen {addr}: {e.strerror or e}") from None
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                s.bind(str(path))
            finally:
                os.umask(old)
            os.chmod(path, mode)
        except OSError as e:
            s.close()
            raise ConfigError(f"listen {addr}: {e.strerror or e}") from None
    else:
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr.host, addr.port))
        except OSError as e:
            s.close()
            why = "port in use" if e.errno == 98 else (e.strerror or str(e))
            raise ConfigError(f"listen {addr}: {why}") from None
    s.listen(128)
    s.setblocking(False)
    return s
