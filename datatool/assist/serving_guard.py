"""What keeps ``datatool serve`` answering when clients hold connections open or send junk.

uvicorn alone keeps a connection that sends nothing, or half a request line, open for ever,
and with enough of them the process runs out of file descriptors: every ``accept`` then fails
and asyncio logs a traceback per attempt. Here, for the backend's server:

* a **header timeout**: a connection must send a request's complete headers within
  ``header_timeout`` seconds of opening (or of its previous response), else it is closed; an
  idle keep-alive connection is closed after ``keep_alive`` seconds (uvicorn's timer);
* a **cap on open connections**, below the file-descriptor limit (``connection_cap``): a
  connection over the cap closes the connections that have waited longest without a request in
  flight; when every one has a request in flight, the newcomer is closed;
* **throttled logging**: failed accepts ("Too many open files"), closed connections and
  malformed requests are logged once per ``interval`` seconds with a count of the ones left
  out, never a traceback per attempt.

The protocol is uvicorn's h11 implementation with three hooks (opened, data, response done);
the event loop is asyncio's (never uvloop, whose accept loop this does not govern).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datatool.core.errors import UsageError

HEADER_TIMEOUT = 10.0  # seconds for a request's headers, from connecting or the last response
KEEP_ALIVE = 5.0  # seconds an idle keep-alive connection stays open
MAX_CONNECTIONS = 64  # open connections at once (lowered to fit the file-descriptor limit)
ACCEPT_BATCH = 32  # the listen backlog: connections accepted in one turn of the event loop
FD_RESERVE = 32  # descriptors kept free for the catalogue, the store and the model
MIN_CONNECTIONS = 8
LOG_INTERVAL = 60.0  # seconds between two log lines of the same kind of trouble

log = logging.getLogger("datatool.serve")


def open_descriptors() -> int:
    """How many file descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64  # a guess where /proc is missing


def connection_cap(requested: int = MAX_CONNECTIONS) -> int:
    """``requested``, lowered so that the open connections, one turn of accepts and a reserve
    fit under the soft file-descriptor limit (``ulimit -n``)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    room = soft - open_descriptors() - ACCEPT_BATCH - FD_RESERVE
    cap = min(requested, room)
    if cap < min(requested, MIN_CONNECTIONS):
        raise UsageError(
            f"the open-file limit ({soft}) leaves room for {max(room, 0)} connections; the "
            f"backend needs at least {MIN_CONNECTIONS}: raise it ('ulimit -n 1024') and start "
            "it again"
        )
    return cap


class Throttle:
    """Log a kind of event at most once per ``interval`` seconds, with how many were left out."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self.last: dict[str, float] = {}
        self.left_out: dict[str, int] = {}

    def note(self, kind: str, message: str, logger: logging.Logger = log) -> bool:
        """Log ``message`` if no ``kind`` line was logged in the interval; True if logged."""
        now = self.clock()
        last = self.last.get(kind)
        if last is not None and now - last < self.interval:
            self.left_out[kind] = self.left_out.get(kind, 0) + 1
            return False
        skipped = self.left_out.pop(kind, 0)
        if skipped and last is not None:
            message += f" ({skipped} more like it in the last {now - last:.0f} s)"
        logger.warning("%s", message)
        self.last[kind] = now
        return True


class _NoisyLines(logging.Filter):
    """Throttles uvicorn's per-request warnings about malformed requests."""

    NOISY = ("Invalid HTTP request received.", "Unsupported upgrade request.")

    def __init__(self, throttle: Throttle):
        super().__init__()
        self.throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message not in self.NOISY:
            return True
        self.throttle.note(message, f"{message} (HTTP parse errors are logged once a minute)")
        return False


