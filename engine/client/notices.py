"""The ordered, bounded notice stream between the connection's reader and the application.

The reader task must never wait for the application (RELIABILITY F8): if it did, pongs,
replies and the close handshake would queue behind a slow strategy.  So the reader puts
events with the plain-``def`` :meth:`NoticeQueue.put`, which never blocks, and the
application takes them with ``await queue.receive()`` or ``async for event in queue``.
Events come out in exactly the order they came off the wire.

**Overflow policy** (the queue is bounded; what happens when the application falls behind):

* *Own* notices are never dropped: any notice carrying a ``tonce``, ``bid_tonce`` or
  ``ask_tonce`` key (even ``null``), ``BalanceChanged``, ``TradeVolumeChanged``, and echoed
  replies (:class:`ReplyEvent`).  They have their own bound, ``max_own``; the notice that
  reaches it is still queued and :meth:`put` returns False, on which the connection is
  declared broken and closed.  The runner then reconnects and reconciles (GetOrders,
  GetBalances): a loud, recoverable failure instead of a silent drop.
* *Public L3* notices (OrderOpened / OrdersMatched / OrderClosed without own keys) count
  against ``max_public``.  A gap would corrupt an L3 book, so when that bound is reached the
  notice is dropped *and* a :class:`FeedGap` marker for that book is queued in its place
  (one per book until the application has taken it).  On a FeedGap the consumer must
  re-snapshot the book (WatchOrders false, then true).
* ``TickerChanged`` is conflated: while a ticker of the same book is still queued, a new one
  is merged into it (fields present in the newer one win) and moves to the newer position.
  At most one ticker per book is ever queued, so tickers never count against a bound.
* Markers (:class:`SessionStarted`, :class:`SessionEnded`, :class:`FeedGap`) are bounded by
  construction and always queued.

Buffered events stay readable after the connection dies; :meth:`receive` raises
``trio.EndOfChannel`` only once the queue is closed *and* drained.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TypeAlias

import msgspec
import trio

from engine.protocol.messages import (
    UNSET,
    BalanceChanged,
    Command,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    Reply,
    TickerChanged,
    TradeVolumeChanged,
)

__all__ = [
    "Event",
    "FeedGap",
    "NoticeQueue",
    "NoticeQueueStatistics",
    "ReplyEvent",
    "SessionEnded",
    "SessionStarted",
    "is_own",
    "merge_tickers",
]

MAX_PENDING_TICKERS = 64
"""Distinct books with a conflated ticker queued; beyond this a hostile peer inventing asset
pairs could grow memory, so further tickers count as public notices."""


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """A connection is authenticated (or, without credentials, welcomed).  Everything after
    this marker belongs to ``session``; local state from earlier sessions is stale."""

    session: int
    user_id: int | None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The connection of ``session`` is gone.  Notices in flight are lost (the protocol has
    no replay): reconcile before trusting own-order or balance state again."""

    session: int
    reason: str


@dataclass(frozen=True, slots=True)
class FeedGap:
    """Public order-book notices of (base, counter) were dropped here: re-snapshot."""

    session: int
    base: int
    counter: int


@dataclass(frozen=True, slots=True)
class ReplyEvent:
    """A reply placed in the notice stream at its exact wire position (``request(...,
    echo=True)``), e.g. a WatchOrders snapshot relative to the book notices around it.

    ``reply`` is the success reply or an ``ErrorReply``; ``late`` is True when the caller had
    stopped waiting (timeout or cancellation) before it arrived.
    """

    session: int
    command: Command
    reply: Reply
    late: bool = False


Event: TypeAlias = Notice | ReplyEvent | FeedGap | SessionStarted | SessionEnded
"""Everything the notice stream carries."""


def is_own(notice: Notice) -> bool:
    """True for notices about the recipient's own orders and balances (never dropped)."""
    if isinstance(notice, OrderOpened | OrderClosed):
        return notice.tonce is not UNSET
    if isinstance(notice, OrdersMatched):
        return notice.bid_tonce is not UNSET or notice.ask_tonce is not UNSET
    return isinstance(notice, BalanceChanged | TradeVolumeChanged)


_TICKER_FIELDS = ("last", "bid", "ask", "low", "high", "volume")


