"""Tell the app who is on the other end of a Unix-socket connection (SO_PEERCRED).

uvicorn does not put the connection's socket in the ASGI scope, so we subclass its HTTP protocol:
on each request we add `scope["extensions"]["watchkeeper.peer"] = {"uid", "gid", "pid"}` for
AF_UNIX connections. The kernel fills these in; the caller cannot forge them.
"""

from __future__ import annotations

import socket
import struct

# httptools comes with uvicorn[standard], a dependency; h11 would need its own hook.
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base

_UCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket) -> dict[str, int] | None:
    if sock.family != socket.AF_UNIX:
        return None
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return {"pid": pid, "uid": uid, "gid": gid}


class PeerCredProtocol(_Base):  # type: ignore[misc,valid-type]
    _peer: dict[str, int] | None = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        try:
            self._peer = peer_credentials(sock) if sock is not None else None
        except OSError:
            self._peer = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._peer is not None:
            self.scope.setdefault("extensions", {})["watchkeeper.peer"] = self._peer
