"""What each role may do, and who a Unix-socket peer is (the kernel vouches for its uid)."""

from __future__ import annotations

import os
import pwd

from agent.config import AgentConfig
from agent.schemas import Principal

# What each permission admits. Approver is deliberately not an operator: approving and acting
# are different duties (the two-person rule of the rollouts issue builds on this).
READ: frozenset[str] = frozenset({"viewer", "operator", "approver", "admin"})
OPERATE: frozenset[str] = frozenset({"operator", "admin"})
APPROVE: frozenset[str] = frozenset({"approver", "admin"})
ADMIN: frozenset[str] = frozenset({"admin"})


def peer_principal(uid: int, cfg: AgentConfig) -> Principal | None:
    """Map a Unix-socket peer's uid to a principal: configured uids, else the agent's own uid as admin."""
    role = cfg.auth.unix_peers.get(str(uid))
    if role is None and uid == os.geteuid():
        role = "admin"
    if role is None:
        return None
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return Principal(name=f"uid:{name}", role=role, via="unix-peer")
