"""The local exchange's WebSocket front end: trio + :mod:`engine.ws` around the pure core.

::

    exchange = Exchange(settings, clock_us=wall_clock_us, rng=random.Random())
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_exchange, exchange)      # 127.0.0.1, free port
        print(server.url)                                           # ws://127.0.0.1:PORT/

One connection, start to finish (:meth:`ExchangeServer.handle_stream`):

1. WebSocket handshake on path ``/`` within ``handshake_timeout`` (slowloris guard).
2. A ``Welcome`` notice with a fresh 16-byte server nonce is queued as the *first* frame,
   then a core :class:`Session` is opened whose ``deliver`` callback feeds the same queue.
3. Text frames are decoded by :data:`CODEC` and executed by ``exchange.handle`` in arrival
   order; the reply is queued behind any notices the command caused (legal: a notice may
   precede its reply).  Undecodable frames (``{}``, ``{"tag":5}``, unknown methods, deep
   nesting) get an error-8 reply from ``exchange.reply_to_bad_command``; the connection lives on.
4. Frames are written straight to the socket when nothing is queued before them and the
   socket takes them (:meth:`engine.ws.WebSocket.write_nowait`, non-blocking, so ``deliver``
   stays a plain ``def``: a notice leaves inside the command that caused it, no task switch);
   otherwise they queue and one sender task drains the queue onto the socket.  The queue is
   *bounded*: the core calls ``deliver`` synchronously, so the engine must never wait for a
   socket.  When a reader is too slow and its queue overflows, that connection is dropped
   (TCP closed at once, no close handshake) and the engine and every other connection carry
   on (RELIABILITY X10).
5. On close, for whatever reason, ``exchange.close_session`` cancels that connection's
   ``persist: false`` orders (F2).

Decisions where the spec is silent (also in docs/EXCHANGE.md, "Server"):

* **Binary frames** close the connection with 1003 (RFC 6455 "unsupported data"): the API is
  JSON text frames only, and a binary frame means the client is not speaking it.
* **Oversized frames** (> ``max_message_size``, 64 KiB by default) close with 1009 (done by
  :mod:`engine.ws` from the frame header).  The largest legitimate command is a few hundred bytes.
* **Idle timeout**: 60 s with no bytes in either direction closes with 1000 "idle timeout".
  Pings and pongs count as traffic (they are bytes on the socket).  The server never pings:
  the spec asks *clients* to ping, and a pinging server would hide a client whose heartbeat
  is broken (F7).  A client that only receives notices is never idle.
* **Connection limits**: ``max_connections`` in total and ``max_connections_per_ip``; over
  the limit the TCP connection is closed before the handshake.
* **Binding** anything but loopback needs ``allow_remote=True`` and logs a loud warning
  (the local exchange has demo credentials and no TLS unless ``ssl_context`` is given).
* **Server nonces** come from :mod:`secrets`; ``nonce_seed`` (tests only) makes them
  reproducible and is refused together with a non-loopback bind (RELIABILITY X7).

Chaos mode (``chaos=ChaosOptions(seed=...)``, for client tests, P4): every reply to a
state-changing or subscription command is held back for a random virtual time, so replies
overtake each other, and information requests (GetBalances, GetOrders, GetTradeVolume) are
answered at once, ahead of earlier commands.  Notices can be delayed too, but never reorder
(each release time is at least the previous one).  Execution order is untouched.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import random
import secrets
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import trio

from engine.errors import ConfigError, HandshakeFailed, WebSocketClosed
from engine.protocol.auth import NONCE_BYTES, b64_nonce
from engine.protocol.codec import CODEC, BadCommand
from engine.protocol.messages import Command, Notice, Reply, Welcome
from engine.ws import WebSocket, accept_request, text_frame

if TYPE_CHECKING:
    from engine.exchange.core import Exchange, Session

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
REFUSE_TIMEOUT = 2.0  # seconds to send a 503 to a connection over the limits

# WebSocket close codes the server uses (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000  # idle timeout (reason says so)
CLOSE_GOING_AWAY = 1001  # server shutting down
CLOSE_UNSUPPORTED = 1003  # binary frame
CLOSE_INTERNAL = 1011  # a bug in the exchange core


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    """Legal-but-unfriendly delivery for client tests (P4, P5, P6).

    ``reply_delay``: state-changing and subscription replies wait uniform [0, reply_delay] s,
    so they overtake one another; info-request replies are sent at once.
    ``notice_delay``: each notice waits uniform [0, notice_delay] s, order kept.
    """

    seed: int
    reply_delay: float = 0.05
    notice_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.reply_delay < 0 or self.notice_delay < 0:
            raise ConfigError(f"chaos delays must be >= 0, got {self.reply_delay}, {self.notice_delay}")


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Limits and switches of the server; every field is also a keyword of :func:`serve_exchange`."""

    max_message_size: int = 64 * 1024
    """Largest inbound frame in bytes; larger closes with 1009."""
    message_queue_size: int = 256
    """Unused since :mod:`engine.ws` (frames are read in the connection's task, no queue);
    kept so existing configurations stay valid."""
    send_queue_frames: int = 20_000
    """Outbound frames queued per connection before it is dropped as a slow reader."""
    send_queue_bytes: int = 32 * 1024 * 1024
    """Outbound bytes queued per connection before it is dropped as a slow reader."""
    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    close_timeout: float = 2.0
    """How long a graceful close (close frame and reply) may take before TCP is cut."""
    max_connections: int = 1000
    max_connections_per_ip: int = 100
    allow_remote: bool = False
    """Needed to bind anything but loopback."""
    ssl_context: ssl.SSLContext | None = None
    nonce_seed: int | None = None
    """Tests only: derive server nonces from this seed (refused with a non-loopback bind)."""
    chaos: ChaosOptions | None = None
    ticker_refresh: float = 60.0
    """Seconds between ``exchange.refresh_tickers()`` calls: trades leaving the 24-hour
    window change low/high/volume with no command to carry the TickerChanged."""

    def __post_init__(self) -> None:
        for name in ("max_message_size", "message_queue_size", "send_queue_frames", "send_queue_bytes",
                     "max_connections", "max_connections_per_ip"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ConfigError(f"server option {name} must be a positive integer, was {value!r}")
        for name in ("handshake_timeout", "idle_timeout", "close_timeout", "ticker_refresh"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"server option {name} must be a positive number of seconds, was {value!r}")

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> ServerOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown server option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of the server's counters (``ExchangeServer.statistics()``)."""

    open_connections: int
    accepted: int
    refused_limit: int
    handshake_failures: int
    closed_idle: int
    dropped_slow: int
    closed_binary: int
    closed_oversize: int
    internal_errors: int
    commands: int
    bad_commands: int
    frames_sent: int
    peak_send_queue: int


@dataclass(slots=True)
class _Counters:
    accepted: int = 0
    refused_limit: int = 0
    handshake_failures: int = 0
    closed_idle: int = 0
    dropped_slow: int = 0
    closed_binary: int = 0
    closed_oversize: int = 0
    internal_errors: int = 0
    commands: int = 0
    bad_commands: int = 0
    frames_sent: int = 0
    peak_send_queue: int = 0


class _Outbox:
    """The bounded FIFO of encoded frames (wire bytes) for one connection.

    ``put`` is a plain ``def`` that never blocks (the core calls it mid-command); it returns
    False when the bound is exceeded, and the caller drops the connection.
    """

    __slots__ = ("_frames", "_bytes", "_lot", "max_frames", "max_bytes", "peak")

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._lot = trio.lowlevel.ParkingLot()
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.peak = 0

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: bytes) -> bool:
        frames = self._frames
        frames.append(frame)
        self._bytes += len(frame)
        n = len(frames)
        if n > self.peak:
            self.peak = n
        if n == 1:
            self._lot.unpark_all()
        return n <= self.max_frames and self._bytes <= self.max_bytes

    def kick(self) -> None:
        """Wake the sender (bytes are waiting in the WebSocket itself)."""
        self._lot.unpark_all()

    async def wait(self) -> None:
        await self._lot.park()

    def take(self, limit: int) -> list[bytes]:
        """Up to ``limit`` frames off the front."""
        frames = self._frames
        if len(frames) <= limit:
            out = list(frames)
            frames.clear()
            self._bytes = 0
        else:
            out = [frames.popleft() for _ in range(limit)]
            self._bytes -= sum(map(len, out))
        return out


