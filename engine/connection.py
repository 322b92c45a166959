"""One authenticated WebSocket session with the Coinfloor trade engine (trio + :mod:`engine.ws`).

The WebSocket itself is :mod:`engine.ws` (a lean RFC 6455 transport: frames parsed in the
reader task, sends written straight to the socket).  Typical use::

    creds = Credentials.from_env()                     # CF_USER_ID, CF_COOKIE, CF_PASSPHRASE
    async with open_connection("wss://apiv2.coinfloor.co.uk/", creds, governor=Governor()) as conn:
        with trio.fail_after(5):                         # the caller owns timeouts
            balances = await conn.request(GetBalances())
        async for event in conn.notices:                 # Notice | ReplyEvent | FeedGap | Session*
            ...

For a session that survives disconnects see :class:`engine.client.reconnect.ReconnectingClient`.

**Connecting** (RELIABILITY X2, F11).  The URL is vetted before any I/O
(:func:`engine.client.urls.check_url`): ``wss://`` with certificate and hostname verification
and TLS >= 1.2 by default; ``ws://`` only to loopback and only with ``allow_insecure=True``.
The TLS handshake is completed explicitly before the WebSocket handshake, so a bad
certificate fails fast with :class:`ConnectFailed` and nothing is sent.  The first frame must
be ``Welcome`` (a 16-byte server nonce); the client then signs with a fresh 16-byte nonce from
``secrets`` (:mod:`engine.protocol.auth`).  The private key is derived at sign time and
dropped; neither it nor the Authenticate frame is ever stored or logged.  Error 7 raises
:class:`AuthenticationFailed` and is never retried automatically.

**Requests** (P4, B5).  :meth:`Connection.request` gives every command a fresh non-zero tag
(any tag the caller set is overwritten), sends it at once (pipelining: no waiting for earlier
replies) and returns the reply whose tag matches, whatever order replies arrive in.  Error
replies raise the :class:`ExchangeError` subclass of their code.  Replies with no tag or an
unknown tag are counted in :meth:`Connection.statistics`, never handed to a caller.  A reply
that arrives after its caller gave up (timeout or cancellation) is counted as late and put
into the notice stream as ``ReplyEvent(late=True)``, so a late PlaceOrder success can still
move an UNKNOWN order to OPEN.  A command pending when the connection dies raises
:class:`ConnectionLost`: its outcome is UNKNOWN, not failed (RELIABILITY section 0.1).

**Notices** (F8).  The reader task never waits for the application: it decodes each frame
and puts it into :attr:`Connection.notices`, a :class:`~engine.client.notices.NoticeQueue`
that keeps wire order and applies this overflow policy: own-order and balance notices
(``tonce``/``bid_tonce``/``ask_tonce`` key present, BalanceChanged, TradeVolumeChanged) are
never dropped (if their bound overflows, the connection is declared broken and closed so the
runner reconnects and reconciles); public L3 book notices are dropped only with a
:class:`FeedGap` marker in their place (re-snapshot that book); TickerChanged is conflated
(fields merged, latest wins).  See :mod:`engine.client.notices` for the details.

**Bad frames** (B1, B2, B6).  Malformed frames, binary frames and unknown notices never stop
the reader: they are counted, and logged at most once per second per kind (unknown notices
once per name).  A malformed frame that looks like it concerned our own orders or balances
(it mentions a tonce, BalanceChanged or TradeVolumeChanged, or carries the tag of a pending
order command) breaks the connection, because local order state can no longer be trusted
without a reconciliation.  A frame larger than ``max_frame`` closes the connection with 1009.

**Liveness** (F7).  After ``ping_interval`` (45 s) without receiving anything, the client sends
a WebSocket ping; no pong within ``pong_timeout`` (15 s) means a dead peer or a half-open TCP
connection, and the connection is closed.  The reader task parses frames itself and never
waits for the application, so pongs are never stuck behind a slow application
(RELIABILITY 0.5: there is no intermediate message queue that could fill up).

**Inline consumer** (latency).  An application may set :attr:`ReconnectingClient.after_frame`
(or ``_Shared.after_frame``): a plain ``def`` the reader calls right after each frame was
decoded and queued.  The runner uses it to take the queued events and send its orders in
the reader's own task (:meth:`Connection.send_nowait`), which saves the task switches of a
separate consumer on every tick.  It must not block; the queue keeps its policy for events
nobody takes there.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import msgspec
import trio

from engine.client.notices import (
    Event,
    FeedGap,
    NoticeQueue,
    NoticeQueueStatistics,
    ReplyEvent,
    SessionEnded,
    SessionStarted,
)
from engine.client.urls import DEFAULT_URL, Target, check_url
from engine.errors import (
    ConfigError,
    ConnectFailed,
    ConnectionLost,
    ExchangeError,
    HandshakeFailed,
    RemoteProtocolError,
    SecretError,
    WebSocketClosed,
)
from engine.governor import Governor, metric_for
from engine.limits import METRIC_FOR_METHOD
from engine.protocol import auth
from engine.protocol.codec import CODEC, ReplyFrame, UnknownNotice
from engine.protocol.messages import (
    REPLY_FOR,
    Authenticate,
    CancelAllOrders,
    CancelOrder,
    Command,
    ErrorReply,
    PlaceOrder,
    Reply,
    Welcome,
)
from engine.secret import Secret
from engine.ws import CloseReason, WebSocket
from engine.ws import connect as ws_connect

__all__ = [
    "DEFAULT_URL",
    "Connection",
    "ReplyWaiter",
    "ConnectionOptions",
    "ConnectionStatistics",
    "Credentials",
    "Dial",
    "Event",
    "FeedGap",
    "NoticeQueue",
    "ReplyEvent",
    "SessionEnded",
    "SessionStarted",
    "open_connection",
]

log = logging.getLogger("engine.connection")

_force_setattr = msgspec.structs.force_setattr  # the tag of a vouched command (send_nowait)

Dial = Callable[[Target], Awaitable[trio.abc.Stream]]
"""Opens the byte stream to a checked target (TCP + TLS by default).  Tests and in-process
exchanges pass one that returns an end of ``trio.testing.memory_stream_pair()``."""

_ORDER_COMMANDS = (PlaceOrder, CancelOrder, CancelAllOrders)
# A malformed frame mentioning any of these may have been about our own orders or balances.
_OWN_HINT = re.compile(r'tonce"|"BalanceChanged"|"TradeVolumeChanged"')
_TAG_HINT = re.compile(r'"tag"\s*:\s*(\d{1,19})')
_MAX_ABANDONED = 10_000
_MAX_UNKNOWN_NAMES = 100


# -- credentials -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """A Coinfloor login: numeric user id, API cookie and passphrase (both :class:`Secret`).

    The repr masks both secrets.  The private key is derived from the passphrase only while
    signing and is never kept.
    """

    user_id: int
    cookie: Secret[str]
    passphrase: Secret[str]

    def __post_init__(self) -> None:
        if type(self.user_id) is not int or not 0 < self.user_id < 2**63:
            raise ConfigError(f"credentials: user_id must be a positive 64-bit int, was {self.user_id!r}")
        for name in ("cookie", "passphrase"):
            if not isinstance(getattr(self, name), Secret):
                raise SecretError(
                    f"credentials: {name} must be a Secret (engine.secret.from_env or from_file), "
                    "not a plain value"
                )

    def __repr__(self) -> str:
        return f"Credentials(user_id={self.user_id}, cookie=***, passphrase=***)"

    @classmethod
    def from_env(
        cls,
        user_id_var: str = "CF_USER_ID",
        cookie_var: str = "CF_COOKIE",
        passphrase_var: str = "CF_PASSPHRASE",
        environ: Mapping[str, str] | None = None,
    ) -> Credentials:
        """Read the three values from environment variables (errors name the variable)."""
        from engine.secret import from_env

        env = dict(os.environ if environ is None else environ)
        raw = env.get(user_id_var, "")
        if not raw.isdigit():
            raise ConfigError(f"environment variable {user_id_var} must hold the numeric user id")
        return cls(int(raw), from_env(cookie_var, "cookie", env), from_env(passphrase_var, "passphrase", env))


# -- options and statistics -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """Timeouts (seconds, trio time) and bounds of one connection.

    ``ping_interval`` and ``pong_timeout`` follow WEBSOCKET-README (ping after ~45 s of
    silence; the server drops a connection after 60 s without traffic).
    """

    ping_interval: float = 45.0
    pong_timeout: float = 15.0
    connect_timeout: float = 10.0  # TCP + TLS + WebSocket handshake
    handshake_timeout: float = 10.0  # Welcome, then the Authenticate reply
    send_timeout: float = 10.0  # one frame; longer means the peer stopped reading
    close_timeout: float = 2.0  # graceful close handshake
    message_queue_size: int = 1024  # unused since engine.ws (no internal queue); kept for configs
    max_frame: int = 1 << 20  # larger frames close the connection with 1009
    max_own_notices: int = 10_000
    max_public_notices: int = 10_000

    def __post_init__(self) -> None:
        for name in ("ping_interval", "pong_timeout", "connect_timeout", "handshake_timeout",
                     "send_timeout", "close_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ConfigError(f"connection option {name} must be a positive number of seconds, was {value!r}")
        for name in ("message_queue_size", "max_frame", "max_own_notices", "max_public_notices"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"connection option {name} must be a positive int, was {value!r}")


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A snapshot of a connection (counters are cumulative over a ReconnectingClient's
    sessions).  ``last_traffic`` is the trio time of the last frame received."""

    session: int
    open: bool
    close_reason: str | None
    pending_requests: int
    notices: NoticeQueueStatistics
    malformed_frames: int
    unknown_notices: int
    unknown_replies: int
    late_replies: int
    oversized_frames: int
    pings_sent: int
    dead_peers: int
    reconnects: int
    connect_failures: int
    last_traffic: float | None


