"""`watchkeeper models`: the model registry of one agent from the command line.

    watchkeeper models register NAME --artifact FILE --metadata FILE.json [--json]
    watchkeeper models list [--json]
    watchkeeper models show NAME[:VERSION|@ALIAS] [--json]
    watchkeeper models alias NAME ALIAS VERSION [--reason TEXT] [--json]

Which agent: `--agent` (a URL, or an agent's name in the fleet file), else `$WATCHKEEPER_AGENT`, else
the only agent given by `--agents`/`--fleet`. The token comes from the fleet file's entry for that
agent, else `$WATCHKEEPER_TOKEN`.

Exit codes: 0 done; 1 the agent refused (its `error`, `field` and `detail` are printed) or could not
be reached; 2 usage: bad arguments, an unreadable local file, no agent chosen. Errors are one line.
Like the rest of the console this imports nothing from `agent/` but the wire contract.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from console.core.config import (
    FLEET_ENV,
    TOKEN_ENV,
    AgentSpec,
    FleetConfigError,
    name_for_url,
    resolve_fleet,
    validate_url,
)

HELP = "register, list and show model versions of an agent; move aliases"
AGENT_ENV = "WATCHKEEPER_AGENT"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# Registering streams the artifact and the agent loads it to check it: allow minutes, not seconds.
REGISTER_TIMEOUT_S = 600.0
MIN_TIMEOUT_S = 10.0


class ModelsUsageError(Exception):
    """Bad arguments or local files, or no agent chosen: exit 2."""


class ModelsFailure(Exception):
    """The agent refused or could not be reached: exit 1."""


# --------------------------------------------------------------------------- arguments


def _add_common(p: argparse.ArgumentParser) -> None:
    # SUPPRESSed defaults: an option given before the action (`models --agent X list`) is kept.
    p.add_argument(
        "--agent",
        metavar="URL|NAME",
        default=argparse.SUPPRESS,
        help=f"the agent (URL, or a name in the fleet file); default ${AGENT_ENV} or the only configured agent",
    )
    p.add_argument(
        "--agents", metavar="URL,...", default=argparse.SUPPRESS, help="as for status; used if it names one agent"
    )
    p.add_argument("--fleet", metavar="FILE", default=argparse.SUPPRESS, help="TOML fleet file (tokens, names)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p.add_argument("--timeout", type=float, metavar="S", default=argparse.SUPPRESS, help="request timeout, seconds")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the `models` actions to the `models` subcommand's parser."""
    _add_common(parser)
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", parser_class=type(parser))
    sub.required = True

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _add_common(p)
        return p

    p = action("register", "upload an artifact with its metadata as a new version")
    p.add_argument("name", help="model name")
    p.add_argument("--artifact", required=True, metavar="FILE", help="the model file (.onnx, TorchScript .pt)")
    p.add_argument("--metadata", required=True, metavar="FILE.json", help="ModelVersionCreate JSON")

    action("list", "models on the agent")

    p = action("show", "a version's lineage, signature, metrics and aliases")
    p.add_argument("ref", metavar="NAME[:VERSION|@ALIAS]", help="model, optionally a version or an alias")

    p = action("alias", "point an alias at a version (recorded as an event)")
    p.add_argument("name", help="model name")
    p.add_argument("alias", help="alias, e.g. prod")
    p.add_argument("version", type=int, help="version number")
    p.add_argument("--reason", default="", help="why (kept in the alias history and the audit log)")