class _NoticeText:
    """The server's last encoded notice: the object (a reference, so its id cannot be
    reused) and its frame (wire bytes), shared by every connection.

    The core hands the *same* notice object to every recipient of one form, one after the
    other (its loops over a book's watchers and a user's sessions), so this encodes it once
    (see :meth:`_Connection.deliver`).  Server frames are unmasked, so the same bytes go to
    every connection.  Until session 5 this kept the last 8 objects and looked them up by
    equality: with one recipient per notice (the usual case) every lookup was a miss that
    compared 8 structs (~0.15-0.3 µs); an identity test of the last one finds every repeat
    the core makes.
    """

    __slots__ = ("last", "frame")

    def __init__(self) -> None:
        self.last: object = None
        self.frame = b""


def _frame(utf8: bytes) -> bytes:
    return text_frame(utf8, mask=False)


class ExchangeServer:
    """Serves one :class:`Exchange` to any number of WebSocket connections.

    ``serve_exchange`` builds one and listens on TCP; tests may also feed it any trio stream
    (``memory_stream_pair``) through :meth:`handle_stream`, which runs under virtual time.
    """

    def __init__(self, exchange: Exchange, options: ServerOptions | None = None, **kwargs: Any) -> None:
        self.exchange = exchange
        self.options = options if options is not None else ServerOptions.from_kwargs(kwargs)
        self.host = ""
        self.port = 0
        self._c = _Counters()
        self._open: set[_Connection] = set()
        self._per_ip: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._notice_text = _NoticeText()
        self._shutting_down = False
        self._idle_lot = trio.lowlevel.ParkingLot()  # woken whenever a connection ends
        # While a command runs in the core (from a connection, or an in-process participant
        # through Exchange.handle), frames for every connection are collected here and
        # written once per connection when it returns: one system call for the notices (and
        # the reply) a command causes, instead of one per frame.  _cork_depth nests the
        # core's own hooks inside a connection reader's command; corking while it is above 0.
        # The list is kept between commands (replaced only when it holds connections), so
        # a command that gives no connection a frame allocates nothing.
        self._corked: list[_Connection] = []
        self._cork_depth = 0
        exchange.command_hooks = (self._cork_begin, self._cork_end)
        seed = self.options.nonce_seed
        self._nonce_rng = random.Random(seed) if seed is not None else None

    # -- public ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/`` (``wss://`` with TLS; IPv6 hosts in brackets)."""
        scheme = "wss" if self.options.ssl_context is not None else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/"

    def statistics(self) -> ServerStatistics:
        c = self._c
        return ServerStatistics(
            open_connections=len(self._open),
            accepted=c.accepted,
            refused_limit=c.refused_limit,
            handshake_failures=c.handshake_failures,
            closed_idle=c.closed_idle,
            dropped_slow=c.dropped_slow,
            closed_binary=c.closed_binary,
            closed_oversize=c.closed_oversize,
            internal_errors=c.internal_errors,
            commands=c.commands,
            bad_commands=c.bad_commands,
            frames_sent=c.frames_sent,
            peak_send_queue=c.peak_send_queue,
        )

    async def handle_stream(self, stream: trio.abc.Stream, peer: str = "memory") -> None:
        """Run one connection on ``stream`` from handshake to close; always closes ``stream``."""
        opts = self.options
        if self._shutting_down:
            await self._refuse(stream)
            return
        if len(self._open) >= opts.max_connections or self._per_ip.get(peer, 0) >= opts.max_connections_per_ip:
            self._c.refused_limit += 1
            log.warning("refusing connection from %s: connection limit reached", peer)
            await self._refuse(stream)
            return
        self._per_ip[peer] = self._per_ip.get(peer, 0) + 1
        try:
            ws = None
            with trio.move_on_after(opts.handshake_timeout):
                try:
                    request = await accept_request(stream, max_message_size=opts.max_message_size)
                    if request.path.split("?", 1)[0] != "/":
                        await request.reject(404, body=b"The exchange is served on path /\n")
                    else:
                        ws = await request.accept()
                except HandshakeFailed:
                    # A bad request (answered with 400/426 by accept_request) or a peer that
                    # vanished mid-handshake: that costs this connection only.
                    ws = None
            if ws is None:
                self._c.handshake_failures += 1
            else:
                self._c.accepted += 1
                conn = _Connection(self, ws, next(self._ids), peer)
                self._open.add(conn)
                try:
                    await conn.run()
                finally:
                    self._open.discard(conn)
                    self._idle_lot.unpark_all()
        finally:
            left = self._per_ip[peer] - 1
            if left:
                self._per_ip[peer] = left
            else:
                del self._per_ip[peer]
            await trio.aclose_forcefully(stream)

    async def shutdown(self) -> None:
        """Close every connection with 1001 "server shutting down" and refuse new ones.

        Each connection's session is closed (its ``persist: false`` orders cancelled) and
        its close handshake gets up to ``close_timeout``, all in parallel; this returns when
        all are gone.  Call it before cancelling the server's nursery, so clients see a
        clean close instead of a dropped TCP connection.
        """
        self._shutting_down = True
        for conn in list(self._open):
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
        while self._open:
            await self._idle_lot.park()

    async def run_housekeeping(self) -> None:
        """Periodic engine chores until cancelled (``serve_exchange`` runs it): refresh the
        tickers so watchers see the 24-hour window move even when nobody trades."""
        while True:
            await trio.sleep(self.options.ticker_refresh)
            self.exchange.refresh_tickers()

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        """Answer an over-limit connection with HTTP 503, briefly, then close it.

        A bare TCP close would leave a trio-websocket client waiting for its whole connect
        timeout; a 503 tells it at once.  The refusal is bounded by REFUSE_TIMEOUT so a
        flood of refused connections cannot hold tasks for long.
        """
        try:
            with trio.move_on_after(REFUSE_TIMEOUT):
                request = await accept_request(stream, max_message_size=1024)
                await request.reject(503, body=b"Too many connections; try again later.\n")
        except HandshakeFailed:
            pass  # not even a valid request: it got its 400
        finally:
            await trio.aclose_forcefully(stream)

    # -- used by connections -----------------------------------------------------------

    def _cork_begin(self) -> None:
        self._cork_depth += 1

    def _cork_end(self) -> None:
        depth = self._cork_depth - 1
        self._cork_depth = depth
        if depth == 0 and self._corked:
            corked = self._corked
            self._corked = []
            for conn in corked:
                # Each corked connection writes what the command gave it, as one frame
                # or one join (the uncork, inlined: it ran once per command and connection).
                frames = conn._cork
                conn._cork = []
                if not conn.closed:
                    n = len(frames)
                    conn._write(frames[0] if n == 1 else b"".join(frames), n)

    def _new_nonce(self) -> bytes:
        if self._nonce_rng is not None:
            return self._nonce_rng.randbytes(NONCE_BYTES)
        return secrets.token_bytes(NONCE_BYTES)