@dataclass(slots=True)
class _Counters:
    malformed_frames: int = 0
    unknown_notices: int = 0
    unknown_replies: int = 0
    late_replies: int = 0
    oversized_frames: int = 0
    pings_sent: int = 0
    dead_peers: int = 0
    reconnects: int = 0
    connect_failures: int = 0


class _LogLimiter:
    """At most one log line per ``interval`` seconds per key; the next line says how many
    were suppressed (RELIABILITY B1: a hostile peer must not flood the log)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = trio.current_time()
        if now < self._next.get(key, -math.inf):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        if n:
            msg += " (%d similar suppressed)"
            args = (*args, n)
        log.warning(msg, *args)
        self._next[key] = now + self.interval


class _Shared:
    """State that outlives one connection when a ReconnectingClient chains sessions."""

    def __init__(self, options: ConnectionOptions, queue: NoticeQueue | None = None) -> None:
        self.queue = queue or NoticeQueue(options.max_own_notices, options.max_public_notices)
        self.counters = _Counters()
        self.tags = itertools.count(1)
        self.sessions = 0
        self.unknown_names: set[str] = set()
        self.logs = _LogLimiter()
        self.after_frame: Callable[[], None] | None = None


def _statistics(
    shared: _Shared, *, session: int, close_reason: str | None, pending: int, last_traffic: float | None
) -> ConnectionStatistics:
    c = shared.counters
    return ConnectionStatistics(
        session=session,
        open=close_reason is None,
        close_reason=close_reason,
        pending_requests=pending,
        notices=shared.queue.statistics(),
        malformed_frames=c.malformed_frames,
        unknown_notices=c.unknown_notices,
        unknown_replies=c.unknown_replies,
        late_replies=c.late_replies,
        oversized_frames=c.oversized_frames,
        pings_sent=c.pings_sent,
        dead_peers=c.dead_peers,
        reconnects=c.reconnects,
        connect_failures=c.connect_failures,
        last_traffic=last_traffic,
    )


class _Pending:
    __slots__ = ("command", "reply_type", "echo", "done", "event", "reply", "error", "callback")

    def __init__(self, command: Command, reply_type: type[Reply], echo: bool) -> None:
        self.command = command
        self.reply_type = reply_type
        self.echo = echo
        # The outcome is known (reply or failure).  The trio.Event is made only for a task
        # that awaits it (ReplyWaiter.wait): the runner's orders use the callback instead,
        # and most commands are never awaited through an Event.
        self.done = False
        self.event: trio.Event | None = None
        self.reply: Reply | None = None
        self.error: BaseException | None = None
        self.callback: Callable[[], None] | None = None

    @property
    def method(self) -> str:
        return str(self.command.__struct_config__.tag)

    @property
    def is_order(self) -> bool:
        return isinstance(self.command, _ORDER_COMMANDS)

    def wait_event(self) -> trio.Event:
        """The Event that is set once :attr:`done` (made on first use; already set if done)."""
        event = self.event
        if event is None:
            event = self.event = trio.Event()
            if self.done:
                event.set()
        return event

    def resolve(self, reply: Reply) -> None:
        self.reply = reply
        self._finish()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._finish()

    def _finish(self) -> None:
        self.done = True
        if self.event is not None:
            self.event.set()
        if self.callback is not None:
            self.callback()


def _describe_close(reason: CloseReason | object | None) -> str:
    if not isinstance(reason, CloseReason):
        return "connection closed"
    return str(reason)


# -- the connection ----------------------------------------------------------------------


class ReplyWaiter:
    """The reply of one sent command (:meth:`Connection.send`); ``await wait()`` for it."""

    __slots__ = ("_conn", "_tag", "_pending")

    def __init__(self, conn: Connection, tag: int, pending: _Pending) -> None:
        self._conn = conn
        self._tag = tag
        self._pending = pending

    @property
    def tag(self) -> int:
        return self._tag

    @property
    def done(self) -> bool:
        """True once the reply, or the loss of the connection, is known."""
        return self._pending.done

    async def wait(self) -> Reply:
        """The reply; raises like :meth:`Connection.request`."""
        pending = self._pending
        try:
            await pending.wait_event().wait()
        finally:
            if not pending.done:
                self._conn._abandon(self._tag, pending)
        return self.result()

    def result(self) -> Reply:
        """The reply once :attr:`done` (raises like :meth:`wait`); ``trio.WouldBlock`` before."""
        pending = self._pending
        if not pending.done:
            raise trio.WouldBlock
        if pending.error is not None:
            raise pending.error
        reply = pending.reply
        assert reply is not None
        if isinstance(reply, ErrorReply):
            raise ExchangeError.from_reply(reply.error_code, reply.error_msg)
        return reply

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (a plain ``def`` that must not raise) as soon as :attr:`done`:
        in the task that learns the outcome (the reader for a reply), or now if it is known.
        This is :meth:`wait` without a task per command (the runner's orders)."""
        if self._pending.done:
            callback()
        else:
            self._pending.callback = callback

    def abandon(self) -> None:
        """Stop waiting (a timeout): a reply arriving later is late (a ``ReplyEvent`` with
        ``late=True`` in the notice stream) and the callback is not called."""
        pending = self._pending
        if not pending.done:
            pending.callback = None
            self._conn._abandon(self._tag, pending)


