"""`watchkeeper-agent`: run the daemon, verify the audit chain, mint tokens, check a config.

Every failure before start-up is one line on stderr and a non-zero exit (2: bad config or flags,
1: runtime problem such as a store that cannot open).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from agent import __version__
from agent.config import AgentConfig, ConfigError, bind_listeners, load_config, prepare_data_dir
from agent.datadir import DataDirInUse, lock_data_dir, make_private
from agent.schemas import AuditVerify


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="watchkeeper-agent", description="Watchkeeper per-host agent")
    p.add_argument("--version", action="version", version=f"watchkeeper-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, help="TOML config file")
        sp.add_argument("--data-dir", type=Path, help="where the store, tokens and socket live")

    run = sub.add_parser("run", help="run the agent in the foreground (systemd runs this)")
    common(run)
    run.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help="HOST:PORT or unix:PATH; repeatable; replaces the config's list",
    )
    run.add_argument("--name", help="agent name shown in the console (default: hostname)")
    run.add_argument("--sample-interval", type=float, metavar="SECONDS")
    run.add_argument("--simulate-gpus", type=int, metavar="N", help="demo/test only: N simulated GPUs")
    run.add_argument(
        "--simulate-host", action="store_true", default=None, help="demo/test only: simulated host metrics"
    )
    run.add_argument("--seed", type=int, help="seed for simulated sources")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    check = sub.add_parser("check-config", help="validate the config and exit")
    common(check)

    audit = sub.add_parser("audit", help="audit log tools")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    verify = asub.add_parser("verify", help="verify the hash chain (through the running agent, or the file)")
    common(verify)
    verify.add_argument("--socket", type=Path, help="the running agent's Unix socket (default: from the config)")
    verify.add_argument("--json", action="store_true")

    tokens = sub.add_parser("tokens", help="token tools")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)
    new = tsub.add_parser("new", help="mint a token and print the config entry holding only its digest")
    new.add_argument("--name", required=True)
    new.add_argument("--role", required=True, choices=["viewer", "operator", "approver", "admin"])
    return p


def _load(args: argparse.Namespace) -> AgentConfig:
    overrides = {"data_dir": str(args.data_dir) if args.data_dir else None}
    if args.command == "run":
        overrides.update(
            {
                "listen": args.listen,
                "name": args.name,
                "sample_interval": args.sample_interval,
                "simulate.gpus": args.simulate_gpus,
                "simulate.host": args.simulate_host,
                "simulate.seed": args.seed,
                "log_level": args.log_level,
            }
        )
    return load_config(args.config, overrides)


def _fail(msg: str, code: int = 2) -> int:
    print(f"watchkeeper-agent: {msg}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # First the data dir's lock: nothing in the dir (store, WAL, tokens, socket) is touched before it.
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = lock_data_dir(cfg.data_dir)
    except DataDirInUse as e:
        return _fail(str(e), 1)
    except OSError as e:
        raise ConfigError(f"data_dir {cfg.data_dir}: not writable: {e.strerror or e}") from None
    make_private(cfg.data_dir)
    prepare_data_dir(cfg)
    sockets = bind_listeners(cfg)
    # Everything the agent creates from here on is its own: the store, its WAL, the journal, audit.head.
    # (After binding: a socket's parent directory keeps the caller's umask, for peers allowed to connect.)
    os.umask(0o077)
    from agent.daemon import serve
    from agent.store.db import StoreOpenError

    try:
        return serve(cfg, sockets)
    except StoreOpenError as e:
        return _fail(str(e), 1)
    finally:
        lock.release()


def _verify(args: argparse.Namespace) -> int:
    cfg = _load(args)
    result: AuditVerify | None = None
    sock = str(args.socket) if args.socket else next((a.path for a in cfg.listen_addresses() if a.kind == "unix"), None)
    if sock and Path(sock).exists():
        # The live file belongs to the running agent: ask it (our uid is its admin on the socket).
        import httpx

        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://agent", timeout=30) as c:
                r = c.get("/api/v1/audit/verify")
                if r.status_code == 200:
                    result = AuditVerify.model_validate(r.json())
        except httpx.HTTPError:
            result = None
    if result is None:
        import duckdb

        from agent.audit import AuditKeyError, load_key
        from agent.audit_verify import verify_chain

        if not cfg.db_path.exists():
            return _fail(f"no store at {cfg.db_path}", 1)
        try:
            key, _ = load_key(cfg.audit.key_file, cfg.data_dir)
        except AuditKeyError as e:  # e.g. not root: keyed links are then reported as needing the key
            print(f"watchkeeper-agent: {e}; verifying without the key", file=sys.stderr)
            key = None
        try:
            con = duckdb.connect(str(cfg.db_path), read_only=True)
        except duckdb.Error as e:
            return _fail(f"cannot open {cfg.db_path} read-only (is the agent running?): {e}", 1)
        try:
            result = verify_chain(con, cfg.data_dir / "audit.head", key)
        finally:
            con.close()
    if args.json:
        print(json.dumps(result.model_dump()))
    else:
        print(describe_verify(result))
    return 0 if result.ok else 1


def describe_verify(v: AuditVerify) -> str:
    """`audit verify`'s lines: the verdict (naming the first altered entry), then any warnings."""
    keyed = f"keyed since entry {v.keyed_since}" if v.keyed and v.keyed_since else "unkeyed"
    if v.ok and not v.entries:
        lines = ["audit chain OK: no entries yet"]
    elif v.ok:
        lines = [f"audit chain OK: {v.entries} entries, head {v.head} (entry {v.head_seq}; {keyed})"]
    else:
        at = f" at entry {v.first_bad_seq}" if v.first_bad_seq is not None else ""
        what = f" ({v.first_bad_action} {v.first_bad_target})" if v.first_bad_action else ""
        lines = [f"audit chain BROKEN{at}{what}: {v.problem} [{v.status}]"]
    return "\n".join([*lines, *(f"warning: {w}" for w in v.warnings)])


def _new_token(args: argparse.Namespace) -> int:
    from agent.auth.tokens import digest, new_token

    token, _ = new_token()
    print(f"# token for {args.name} (give it to the client; it is not stored anywhere):\n# {token}")
    print(f'[[auth.tokens]]\nname = "{args.name}"\nrole = "{args.role}"\nsha256 = "{digest(token)}"')
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check-config":
            cfg = _load(args)
            print(
                f"config OK: name={cfg.name} data_dir={cfg.data_dir} listen="
                + ",".join(str(a) for a in cfg.listen_addresses())
            )
            from agent.audit import UNKEYED_WARNING, AuditKeyError, load_key

            try:
                key, source = load_key(cfg.audit.key_file, cfg.data_dir)
            except AuditKeyError as e:
                return _fail(str(e))
            print(f"audit key: {source}" if key is not None else f"warning: {UNKEYED_WARNING}")
            return 0
        if args.command == "audit":
            return _verify(args)
        if args.command == "tokens":
            return _new_token(args)
    except ConfigError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