class _Connection:
    """One accepted WebSocket: a core session, a bounded outbox, a sender and a watchdog."""

    def __init__(self, server: ExchangeServer, ws: WebSocket, conn_id: int, peer: str) -> None:
        opts = server.options
        self.server = server
        self.ws = ws
        self.id = conn_id
        self.peer = peer
        self.outbox = _Outbox(opts.send_queue_frames, opts.send_queue_bytes)
        self.closed = False
        self.scope = trio.CancelScope()
        self.close_code: int | None = None  # None: close TCP without a close handshake
        self.close_reason = ""
        self._cork: list[bytes] = []
        self.session: Session | None = None
        self._notice_text = server._notice_text
        chaos = opts.chaos
        self.chaos = chaos
        if chaos is not None:
            self._rng = random.Random(f"chaos:{chaos.seed}:{conn_id}")
            self._held: list[tuple[float, int, bytes]] = []
            self._held_seq = itertools.count()
            self._last_notice_release = 0.0
            self._held_lot = trio.lowlevel.ParkingLot()

    def __hash__(self) -> int:
        return self.id

    def __repr__(self) -> str:
        return f"<connection {self.id} from {self.peer}>"

    # -- the engine side: plain defs, never block --------------------------------------

    def deliver(self, notice: Notice) -> None:
        """The session's ``deliver`` callback: encode and queue, or drop a slow reader.

        The core hands one notice object to its recipients back to back: it is encoded once
        (``_notice_text`` remembers the last one)."""
        if self.closed:
            return
        texts = self._notice_text
        if notice is texts.last:
            frame = texts.frame
        else:
            # the exchange builds notices from its own ints: checked only with validate_outgoing
            utf8 = CODEC.encode(notice) if CODEC.validate_outgoing else CODEC.encode_trusted(notice)
            frame = _frame(utf8)
            texts.last = notice
            texts.frame = frame
        if self.chaos is not None and self.chaos.notice_delay > 0:
            release = max(self._last_notice_release,
                          trio.current_time() + self._rng.uniform(0, self.chaos.notice_delay))
            self._last_notice_release = release
            self._hold(release, frame)
            return
        self._queue(frame)

    def _queue(self, frame: bytes) -> None:
        server = self.server
        if server._cork_depth:
            if not self._cork:
                server._corked.append(self)
            self._cork.append(frame)
            return
        self._write(frame)

    def _write(self, frame: bytes, count: int = 1) -> None:
        outbox, ws = self.outbox, self.ws
        if not outbox._frames and ws.idle and self.session is not None:
            # Nothing ahead of it: straight to the socket, no task switch.
            try:
                if not ws.write_nowait(frame):
                    outbox.kick()  # the socket took part of it: the sender writes the rest
                self.server._c.frames_sent += count
            except WebSocketClosed:
                pass  # the reader sees the closure and ends the connection
            return
        if not outbox.put(frame):
            self.drop_slow_reader()

    def _hold(self, release: float, frame: bytes) -> None:
        heapq.heappush(self._held, (release, next(self._held_seq), frame))
        if len(self._held) + len(self.outbox) > self.outbox.max_frames:
            self.drop_slow_reader()
        self._held_lot.unpark_all()

    def send_reply(self, reply: Reply, cmd: Command | None) -> None:
        if self.closed:
            return
        frame = _frame(CODEC.encode(reply))
        chaos = self.chaos
        if chaos is not None and not (cmd is not None and cmd.info_request):
            self._hold(trio.current_time() + self._rng.uniform(0, chaos.reply_delay), frame)
        else:
            self._queue(frame)

    def drop_slow_reader(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = None
        self.close_reason = "slow reader: send queue overflow"
        self.server._c.dropped_slow += 1
        log.warning("%r dropped: send queue overflow (%d frames queued)", self, len(self.outbox))
        self.scope.cancel()

    def drop(self, reason: str) -> None:
        """End the connection without a close handshake (the transport is broken)."""
        self.close(None, reason)

    def close(self, code: int | None, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.close_reason = reason
        self.scope.cancel()

    # -- the socket side ----------------------------------------------------------------

    async def run(self) -> None:
        server = self.server
        exchange = server.exchange
        nonce = server._new_nonce()
        # Welcome goes into the outbox before the session exists, so it is always first.
        self.outbox.put(_frame(CODEC.encode(Welcome(nonce=b64_nonce(nonce)))))
        self.session = session = exchange.open_session(self.deliver, server_nonce=nonce)
        log.info("%r open (session %s)", self, session.id)
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sender)
                    nursery.start_soon(self._idle_watchdog)
                    if self.chaos is not None:
                        nursery.start_soon(self._release_held)
                    # The reader is a task of its own, not awaited here: every command read
                    # resumes its coroutine stack, three frames shallower this way (trio's
                    # listener handler, handle_stream, run).  It cancels the nursery when done.
                    nursery.start_soon(self._reader, session, nursery.cancel_scope)
        finally:
            self.closed = True
            server._c.peak_send_queue = max(server._c.peak_send_queue, self.outbox.peak)
            # Sync and cheap: cancels persist:false orders (notices to everyone else).
            exchange.close_session(session)
            log.info("%r closed: %s", self, self.close_reason or "by peer")
        if self.close_code is not None:
            with trio.move_on_after(server.options.close_timeout):
                await self.ws.aclose(self.close_code, self.close_reason)
        self.ws.abort()

    async def _reader(self, session: Session, scope: trio.CancelScope) -> None:
        """Read and execute commands until the connection ends; then cancel ``scope`` (the
        connection's nursery: the sender and the watchdog end with the reader)."""
        try:
            server = self.server
            exchange = server.exchange
            counters = server._c
            ws = self.ws
            while True:
                try:
                    msg = await ws.receive()
                except WebSocketClosed as e:
                    reason = e.reason
                    if reason is not None and reason.code == 1009:
                        counters.closed_oversize += 1
                        self.close_reason = f"frame over {self.server.options.max_message_size} bytes"
                    return
                if not isinstance(msg, str):
                    counters.closed_binary += 1
                    self.close(CLOSE_UNSUPPORTED, "binary frames are not supported; send JSON text frames")
                    return
                cmd: Command | None
                try:
                    cmd = CODEC.decode_command(msg)
                except BadCommand as e:
                    counters.bad_commands += 1
                    cmd = None
                    reply: Reply = exchange.reply_to_bad_command(session, e)
                else:
                    counters.commands += 1
                    server._cork_begin()
                    try:
                        reply = exchange.handle(session, cmd)
                        self.send_reply(reply, cmd)
                    except Exception:
                        # A bug in the core; its state may be half-changed, so this connection
                        # ends and the log says why. The command type is safe to log; its
                        # fields are not (an Authenticate carries a cookie).
                        counters.internal_errors += 1
                        log.exception("%r: exchange core raised on %s", self, type(cmd).__name__)
                        self.close(CLOSE_INTERNAL, "internal error")
                        return
                    finally:
                        server._cork_end()
                    if self.closed:
                        return
                    continue
                self.send_reply(reply, cmd)
                if self.closed:
                    return
        finally:
            scope.cancel()

    async def _sender(self) -> None:
        """Writes what could not go straight to the socket: the Welcome, frames queued
        behind others, the rest of a partial write; up to SEND_BATCH frames per write."""
        ws = self.ws
        outbox = self.outbox
        counters = self.server._c
        try:
            while True:
                while not outbox and not ws.pending_bytes:
                    await outbox.wait()
                if outbox:
                    frames = outbox.take(SEND_BATCH)
                    ws.write_nowait(b"".join(frames))
                    counters.frames_sent += len(frames)
                await ws.flush()
        except WebSocketClosed as e:
            # The peer vanished with frames queued (a reset, a cut link).  End this
            # connection now (the reader may be waiting on a link that will never deliver
            # again); raising instead would escape handle_stream and take serve_listeners,
            # i.e. every connection, down with it.
            self.drop(f"send failed: {e}")
            return

    async def _idle_watchdog(self) -> None:
        timeout = self.server.options.idle_timeout
        ws = self.ws
        while True:
            deadline = ws.last_traffic + timeout
            if trio.current_time() >= deadline:
                self.server._c.closed_idle += 1
                self.close(CLOSE_NORMAL, f"idle timeout ({timeout:g} s without traffic)")
                return
            await trio.sleep_until(deadline)

    async def _release_held(self) -> None:
        held = self._held
        while True:
            while not held:
                await self._held_lot.park()
            release = held[0][0]
            if trio.current_time() < release:
                with trio.move_on_at(release):
                    await self._held_lot.park()  # an earlier item may arrive meanwhile
                continue
            _, _, text = heapq.heappop(held)
            self._queue(text)


SEND_BATCH = 256
"""Frames written with one ``send_all`` when a connection's outbox holds many."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve_exchange(
    exchange: Exchange,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[ExchangeServer] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``exchange`` over WebSocket until cancelled.

    ``server = await nursery.start(serve_exchange, exchange)`` returns the
    :class:`ExchangeServer` once it accepts connections; ``server.port`` is the bound port
    (``port=0`` picks a free one) and ``server.url`` the address to give a client.
    ``options`` are the fields of :class:`ServerOptions`.
    """
    opts = ServerOptions.from_kwargs(options)
    if host == "localhost":
        host = "127.0.0.1"  # one listener, one port
    if not _is_loopback(host):
        if not opts.allow_remote:
            raise ConfigError(
                f"refusing to bind {host!r}: the local exchange binds loopback only "
                "unless allow_remote=True (--allow-remote)"
            )
        if opts.nonce_seed is not None:
            raise ConfigError("nonce_seed is for tests only and cannot be used with a non-loopback bind")
        log.warning(
            "!!! exchange bound to %s: reachable from other machines%s. It holds demo "
            "credentials; do not expose it to untrusted networks. !!!",
            host, "" if opts.ssl_context is not None else " WITHOUT TLS",
        )
    server = ExchangeServer(exchange, opts)
    if opts.ssl_context is not None:
        listeners: list[Any] = await trio.open_ssl_over_tcp_listeners(
            port, opts.ssl_context, host=host, https_compatible=True
        )
    else:
        listeners = await trio.open_tcp_listeners(port, host=host)
    sock = listeners[0].socket if opts.ssl_context is None else listeners[0].transport_listener.socket
    server.host, server.port = sock.getsockname()[:2]

    async def on_stream(stream: Any) -> None:
        peer = "?"
        raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        try:
            peer = str(raw.socket.getpeername()[0])
        except (OSError, AttributeError):
            pass
        await server.handle_stream(stream, peer)

    log.info("exchange listening on %s", server.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_stream, listeners)
        nursery.start_soon(server.run_housekeeping)
        task_status.started(server)


def wall_clock_us() -> int:
    """Microseconds since the epoch from the system clock (the live exchange's ``clock_us``)."""
    import time

    return time.time_ns() // 1000


def trio_clock_us(epoch_us: int) -> Callable[[], int]:
    """A ``clock_us`` following trio's clock (virtual under MockClock) from ``epoch_us``.

    Call it inside ``trio.run``; the returned function reads ``trio.current_time()``.
    """
    start = trio.current_time()

    def clock() -> int:
        return epoch_us + int((trio.current_time() - start) * 1_000_000)

    return clock


__all__ = [
    "ChaosOptions",
    "ExchangeServer",
    "ServerOptions",
    "ServerStatistics",
    "serve_exchange",
    "trio_clock_us",
    "wall_clock_us",
]