class Connection:
    """An open session; made by :func:`open_connection`, not directly."""

    def __init__(
        self,
        ws: WebSocket,
        stream: trio.abc.Stream,
        target: Target,
        *,
        session: int,
        shared: _Shared,
        owns_queue: bool,
        governor: Governor | None,
        options: ConnectionOptions,
    ) -> None:
        self._ws = ws
        self._stream = stream
        self.target = target
        self.session = session
        self._shared = shared
        self._owns_queue = owns_queue
        self._governor = governor
        self._options = options
        self._pending: dict[int, _Pending] = {}
        self._abandoned: dict[int, _Pending] = {}
        self._close_reason: str | None = None
        self._broken = False
        self._marked = False
        self._dead = trio.Event()
        self._torn_down = trio.Event()
        self._bg_scope = trio.CancelScope()
        self._last_rx = trio.current_time()
        self._clock = trio.lowlevel.current_clock().current_time  # trio.current_time, 2 calls fewer
        self._ping_ids = itertools.count(1)
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._writes = 0  # commands written (the reader's yield after sending)
        self.user_id: int | None = None

    # -- public API ----------------------------------------------------------------------

    @property
    def notices(self) -> NoticeQueue:
        """The ordered event stream (see the module docstring for its overflow policy)."""
        return self._shared.queue

    @property
    def closed(self) -> bool:
        return self._close_reason is not None

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    async def request(self, command: Command, *, echo: bool = False) -> Reply:
        """Send ``command`` with a fresh tag and return its reply.

        Waits for a governor token first when the connection has a governor and the command
        counts against a LIMITS.md metric.  With ``echo=True`` the reply is also put into
        :attr:`notices` as a :class:`ReplyEvent` at its exact position among the notices
        (use it for WatchOrders snapshots and reconciliation replies).

        Raises the :class:`ExchangeError` subclass of an error reply (the command was
        refused); :class:`ConnectionLost` if the connection dies before the reply (the
        outcome is UNKNOWN: the command may or may not have been executed); and
        :class:`RemoteProtocolError` if the reply could not be decoded (also UNKNOWN).

        The caller owns timeouts (``with trio.fail_after(...)``).  A frame is sent whole or
        not at all: cancellation waits for a send in progress (bounded by ``send_timeout``),
        and a caller that gives up after sending leaves the outcome UNKNOWN.
        """
        waiter = await self.send(command, echo=echo)
        return await waiter.wait()

    async def send(self, command: Command, *, echo: bool = False) -> ReplyWaiter:
        """Send ``command`` now and return a :class:`ReplyWaiter` for its reply.

        :meth:`request` is ``await (await send(cmd)).wait()``.  Splitting the two lets one task
        keep the *wire order* of a pipeline (PlaceOrder tonces must arrive in increasing order,
        a cancel after its place) while other tasks wait for the replies.
        """
        if self._close_reason is None and self._governor is not None:
            metric = metric_for(command)
            if metric is not None:
                await self._governor.acquire(metric)
        if self._close_reason is not None:
            await trio.lowlevel.checkpoint()
            raise ConnectionLost(f"session {self.session}: {self._close_reason}; the command was not sent")
        tag, pending, written = self._write(command, echo)
        if written:
            # Sent: a cancellation now would lose the ReplyWaiter of a command on the wire.
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            await self._flush(tag, pending)
        return ReplyWaiter(self, tag, pending)

    def send_nowait(self, command: Command, *, echo: bool = False, vouched: bool = False) -> ReplyWaiter:
        """:meth:`send` without waiting: the frame is written to the socket now.

        Raises ``trio.WouldBlock`` (nothing sent, no token taken) when the governor has no
        token for it right now or other writes are still in progress, and
        :class:`ConnectionLost` when the connection is closed.  Bytes the socket does not
        take at once are written by the connection's writer task, in order.

        ``vouched=True`` is for the runner's PlaceOrders only: an untagged command just built
        by ``Order.to_command`` from an order whose ``wire_checked`` is true, so every field
        is already known to pass the codec's check.  The connection takes the command over
        (it sets the tag in place instead of copying it, which would run ``__post_init__``
        again) and encodes it without that check: validated once, by the tracker, not three
        times.  Anything else must keep ``vouched=False`` (the codec refuses a bad command
        with LocalProtocolError).
        """
        if self._close_reason is not None:
            raise ConnectionLost(f"session {self.session}: {self._close_reason}; the command was not sent")
        if not self._ws.idle:
            raise trio.WouldBlock
        if self._governor is not None:
            metric = METRIC_FOR_METHOD.get(command.__struct_config__.tag)  # type: ignore[arg-type]  # metric_for, inline
            if metric is not None and not self._governor.take_nowait(metric, self._clock()):
                raise trio.WouldBlock
        tag, pending, written = self._write(command, echo, vouched)
        if not written and self._close_reason is None:
            self._writer_lot.unpark_all()
        return ReplyWaiter(self, tag, pending)

    def _write(self, command: Command, echo: bool, vouched: bool = False) -> tuple[int, _Pending, bool]:
        """Tag, encode and queue one command on the socket (written at once if it can be).
        ``vouched``: see :meth:`send_nowait`."""
        tag = next(self._shared.tags)
        self._writes += 1
        if vouched:
            _force_setattr(command, "tag", tag)
        else:
            command = msgspec.structs.replace(command, tag=tag)
        pending = _Pending(command, REPLY_FOR[type(command)], echo)
        self._pending[tag] = pending
        if log.isEnabledFor(logging.DEBUG):  # the method and tag only: fields may hold secrets
            log.debug("session %d: sending %s (tag %d)", self.session, pending.method, tag)
        data = CODEC.encode_trusted(command) if vouched else CODEC.encode(command)
        try:
            written = self._ws.write_nowait(self._ws.text_frame(data))
        except WebSocketClosed as e:
            self._on_send_closed(tag, pending, e)
            return tag, pending, True
        return tag, pending, written

    async def _flush(self, tag: int, pending: _Pending) -> None:
        try:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self._options.send_timeout) as send_scope:
                    await self._ws.flush()
            if send_scope.cancelled_caught:
                self._declare_broken(
                    f"sending a frame stalled for {self._options.send_timeout:g} s (peer not reading)"
                )
        except WebSocketClosed as e:
            self._on_send_closed(tag, pending, e)

    def _on_send_closed(self, tag: int, pending: _Pending, e: WebSocketClosed) -> None:
        if not pending.done:
            self._pending.pop(tag, None)
            pending.fail(self._lost(pending, _describe_close(e.reason)))
        # The reader may be waiting on a link that will never deliver again: end it now.
        self._declare_broken(f"sending failed ({_describe_close(e.reason)})")

    def _abandon(self, tag: int, pending: _Pending) -> None:
        # The caller gave up (cancelled).  Keep a tombstone so a late reply is
        # recognised as late (and still reaches the stream), not as unknown.
        self._pending.pop(tag, None)
        if self._close_reason is None:
            if len(self._abandoned) >= _MAX_ABANDONED:
                self._abandoned.pop(next(iter(self._abandoned)))
            self._abandoned[tag] = pending

    async def wait_closed(self) -> str:
        """Wait until the connection is dead; return why."""
        await self._dead.wait()
        assert self._close_reason is not None
        return self._close_reason

    async def aclose(self) -> None:
        """Close the connection (a clean WebSocket close when the peer still answers).

        Pending requests raise :class:`ConnectionLost` (outcome UNKNOWN).  Idempotent."""
        self._mark_dead("closed by the application")
        self._bg_scope.cancel()
        await self._torn_down.wait()

    def statistics(self) -> ConnectionStatistics:
        return _statistics(
            self._shared,
            session=self.session,
            close_reason=self._close_reason,
            pending=len(self._pending),
            last_traffic=self._last_rx,
        )

    def __repr__(self) -> str:
        state = "open" if self._close_reason is None else f"closed: {self._close_reason}"
        return f"<Connection session={self.session} {self.target.host}:{self.target.port} user={self.user_id} {state}>"

    # -- life cycle ----------------------------------------------------------------------

    def _lost(self, pending: _Pending, why: str) -> ConnectionLost:
        tag = pending.command.tag
        return ConnectionLost(
            f"session {self.session}: {why}; the outcome of {pending.method} (tag {tag}) is unknown"
        )

    def _put(self, event: Event) -> None:
        if self._close_reason is not None:
            return  # the session is over: nothing may follow its SessionEnded marker
        if not self._shared.queue.put(event, self.session):
            self._put_overflowed()

    def _put_overflowed(self) -> None:
        q = self._shared.queue
        self._declare_broken(
            f"own notice queue overflow ({q.max_own} unread own notices): "
            "the application is not keeping up; reconnect and reconcile"
        )

    def _mark_session_started(self) -> None:
        if not self._marked and self._close_reason is None:
            self._marked = True
            self._put(SessionStarted(self.session, self.user_id))

    def _mark_dead(self, reason: str) -> None:
        """Record why the connection ended and fail everything that waits on it (sync)."""
        if self._close_reason is not None:
            return
        self._close_reason = reason
        pending, self._pending = self._pending, {}
        self._abandoned.clear()
        for p in pending.values():
            p.fail(self._lost(p, reason))
        if self._marked and not self._shared.queue.closed:
            self._shared.queue.put(SessionEnded(self.session, reason), self.session)
        if self._owns_queue:
            self._shared.queue.close()
        self._dead.set()
        self._bg_scope.cancel()

    def _declare_broken(self, reason: str) -> None:
        """The connection can no longer be trusted: close it without a handshake."""
        if self._close_reason is None:
            self._broken = True
            log.warning("session %d: closing: %s", self.session, reason)
        self._mark_dead(reason)

    async def _run_background(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._bg_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._keepalive)
                    nursery.start_soon(self._writer)
                    task_status.started()
        finally:
            self._mark_dead("closed")
            # When an enclosing scope is cancelled, nobody may wait for the peer's close
            # frame: skip the handshake.
            graceful = not self._broken and trio.current_effective_deadline() != -math.inf
            with trio.CancelScope(shield=True):
                await self._close_transport(graceful)
            self._torn_down.set()

    async def _close_transport(self, graceful: bool) -> None:
        if graceful and self._ws.closed is None:
            with trio.move_on_after(self._options.close_timeout):
                await self._ws.aclose()
        self._ws.abort()
        await trio.aclose_forcefully(self._stream)

    async def _authenticate(self, credentials: Credentials, server_nonce: bytes) -> None:
        client_nonce = auth.new_nonce()
        message = auth.signed_message(credentials.user_id, server_nonce, client_nonce)
        signature = auth.sign(auth.derive_private_key(credentials.user_id, credentials.passphrase), message)
        command = Authenticate(
            user_id=credentials.user_id,
            cookie=credentials.cookie.reveal(),
            nonce=auth.b64_nonce(client_nonce),
            signature=signature,
        )
        self.user_id = credentials.user_id
        try:
            with trio.fail_after(self._options.handshake_timeout):
                await self.request(command)
        except trio.TooSlowError:
            raise ConnectFailed(
                f"session {self.session}: no reply to Authenticate within {self._options.handshake_timeout:g} s"
            ) from None
        except ConnectFailed:
            raise
        except ConnectionLost as e:
            raise ConnectFailed(f"session {self.session}: connection lost during Authenticate ({e})") from None
        except ExchangeError:
            self.user_id = None
            raise
        log.info("session %d: authenticated as user %d", self.session, credentials.user_id)

    # -- background tasks ------------------------------------------------------------------

    async def _reader(self) -> None:
        shared = self._shared
        ws = self._ws
        clock = trio.lowlevel.current_clock().current_time  # trio.current_time, 2 calls fewer
        try:
            while True:
                message = await ws.receive()
                self._last_rx = clock()
                after = shared.after_frame
                if after is None:
                    self._on_frame(message)
                    continue
                queue = shared.queue
                queue.defer_wakeups()
                writes = self._writes
                try:
                    self._on_frame(message)
                    after()
                finally:
                    queue.resume_wakeups()
                if self._writes != writes:
                    # We just sent commands from this task.  Step back twice before parsing
                    # on: the first checkpoint lets the tasks already ready run, the second
                    # also those that the I/O poll between the two scheduler passes made
                    # ready, such as an in-process exchange reading what we sent.  Without
                    # it, frames already buffered here (a ticker behind the notice we
                    # answered) would be handled first half the time (trio orders each pass at random).
                    await trio.lowlevel.checkpoint()
                    await trio.lowlevel.checkpoint()
        except WebSocketClosed as e:
            reason = e.reason
            if reason is not None and reason.code == 1009:
                self._shared.counters.oversized_frames += 1
                why = f"peer sent a frame over the {self._options.max_frame}-byte limit (1009)"
            else:
                why = f"peer closed the connection ({_describe_close(reason)})"
            self._mark_dead(why)

    async def _keepalive(self) -> None:
        opts = self._options
        while True:
            deadline = self._last_rx + opts.ping_interval
            if trio.current_time() < deadline:
                await trio.sleep_until(deadline)
                continue
            self._shared.counters.pings_sent += 1
            payload = struct.pack("!Q", next(self._ping_ids))
            try:
                with trio.move_on_after(opts.pong_timeout) as scope:
                    await self._ws.ping(payload)
            except WebSocketClosed:
                return  # the reader reports why
            if scope.cancelled_caught:
                self._shared.counters.dead_peers += 1
                self._declare_broken(
                    f"no pong within {opts.pong_timeout:g} s of a ping sent after "
                    f"{opts.ping_interval:g} s of silence: peer dead or connection half-open"
                )
                return
            self._last_rx = trio.current_time()

    async def _writer(self) -> None:
        """Writes what :meth:`send_nowait` could not (the socket was full, or TLS)."""
        ws = self._ws
        while True:
            while not ws.pending_bytes:
                await self._writer_lot.park()
            try:
                with trio.move_on_after(self._options.send_timeout) as scope:
                    await ws.flush()
            except WebSocketClosed as e:
                self._declare_broken(f"sending failed ({_describe_close(e.reason)})")
                return
            if scope.cancelled_caught:
                self._declare_broken(
                    f"sending a frame stalled for {self._options.send_timeout:g} s (peer not reading)"
                )
                return

    # -- frame handling (plain def: the reader never waits on the application) ----------------

    def _on_frame(self, message: str | bytes) -> None:
        shared = self._shared
        if isinstance(message, bytes):
            shared.counters.malformed_frames += 1
            shared.logs.warning("binary", "session %d: ignored a binary frame (%d bytes)", self.session, len(message))
            return
        try:
            frame = CODEC.decode_server_frame(message)
        except UnknownNotice as e:
            shared.counters.unknown_notices += 1
            if e.name not in shared.unknown_names and len(shared.unknown_names) < _MAX_UNKNOWN_NAMES:
                shared.unknown_names.add(e.name)
                log.warning("session %d: ignoring unknown notice %r (logged once per name)", self.session, e.name[:64])
            return
        except RemoteProtocolError as e:
            self._on_malformed(message, e)
            return
        if log.isEnabledFor(logging.DEBUG):
            what = f"reply (tag {frame.tag})" if isinstance(frame, ReplyFrame) else type(frame).__name__
            log.debug("session %d: received %s, %d bytes", self.session, what, len(message))
        if isinstance(frame, ReplyFrame):
            self._on_reply(frame)
        elif isinstance(frame, Welcome):
            shared.counters.malformed_frames += 1
            shared.logs.warning("welcome", "session %d: ignored a second Welcome", self.session)
        elif self._close_reason is None:  # _put, inline (every notice received)
            if not shared.queue.put(frame, self.session):
                self._put_overflowed()

    def _on_malformed(self, message: str, error: RemoteProtocolError) -> None:
        shared = self._shared
        shared.counters.malformed_frames += 1
        shared.logs.warning("malformed", "session %d: ignored a malformed frame: %s", self.session, error)
        m = _TAG_HINT.search(message)
        pending = self._pending.pop(int(m.group(1)), None) if m is not None else None
        if pending is not None:
            # Probably the reply to this request: its outcome is unknown, say so now.
            pending.fail(RemoteProtocolError(
                f"session {self.session}: damaged reply to {pending.method}: {error}; outcome unknown",
                field=error.field,
            ))
        if (pending is not None and pending.is_order) or _OWN_HINT.search(message):
            self._declare_broken(f"damaged own-order or balance frame from the peer ({error}); reconcile")

    def _on_reply(self, frame: ReplyFrame) -> None:
        shared = self._shared
        tag = frame.tag
        pending = self._pending.pop(tag, None) if tag is not None else None
        if pending is None:
            late = self._abandoned.pop(tag, None) if tag is not None else None
            if late is None:
                shared.counters.unknown_replies += 1
                what = "an untagged reply" if tag is None else f"a reply with unknown tag {tag}"
                shared.logs.warning("reply", "session %d: ignored %s", self.session, what)
                return
            shared.counters.late_replies += 1
            pending = late
            late_reply = True
        else:
            late_reply = False
        try:
            reply = CODEC.decode_reply(frame, pending.reply_type)
        except RemoteProtocolError as e:
            shared.counters.malformed_frames += 1
            shared.logs.warning("malformed", "session %d: damaged reply to %s: %s", self.session, pending.method, e)
            pending.fail(RemoteProtocolError(
                f"session {self.session}: damaged reply to {pending.method}: {e}; outcome unknown", field=e.field
            ))
            if pending.is_order:
                self._declare_broken(f"damaged reply to {pending.method} ({e}); reconcile")
            return
        if isinstance(pending.command, Authenticate) and reply.error_code == 0:
            self._mark_session_started()
        if late_reply or pending.echo:
            self._put(ReplyEvent(self.session, pending.command, reply, late=late_reply))
        if not late_reply:
            pending.resolve(reply)


