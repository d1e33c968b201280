"""The console's anchor for each agent's audit chain: the last head it saw, and whether the chain still holds it.

Someone who can write an agent's data dir (and, without the audit key, even with it for the "never keyed"
case) could rewrite its audit chain and `audit.head` together; the console, on another machine, remembers
each agent's last verified head `(seq, hash)` in its state dir (`$WATCHKEEPER_STATE_DIR`, else
`$XDG_STATE_HOME/watchkeeper`, else `~/.local/state/watchkeeper`; file `audit-heads.json`) and asks the agent
to verify its chain *and* that it still holds that entry (`GET /api/v1/audit/verify?since_seq=&since_hash=`).
A chain that stops extending the remembered head, or fails to verify, is reported loudly (`watchkeeper status`
prints a line, the fleet row's reason says it) and the remembered head is kept, so the report persists
until someone looks: remove the agent's entry from the file to accept the new chain.

No Textual here (console/client.py's rule); the file is tiny and written atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from console.core.client import AgentClient
from console.core.errors import AgentError

STATE_ENV = "WATCHKEEPER_STATE_DIR"
FILE_NAME = "audit-heads.json"

AnchorState = Literal["ok", "new", "broken", "restarted", "unknown"]


def default_path() -> Path:
    """Where the remembered heads live (see the module docstring)."""
    if d := os.environ.get(STATE_ENV):
        return Path(d) / FILE_NAME
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "watchkeeper" / FILE_NAME


@dataclass(frozen=True)
class AuditAnchor:
    """What the console knows about one agent's audit chain after a check."""

    state: AnchorState
    message: str
    seq: int | None = None  # the head remembered now (broken: the one the chain no longer holds)
    hash: str | None = None

    @property
    def broken(self) -> bool:
        """Needs a person's look: the chain no longer holds what this console saw (rewritten or started over)."""
        return self.state in ("broken", "restarted")


class HeadStore:
    """Each agent's last verified audit head, by agent URL, in one JSON file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self._heads: dict[str, dict] = {}
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data, dict):
                self._heads = {k: v for k, v in data.items() if isinstance(v, dict)}
        except (OSError, ValueError):
            pass  # none yet (or unreadable: start afresh; the next check anchors again)

    def get(self, key: str) -> tuple[int, str, float] | None:
        h = self._heads.get(key)
        if h is None or not isinstance(h.get("seq"), int) or not isinstance(h.get("hash"), str):
            return None
        return h["seq"], h["hash"], float(h.get("seen_at", 0.0))

    def genesis(self, key: str) -> str | None:
        """Entry 1's hash of the chain remembered for `key` (None: not known)."""
        g = self._heads.get(key, {}).get("genesis")
        return g if isinstance(g, str) else None

    def remember(self, key: str, seq: int, h: str, genesis: str | None = None) -> None:
        self._heads[key] = {"seq": seq, "hash": h, "seen_at": time.time(), "genesis": genesis}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._heads, indent=1, sort_keys=True))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


async def check_anchor(client: AgentClient, store: HeadStore, key: str) -> AuditAnchor:
    """Verify one agent's chain against the head remembered for `key`; remember the new head when it checks out."""
    seen = store.get(key)
    try:
        v = await client.audit_verify(since=(seen[0], seen[1]) if seen else None)
    except AgentError as e:
        return AuditAnchor("unknown", f"audit chain not checked: {e.message}")
    if seen is not None and (v.extends is False or v.status == "not_extending"):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(seen[2])) if seen[2] else "earlier"
        known = store.genesis(key)
        if known is not None and v.genesis is not None and v.genesis != known:
            # Not the same log any more, from its first entry on: a re-created data dir looks exactly like
            # this, and so does a log replaced whole. Say what is known, not more.
            return AuditAnchor(
                "restarted",
                f"AUDIT LOG STARTED OVER: its entry 1 is not the one this console saw {when} (data dir re-created, "
                f"or the whole log replaced; {store.path} remembers the old one)",
                seen[0], seen[1],
            )  # fmt: skip
        return AuditAnchor(
            "broken",
            f"AUDIT CHAIN REWRITTEN: it no longer holds entry {seen[0]} ({seen[1][:12]}…) this console saw {when}"
            f" ({store.path} remembers it)",
            seen[0], seen[1],
        )  # fmt: skip
    if not v.ok:
        at = f" at entry {v.first_bad_seq}" if v.first_bad_seq is not None else ""
        what = f" ({v.first_bad_action} {v.first_bad_target})" if v.first_bad_action else ""
        message = f"AUDIT CHAIN BROKEN ({v.status}){at}{what}: {v.problem}"
        return AuditAnchor("broken", message, seen[0] if seen else None, seen[1] if seen else None)
    if v.head_seq is None or v.head is None:
        return AuditAnchor("unknown", "audit chain empty")
    store.remember(key, v.head_seq, v.head, v.genesis)
    state: AnchorState = "new" if seen is None else "ok"
    keyed = "keyed" if v.keyed else "UNKEYED"
    return AuditAnchor(state, f"audit chain ok to entry {v.head_seq} ({keyed})", v.head_seq, v.head)