def merge_tickers(older: TickerChanged, newer: TickerChanged) -> TickerChanged:
    """One TickerChanged equivalent to ``older`` followed by ``newer`` (absent = unchanged)."""
    changes = {}
    for f in _TICKER_FIELDS:
        value = getattr(newer, f)
        if value is not UNSET:
            changes[f] = value
    return msgspec.structs.replace(older, **changes) if changes else older


class _Slot:
    __slots__ = ("event", "kind", "live")

    def __init__(self, event: Event, kind: int) -> None:
        self.event = event
        self.kind = kind
        self.live = True


_OWN, _PUBLIC, _TICKER, _MARKER = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class NoticeQueueStatistics:
    own_queued: int
    public_queued: int
    max_own: int
    max_public: int
    peak_own: int
    peak_public: int
    dropped_public: int
    feed_gaps: int
    tickers_conflated: int
    own_overflows: int
    closed: bool


class NoticeQueue:
    """A bounded, ordered event queue with the overflow policy of the module docstring.

    Writer side (the reader task): :meth:`put`, :meth:`close`.  Reader side (the
    application): :meth:`receive`, :meth:`receive_nowait`, ``async for``.
    """

    def __init__(self, max_own: int = 10_000, max_public: int = 10_000) -> None:
        if max_own < 1 or max_public < 1:
            raise ValueError(f"queue bounds must be positive, got max_own={max_own}, max_public={max_public}")
        self.max_own = max_own
        self.max_public = max_public
        self._slots: deque[_Slot] = deque()
        self._own = 0
        self._public = 0
        self._peak_own = 0
        self._peak_public = 0
        self._tickers: dict[tuple[int, int], _Slot] = {}
        self._gaps: dict[tuple[int, int], _Slot] = {}
        self._dropped = 0
        self._gap_count = 0
        self._conflated = 0
        self._overflows = 0
        self._closed = False
        self._lot = trio.lowlevel.ParkingLot()
        self._drain_lot = trio.lowlevel.ParkingLot()
        self._deferred = False

    # -- writer side (plain def, never blocks) -------------------------------------------

    def _append(self, event: Event, kind: int) -> _Slot:
        slot = _Slot(event, kind)
        self._slots.append(slot)
        # Only when a receiver is parked: once per frame.  _deferred first: an inline consumer
        # defers, and ParkingLot.__bool__ is a Python call.
        if not self._deferred and self._lot:
            self._lot.unpark()
        return slot

    def defer_wakeups(self) -> None:
        """Stop waking receivers on :meth:`put` until :meth:`resume_wakeups` (an inline
        consumer is about to take the events itself; waking another task is wasted work)."""
        self._deferred = True

    def resume_wakeups(self) -> None:
        """Wake a receiver again on put, and now if events are left for it."""
        self._deferred = False
        if self._slots and self._lot:
            self._lot.unpark()

    def put(self, event: Event, session: int = 0) -> bool:
        """Queue ``event`` by the overflow policy.  Returns False iff an own event reached
        ``max_own`` (it is still queued): the caller must then declare its connection broken.
        """
        if self._closed:
            raise trio.ClosedResourceError("the notice queue is closed")
        # Dispatch on the exact type (this is the hot path of the reader task).
        t = type(event)
        if t is OrderOpened or t is OrderClosed:
            if event.tonce is not UNSET:  # type: ignore[union-attr]
                return self._put_own(event)
            return self._put_public(event, (event.base, event.counter), session)  # type: ignore[union-attr]
        if t is OrdersMatched:
            if event.bid_tonce is not UNSET or event.ask_tonce is not UNSET:  # type: ignore[union-attr]
                return self._put_own(event)
            return self._put_public(event, (event.base, event.counter), session)  # type: ignore[union-attr]
        if t is TickerChanged:
            return self._put_ticker(event, session)  # type: ignore[arg-type]
        if isinstance(event, Notice | ReplyEvent):
            # BalanceChanged, TradeVolumeChanged, echoed replies; also Welcome or a future
            # notice type, treated as own (never dropped) to be safe.
            return self._put_own(event)
        self._append(event, _MARKER)
        return True

    def _put_ticker(self, event: TickerChanged, session: int) -> bool:
        key = (event.base, event.counter)
        old = self._tickers.get(key)
        if old is not None:
            assert isinstance(old.event, TickerChanged)
            merged = merge_tickers(old.event, event)
            self._conflated += 1
            if self._slots[-1] is old:
                # Still the newest event (a ticker flood): merge in place.  This also
                # keeps dead slots bounded by the live events queued between tickers.
                old.event = merged
            else:
                old.live = False  # merged forward: the newer position carries both
                self._tickers[key] = self._append(merged, _TICKER)
            return True
        if len(self._tickers) < MAX_PENDING_TICKERS:
            self._tickers[key] = self._append(event, _TICKER)
            return True
        return self._put_public(event, key, session)

    def _put_own(self, event: Event) -> bool:
        self._append(event, _OWN)
        self._own += 1
        self._peak_own = max(self._peak_own, self._own)
        if self._own > self.max_own:
            self._overflows += 1
            return False
        return True

    def _put_public(self, event: Event, book: tuple[int, int], session: int) -> bool:
        if self._public >= self.max_public:
            self._dropped += 1
            if book not in self._gaps:
                self._gaps[book] = self._append(FeedGap(session, book[0], book[1]), _MARKER)
                self._gap_count += 1
            return True
        # _append, inline (a book notice of another user: the hot path of a tick).
        self._slots.append(_Slot(event, _PUBLIC))
        if not self._deferred and self._lot:
            self._lot.unpark()
        self._public += 1
        self._peak_public = max(self._peak_public, self._public)
        return True

    def close(self) -> None:
        """No more events; receivers get ``trio.EndOfChannel`` once the queue is drained."""
        self._closed = True
        self._lot.unpark_all()

    # -- reader side -----------------------------------------------------------------------

    def pop_nowait(self) -> Event | None:
        """The next event, or None when there is none right now (closed or not): the
        :meth:`receive_nowait` of an inline consumer, without an exception per drain.
        (The queue's own pop: one Python call per event taken, as for an empty queue.)"""
        slots = self._slots
        while slots:
            slot = slots.popleft()
            if not slot.live:
                continue
            kind = slot.kind
            event = slot.event
            if kind == _OWN:
                self._own -= 1
                if self._drain_lot:
                    self._drain_lot.unpark_all()
            elif kind == _PUBLIC:
                self._public -= 1
            elif kind == _TICKER:
                assert isinstance(event, TickerChanged)
                key = (event.base, event.counter)
                if self._tickers.get(key) is slot:
                    del self._tickers[key]
            elif isinstance(event, FeedGap):
                book = (event.base, event.counter)
                if self._gaps.get(book) is slot:
                    del self._gaps[book]
            return event
        return None

    _pop = pop_nowait

    def receive_nowait(self) -> Event:
        """The next event, or raise ``trio.WouldBlock`` / ``trio.EndOfChannel``."""
        event = self._pop()
        if event is not None:
            return event
        if self._closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> Event:
        """Wait for the next event; ``trio.EndOfChannel`` once closed and drained."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            event = self._pop()
            if event is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return event
            if self._closed:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise trio.EndOfChannel
            await self._lot.park()

    async def wait_event(self) -> None:
        """Wait until :meth:`receive_nowait` may have an event (it can return with none
        left, e.g. after :meth:`wake` or when another consumer took it first); raises
        ``trio.EndOfChannel`` once the queue is closed and drained.

        For consumers that take events with ``receive_nowait`` and must never hold one
        across a checkpoint (the runner: two consumers, one order)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._slots and not self._closed:
            await self._lot.park()
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        if self._closed and not any(s.live for s in self._slots):
            raise trio.EndOfChannel

    def wake(self) -> None:
        """Make every task in :meth:`wait_event` or :meth:`receive` look again."""
        self._lot.unpark_all()

    def __aiter__(self) -> NoticeQueue:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def wait_own_below(self, count: int) -> None:
        """Wait until at most ``count`` own events are queued (the application caught up)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while self._own > count:
            await self._drain_lot.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def __len__(self) -> int:
        return sum(1 for s in self._slots if s.live)

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> NoticeQueueStatistics:
        return NoticeQueueStatistics(
            own_queued=self._own,
            public_queued=self._public,
            max_own=self.max_own,
            max_public=self.max_public,
            peak_own=self._peak_own,
            peak_public=self._peak_public,
            dropped_public=self._dropped,
            feed_gaps=self._gap_count,
            tickers_conflated=self._conflated,
            own_overflows=self._overflows,
            closed=self._closed,
        )