# -- opening -------------------------------------------------------------------------------


async def _dial(target: Target) -> trio.abc.Stream:
    """TCP, then (for wss) a TLS handshake completed here so a bad certificate fails fast."""
    try:
        tcp = await trio.open_tcp_stream(target.host, target.port)
    except OSError as e:
        raise ConnectFailed(f"cannot connect to {target.host}:{target.port}: {e}") from e
    if target.ssl_context is None:
        return tcp
    tls = trio.SSLStream(tcp, target.ssl_context, server_hostname=target.host, https_compatible=True)
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as e:
        await trio.aclose_forcefully(tcp)
        cause = e.__cause__ or e
        raise ConnectFailed(f"TLS handshake with {target.host}:{target.port} failed: {cause}") from e
    return tls


async def _establish(
    nursery: trio.Nursery,
    target: Target,
    credentials: Credentials | None,
    governor: Governor | None,
    options: ConnectionOptions,
    dial: Dial | None,
    shared: _Shared,
    owns_queue: bool,
) -> Connection:
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(options.connect_timeout):
            stream = await (dial or _dial)(target)
            try:
                ws = await ws_connect(stream, target.host_header, target.resource, max_message_size=options.max_frame)
            except HandshakeFailed as e:
                raise ConnectFailed(f"WebSocket handshake with {target.url} failed: {e}") from None
        with trio.fail_after(options.handshake_timeout):
            first = await ws.receive()
        frame = CODEC.decode_server_frame(first)
        if not isinstance(frame, Welcome):
            raise RemoteProtocolError(f"the first frame must be Welcome, got {type(frame).__name__}")
        server_nonce = auth.nonce_from_b64(frame.nonce, "Welcome.nonce")
    except BaseException as e:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()
        if not isinstance(e, trio.Cancelled):
            shared.counters.connect_failures += 1
        where = f"{target.host}:{target.port}"
        if isinstance(e, trio.TooSlowError):
            raise ConnectFailed(f"no WebSocket session with {where} within the connect/handshake timeout") from None
        if isinstance(e, WebSocketClosed):
            raise ConnectFailed(f"{where} closed the connection before Welcome ({_describe_close(e.reason)})") from None
        if isinstance(e, RemoteProtocolError):
            raise ConnectFailed(f"bad Welcome from {where}: {e}") from e
        raise
    shared.sessions += 1
    conn = Connection(
        ws, stream, target, session=shared.sessions, shared=shared, owns_queue=owns_queue,
        governor=governor, options=options,
    )
    await nursery.start(conn._run_background)
    try:
        if credentials is not None:
            await conn._authenticate(credentials, server_nonce)
        else:
            conn._mark_session_started()
    except BaseException as e:
        if not isinstance(e, trio.Cancelled):
            shared.counters.connect_failures += 1
        with trio.CancelScope(shield=True):
            await conn.aclose()
        nursery.cancel_scope.cancel()
        raise
    log.info("session %d: connected to %s", conn.session, target.url)
    return conn


