"""A client session that survives disconnects: backoff, re-authenticate, re-subscribe, signal.

::

    async def reconcile(conn: Connection) -> None:         # runs before anything resumes
        orders = await conn.request(GetOrders(), echo=True)
        balances = await conn.request(GetBalances(), echo=True)

    client = ReconnectingClient(url, creds, governor=gov, on_connected=reconcile)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)                      # returns once the first session is up
        await client.watch_orders(XBT, GBP)                  # remembered across sessions
        async for event in client.notices:                   # one stream over all sessions
            ...

**Each session** (RELIABILITY F1): connect (TLS, Welcome, Authenticate); re-send every
WatchOrders / WatchTicker the application registered, with ``echo=True`` so each snapshot
lands in :attr:`ReconnectingClient.notices` as a ``ReplyEvent`` at its exact position among
the book notices; then await ``on_connected(conn)``, where the application reconciles
(GetOrders, GetBalances) through ``conn`` - *not* through ``client.request``, which waits
until ``on_connected`` has returned.  Only then do ``client.request`` callers resume.

**The stream** carries ``SessionStarted(n)`` where session n's notices begin and
``SessionEnded(n, reason)`` where they stop, so a consumer knows exactly which notices may be
missing (the protocol has no replay) and when to distrust its local state.

**Backoff**: exponential (``initial * multiplier**attempt``, capped at ``maximum``) with
jitter (each delay is drawn from ``[base * (1 - jitter), base]``), from an injectable
``random.Random`` so tests can predict every delay.  The attempt counter resets after a
session that stayed up ``reset_after`` seconds.  If the last session died because the
application stopped reading own notices, the client waits for it to drain half the queue
before reconnecting (reconnecting into a stuck consumer would only fail again).

**Halting** (F11): a definitive refusal of Authenticate (error 7 bad cookie or signature,
error 1 no such user, error 8 malformed) stops the client and is raised from :meth:`run`;
retrying would only burn the 1000-per-hour authentication budget.  Error 6 (authenticating
too rapidly) and every transport failure are retried with backoff.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from engine.client.notices import NoticeQueue
from engine.client.urls import check_url
from engine.connection import (
    Connection,
    ConnectionOptions,
    ConnectionStatistics,
    Credentials,
    Dial,
    ReplyWaiter,
    _open,
    _Shared,
    _statistics,
)
from engine.errors import ConnectionLost, ExchangeError, RateLimitExceeded, RemoteProtocolError
from engine.governor import Governor
from engine.protocol.messages import (
    Command,
    Reply,
    WatchOrders,
    WatchOrdersReply,
    WatchTicker,
    WatchTickerReply,
)

__all__ = ["Backoff", "OnConnected", "ReconnectingClient"]

log = logging.getLogger("engine.connection")

OnConnected = Callable[[Connection], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: ``min(maximum, initial * multiplier**attempt)`` minus up to
    ``jitter`` of itself, drawn from the client's rng."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 <= initial <= maximum, got {self.initial} and {self.maximum}")
        if self.multiplier < 1.0:
            raise ValueError(f"backoff multiplier must be >= 1, was {self.multiplier}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff jitter must be within [0, 1], was {self.jitter}")
        if self.reset_after < 0.0:
            raise ValueError(f"backoff reset_after must be >= 0, was {self.reset_after}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before reconnect number ``attempt`` (0-based)."""
        base = self.initial
        for _ in range(min(attempt, 64)):  # no float overflow for huge attempt counts
            base *= self.multiplier
            if base >= self.maximum:
                break
        base = min(base, self.maximum)
        return base * (1.0 - self.jitter * rng.random())


