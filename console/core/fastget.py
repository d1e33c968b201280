"""`KeepAliveGet`: a minimal HTTP/1.1 GET over one keep-alive connection, for the fleet poll's one
request per agent (`GET /api/v1/summary`).

Why not httpx here: at 1,000 agents every poll is 1,000 requests, and httpx + httpcore + anyio cost
~1 ms of console CPU each (measured: 965 µs per agent per poll), about half a core at a 2 s refresh.
This costs a fraction of that (bench/console_scale.py and docs/architecture.md have the figures).
It does only what the poll needs: GET with headers, TCP, `unix://` sockets, TLS through a shared
`ssl.SSLContext`, bodies by Content-Length, chunked, or read to close; a connection that the agent
closed while idle is reopened once (a GET is safe to repeat). Everything else (POSTs, uploads,
redirects, the CLI's verbs) stays on httpx. No Textual here.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

# The summary is a few KiB; a header block or body beyond these is not an agent talking.
MAX_HEAD = 64 * 1024
MAX_BODY = 8 * 2**20


class HttpProtocolError(Exception):
    """The peer did not answer in HTTP/1.1 as we understand it."""


@dataclass(frozen=True)
class Answer:
    """One response: status code, headers (names lower-cased; the last of repeats wins), body."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


class KeepAliveGet:
    """GETs to one agent over one reused connection; not safe for concurrent use (the poll asks one
    summary per agent at a time; a caller wanting more at once uses httpx)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        uds: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.host, self.port, self.uds, self.ssl_context = host, port, uds, ssl_context
        host_header = host if port in (80, 443) or uds else f"{host}:{port}"
        if ":" in host and not host.startswith("[") and not uds:  # an IPv6 literal
            host_header = f"[{host}]:{port}"
        fixed = {"Host": "agent" if uds else host_header, **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connections = 0  # connections opened (tests: one per agent, kept alive)

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        """`GET path`; raises OSError (connect, reset), `HttpProtocolError`, `asyncio.IncompleteReadError`."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        request = f"GET {path} HTTP/1.1\r\n{self._fixed}{extra}\r\n".encode("latin-1")
        reused = self._writer is not None
        try:
            return await self._exchange(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            if not reused:
                raise
        # The agent closed the idle connection (restart, keep-alive timeout): once more, on a new one.
        return await self._exchange(request)

    async def _exchange(self, request: bytes) -> Answer:
        if self._writer is None:
            await self._connect()
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            answer, keep = await _read_answer(head, reader)
        except BaseException:
            self.close()  # half-read answers poison the connection; timeouts and cancellation too
            raise
        if not keep:
            self.close()
        return answer

    async def _connect(self) -> None:
        if self.uds is not None:
            self._reader, self._writer = await asyncio.open_unix_connection(self.uds, limit=MAX_HEAD)
        else:
            self._reader, self._writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self.ssl_context,
                server_hostname=self.host if self.ssl_context else None,
                limit=MAX_HEAD,
            )
        self.connections += 1

    def close(self) -> None:
        """Drop the connection (the next GET opens a new one)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None

    async def aclose(self) -> None:
        """Close and wait for the transport to go."""
        writer = self._writer
        self.close()
        if writer is not None:
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass


async def _read_answer(head: bytes, reader: asyncio.StreamReader) -> tuple[Answer, bool]:
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpProtocolError(f"not an HTTP/1.1 answer: {lines[0][:60]!r}")
    status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpProtocolError(f"bad header line: {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    keep = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if status in (204, 304) or 100 <= status < 200:
        return Answer(status, reason, headers, b""), keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit() or int(length) > MAX_BODY:
            raise HttpProtocolError(f"bad content-length: {length[:20]!r}")
        body = await reader.readexactly(int(length))
    else:  # delimited by the close
        body = await reader.read(MAX_BODY + 1)
        while len(body) <= MAX_BODY and not reader.at_eof():
            more = await reader.read(MAX_BODY + 1 - len(body))
            if not more:
                break
            body += more
        if len(body) > MAX_BODY:
            raise HttpProtocolError("body too large")
        keep = False
    return Answer(status, reason, headers, body), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = (await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise HttpProtocolError(f"bad chunk size: {size_line[:20]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the blank line
                pass
            return b"".join(chunks)
        total += size
        if total > MAX_BODY:
            raise HttpProtocolError("body too large")
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpProtocolError("chunk not followed by CRLF")