def run(args: argparse.Namespace, out: IO[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run one `models` action; returns the exit code (errors are printed to stderr as one line)."""
    out = out or sys.stdout
    env = os.environ if env is None else env
    try:
        action = _ACTIONS[args.models_command]
        prepared = action.prepare(args)
        spec = pick_agent(args, env)
        with _Agent(spec, getattr(args, "timeout", None)) as agent:
            return action.run(agent, args, prepared, out)
    except ModelsUsageError as e:
        print(f"watchkeeper: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ModelsFailure as e:
        print(f"watchkeeper models {args.models_command}: {e}", file=sys.stderr)
        return EXIT_FAILED


def pick_agent(args: argparse.Namespace, env: Mapping[str, str]) -> AgentSpec:
    """The one agent this command talks to (see the module docstring)."""
    wanted = getattr(args, "agent", None) or env.get(AGENT_ENV) or None
    agents, fleet = getattr(args, "agents", None), getattr(args, "fleet", None)
    specs: list[AgentSpec] = []
    if agents or fleet or env.get(FLEET_ENV):
        try:
            specs = resolve_fleet(agents, fleet, env=env)
        except FleetConfigError as e:
            raise ModelsUsageError(str(e)) from None
    if wanted:
        for s in specs:
            if s.name == wanted:
                return s
        if "://" not in wanted:  # a name, not an address
            known = ", ".join(s.name for s in specs) or f"none: no fleet file (--fleet or ${FLEET_ENV})"
            raise ModelsUsageError(f"--agent: no agent named {wanted!r} in the fleet (agents: {known})")
        try:
            url = validate_url(wanted)
        except FleetConfigError as e:
            raise ModelsUsageError(f"--agent: {e}") from None
        for s in specs:
            if s.url == url:
                return s
        return AgentSpec(name=name_for_url(url), url=url, token=env.get(TOKEN_ENV) or None)
    if len(specs) == 1:
        return specs[0]
    if not specs:
        raise ModelsUsageError(f"no agent: pass --agent URL (or set {AGENT_ENV}), or --agents/--fleet with one agent")
    names = ", ".join(s.name for s in specs)
    raise ModelsUsageError(f"{len(specs)} agents configured ({names}); choose one with --agent NAME|URL")


# --------------------------------------------------------------------------- HTTP


class _Agent:
    """A small synchronous client of one agent's `/api/v1/models` routes."""

    def __init__(self, spec: AgentSpec, timeout: float | None) -> None:
        import httpx

        from agent.schemas import API_PREFIX

        self.spec = spec
        self._httpx = httpx
        self.timeout = timeout if timeout is not None else max(spec.timeout_s, MIN_TIMEOUT_S)
        self.upload_timeout = timeout if timeout is not None else REGISTER_TIMEOUT_S
        headers = {"User-Agent": "watchkeeper-models"}
        if spec.token:
            headers["Authorization"] = f"Bearer {spec.token}"
        kw: dict[str, Any] = {}
        if spec.socket_path:
            kw["transport"] = httpx.HTTPTransport(uds=spec.socket_path)
            base = "http://agent"
        else:
            base = spec.url
            if spec.url.startswith("https://") and spec.verify is not True:
                import ssl

                if spec.verify is False:
                    kw["verify"] = False
                else:
                    kw["verify"] = ssl.create_default_context(cafile=str(spec.verify))
        self.http = httpx.Client(base_url=base + API_PREFIX, headers=headers, timeout=self.timeout, **kw)

    def __enter__(self) -> _Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> Any:
        httpx = self._httpx
        t = timeout or self.timeout
        try:
            r = self.http.request(method, path, timeout=httpx.Timeout(t, connect=min(t, self.spec.timeout_s)), **kw)
        except httpx.TimeoutException:
            raise ModelsFailure(f"agent {self.spec.name} did not answer in {t:g}s") from None
        except httpx.ConnectError as e:
            raise ModelsFailure(f"cannot reach agent {self.spec.name} ({self.spec.url}): {_short(e)}") from None
        except httpx.HTTPError as e:
            # e.g. the agent closed the connection after refusing an upload it would not read
            raise ModelsFailure(f"agent {self.spec.name}: {type(e).__name__}: {_short(e)}") from None
        if r.status_code >= 400:
            raise ModelsFailure(describe_error(r.status_code, r.content))
        try:
            return r.json()
        except ValueError:
            raise ModelsFailure(f"agent {self.spec.name} sent a non-JSON answer (HTTP {r.status_code})") from None


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def describe_error(status: int, body: bytes) -> str:
    """One line from an agent's `ErrorBody`: `HTTP 422 invalid_model (artifact): why`."""
    from pydantic import ValidationError

    from agent.schemas import ErrorBody

    try:
        err = ErrorBody.model_validate_json(body)
    except ValidationError:
        text = body.decode("utf-8", "replace").strip().splitlines()
        return f"HTTP {status}: {text[0][:200] if text else 'no details'}"
    detail = err.detail
    if isinstance(detail, list):
        detail = "; ".join(f"{d.get('field')}: {d.get('message')}" if isinstance(d, dict) else str(d) for d in detail)
    elif isinstance(detail, dict):
        detail = json.dumps(detail, sort_keys=True)
    where = f" ({err.field})" if err.field else ""
    return f"HTTP {status} {err.error}{where}" + (f": {detail}" if detail else "")


# --------------------------------------------------------------------------- actions


class _Action:
    def __init__(
        self,
        run: Callable[[_Agent, argparse.Namespace, Any, IO[str]], int],
        prepare: Callable[[argparse.Namespace], Any] = lambda _args: None,
    ) -> None:
        self.run = run
        self.prepare = prepare


def _emit_json(out: IO[str], doc: Any) -> None:
    out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


# -- register


def _prepare_register(args: argparse.Namespace) -> tuple[Path, str]:
    artifact = Path(args.artifact)
    if not artifact.is_file():
        raise ModelsUsageError(f"--artifact {artifact}: no such file")
    try:
        text = Path(args.metadata).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelsUsageError(
            f"--metadata {args.metadata}: cannot read: {getattr(e, 'strerror', None) or e}"
        ) from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ModelsUsageError(f"--metadata {args.metadata}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ModelsUsageError(f"--metadata {args.metadata}: must be a JSON object")
    # The agent validates the metadata itself (a newer agent may know more fields than this console).
    return artifact, text


def _run_register(agent: _Agent, args: argparse.Namespace, prepared: tuple[Path, str], out: IO[str]) -> int:
    artifact, metadata = prepared
    try:
        fh = open(artifact, "rb")  # noqa: SIM115 - closed below; httpx streams it in chunks
    except OSError as e:
        raise ModelsUsageError(f"--artifact {artifact}: cannot read: {e.strerror or e}") from None
    with fh:
        mv = agent.request(
            "POST",
            f"/models/{args.name}/versions",
            data={"metadata": metadata},
            files={"artifact": (artifact.name, fh, "application/octet-stream")},
            timeout=agent.upload_timeout,
        )
    if getattr(args, "json", False):
        _emit_json(out, mv)
    else:
        out.write(
            f"registered {mv['name']} version {mv['version']} on {agent.spec.name} "
            f"(sha256 {mv['digest'][:16]}…, {_size(mv['size_bytes'])})\n"
        )
    return EXIT_OK


# -- list


def _run_list(agent: _Agent, args: argparse.Namespace, _prepared: None, out: IO[str]) -> int:
    models = agent.request("GET", "/models")
    if getattr(args, "json", False):
        _emit_json(out, models)
        return EXIT_OK
    if not models:
        out.write(f"no models on {agent.spec.name}\n")
        return EXIT_OK
    rows = [
        (
            m["name"],
            str(m["latest_version"]),
            str(m["versions"]),
            ", ".join(f"{a}→{v}" for a, v in sorted(m.get("aliases", {}).items())) or "-",
            _when(m["updated_at"]),
        )
        for m in models
    ]
    out.write(_table(("MODEL", "LATEST", "VERSIONS", "ALIASES", "UPDATED"), rows) + "\n")
    return EXIT_OK


# -- show


def parse_ref(ref: str) -> tuple[str, int | None, str | None]:
    """`NAME`, `NAME:VERSION` or `NAME@ALIAS` -> (name, version, alias)."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        if not name or not alias:
            raise ModelsUsageError(f"bad model reference {ref!r}: expected NAME@ALIAS")
        return name, None, alias
    if ":" in ref:
        name, _, v = ref.partition(":")
        if not name or not v.isdigit() or int(v) < 1:
            raise ModelsUsageError(f"bad model reference {ref!r}: expected NAME:VERSION with VERSION a number >= 1")
        return name, int(v), None
    if not ref:
        raise ModelsUsageError("empty model reference")
    return ref, None, None


def _prepare_show(args: argparse.Namespace) -> tuple[str, int | None, str | None]:
    return parse_ref(args.ref)


def _run_show(agent: _Agent, args: argparse.Namespace, ref: tuple[str, int | None, str | None], out: IO[str]) -> int:
    name, version, alias = ref
    aliases: dict[str, int] = agent.request("GET", f"/models/{name}/aliases")
    if alias is not None:
        if alias not in aliases:
            known = ", ".join(sorted(aliases)) or "none"
            raise ModelsFailure(f"model {name!r} has no alias {alias!r} (aliases: {known})")
        version = aliases[alias]
    if version is None:
        versions = agent.request("GET", f"/models/{name}")
        mv = versions[-1]
    else:
        versions = None
        mv = agent.request("GET", f"/models/{name}/versions/{version}")
    if getattr(args, "json", False):
        _emit_json(out, mv)
        return EXIT_OK
    if versions is None:
        versions = agent.request("GET", f"/models/{name}")
    out.write(render_version(mv, aliases, [v["version"] for v in versions]) + "\n")
    return EXIT_OK


def render_version(mv: Mapping[str, Any], aliases: Mapping[str, int], all_versions: Sequence[int]) -> str:
    """The text `models show` prints for one version."""
    lines: list[str] = []
    own = ", ".join(mv.get("aliases") or []) or "-"
    lines.append(f"{mv['name']} version {mv['version']}   aliases: {own}")
    lines.append(f"  digest       sha256:{mv['digest']}")
    lines.append(f"  format       {mv['format']}, {_size(mv['size_bytes'])}")
    lines.append(f"  created      {_when(mv['created_at'])} by {mv['created_by']}")
    if mv.get("description"):
        lines.append(f"  description  {mv['description']}")
    lin = mv.get("lineage") or {}
    lines.append("lineage")
    commit = str(lin.get("code_commit", "")) + (" (dirty)" if lin.get("code_dirty") else "")
    for key, value in (
        ("build_id", lin.get("build_id")),
        ("code_commit", commit),
        ("data_version", lin.get("data_version")),
        ("params_hash", lin.get("params_hash")),
        ("parent_version", lin.get("parent_version")),
        ("job_id", lin.get("job_id")),
    ):
        if value not in (None, ""):
            lines.append(f"  {key:<15}{value}")
    sig = mv.get("signature") or {}
    features = sig.get("features") or []
    width = sum(len(f.get("categories") or ()) if f.get("dtype") == "category" else 1 for f in features)
    lines.append(f"signature ({len(features)} features, encoded width {width})")
    rows = []
    for f in features:
        lo, hi = f.get("min"), f.get("max")
        rng = "" if lo is None and hi is None else f"{_num(lo)} .. {_num(hi)}"
        rows.append(
            (
                f["name"],
                f["dtype"],
                rng,
                ", ".join(f.get("categories") or []),
                _num(f.get("impute")),
            )
        )
    table = _table(("FEATURE", "DTYPE", "RANGE", "CATEGORIES", "IMPUTE"), rows)
    lines.extend("  " + line for line in table.splitlines())
    output = sig.get("output") or {}
    desc = f"  output: {output.get('kind')}"
    if output.get("labels"):
        desc += f", labels {', '.join(output['labels'])}"
    if output.get("kind") == "binary":
        desc += f", threshold {output.get('threshold', 0.5):g}"
    lines.append(desc)
    metrics = mv.get("metrics") or {}
    if metrics:
        lines.append("metrics")
        w = max(len(k) for k in metrics)
        lines.extend(f"  {k:<{w}}  {v:g}" for k, v in sorted(metrics.items()))
    tags = mv.get("tags") or {}
    if tags:
        lines.append("tags         " + ", ".join(f"{k}={v}" for k, v in sorted(tags.items())))
    lines.append("profile      " + ("yes" if mv.get("has_profile") else "none"))
    lines.append("versions     " + ", ".join(str(v) for v in all_versions))
    lines.append("aliases      " + (", ".join(f"{a}→{v}" for a, v in sorted(aliases.items())) or "-"))
    return "\n".join(lines)


def _num(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:g}" if isinstance(v, int | float) and not isinstance(v, bool) else str(v)


# -- alias


def _run_alias(agent: _Agent, args: argparse.Namespace, _prepared: None, out: IO[str]) -> int:
    if args.version < 1:
        raise ModelsUsageError("VERSION must be a number >= 1")
    ev = agent.request(
        "PUT", f"/models/{args.name}/aliases/{args.alias}", json={"version": args.version, "reason": args.reason}
    )
    if getattr(args, "json", False):
        _emit_json(out, ev)
    else:
        was = "" if ev.get("from_version") is None else f" (was {ev['from_version']})"
        out.write(f"{ev['model']}@{ev['alias']} → version {ev['to_version']}{was}\n")
    return EXIT_OK


_ACTIONS: dict[str, _Action] = {
    "register": _Action(_run_register, _prepare_register),
    "list": _Action(_run_list),
    "show": _Action(_run_show, _prepare_show),
    "alias": _Action(_run_alias),
}