class ReconnectingClient:
    """One logical session over any number of connections; see the module docstring.

    The URL is checked when the client is built, so a refused target fails before any I/O.
    """

    def __init__(
        self,
        url: str,
        credentials: Credentials | None,
        *,
        governor: Governor | None = None,
        ssl_context: ssl.SSLContext | None = None,
        allow_insecure: bool = False,
        options: ConnectionOptions | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        on_connected: OnConnected | None = None,
        dial: Dial | None = None,
    ) -> None:
        self._target = check_url(url, ssl_context=ssl_context, allow_insecure=allow_insecure)
        self._credentials = credentials
        self._governor = governor
        self._options = options or ConnectionOptions()
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()  # jitter needs spread, not secrecy
        self._on_connected = on_connected
        self._dial = dial
        self._shared = _Shared(self._options)
        self._subscriptions: dict[tuple[str, int, int], Command] = {}
        self._conn: Connection | None = None
        self._changed = trio.Event()
        self._halted: BaseException | None = None
        self._running = False
        self._finished = False
        self._last_reason: str | None = None
        self.delays: list[float] = []
        """Every backoff delay slept so far (for tests and reports)."""

    # -- public API ----------------------------------------------------------------------

    @property
    def notices(self) -> NoticeQueue:
        """One ordered event stream across all sessions (closed when :meth:`run` ends)."""
        return self._shared.queue

    @property
    def after_frame(self) -> Callable[[], None] | None:
        """A plain ``def`` the reader calls after each received frame (every session);
        see "Inline consumer" in :mod:`engine.connection`.  It must never block."""
        return self._shared.after_frame

    @after_frame.setter
    def after_frame(self, hook: Callable[[], None] | None) -> None:
        self._shared.after_frame = hook

    @property
    def connection(self) -> Connection | None:
        """The current ready connection, or None while (re)connecting."""
        return self._conn

    async def wait_connected(self) -> Connection:
        """Wait for a ready connection (authenticated, re-subscribed, reconciled)."""
        while True:
            if self._halted is not None:
                raise ConnectionLost(f"the client halted: {self._halted}") from self._halted
            if self._finished:
                raise ConnectionLost("the client is not running")
            conn = self._conn
            if conn is not None and not conn.closed:
                await trio.lowlevel.checkpoint()
                return conn
            await self._changed.wait()

    async def request(self, command: Command, *, echo: bool = False) -> Reply:
        """:meth:`Connection.request` on the next ready connection.

        Never resent automatically: :class:`ConnectionLost` still means the outcome is
        UNKNOWN, and the application settles it after the reconnect's reconciliation.
        """
        conn = await self.wait_connected()
        return await conn.request(command, echo=echo)

    async def send(self, command: Command, *, echo: bool = False) -> ReplyWaiter:
        """:meth:`Connection.send` on the next ready connection (keeps wire order)."""
        conn = await self.wait_connected()
        return await conn.send(command, echo=echo)

    def send_nowait(self, command: Command, *, echo: bool = False, vouched: bool = False) -> ReplyWaiter:
        """:meth:`Connection.send_nowait` on the ready connection; ``trio.WouldBlock``
        while there is none (reconnecting, reconciling) or it cannot send at once."""
        conn = self._conn
        if conn is None or conn.closed or self._halted is not None or self._finished:
            raise trio.WouldBlock
        return conn.send_nowait(command, echo=echo, vouched=vouched)

    async def watch_orders(self, base: int, counter: int) -> WatchOrdersReply:
        """Subscribe to an L3 book, now and after every reconnect (snapshot echoed)."""
        reply = await self._watch(("orders", base, counter), WatchOrders(base=base, counter=counter, watch=True))
        assert isinstance(reply, WatchOrdersReply)
        return reply

    async def unwatch_orders(self, base: int, counter: int) -> Reply:
        self._subscriptions.pop(("orders", base, counter), None)
        return await self.request(WatchOrders(base=base, counter=counter, watch=False))

    async def watch_ticker(self, base: int, counter: int) -> WatchTickerReply:
        """Subscribe to a ticker, now and after every reconnect (reply echoed)."""
        reply = await self._watch(("ticker", base, counter), WatchTicker(base=base, counter=counter, watch=True))
        assert isinstance(reply, WatchTickerReply)
        return reply

    async def unwatch_ticker(self, base: int, counter: int) -> Reply:
        self._subscriptions.pop(("ticker", base, counter), None)
        return await self.request(WatchTicker(base=base, counter=counter, watch=False))

    async def _watch(self, key: tuple[str, int, int], command: Command) -> Reply:
        conn = await self.wait_connected()
        # Registered before sending: if this connection dies, the next session re-sends it
        # (the caller then sees ConnectionLost but the subscription is restored).
        self._subscriptions[key] = command
        try:
            return await conn.request(command, echo=True)
        except ExchangeError:
            self._subscriptions.pop(key, None)
            raise

    @property
    def subscriptions(self) -> list[Command]:
        return list(self._subscriptions.values())

    def statistics(self) -> ConnectionStatistics:
        conn = self._conn
        if conn is not None:
            return conn.statistics()
        return _statistics(
            self._shared, session=self._shared.sessions, close_reason=self._last_reason or "not connected",
            pending=0, last_traffic=None,
        )

    # -- the loop --------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a session up until cancelled.  Use with ``nursery.start``: it reports
        started once the first session is ready.  Raises the ExchangeError of a definitive
        Authenticate refusal (never retried)."""
        if self._running or self._finished:
            raise RuntimeError("ReconnectingClient.run can be called once")
        self._running = True
        attempt = 0
        started = False
        established = 0
        try:
            while True:
                connected_at: float | None = None
                entered = False
                try:
                    async with _open(
                        self._target, self._credentials, self._governor, self._options,
                        self._dial, self._shared, False,
                    ) as conn:
                        entered = True
                        connected_at = trio.current_time()
                        established += 1
                        if established > 1:
                            self._shared.counters.reconnects += 1
                        await self._resubscribe(conn)
                        if self._on_connected is not None and not conn.closed:
                            await self._on_connected(conn)
                        if not conn.closed:
                            self._conn = conn
                            self._notify()
                            if not started:
                                started = True
                                task_status.started()
                        self._last_reason = await conn.wait_closed()
                        log.warning("session %d ended: %s", conn.session, self._last_reason)
                except (ConnectionLost, RemoteProtocolError) as e:
                    self._last_reason = str(e)
                    log.warning("connection attempt failed: %s", e)
                except ExchangeError as e:
                    if entered:
                        raise  # from on_connected: the application's to handle
                    if not isinstance(e, RateLimitExceeded):
                        self._halted = e
                        log.error("authentication refused, not retrying: %s", e)
                        raise
                    self._last_reason = str(e)
                    log.warning("authentication rate-limited by the exchange: %s", e)
                finally:
                    if self._conn is not None:
                        self._conn = None
                        self._notify()
                now = trio.current_time()
                if connected_at is not None and now - connected_at >= self._backoff.reset_after:
                    attempt = 0
                delay = self._backoff.delay(attempt, self._rng)
                attempt += 1
                await self.notices.wait_own_below(self._options.max_own_notices // 2)
                self.delays.append(delay)
                await trio.sleep(delay)
        finally:
            self._finished = True
            self._running = False
            self._notify()
            self.notices.close()

    async def _resubscribe(self, conn: Connection) -> None:
        subscriptions = list(self._subscriptions.items())
        if not subscriptions:
            return

        async def one(key: tuple[str, int, int], command: Command) -> None:
            try:
                await conn.request(command, echo=True)
            except ExchangeError as e:
                log.warning("session %d: re-subscribing %s %d/%d refused (%s); dropped", conn.session, *key, e)
                self._subscriptions.pop(key, None)
            except (ConnectionLost, RemoteProtocolError):
                pass  # the session loop sees the closed connection

        async with trio.open_nursery() as nursery:
            for key, command in subscriptions:
                nursery.start_soon(one, key, command)
