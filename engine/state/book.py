"""The local L3 order book of one market, in numpy arrays of scaled integers.

Feed it exactly as IMPL-GUIDE "Maintaining a Local View of an Order Book" says, in the
order frames arrive::

    book = Book(XBT_GBP)
    send(book.watch_command(tag=7))            # WatchOrders(watch=True) for this market
    for frame in frames:                       # notices may come before the reply
        if is_the_reply_to(frame, 7):
            book.load_snapshot(reply)          # builds the view, then applies buffered notices
        else:
            book.apply(notice)                 # OrderOpened / OrdersMatched / OrderClosed
        book.best_bid, book.best_ask           # plain attributes, None when a side is empty

Queries: ``best_bid_qty``/``best_ask_qty``, ``spread``, ``mid`` (exact Fraction) and ``mid2``
(bid + ask, integer half price units), ``levels``/``bids``/``asks`` (top N as int64 arrays),
``cumulative_depth``, ``estimate`` (EstimateMarketOrder, exactly as the exchange answers),
``queue_ahead`` (FIFO quantity ahead of an order), ``order``, ``orders``, ``checksum``.

Every method is a plain ``def`` (no I/O).  ``apply`` returns change flags (``TOP_PRICE``,
``TOP_QTY``, ``OWN``, ``IGNORED``) so a runner can wake a strategy only when it must.
Notices of other markets and non-book notices are ignored (a Book can see a whole
connection's stream).

Replays use :func:`apply_batch`: a block of pre-decoded events (engine.state.events) runs in
one compiled call that records the best bid and ask after every event and stops at the
first event the strategy must see.  Both paths run the same kernels
(engine.state.book_kernels), so they cannot drift apart.

Data layout, the price window and the "far" orders are described in book_kernels.  Money is
``int`` throughout: the mid is a :class:`fractions.Fraction` (or ``mid2``, bid + ask, in
half price units), and market-order estimates are exact (see :meth:`Book.estimate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

import msgspec
import numpy as np

from engine.errors import LocalProtocolError, RemoteProtocolError
from engine.protocol.messages import (
    UNSET,
    BookOrder,
    ErrorReply,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    WatchOrders,
    WatchOrdersReply,
)
from engine.scale import V2, XBT_GBP, Market, Scales
from engine.state import book_kernels as K
from engine.state.events import EVENT_DTYPE
from engine.strategy import Side

__all__ = [
    "BID",
    "ASK",
    "TOP_PRICE",
    "TOP_QTY",
    "OWN",
    "IGNORED",
    "TIMER",
    "Book",
    "BookStats",
    "Estimate",
    "OrderView",
    "BatchResult",
    "apply_batch",
    "warm_up",
]

BID = 0
ASK = 1
TOP_PRICE = K.TOP_PRICE
TOP_QTY = K.TOP_QTY
OWN = K.OWN
IGNORED = K.IGNORED
TIMER = K.TIMER

# Book.apply reads these header words and event flags as literals (globals cost time there).
assert (K.H_BB, K.H_BA, K.TOP_PRICE, K.EVF_OWN, K.EVF_OWN_ASK, K.EVF_HAS_BID, K.EVF_HAS_ASK) == (
    18, 19, 1, 1, 2, 4, 8,
), "book_kernels layout changed: update the literals in Book.apply"

_INT64_MAX = 2**63 - 1
MIN_WINDOW = 1 << 10
MAX_WINDOW = 1 << 15


# ---------------------------------------------------------------------------------------
# Compiled entry points.  Calling a kernel's compiled entry point directly skips numba's
# argument-type dispatch (about half the cost of a call); it is safe because every call
# below passes exactly (int64[::1] arena, Python ints) as the explicit signature says.


class _Entry:
    open: Any = None
    close: Any = None
    match: Any = None


def _entry(kernel: Any, sig: Any) -> Any:
    ep = kernel.compile(sig)  # compiles, or loads numba's on-disk cache
    return ep if ep is not None else kernel  # pragma: no cover - numba internals moved


def _entries() -> type[_Entry]:
    if _Entry.open is None:
        _Entry.open = _entry(K.k_open, K.SIG_OPEN)
        _Entry.close = _entry(K.k_close, K.SIG_CLOSE)
        _Entry.match = _entry(K.k_match, K.SIG_MATCH)
    return _Entry


def warm_up() -> float:
    """Compile (or load from numba's cache) every kernel; returns the seconds it took."""
    import time

    t0 = time.perf_counter()
    b = Book()
    b.load_snapshot([BookOrder(id=1, quantity=5, price=100, time=1), BookOrder(id=2, quantity=-5, price=101, time=2)])
    b.apply(OrderOpened(id=3, base=b.market.base.code, counter=b.market.counter.code, quantity=1, price=99, time=3))
    ev = np.zeros(2, dtype=EVENT_DTYPE)
    ev[0] = (4, 4, 4, 98, 1, 0, 0, 0, 0, K.EV_OPEN, 0)
    ev[1] = (4, 4, 4, 98, 1, 0, 0, 0, 0, K.EV_CLOSE, 0)
    apply_batch(b, ev)
    b.levels(BID, 5)
    b.queue_ahead(3)
    b.order(3)
    b.checksum()
    b.check()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------


class OrderView(msgspec.Struct, frozen=True, gc=False):
    """One order of the view: ``quantity`` is the remaining quantity, signed as on the wire
    (0 once an OrdersMatched filled it; the OrderClosed that removes it follows)."""

    id: int
    side: int  # BID or ASK
    quantity: int
    price: int
    time: int
    own: bool


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a market order would trade against this view (fees ignored, like the exchange).

    ``quantity`` (base units) and ``total_exact`` (counter units, a Fraction: the sum of
    quantity * price over the levels walked) are exact.  ``total`` is ``total_exact``
    rounded half up by default, which is what the local exchange's EstimateMarketOrder
    answers (engine/exchange/core.py ``_estimate_in``: exact sum, then half up, no random
    draw); "floor" and "ceil" bound what real trades can cost, since the exchange rounds
    each real trade's total stochastically.
    """

    quantity: int
    total: int
    total_exact: Fraction
    levels: int
    complete: bool  # False when the book ran out before the order was filled


@dataclass(frozen=True, slots=True)
class BookStats:
    """A snapshot of the book's counters (trio-style ``statistics()`` record)."""

    orders: int
    live_bids: int
    live_asks: int
    far_bids: int
    far_asks: int
    capacity: int
    window: int
    nbytes: int
    events: int
    ignored: int
    mismatched: int
    duplicates: int
    invalid: int
    recentres: int
    buffered: int


class Book:
    """Local view of one market's order book (see the module docstring for the protocol).

    ``best_bid`` and ``best_ask`` (None when the side is empty) are plain attributes kept
    current by every method that changes the book: read them freely, never assign them.
    """

    __slots__ = (
        "market",
        "scales",
        "best_bid",
        "best_ask",
        "last_stop",
        "_a",
        "_mv",
        "_out3",
        "_base",
        "_counter",
        "_mkt_base",
        "_mkt_counter",
        "_pending",
        "_window",
        "_k_open",
        "_k_close",
        "_k_match",
    )

    def __init__(
        self,
        market: Market = XBT_GBP,
        *,
        window: int | None = None,
        capacity: int | None = None,
        scales: Scales = V2,
    ) -> None:
        """``window``: price window per side in price units (power of two; default: sized
        from the snapshot, 1024..32768).  ``capacity``: orders held before the first growth (the table doubles when full)."""
        if window is not None and (window < 64 or window & (window - 1)):
            raise ValueError(f"window must be a power of two >= 64, was {window}")
        self.market = market
        self.scales = scales
        self._base, self._counter = market.codes
        self._window = window
        k = _entries()
        self._k_open, self._k_close, self._k_match = k.open, k.close, k.match
        self._mkt_base = self._mkt_counter = -1  # buffering until the snapshot
        self._a = K.new_arena(max(1, capacity or 48), window or MIN_WINDOW)
        self._mv = self._a.data
        self._out3 = np.empty(3, dtype=np.int64)  # find_order's scratch (order, __contains__)
        self._pending: list[Notice] | None = []
        self.last_stop = 0
        self._refresh()

    # -- feeding --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once the snapshot has been loaded (notices are buffered before that)."""
        return self._pending is None

    def reset(self) -> None:
        """Forget everything (e.g. after a reconnect): buffer notices until the next snapshot."""
        self._a = K.new_arena(48, self._window or MIN_WINDOW)
        self._mv = self._a.data
        self._pending = []
        self._mkt_base = self._mkt_counter = -1
        self._refresh()

    def watch_command(self, tag: int | None = None) -> WatchOrders:
        """The ``WatchOrders`` command that subscribes to this book's feed (send it, then
        feed every later frame in arrival order: the reply to :meth:`load_snapshot`, the
        notices to :meth:`apply`)."""
        base, counter = self.market.codes
        if tag is None:
            return WatchOrders(base=base, counter=counter, watch=True)
        return WatchOrders(tag=tag, base=base, counter=counter, watch=True)

    def load_snapshot(self, snapshot: WatchOrdersReply | Sequence[BookOrder]) -> int:
        """Build the view from a WatchOrders reply (bids positive, asks negative quantity),
        then apply the notices that arrived before it.  Returns the combined change flags."""
        if isinstance(snapshot, ErrorReply):
            raise RemoteProtocolError(f"WatchOrders failed: {snapshot.error_code}: {snapshot.error_msg}")
        if isinstance(snapshot, WatchOrdersReply):
            if snapshot.orders is UNSET:
                raise RemoteProtocolError("WatchOrders reply without 'orders' (was watch false?)")
            orders: Sequence[BookOrder] = snapshot.orders
        else:
            orders = snapshot
        n = len(orders)
        ids = np.fromiter((o.id for o in orders), dtype=np.int64, count=n)
        qty = np.fromiter((o.quantity for o in orders), dtype=np.int64, count=n)
        px = np.fromiter((o.price for o in orders), dtype=np.int64, count=n)
        tm = np.fromiter((o.time for o in orders), dtype=np.int64, count=n)
        return self.load_arrays(ids, qty, px, tm)

    def load_arrays(self, ids: np.ndarray, quantities: np.ndarray, prices: np.ndarray, times: np.ndarray) -> int:
        """:meth:`load_snapshot` from columns (quantity signed: bids > 0, asks < 0)."""
        pending = self._pending or []
        window = self._window or _auto_window(quantities, prices)
        cap = max(48, len(ids) + len(ids) // 4)  # room for the book to breathe before growing
        self._a = K.new_arena(cap, window)
        done = 0
        while True:
            done += K.load_orders(self._a, ids[done:], quantities[done:], prices[done:], times[done:])
            if done == len(ids):
                break
            self._grow()
        self._mv = self._a.data
        self._pending = None
        self._mkt_base, self._mkt_counter = self._base, self._counter
        self._refresh()
        flags = TOP_PRICE | TOP_QTY
        for n in pending:
            flags |= self.apply(n)
        return flags

    def apply(
        self,
        notice: Notice,
        _opened: type = OrderOpened,
        _closed: type = OrderClosed,
        _matched: type = OrdersMatched,
        _unset: Any = UNSET,
    ) -> int:
        """Apply one notice (IMPL-GUIDE rules); returns change flags, 0 if not for this book.

        Before the snapshot, book notices are buffered and 0 is returned.
        """
        # The hot path of a live client: about 0.25 us here plus the codec's decode.  The
        # default arguments turn global lookups into local ones, and ``_mkt_base`` is -1
        # while the book buffers, so one comparison covers "other market" and "not ready".
        n: Any = notice
        t = type(n)
        if t is _opened:
            if n.base != self._mkt_base or n.counter != self._mkt_counter:
                return self._not_now(n)
            r = self._k_open(self._a, n.id, n.price, n.quantity, n.time, n.tonce is not _unset)
            if r < 0:
                self._grow()
                r = self._k_open(self._a, n.id, n.price, n.quantity, n.time, n.tonce is not _unset)
        elif t is _closed:
            if n.base != self._mkt_base or n.counter != self._mkt_counter:
                return self._not_now(n)
            r = self._k_close(self._a, n.id, n.quantity, n.tonce is not _unset)
        elif t is _matched:
            if n.base != self._mkt_base or n.counter != self._mkt_counter:
                return self._not_now(n)
            f = 0
            bid = n.bid
            if bid is not _unset:
                f = 4  # EVF_HAS_BID
                bid_rem = n.bid_rem if n.bid_rem is not _unset else -1  # -1: not applied, counted
            else:
                bid = bid_rem = 0
            ask = n.ask
            if ask is not _unset:
                f |= 8  # EVF_HAS_ASK
                ask_rem = n.ask_rem if n.ask_rem is not _unset else -1
            else:
                ask = ask_rem = 0
            if n.bid_tonce is not _unset:
                f |= 1  # EVF_OWN
            if n.ask_tonce is not _unset:
                f |= 2  # EVF_OWN_ASK
            r = self._k_match(self._a, bid, bid_rem, ask, ask_rem, f)
        else:
            return 0
        if r & 1:  # TOP_PRICE
            mv = self._mv
            self.best_bid = mv[18] or None  # H_BB
            self.best_ask = mv[19] or None  # H_BA
        return r  # type: ignore[no-any-return]

    def _not_now(self, n: Notice) -> int:
        """A book notice of another market (ignored), or one before the snapshot (buffered)."""
        if (n.base, n.counter) != (self._base, self._counter):  # type: ignore[attr-defined]
            return 0
        assert self._pending is not None
        self._pending.append(n)
        return 0

    def apply_all(self, notices: Iterable[Notice]) -> int:
        """Apply notices in order; returns the union of their change flags."""
        f = 0
        for n in notices:
            f |= self.apply(n)
        return f

    # -- queries ----------------------------------------------------------------------

    @property
    def best_bid_qty(self) -> int:
        """Total quantity at the best bid (0 when there is none)."""
        return int(self._mv[K.H_BBQ])

    @property
    def best_ask_qty(self) -> int:
        """Total quantity at the best ask (0 when there is none)."""
        return int(self._mv[K.H_BAQ])

    @property
    def spread(self) -> int | None:
        """best ask - best bid in price units (None unless both sides have orders)."""
        if self.best_bid is None or self.best_ask is None:
            return None
        return self.best_ask - self.best_bid

    @property
    def mid2(self) -> int | None:
        """best bid + best ask: the mid price in half price units, exact (no float)."""
        if self.best_bid is None or self.best_ask is None:
            return None
        return self.best_ask + self.best_bid

    @property
    def mid(self) -> Fraction | None:
        """The exact mid price as a Fraction of price units."""
        m = self.mid2
        return None if m is None else Fraction(m, 2)

    def levels(self, side: int, n: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best ``n`` levels of ``side``, best first: (prices, quantities, order counts)
        as int64 arrays, shorter when the side has fewer levels.

        ``side`` is ``BID`` / ``ASK`` (0 / 1) or the strategy API's ``Side.BUY`` (the bids)
        / ``Side.SELL`` (the asks).  Side is an IntEnum whose BUY equals 1, which is ASK:
        it is told apart by its type, so ``levels(Side.BUY)`` is the bids."""
        if type(side) is Side:
            side = BID if side is Side.BUY else ASK
        elif side not in (BID, ASK) or isinstance(side, bool):
            raise ValueError(f"side must be BID (0), ASK (1), Side.BUY or Side.SELL, was {side!r}")
        n = max(0, int(n))
        p = np.empty(n, dtype=np.int64)
        q = np.empty(n, dtype=np.int64)
        c = np.empty(n, dtype=np.int64)
        m = K.levels(self._a, side, n, p, q, c)
        return p[:m], q[:m], c[:m]

    def bids(self, n: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.levels(BID, n)

    def asks(self, n: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.levels(ASK, n)

    def cumulative_depth(self, side: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(prices, cumulative quantity up to and including each level) of the best ``n``."""
        p, q, _ = self.levels(side, n)
        return p, np.cumsum(q)

    def estimate(self, *, quantity: int | None = None, total: int | None = None, rounding: str = "half_up") -> Estimate:
        """Estimate a market order like the exchange's EstimateMarketOrder (fees ignored).

        ``quantity`` (base units) or ``total`` (counter units), positive to buy (walks the
        asks), negative to sell (walks the bids).  Walks levels best first; a level whose
        whole quantity does not fit a ``total`` contributes the largest quantity whose exact
        total fits, and the walk stops there (as the exchange does).  See :class:`Estimate`
        for how the total is rounded.
        """
        if (quantity is None) == (total is None):
            raise LocalProtocolError("You must specify either quantity or total for a market order.")
        want = quantity if quantity is not None else total
        assert want is not None
        if want == 0:
            raise LocalProtocolError("Quantity must not be zero." if quantity is not None else "Total must not be zero.")
        if rounding not in ("half_up", "floor", "ceil"):
            raise ValueError(f"rounding must be 'half_up', 'floor' or 'ceil', was {rounding!r}")
        side = ASK if want > 0 else BID
        return _estimate(self, side, abs(want), quantity is not None, rounding)

    def queue_ahead(self, order_id: int) -> int | None:
        """Quantity resting ahead of ``order_id`` at its price (FIFO: earlier time, then
        lower id), or None if the order is not in the view."""
        r = K.queue_ahead(self._a, order_id)
        return None if r < 0 else int(r)

    def order(self, order_id: int) -> OrderView | None:
        """The order ``order_id`` as the view holds it, or None."""
        out = self._out3
        if not K.find_order(self._a, order_id, out):
            return None
        k, rem, tmo = out.tolist()
        return OrderView(order_id, BID if k < 0 else ASK, rem if k < 0 else -rem, abs(k), tmo >> 1, bool(tmo & 1))

    def __contains__(self, order_id: object) -> bool:
        return isinstance(order_id, int) and bool(K.find_order(self._a, order_id, self._out3))

    def __len__(self) -> int:
        """Orders in the view (including those filled to 0 whose OrderClosed is pending)."""
        return int(self._mv[K.H_N])

    def orders(self) -> dict[str, np.ndarray]:
        """Every order of the view as columns sorted by id: id, quantity (signed), price, time, own."""
        n = len(self)
        cols = {k: np.empty(n, dtype=np.int64) for k in ("id", "quantity", "price", "time", "own")}
        K.export_orders(self._a, cols["id"], cols["quantity"], cols["price"], cols["time"], cols["own"])
        order = np.argsort(cols["id"], kind="stable")
        out = {k: v[order] for k, v in cols.items()}
        out["own"] = out["own"].astype(bool)
        return out

    def checksum(self) -> int:
        """Order-independent 64-bit hash of every order (same as NaiveBook.checksum)."""
        return int(K.checksum(self._a)) & (2**64 - 1)

    def check(self) -> None:
        """Recompute every aggregate from the orders; raise AssertionError on any drift."""
        code = K.check_invariants(self._a)
        if code:
            raise AssertionError(f"book invariant {code} violated (see book_kernels.check_invariants)")
        if self.best_bid is not None and self.best_ask is not None and self.best_bid >= self.best_ask:
            raise AssertionError(f"crossed book: bid {self.best_bid} >= ask {self.best_ask}")

    @property
    def nbytes(self) -> int:
        """Bytes of the arena (every array of the book)."""
        return int(self._a.nbytes)

    def stats(self) -> BookStats:
        a = self._mv
        return BookStats(
            orders=a[K.H_N], live_bids=a[K.H_LIVE], live_asks=a[K.H_LIVE + 1],
            far_bids=a[K.H_FAR], far_asks=a[K.H_FAR + 1], capacity=a[K.H_CAP], window=a[K.H_W],
            nbytes=self.nbytes, events=a[K.H_EVENTS], ignored=a[K.H_IGNORED],
            mismatched=a[K.H_MISMATCH], duplicates=a[K.H_DUP], invalid=a[K.H_BAD],
            recentres=a[K.H_RECENTRE], buffered=len(self._pending or ()),
        )

    def __repr__(self) -> str:
        return (
            f"Book({self.market.name}, orders={len(self)}, bid={self.best_bid}x{self.best_bid_qty}, "
            f"ask={self.best_ask}x{self.best_ask_qty}, ready={self.ready})"
        )

    # -- internals ----------------------------------------------------------------------

    def _grow(self) -> None:
        cap = int(self._mv[K.H_CAP])
        self._a = K.grow(self._a, cap + 1)  # the table doubles
        self._mv = self._a.data

    def _refresh(self) -> None:
        mv = self._mv
        self.best_bid = mv[K.H_BB] or None
        self.best_ask = mv[K.H_BA] or None


def _auto_window(quantities: np.ndarray, prices: np.ndarray) -> int:
    """A window wide enough for 80 % of each side's orders from its touch (1024..32768).

    The window starts W/4 better than the touch, so 3W/4 of it lies behind the touch.
    """
    need = 0
    bids, asks = prices[quantities > 0], prices[quantities < 0]
    for d in (bids.max() - bids if len(bids) else bids, asks - asks.min() if len(asks) else asks):
        if len(d):
            need = max(need, int(np.percentile(d, 80, method="lower")) * 4 // 3 + 1)
    w = MIN_WINDOW
    while w < need and w < MAX_WINDOW:
        w *= 2
    return w


def _iter_levels(book: Book, side: int) -> Iterable[tuple[int, int]]:
    """(price, quantity) of every level of ``side``, best first (fetched in growing chunks)."""
    n, done = 64, 0
    while True:
        prices, qtys, _ = book.levels(side, n)
        for i in range(done, len(prices)):
            yield int(prices[i]), int(qtys[i])
        if len(prices) < n:
            return
        done, n = len(prices), n * 4


def _estimate(book: Book, side: int, want: int, by_quantity: bool, rounding: str) -> Estimate:
    mul, den = book.scales.total_divisor(book.market)
    got_q = 0
    got_num = 0  # the exact total, times den
    left = want if by_quantity else want * den  # quantity left, or total left times den
    used = 0
    complete = False
    for p, q in _iter_levels(book, side):
        unit = p * mul  # den * (counter units per base unit at this price)
        take = min(q, left) if by_quantity else min(q, left // unit)
        if take == 0:
            complete = True  # the total left cannot buy one more base unit here
            break
        got_q += take
        got_num += take * unit
        left -= take if by_quantity else take * unit
        used += 1
        if left == 0 or take < q:
            complete = True
            break
    if rounding == "half_up":
        total = (2 * got_num + den) // (2 * den)
    elif rounding == "floor":
        total = got_num // den
    else:
        total = -((-got_num) // den)
    return Estimate(got_q, total, Fraction(got_num, den), used, complete)


# ---------------------------------------------------------------------------------------
# Batch path


class BatchResult(NamedTuple):
    """``n_applied`` events were applied; ``best_bid[i]``/``best_ask[i]`` (0 = none) are
    the touch after event ``start + i``.  Why it stopped is in ``book.last_stop``."""

    n_applied: int
    best_bid: np.ndarray
    best_ask: np.ndarray


def apply_batch(
    book: Book,
    events: np.ndarray,
    start: int = 0,
    stop_mask: int = 0,
    *,
    until: int | None = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> BatchResult:
    """Apply ``events[start:]`` (EVENT_DTYPE) in one compiled call, recording the touch.

    Stops after the first event whose change flags meet ``stop_mask`` (e.g. ``TOP_PRICE |
    OWN``), or before the first event with ``recv_time >= until`` (``book.last_stop`` is then
    ``TIMER``); resume with ``start + n_applied``.  ``book.last_stop`` is 0 at the end of
    the block.  ``out`` lets a replay reuse two int64 buffers of at least the block length.
    """
    if book._pending is not None:
        raise LocalProtocolError("apply_batch before the snapshot: call load_snapshot first")
    if events.dtype != EVENT_DTYPE or events.ndim != 1:
        raise ValueError(f"events must be a 1-d EVENT_DTYPE array, got {events.dtype}")
    if not 0 <= start <= len(events):
        raise ValueError(f"start {start} outside 0..{len(events)}")
    m = len(events) - start
    if out is None:
        bb = np.empty(m, dtype=np.int64)
        ba = np.empty(m, dtype=np.int64)
    else:
        bb, ba = out
        if len(bb) < m or len(ba) < m or bb.dtype != np.int64 or ba.dtype != np.int64:
            raise ValueError(f"out buffers must be int64 arrays of at least {m} elements")
    lim = _INT64_MAX if until is None else int(until)
    done = 0
    while True:
        n, status = K.k_batch(book._a, events, start + done, stop_mask, lim, bb[done:], ba[done:])
        done += n
        if status == K.NEED_GROW:
            book._grow()
            continue
        break
    book.last_stop = int(status)
    book._refresh()
    return BatchResult(done, bb[:done], ba[:done])