@dataclass
class Guard:
    """The limits of one server's connections, shared by all its protocol instances."""

    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT
    throttle: Throttle = field(default_factory=Throttle)
    closed: dict[str, int] = field(default_factory=lambda: {"timeout": 0, "cap": 0})
    _sweeper: asyncio.TimerHandle | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _conns: set = field(default_factory=set, repr=False)  # the server's open connections

    # ------------------------------------------------------------------ connections

    def admit(self, conn: Any) -> None:
        """A connection opened: close the longest-waiting idle ones while over the cap."""
        conns = self._conns = conn.connections
        self._ensure_sweeper(conn.loop)
        over = len(conns) - self.max_connections
        if over <= 0:
            return
        idle = sorted(
            (c for c in conns if c is not conn and c.waiting_since is not None),
            key=lambda c: c.waiting_since,
        )
        for victim in idle[:over]:
            _close(victim)
        shut = min(over, len(idle))
        if shut < over:  # every other connection has a request in flight
            _close(conn)
            shut += 1
        self.closed["cap"] += shut
        self.throttle.note(
            "cap",
            f"over {self.max_connections} open connections: closed {shut} idle one(s) "
            f"({self.closed['cap']} so far)",
        )

    def sweep(self) -> None:
        """Close connections that have waited too long for a request's headers."""
        self._sweeper = None
        now = time.monotonic()
        late = [
            c
            for c in list(self._conns)
            if c.waiting_since is not None and now - c.waiting_since > self.header_timeout
        ]
        for conn in late:
            _close(conn)
        if late:
            self.closed["timeout"] += len(late)
            self.throttle.note(
                "timeout",
                f"closed {len(late)} connection(s) that sent no complete request in "
                f"{self.header_timeout:g} s ({self.closed['timeout']} so far)",
            )
        if self._conns and self._loop is not None:
            self._ensure_sweeper(self._loop)

    def _ensure_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._sweeper is None:
            self._sweeper = loop.call_later(min(1.0, self.header_timeout / 4), self.sweep)

    # ------------------------------------------------------------------ the event loop

    def exception_handler(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """asyncio's unhandled errors, one line per kind per interval (no traceback)."""
        exc = context.get("exception")
        message = str(context.get("message") or "error in the event loop")
        detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        kind = f"{message}|{type(exc).__name__}|{getattr(exc, 'errno', '')}"
        self.throttle.note(kind, f"{message}{detail}")


def _close(conn: Any) -> None:
    """Close a connection now (its descriptor is freed on the loop's next turn)."""
    conn.waiting_since = None
    transport = conn.transport
    if transport is not None and not transport.is_closing():
        transport.abort()


def protocol_class(guard: Guard) -> type:
    """uvicorn's h11 protocol, telling ``guard`` when a connection waits for a request."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        waiting_since: float | None = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self.waiting_since = time.monotonic()
            guard.admit(self)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._note_state()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._note_state()

        def _note_state(self) -> None:
            if self.transport is None or self.transport.is_closing():
                self.waiting_since = None
            elif self.cycle is not None and not self.cycle.response_complete:
                self.waiting_since = None  # a request in flight
            elif self.waiting_since is None:
                self.waiting_since = time.monotonic()

    return GuardedH11Protocol


def make_server(
    app: Any,
    host: str,
    port: int,
    guard: Guard,
    *,
    keep_alive: float = KEEP_ALIVE,
    log_level: str = "info",
):
    """A uvicorn server for ``app`` with ``guard``'s limits (run it with :func:`serve`)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="asyncio",
        http=protocol_class(guard),
        ws="none",
        lifespan="off",
        log_level=log_level,
        server_header=False,
        timeout_keep_alive=int(max(1, keep_alive)),
        backlog=ACCEPT_BATCH,
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(_NoisyLines(guard.throttle))
    return server


async def serve(server: Any, guard: Guard) -> None:
    """Run a server made by :func:`make_server` on the running loop until it stops."""
    asyncio.get_running_loop().set_exception_handler(guard.exception_handler)
    await server.serve()


__all__ = [
    "HEADER_TIMEOUT",
    "KEEP_ALIVE",
    "MAX_CONNECTIONS",
    "Guard",
    "Throttle",
    "connection_cap",
    "make_server",
    "serve",
]
