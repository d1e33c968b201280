"""Overload control for the predict path: when a request arrived, how late the event loop runs, and how
many request-body bytes the predict path holds at once.

When the event loop is the bottleneck, requests wait where the handler can't see them: in the loop's
ready queue (created as tasks, not yet run) and, before that, in the kernel's socket buffers while the
loop was busy with earlier ones. Timing a request from the start of its handler then reports
microseconds to a caller who waited seconds, and nothing sheds. So:

- `ArrivalProtocol` stamps each request with when it arrived, into
  `scope["extensions"]["watchkeeper.arrival"]`; the predict path measures latency, and its timeout,
  from there. On TCP that is the loop's clock when uvicorn starts parsing it, less how long the bytes
  sat in the kernel's socket buffer first: the kernel's TCP_INFO says how long ago the connection's
  last data came in (in jiffies, 1-10 ms; the stamp takes the lower bound, so a wait is never
  overstated). After a stall, every request read in the catch-up carries its true wait, however many
  loop turns later it is read.
- `LoopLag` fires a timer every LAG_INTERVAL_S and records how late it ran: the length of the loop's
  last busy stretch. On a Unix socket, whose kernel keeps no such time, it stands in for the kernel
  wait (`ARRIVAL_ESTIMATED`). It underestimates after a stall: a request read in a later turn of the
  catch-up sees only that turn's lag.
- A request whose wait (handler start - arrival, plus the loop's lag) exceeds QUEUE_SHARE of its
  endpoint's `timeout_ms` is shed before its body is parsed: 429 + Retry-After, or the endpoint's
  fallback when it has one (reason `overload`). What is answered then comes back within the timeout.
- `BodyBudget` bounds the request bytes the predict path holds across all requests (each is also
  capped by its endpoint's `max_payload_bytes`); a request that would exceed it is shed the same way
  before its body is read.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import socket
import struct
import time

from agent.auth.peercred import PeerCredProtocol

ARRIVAL = "watchkeeper.arrival"
ARRIVAL_ESTIMATED = "watchkeeper.arrival_estimated"  # set (True) where the kernel wait is unknown: add the loop lag
# Shed a request that already waited this share of its endpoint's timeout: the rest is left for the model
# and the answer's way back, so what is answered arrives within timeout_ms.
QUEUE_SHARE = 0.5
LAG_INTERVAL_S = 0.02
LAG_KEEP_S = 5.0  # the lag gauge shows the worst of the last few seconds, so a scrape can't miss a stall
# Request bodies held by the predict path at once (reading, parsing, in the model). Parsed JSON takes
# 5-10x its bytes: 16 MiB of bodies is at most ~150 MiB of objects, inside the unit's MemoryMax (512M).
MAX_BODY_BYTES_IN_FLIGHT = 16 * 2**20
# Connections (and requests being handled) beyond this get uvicorn's plain 503: the last bound on memory
# (each connection may buffer ~64 KiB of unread body before uvicorn stops reading it).
MAX_CONNECTIONS = 2048
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


# struct tcp_info (linux/tcp.h): u32 tcpi_last_data_recv, milliseconds since the last data segment came in.
_TCP_INFO_LEN = 56
_LAST_DATA_RECV = struct.Struct("=I")
_LAST_DATA_RECV_AT = 52


class KernelWait:
    """How long the data just read from a TCP socket sat in the kernel before it (seconds, a lower bound).

    TCP_INFO counts in jiffies (4 ms at HZ=250, 1 ms at HZ=1000): a reading of n ticks means between n-1
    and n+1 ticks went by, so the lower bound, n-1 ticks, is taken. The tick is learnt as the smallest
    non-zero reading (it starts at 4 ms, the common HZ=250)."""

    def __init__(self) -> None:
        self.tick_ms = 4

    def of(self, sock: socket.socket) -> float:
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
        except OSError:
            return 0.0
        if len(info) < _TCP_INFO_LEN:
            return 0.0
        (ms,) = _LAST_DATA_RECV.unpack_from(info, _LAST_DATA_RECV_AT)
        if ms == 0:
            return 0.0
        if ms < self.tick_ms:
            self.tick_ms = ms
        return (ms - self.tick_ms) / 1000


KERNEL_WAIT = KernelWait()


class ArrivalProtocol(PeerCredProtocol):
    """uvicorn's httptools protocol (with the peer's credentials) that stamps each request's arrival."""

    _tcp: socket.socket | None = None  # the connection's socket when it is TCP (its kernel wait is measured)

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            self._tcp = sock

    def on_message_begin(self) -> None:
        super().on_message_begin()
        now = time.perf_counter()
        ext = self.scope.setdefault("extensions", {})
        if self._tcp is not None:
            ext[ARRIVAL] = now - KERNEL_WAIT.of(self._tcp)
        else:
            ext[ARRIVAL] = now
            ext[ARRIVAL_ESTIMATED] = True


class LoopLag:
    """How late a periodic timer fires on the serving loop (seconds): a loop-lag probe."""

    def __init__(self, interval: float = LAG_INTERVAL_S) -> None:
        self.interval = interval
        self.lag_s = 0.0  # the latest measurement
        self._recent: list[tuple[float, float]] = []  # (time, lag) of the stalls above one interval
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is None:
            self._loop = loop
            self._due = time.perf_counter() + self.interval
            loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.lag_s = max(0.0, now - self._due)
        if self.lag_s > self.interval:
            self._recent.append((now, self.lag_s))
            if len(self._recent) > 256:
                del self._recent[:128]
        self._due = now + self.interval
        assert self._loop is not None
        self._loop.call_later(self.interval, self._tick)

    def worst_recent(self, seconds: float = LAG_KEEP_S) -> float:
        """The largest lag of the last `seconds` (for /metrics)."""
        cut = time.perf_counter() - seconds
        return max([lag for t, lag in self._recent if t >= cut] + [self.lag_s])


class BodyBudget:
    """Request-body bytes the predict path holds, bounded across all requests."""

    def __init__(self, limit: int = MAX_BODY_BYTES_IN_FLIGHT) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Reserve n bytes; False when that would exceed the budget (one request alone always may)."""
        if self.used and self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


# glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def bound_malloc() -> bool:
    """Keep freed request memory from staying resident: call once at start, before any thread starts.

    glibc gives each thread that contends for malloc an arena of its own (up to 8 per core) and raises its
    mmap threshold each time a large block is freed, so 1 MiB bodies end up carved from arenas that rarely
    shrink. Two arenas and a fixed 128 KiB threshold (large blocks are mmapped and returned when freed) took
    the agent's peak RSS under overload and 1 MiB bodies from 448 to 365 MiB (bench/overload.py). Python's
    own small-object allocator is unaffected. False where the C library isn't glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, 2)) and bool(mallopt(_M_MMAP_THRESHOLD, 128 * 1024))
