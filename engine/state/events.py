"""Book events as one structured numpy dtype, the JSONL -> events converter, and a generator.

A recording (``cftrade bench book --events FILE``, backtests) is JSON Lines of Coinfloor
messages exactly as received: the first line is the ``WatchOrders`` reply (the snapshot),
every later line a notice.  :func:`load_jsonl` decodes it with the project codec into the
snapshot and an array of :data:`EVENT_DTYPE`, one row per line after the first (non-book
notices become ``EV_OTHER`` rows, so row ``i`` is always line ``i + 2`` of the file and the
original notice can be found again, e.g. for an own-order stop).

``EVENT_DTYPE`` (80 bytes, aligned; every amount a scaled integer as on the wire):

==============  ===========================================================================
exch_time       micro-timestamp from the exchange: order time (OrderOpened), trade time
                (OrdersMatched); OrderClosed has none and carries the previous one forward
recv_time       local receive time in microseconds (a timer stops the batch path on it);
                the converter uses the given receive times, else ``exch_time``
id              order id; for OrdersMatched the bid id (when ``EVF_HAS_BID``)
price           price (OrderOpened, OrderClosed: the order's; OrdersMatched: the trade's)
quantity        signed as on the wire (bid > 0, ask < 0) for OrderOpened / OrderClosed;
                the traded quantity (> 0) for OrdersMatched
remaining       OrdersMatched: ``bid_rem``
ask_id          OrdersMatched: the ask id (when ``EVF_HAS_ASK``)
ask_remaining   OrdersMatched: ``ask_rem`` (positive, as on the wire)
total           OrdersMatched: the counter total of the trade
kind            EV_OTHER, EV_OPEN, EV_CLOSE, EV_MATCH
flags           EVF_OWN (own order / own bid: a ``tonce``/``bid_tonce`` key was present),
                EVF_OWN_ASK, EVF_HAS_BID, EVF_HAS_ASK
==============  ===========================================================================

The generator writes a seeded, self-consistent stream in XBT:GBP v2 scales: a book of about
2,000 resting orders around 30,000.00 GBP, then a mix of about 43 % OrderOpened, 39 %
cancels (OrderClosed with the remaining quantity), 14 % OrdersMatched against the touch in
FIFO order and 4 % OrderClosed with quantity 0 after a full fill; ids increase with gaps;
0.5 % of orders are "own" (carry a tonce).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import RemoteProtocolError
from engine.protocol.codec import CODEC
from engine.protocol.messages import (
    UNSET,
    BookOrder,
    ErrorReply,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    WatchOrdersReply,
)
from engine.scale import XBT_GBP, Market, market_by_codes
from engine.state import book_kernels as K

__all__ = [
    "EVENT_DTYPE",
    "EV_OTHER",
    "EV_OPEN",
    "EV_CLOSE",
    "EV_MATCH",
    "EVF_OWN",
    "EVF_OWN_ASK",
    "EVF_HAS_BID",
    "EVF_HAS_ASK",
    "Recording",
    "event_row",
    "events_from_notices",
    "events_from_lines",
    "load_jsonl",
    "validate_events",
    "generate_lines",
    "write_jsonl",
]

EVENT_DTYPE = np.dtype(
    [
        ("exch_time", "<i8"),
        ("recv_time", "<i8"),
        ("id", "<i8"),
        ("price", "<i8"),
        ("quantity", "<i8"),
        ("remaining", "<i8"),
        ("ask_id", "<i8"),
        ("ask_remaining", "<i8"),
        ("total", "<i8"),
        ("kind", "u1"),
        ("flags", "u1"),
    ],
    align=True,
)

EV_OTHER, EV_OPEN, EV_CLOSE, EV_MATCH = K.EV_OTHER, K.EV_OPEN, K.EV_CLOSE, K.EV_MATCH
EVF_OWN, EVF_OWN_ASK, EVF_HAS_BID, EVF_HAS_ASK = K.EVF_OWN, K.EVF_OWN_ASK, K.EVF_HAS_BID, K.EVF_HAS_ASK


def event_row(n: Notice, last_time: int) -> tuple[int, ...]:
    """One notice as (exch_time, id, price, quantity, remaining, ask_id, ask_remaining,
    total, kind, flags): EVENT_DTYPE without recv_time.  ``last_time`` is carried into
    notices without a time of their own (OrderClosed, non-book notices)."""
    t = type(n)
    if t is OrderOpened:
        assert isinstance(n, OrderOpened)
        f = EVF_OWN if n.tonce is not UNSET else 0
        return (n.time, n.id, n.price, n.quantity, 0, 0, 0, 0, EV_OPEN, f)
    if t is OrderClosed:
        assert isinstance(n, OrderClosed)
        f = EVF_OWN if n.tonce is not UNSET else 0
        return (last_time, n.id, n.price, n.quantity, 0, 0, 0, 0, EV_CLOSE, f)
    if t is OrdersMatched:
        assert isinstance(n, OrdersMatched)
        f = 0
        bid = ask = bid_rem = ask_rem = 0
        if n.bid is not UNSET:
            f |= EVF_HAS_BID
            bid = n.bid
            bid_rem = -1 if n.bid_rem is UNSET else n.bid_rem  # -1: not applied, counted
        if n.ask is not UNSET:
            f |= EVF_HAS_ASK
            ask = n.ask
            ask_rem = -1 if n.ask_rem is UNSET else n.ask_rem
        if n.bid_tonce is not UNSET:
            f |= EVF_OWN
        if n.ask_tonce is not UNSET:
            f |= EVF_OWN_ASK
        return (n.time, bid, n.price, n.quantity, bid_rem, ask, ask_rem, n.total, EV_MATCH, f)
    return (last_time, 0, 0, 0, 0, 0, 0, 0, EV_OTHER, 0)


_row = event_row  # the name backtests/recording.py imports


def events_from_notices(
    notices: Iterable[Notice], recv_times: Sequence[int] | None = None
) -> np.ndarray:
    """Convert decoded notices to an :data:`EVENT_DTYPE` array, one row per notice."""
    rows = []
    last = 0
    for i, n in enumerate(notices):
        r = _row(n, last)
        last = r[0]
        recv = last if recv_times is None else recv_times[i]
        rows.append((r[0], recv) + r[1:])
    return np.array(rows, dtype=EVENT_DTYPE) if rows else np.zeros(0, dtype=EVENT_DTYPE)


@dataclass(frozen=True, slots=True)
class Recording:
    """A decoded JSONL recording: the snapshot, the market and the events after it."""

    snapshot: WatchOrdersReply
    market: Market
    events: np.ndarray
    lines: int


def decode_snapshot(text: bytes | str, where: str = "line 1") -> WatchOrdersReply:
    """Decode a WatchOrders reply line; a refusal or a reply without orders is an error."""
    reply = CODEC.decode_reply(text, WatchOrdersReply)
    if isinstance(reply, ErrorReply):
        raise RemoteProtocolError(
            f"{where}: the WatchOrders reply is an error ({reply.error_code}: {reply.error_msg})"
        )
    if reply.orders is UNSET:
        raise RemoteProtocolError(f"{where}: the WatchOrders reply has no 'orders' (watch was false?)")
    return reply


def decode_lines(lines: Sequence[bytes | str], source: str = "<lines>") -> tuple[WatchOrdersReply, list[Notice]]:
    """Decode recording lines: the WatchOrders reply first, then notices (blank lines skipped)."""
    body = [(i, s) for i, s in enumerate(lines, 1) if s.strip()]
    if not body:
        raise RemoteProtocolError(f"{source}: empty recording (expected a WatchOrders reply first)")
    i0, first = body[0]
    snapshot = decode_snapshot(first, f"{source}:{i0}")
    notices: list[Notice] = []
    dec = CODEC.decode_server_frame
    for i, s in body[1:]:
        try:
            n = dec(s)
        except RemoteProtocolError as e:
            raise RemoteProtocolError(f"{source}:{i}: {e}", field=e.field) from None
        if not isinstance(n, Notice):
            raise RemoteProtocolError(f"{source}:{i}: expected a notice, got a reply (tag {n.tag})")
        notices.append(n)
    return snapshot, notices


def market_of(notices: Iterable[Notice], default: Market = XBT_GBP) -> Market:
    """The market named by the first book notice (the snapshot reply does not name it)."""
    for n in notices:
        if isinstance(n, OrderOpened | OrderClosed | OrdersMatched):
            return market_by_codes(n.base, n.counter)
    return default


def events_from_lines(lines: Sequence[bytes | str], source: str = "<lines>") -> Recording:
    """Decode recording lines (the WatchOrders reply, then notices) straight into events.

    Decodes one line at a time into a preallocated array, so a large recording never holds
    all its decoded notices at once.  Blank lines are skipped; errors name ``source:line``.
    """
    body = [i for i, s in enumerate(lines) if s.strip()]
    if not body:
        raise RemoteProtocolError(f"{source}: empty recording (expected a WatchOrders reply first)")
    snapshot = decode_snapshot(lines[body[0]], f"{source}:{body[0] + 1}")
    events = np.zeros(len(body) - 1, dtype=EVENT_DTYPE)
    dec = CODEC.decode_server_frame
    market: Market | None = None
    last = 0
    for j, i in enumerate(body[1:]):
        try:
            n = dec(lines[i])
        except RemoteProtocolError as e:
            raise RemoteProtocolError(f"{source}:{i + 1}: {e}", field=e.field) from None
        if not isinstance(n, Notice):
            raise RemoteProtocolError(f"{source}:{i + 1}: expected a notice, got a reply (tag {n.tag})")
        if market is None and isinstance(n, OrderOpened | OrderClosed | OrdersMatched):
            market = market_by_codes(n.base, n.counter)
        r = _row(n, last)
        last = r[0]
        events[j] = (r[0], last) + r[1:]
    return Recording(snapshot, market or XBT_GBP, events, len(lines))


def load_jsonl(path: str | Path) -> Recording:
    """Read and validate a JSONL recording into a :class:`Recording`."""
    p = Path(path)
    rec = events_from_lines(p.read_bytes().splitlines(), str(p))
    validate_events(rec.events, str(p))
    return rec


def validate_events(events: np.ndarray, source: str = "events") -> None:
    """Refuse an event array the kernels must not see (wrong dtype, bad kinds or prices).

    Raises RemoteProtocolError naming the first bad row (the data came from outside).
    """
    if not isinstance(events, np.ndarray) or events.dtype != EVENT_DTYPE or events.ndim != 1:
        got = getattr(events, "dtype", type(events).__name__)
        raise RemoteProtocolError(f"{source}: expected a 1-d array of EVENT_DTYPE, got {got}")
    if not events.flags.c_contiguous:
        raise RemoteProtocolError(f"{source}: the event array must be contiguous")
    kind = events["kind"]
    bad = kind > EV_MATCH
    book = (kind == EV_OPEN) | (kind == EV_CLOSE)
    bad |= book & (events["price"] <= 0)
    bad |= (kind == EV_OPEN) & (events["quantity"] == 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise RemoteProtocolError(
            f"{source}: event {i} is invalid (kind {int(kind[i])}, price {int(events['price'][i])}, "
            f"quantity {int(events['quantity'][i])})"
        )


# ---------------------------------------------------------------------------------------
# Generator


class _Sim:
    """A small price-time matching book that narrates itself as Coinfloor notices."""

    def __init__(self, rnd: random.Random, market: Market) -> None:
        self.rnd = rnd
        self.base, self.counter = market.codes
        self.orders: dict[int, list[int]] = {}  # id -> [side, price, rem, time, tonce or 0]
        self.queues: tuple[dict[int, list[int]], dict[int, list[int]]] = ({}, {})
        self.heaps: tuple[list[int], list[int]] = ([], [])  # keys (-price for bids), lazy
        self.live: list[int] = []
        self.pos: dict[int, int] = {}
        self.next_id = 40_000_000
        self.tonce = 0
        self.t = 1_700_000_000_000_000

    def best(self, s: int) -> int | None:
        h, q = self.heaps[s], self.queues[s]
        while h:
            p = -h[0] if s == 0 else h[0]
            if q.get(p):
                return p
            heapq.heappop(h)
            q.pop(p, None)
        return None

    def _new_price(self, s: int) -> int:
        rnd = self.rnd
        bb, ba = self.best(0), self.best(1)
        ref = ba if s == 0 else bb
        if ref is None:
            ref = (bb if bb is not None else 3_000_005) if s == 0 else (ba if ba is not None else 2_999_995)
            ref += 1 if s == 0 else -1
        r = rnd.random()
        if r < 0.35:
            d = int(rnd.expovariate(1 / 4))
        elif r < 0.80:
            d = int(rnd.expovariate(1 / 150))
        elif r < 0.97:
            d = int(rnd.expovariate(1 / 1500))
        else:
            d = rnd.randrange(ref // 3)
        p = ref - 1 - d if s == 0 else ref + 1 + d
        return max(1, p)

    def open(self) -> Notice:
        rnd = self.rnd
        s = rnd.randrange(2)
        price = self._new_price(s)
        qty = min(5 * 10**9, max(10_000, int(math.exp(rnd.gauss(math.log(5 * 10**6), 1.4)))))
        self.next_id += rnd.randrange(1, 6)
        self.t += rnd.randrange(1, 900)
        oid = self.next_id
        tonce = 0
        if rnd.random() < 0.005:
            self.tonce += 1
            tonce = self.tonce
        self._add(oid, s, price, qty, self.t, tonce)
        return OrderOpened(
            id=oid, tonce=tonce if tonce else UNSET, base=self.base, counter=self.counter,
            quantity=qty if s == 0 else -qty, price=price, time=self.t,
        )

    def _add(self, oid: int, s: int, price: int, qty: int, t: int, tonce: int) -> None:
        self.orders[oid] = [s, price, qty, t, tonce]
        q = self.queues[s].get(price)
        if q is None:
            self.queues[s][price] = [oid]
            heapq.heappush(self.heaps[s], -price if s == 0 else price)
        else:
            q.append(oid)
        self.pos[oid] = len(self.live)
        self.live.append(oid)

    def _drop(self, oid: int) -> list[int]:
        o = self.orders.pop(oid)
        self.queues[o[0]][o[1]].remove(oid)
        i = self.pos.pop(oid)
        last = self.live.pop()
        if last != oid:
            self.live[i] = last
            self.pos[last] = i
        return o

    def _closed(self, oid: int, o: list[int], qty: int) -> OrderClosed:
        return OrderClosed(
            id=oid, tonce=o[4] if o[4] else UNSET, base=self.base, counter=self.counter,
            quantity=qty if o[0] == 0 else -qty, price=o[1],
        )

    def cancel(self) -> Notice:
        rnd = self.rnd
        n = len(self.live)
        # Half the cancels hit recent orders (quote replacement near the touch).
        i = n - 1 - min(n - 1, int(rnd.expovariate(1 / 50))) if rnd.random() < 0.5 else rnd.randrange(n)
        oid = self.live[i]
        o = self._drop(oid)
        return self._closed(oid, o, o[2])

    def take(self, out: list[Notice], full_fill_p: float = 0.4) -> None:
        """A market-ish taker against side ``s``: matches in FIFO order at the touch."""
        rnd = self.rnd
        s = rnd.randrange(2)  # the resting side being hit
        p = self.best(s)
        if p is None:
            return
        self.t += rnd.randrange(1, 900)
        first = self.orders[self.queues[s][p][0]]
        want = first[2] + rnd.randrange(1, max(2, first[2])) if rnd.random() < full_fill_p else rnd.randrange(1, max(2, first[2]))
        taker = None
        if rnd.random() < 0.5:
            self.next_id += rnd.randrange(1, 6)
            taker = self.next_id
        for _ in range(2):
            p = self.best(s)
            if p is None or want <= 0:
                break
            oid = self.queues[s][p][0]
            o = self.orders[oid]
            q = min(want, o[2])
            want -= q
            o[2] -= q
            total = q * p // 10**8  # the exchange rounds stochastically; any integer will do here
            tk: dict[str, object] = {}
            if s == 0:
                tk = {"bid": oid, "bid_rem": o[2]}
                if o[4]:
                    tk["bid_tonce"] = o[4]
                if taker is not None:
                    tk.update(ask=taker, ask_rem=max(0, want))
            else:
                tk = {"ask": oid, "ask_rem": o[2]}
                if o[4]:
                    tk["ask_tonce"] = o[4]
                if taker is not None:
                    tk.update(bid=taker, bid_rem=max(0, want))
            out.append(OrdersMatched(base=self.base, counter=self.counter, quantity=q, price=p, total=total, time=self.t, **tk))  # type: ignore[arg-type]
            if o[2] == 0:
                self._drop(oid)
                out.append(self._closed(oid, o, 0))


def generate_lines(
    n: int = 1_000_000, seed: int = 1, *, resting: int = 2000, market: Market = XBT_GBP
) -> list[bytes]:
    """A seeded recording: the WatchOrders reply line, then ``n`` notice lines (JSON bytes)."""
    rnd = random.Random(seed)
    sim = _Sim(rnd, market)
    for _ in range(resting):
        sim.open()
    # The snapshot holds at most the top 1000 bids and the top 1000 asks (WEBSOCKET-README).
    snap: list[BookOrder] = []
    for s in (0, 1):
        side = sorted(
            (o for o in sim.orders.items() if o[1][0] == s),
            key=lambda it: ((-it[1][1] if s == 0 else it[1][1]), it[1][3], it[0]),
        )[:1000]
        snap += [BookOrder(id=i, quantity=o[2] if s == 0 else -o[2], price=o[1], time=o[3]) for i, o in side]
    snap.sort(key=lambda b: b.id)
    lines = [CODEC.encode(WatchOrdersReply(tag=1, orders=snap))]
    out: list[Notice] = []
    enc = CODEC.encode
    while len(out) < n:
        r = rnd.random()
        bias = (resting - len(sim.live)) / resting  # pull the book back to its size
        if r < 0.1:
            sim.take(out)
        elif r < 0.1 + 0.47 + 0.5 * bias or len(sim.live) < 10:
            out.append(sim.open())
        else:
            out.append(sim.cancel())
    lines += [enc(m) for m in out[:n]]
    return lines


def write_jsonl(path: str | Path, lines: Iterable[bytes]) -> None:
    """Write recording lines, one JSON text per line."""
    with Path(path).open("wb") as fh:
        for s in lines:
            fh.write(s)
            fh.write(b"\n")