def _reraise_single(group: BaseExceptionGroup[Any]) -> NoReturn:
    """Raise the one meaningful exception of a nursery's group, keeping its context.

    Our background tasks never raise, so a group here holds the body's exception (plus
    Cancelled); unwrapping keeps ``except ConnectionLost`` working for the caller."""
    real = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
    chosen = real[0] if len(real) == 1 else (group.exceptions[0] if not real else None)
    if chosen is None:
        raise group
    context = chosen.__context__
    try:
        raise chosen
    finally:
        chosen.__context__ = context
        del chosen, context


@asynccontextmanager
async def _open(
    target: Target,
    credentials: Credentials | None,
    governor: Governor | None,
    options: ConnectionOptions,
    dial: Dial | None,
    shared: _Shared,
    owns_queue: bool,
) -> AsyncIterator[Connection]:
    try:
        async with trio.open_nursery() as nursery:
            conn = await _establish(nursery, target, credentials, governor, options, dial, shared, owns_queue)
            try:
                yield conn
            finally:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _reraise_single(group)


def open_connection(
    url: str,
    credentials: Credentials | None,
    *,
    governor: Governor | None = None,
    ssl_context: ssl.SSLContext | None = None,
    allow_insecure: bool = False,
    options: ConnectionOptions | None = None,
    dial: Dial | None = None,
) -> AbstractAsyncContextManager[Connection]:
    """``async with open_connection(url, credentials) as conn:`` - connect and authenticate.

    ``url`` is checked before any I/O (``wss://`` verified by default; ``ws://`` only to
    loopback with ``allow_insecure=True``; refusals raise :class:`ConfigError`).
    ``credentials=None`` opens an unauthenticated session (public feeds only).
    ``governor`` rate-limits every command by its LIMITS.md metric, Authenticate included.
    ``dial`` replaces TCP/TLS (e.g. with a memory stream for tests).

    Raises :class:`ConnectFailed` if no session could be opened (nothing was sent but,
    possibly, Authenticate), and the :class:`ExchangeError` of a refused Authenticate
    (error 7 is :class:`AuthenticationFailed`).  Leaving the block closes the connection.
    """
    target = check_url(url, ssl_context=ssl_context, allow_insecure=allow_insecure)
    opts = options or ConnectionOptions()
    return _open(target, credentials, governor, opts, dial, _Shared(opts), True)
