"""The exchange's lean paths for a resting limit order and its notices (bench latency,
session 5) decide and send exactly what the definitions they replaced did.

Each is checked against that definition: the inlined ``BookSide.add`` of a resting order,
``order_opened``/``order_closed`` without ``Order.signed_quantity``, the ticker flush's own
test of ``Ticker.expire``'s early-out, ``_limit_order`` inlined into ``_place_order`` (a
seeded stream against a copy of the old code), the server's encoding and frame cache in
``deliver`` (``text_frame(CODEC.encode(n), mask=False)``) and its uncork, inlined into
``_cork_end``.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from msgspec import UNSET

from engine.errors import LocalProtocolError
from engine.exchange import notices as _notices
from engine.exchange.book import Book, BookSide, Order
from engine.exchange.core import Exchange, Msg, Session, _Reject
from engine.exchange.server import ExchangeServer, _Connection
from engine.exchange.settings import PolicySettings
from engine.exchange.windows import BUCKET_US, DAY_US, Ticker
from engine.protocol.codec import CODEC
from engine.protocol.messages import (
    BalanceChanged,
    CancelOrder,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
    Reply,
    TickerChanged,
    WatchOrders,
    WatchTicker,
)
from engine.scale import INT64_MAX
from engine.ws import text_frame
from tests.test_exchange_core_helpers import GBP_C, XBT_C, Clock, Harness, settings

RICH = {"XBT": "1000", "GBP": "100000000.00", "EUR": "0"}


def _side_shape(side: BookSide) -> tuple[list[int], list[tuple[int, list[int]]], int]:
    return list(side.keys), [(p, list(level)) for p, level in sorted(side.levels.items())], side.count


def test_rest_path_matches_book_add() -> None:
    """A seeded stream of resting, crossing and cancelled orders: every side of the book is
    what ``BookSide.add`` of its resting orders, in arrival order, builds."""
    h = Harness(settings({1: RICH, 2: RICH, 3: RICH}))
    sessions = [h.session(u) for u in (1, 2, 3)]
    rng = random.Random(5)
    placed: list[tuple[Any, int]] = []
    for _ in range(600):
        s = rng.choice(sessions)
        if placed and rng.random() < 0.3:
            owner, oid = placed.pop(rng.randrange(len(placed)))
            h.do(owner, CancelOrder(id=oid))  # may have filled meanwhile: error 1, no change
            continue
        q = rng.randrange(1, 50) * 1000
        price = 3_000_000 + rng.randrange(-40, 40) * 100
        reply: Any = h.place(s, q if rng.random() < 0.5 else -q, price)
        if getattr(reply, "id", None):
            placed.append((s, reply.id))
    book = h.ex._books[(XBT_C, GBP_C)]
    for side in (book.bids, book.asks):
        ref = BookSide(side.is_bid)
        for o in sorted(side, key=lambda o: o.id):
            ref.add(o)
        assert _side_shape(side) == _side_shape(ref)
    assert book.bids.count and book.asks.count  # both sides were exercised


def _order_opened_ref(o: Order, owners: dict[int, Any], watchers: dict[int, Any]) -> None:
    """notices.order_opened as it was (with Order.signed_quantity)."""
    q = o.signed_quantity
    if owners:
        n = OrderOpened(id=o.id, tonce=o.tonce, base=o.base, counter=o.counter, quantity=q, price=o.price, time=o.time)
        for s in owners.values():
            s.deliver(n)
    pub = None
    for w in watchers.values():
        if w.user_id != o.user_id:
            if pub is None:
                pub = OrderOpened(id=o.id, base=o.base, counter=o.counter, quantity=q, price=o.price, time=o.time)
            w.deliver(pub)


def _order_closed_ref(o: Order, owners: dict[int, Any], watchers: dict[int, Any]) -> None:
    q = o.signed_quantity
    if owners:
        n = OrderClosed(id=o.id, tonce=o.tonce, base=o.base, counter=o.counter, quantity=q, price=o.price)
        for s in owners.values():
            s.deliver(n)
    pub = None
    for w in watchers.values():
        if w.user_id != o.user_id:
            if pub is None:
                pub = OrderClosed(id=o.id, base=o.base, counter=o.counter, quantity=q, price=o.price)
            w.deliver(pub)


class _Sink:
    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.got: list[Notice] = []

    def deliver(self, n: Notice) -> None:
        self.got.append(n)


@pytest.mark.parametrize("is_bid", [True, False])
@pytest.mark.parametrize("tonce", [None, 7])
def test_order_notices_sign_the_quantity_like_signed_quantity(is_bid: bool, tonce: int | None) -> None:
    o = Order(9, 1, tonce, XBT_C, GBP_C, is_bid, 12_345, 3_000_000, 1_700_000_000_000_000, True, 1, 5)
    for new, ref in ((_notices.order_opened, _order_opened_ref), (_notices.order_closed, _order_closed_ref)):
        got: list[list[Notice]] = []
        for fn in (new, ref):
            owner, other, same = _Sink(1), _Sink(2), _Sink(1)
            fn(o, {1: owner}, {2: other, 3: same})
            got.append(owner.got + other.got + same.got)
        assert got[0] == got[1]
        assert [CODEC.encode(n) for n in got[0]] == [CODEC.encode(n) for n in got[1]]


def test_ticker_flush_expire_guard_is_expires_early_out() -> None:
    """``_flush_tickers`` calls ``Ticker.expire`` only when its first bucket has left the
    window; for any bucket layout and time that leaves the ticker as the call would."""
    rng = random.Random(3)
    for _ in range(2000):
        t = Ticker()
        start = rng.randrange(0, 3 * DAY_US)
        now = start
        for _ in range(rng.randrange(0, 6)):
            now += rng.choice([0, 1, BUCKET_US, rng.randrange(0, 2 * DAY_US)])
            t.trade(now, rng.randrange(1, 100), rng.randrange(1, 10))
        at = now + rng.choice([0, 1, BUCKET_US, DAY_US - BUCKET_US, DAY_US, DAY_US + 1, rng.randrange(0, 2 * DAY_US)])
        called, guarded = copy.deepcopy(t), copy.deepcopy(t)
        called.expire(at)
        buckets = guarded.buckets
        if buckets and buckets[0][0] <= at - guarded.window_us:
            guarded.expire(at)
        for name in ("last", "low", "high", "volume"):
            assert getattr(called, name) == getattr(guarded, name)
        assert called.buckets == guarded.buckets


def test_ticker_changed_after_the_window_moves() -> None:
    """End to end: a resting order after a day without trades sends the TickerChanged that
    carries the emptied window (the guard lets expire run)."""
    h = Harness(settings({1: RICH, 2: RICH, 3: RICH}))
    a, b, w = h.session(1), h.session(2), h.session(3)
    h.do(w, WatchTicker(base=XBT_C, counter=GBP_C, watch=True))
    h.place(a, 1000, 3_000_000)
    h.place(b, -1000, 3_000_000)  # a trade: low/high/volume set
    h.notices(w)
    h.clock.advance(DAY_US / 1e6 + 60)
    h.place(b, -1000, 3_100_000)  # behind the rest of the first ask: only the window changed
    assert h.notices(w) == [TickerChanged(base=XBT_C, counter=GBP_C, low=None, high=None, volume=0)]


NOTICES: list[Notice] = [
    OrderOpened(id=1, base=XBT_C, counter=GBP_C, quantity=-100_000, price=2_999_901, time=1_795_510_353_792_112),
    OrderOpened(id=1, tonce=None, base=XBT_C, counter=GBP_C, quantity=-100_000, price=2_999_901, time=1),
    OrderOpened(id=2**62, tonce=2**62, base=XBT_C, counter=GBP_C, quantity=-(2**62), price=2**62, time=2**62),
    TickerChanged(base=XBT_C, counter=GBP_C, ask=3_100_000),
    TickerChanged(base=XBT_C, counter=GBP_C, last=None, bid=None, ask=None, low=None, high=None, volume=0),
    BalanceChanged(asset=XBT_C, balance=0),
    OrdersMatched(base=XBT_C, counter=GBP_C, bid=1, bid_rem=0, ask=2, ask_rem=5, quantity=3, price=4, total=5,
                  bid_tonce=None, bid_base_fee=0, bid_counter_fee=1, time=6),
]


class _FakeWS:
    idle = True

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write_nowait(self, data: bytes) -> bool:
        self.writes.append(bytes(data))
        return True


def _connection(server: ExchangeServer, conn_id: int) -> tuple[_Connection, _FakeWS]:
    ws = _FakeWS()
    conn = _Connection(server, ws, conn_id, "test")  # type: ignore[arg-type]
    conn.session = server.exchange.open_internal_session(conn_id, deliver=conn.deliver)
    return conn, ws


def _delivered(notices: list[Notice]) -> list[bytes]:
    """What a connection writes for ``notices`` delivered outside a command (one write each)."""
    h = Harness(settings({1: RICH}))
    conn, ws = _connection(ExchangeServer(h.ex), 1)
    for n in notices:
        conn.deliver(n)
    return ws.writes


def test_deliver_writes_text_frame_of_codec_encode() -> None:
    """The frame ``deliver`` writes is ``text_frame(CODEC.encode(n), mask=False)`` for every
    notice: a miss, the cached hit (the same object again), an equal object."""
    frames = _delivered([m for n in NOTICES + NOTICES[::-1] for m in (n, n, copy.copy(n))])
    want = [text_frame(CODEC.encode(n), mask=False) for n in NOTICES + NOTICES[::-1] for _ in range(3)]
    assert frames == want
    assert {len(CODEC.encode(n)) < 126 for n in NOTICES} == {True, False}  # both header forms


def test_two_connections_share_the_frame_of_one_notice() -> None:
    h = Harness(settings({1: RICH, 2: RICH}))
    server = ExchangeServer(h.ex)
    (a, aws), (b, bws) = _connection(server, 1), _connection(server, 2)
    for n in NOTICES:
        a.deliver(n)
        b.deliver(n)
    assert aws.writes == bws.writes == [text_frame(CODEC.encode(n), mask=False) for n in NOTICES]
    assert server._notice_text.last is NOTICES[-1]


def test_deliver_checks_like_codec_encode(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = BalanceChanged(asset=XBT_C, balance=2**70)  # out of int64: msgspec encodes it, the check refuses
    with pytest.raises(LocalProtocolError):
        _delivered([BalanceChanged(asset=XBT_C, balance=object())])  # type: ignore[arg-type]
    assert _delivered([bad]) == [text_frame(CODEC.encode(bad), mask=False)]
    monkeypatch.setattr(CODEC, "validate_outgoing", True)
    with pytest.raises(LocalProtocolError):
        CODEC.encode(bad)
    with pytest.raises(LocalProtocolError):
        _delivered([bad])


def _ask(price: int) -> PlaceOrder:
    return PlaceOrder(base=XBT_C, counter=GBP_C, quantity=-100_000, price=price)


def _uncork_ref(conn: _Connection) -> None:
    """_Connection._uncork as it was (now inlined into ExchangeServer._cork_end)."""
    frames = conn._cork
    conn._cork = []
    if not conn.closed:
        conn._write(frames[0] if len(frames) == 1 else b"".join(frames), len(frames))


@pytest.mark.parametrize("closing", [False, True])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_cork_end_writes_what_uncork_wrote(count: int, closing: bool) -> None:
    """Per command and connection: one write of the frames the command delivered (the one
    frame itself, or their join), ``frames_sent`` counting frames; nothing for a connection
    closed meanwhile; the cork is empty afterwards."""
    results = []
    for inline in (True, False):
        h = Harness(settings({1: RICH, 2: RICH, 3: RICH}))
        server = ExchangeServer(h.ex)
        a, aws = _connection(server, 1)
        b, bws = _connection(server, 3)
        server._cork_begin()
        server._cork_begin()  # nested, as the core's hooks inside a connection's command
        for k in range(count):
            a.deliver(NOTICES[k])
            b.deliver(NOTICES[-1 - k])
        server._cork_end()
        assert aws.writes == [] and bws.writes == []
        if closing:
            b.closed = True
        if inline:
            server._cork_end()
        else:
            corked, server._corked = server._corked, []
            server._cork_depth -= 1
            for conn in corked:
                _uncork_ref(conn)
        assert server._corked == [] and server._cork_depth == 0 and a._cork == [] and b._cork == []
        results.append((aws.writes, bws.writes, server._c.frames_sent))
    assert results[0] == results[1]
    writes_a, writes_b, sent = results[0]
    assert writes_a == [b"".join(text_frame(CODEC.encode(n), mask=False) for n in NOTICES[:count])]
    assert writes_b == ([] if closing else [b"".join(text_frame(CODEC.encode(n), mask=False)
                                                     for n in NOTICES[::-1][:count])])
    assert sent == count * (1 if closing else 2)


def test_resting_ask_reaches_a_watcher_in_one_write() -> None:
    """End to end through Exchange.handle (the command hooks): an internal user's resting
    ask gives a watching connection its OrderOpened and TickerChanged in one write; outside
    a command (a deposit) a frame goes straight out."""
    h = Harness(settings({1: RICH, 2: RICH, 3: RICH}))
    server = ExchangeServer(h.ex)
    watcher, wws = _connection(server, 1)
    h.ex.handle(watcher.session, WatchOrders(base=XBT_C, counter=GBP_C, watch=True))  # type: ignore[arg-type]
    h.ex.handle(watcher.session, WatchTicker(base=XBT_C, counter=GBP_C, watch=True))  # type: ignore[arg-type]
    seller = h.ex.open_internal_session(2)
    wws.writes.clear()
    sent = server._c.frames_sent
    h.ex.handle(seller, _ask(2_999_901))
    opened = OrderOpened(id=1, base=XBT_C, counter=GBP_C, quantity=-100_000, price=2_999_901, time=h.clock.now)
    ticker = TickerChanged(base=XBT_C, counter=GBP_C, ask=2_999_901)
    assert wws.writes == [b"".join(text_frame(CODEC.encode(n), mask=False) for n in (opened, ticker))]
    assert server._c.frames_sent == sent + 2
    wws.writes.clear()
    h.ex.deposit(1, XBT_C, 5)
    balance = BalanceChanged(asset=XBT_C, balance=h.ex.balances(1)[XBT_C][0])
    assert wws.writes == [text_frame(CODEC.encode(balance), mask=False)]


# -- the whole resting-order path against the one it replaced --------------------------


class _ReferenceExchange(Exchange):
    """The exchange with ``_place_order``, ``_limit_order`` and ``_flush_tickers`` as they
    were before session 5 (BookSide.add, _notify_opened and Ticker.expire called; a
    separate ``_limit_order``), copied from commit 0b4b6f6.  Only the state they share
    with the rest of the exchange follows its new layout, marked ``# layout``: the touched
    list holds books (was market codes), each book keeps the ticker values last sent (was
    ``Exchange._ticker_sent``, by codes)."""

    def _place_order(self, s: Session, cmd: PlaceOrder, tag: Any) -> Reply:
        # The hot path: helpers are inlined here on purpose (see bench_exchange_core).
        uid = s.user_id
        if uid is None:
            raise _Reject(7, Msg.NOT_AUTHENTICATED)
        acct = self._accounts[uid]
        now = self._clock()
        if now < self._last_time:
            now = self._last_time
        self._last_time = self._now = now
        if self._limits:
            self._rate(s, "orders")
        book = self._books.get((cmd.base, cmd.counter))
        if book is None:
            raise _Reject(1, Msg.INVALID_PAIR)
        tonce: int | None = None if cmd.tonce is UNSET else cmd.tonce
        if tonce == 0:
            raise _Reject(8, Msg.TONCE_ZERO)
        price = cmd.price
        if price is not UNSET:
            q = cmd.quantity
            if q is UNSET:
                raise _Reject(8, Msg.MARKET_NEEDS)
            if q == 0:
                raise _Reject(8, Msg.QUANTITY_ZERO)
            if price <= 0:
                raise _Reject(8, Msg.PRICE_ZERO if price == 0 else Msg.PRICE_NEGATIVE)
            is_bid = q > 0
            aq = q if is_bid else -q
            if aq * price > INT64_MAX:
                raise _Reject(8, Msg.OVERFLOW)
            if is_bid:
                need = -((-aq * price * book.mul) // book.den)
                if need > INT64_MAX:
                    raise _Reject(8, Msg.OVERFLOW)
                asset = book.counter
            else:
                need = aq
                asset = book.base
            if tonce is not None and tonce <= acct.tonce_hw:
                raise _Reject(3, Msg.TONCE_SEQUENCE)
            if len(acct.orders) >= self._max_open:
                raise _Reject(5, Msg.TOO_MANY_ORDERS)
            if acct.avail[asset] < need:
                raise _Reject(4, Msg.INSUFFICIENT_FUNDS)
            # -- no error is possible from here on: commit
            if tonce is not None:
                acct.tonce_hw = tonce
            oid = self._next_id
            self._next_id = oid + 1
            order = Order(
                oid, uid, tonce, book.base, book.counter, is_bid, aq, price, now, cmd.persist is not False, s.id, need
            )
            self._limit_order(book, acct, order, s, asset)
            if self._touched:
                self._flush_tickers()
            return PlaceOrderReply(tag=tag, id=oid, time=now)

        # market order
        if cmd.quantity is not UNSET:
            if cmd.quantity == 0:
                raise _Reject(8, Msg.QUANTITY_ZERO)
            buy = cmd.quantity > 0
            want_q: int | None = abs(cmd.quantity)
            want_t: int | None = None
        elif cmd.total is not UNSET:
            if cmd.total == 0:
                raise _Reject(8, Msg.TOTAL_ZERO)
            buy = cmd.total > 0
            want_q, want_t = None, abs(cmd.total)
        else:
            raise _Reject(8, Msg.MARKET_NEEDS)
        if tonce is not None and tonce <= acct.tonce_hw:
            raise _Reject(3, Msg.TONCE_SEQUENCE)
        if acct.avail[book.counter if buy else book.base] <= 0:
            raise _Reject(4, Msg.INSUFFICIENT_FUNDS)
        if tonce is not None:
            acct.tonce_hw = tonce
        traded_q, traded_t = self._match(book, acct, buy, None, None, want_q, want_t, tonce)
        if self._touched:
            self._flush_tickers()
        remaining = want_q - traded_q if want_q is not None else want_t - traded_t  # type: ignore[operator]
        return PlaceOrderReply(tag=tag, remaining=remaining)

    def _limit_order(self, book: Book, acct: Any, order: Order, s: Session, asset: int) -> None:
        """Reserve, match and rest (or close) a validated limit order."""
        acct.avail[asset] -= order.reserved
        acct.reserved[asset] += order.reserved
        if acct.listeners:
            self._notify_balance(acct, asset)
        if self._open_first:
            self._notify_opened(order)
        is_bid = order.is_bid
        # Match only if the order crosses the best opposite price (most orders do not).
        keys = book.asks.keys if is_bid else book.bids.keys
        dust = False
        if keys and (-keys[-1] <= order.price if is_bid else keys[-1] >= order.price):
            self._match(book, acct, is_bid, order, order.price, None, None, order.tonce)
            dust = self._dust_taker
        if order.quantity > 0 and not dust:
            (book.bids if is_bid else book.asks).add(order)
            oid = order.id
            self._orders[oid] = order
            acct.orders[oid] = order
            if order.tonce is not None:
                acct.by_tonce[order.tonce] = order
            if not order.persist:
                s.volatile[oid] = order
            if book.ticker_watchers:
                self._touched.append(book)  # layout
            if not self._open_first:
                self._notify_opened(order)
        else:
            # Filled on arrival (quantity 0), or what is left cannot pay for one unit plus
            # its fee at the best price and would cross the book: close it either way.
            self._release(order, acct, book)

    def _flush_tickers(self) -> None:
        """Send TickerChanged (changed fields only) for every book this command touched."""
        touched = self._touched
        if not touched:
            return
        self._touched = []
        # dict.fromkeys: the touched books once each, in order (usually one book, twice).
        for book in dict.fromkeys(touched) if len(touched) > 1 else touched:  # layout
            codes = book.codes  # layout
            if not book.ticker_watchers:
                continue
            t = book.ticker
            t.expire(self._now)
            bids, asks = book.bids.keys, book.asks.keys
            values: tuple[Any, ...] = (t.last, bids[-1] if bids else None, -asks[-1] if asks else None, t.low, t.high, t.volume)
            prev = book.ticker_sent  # layout
            if prev == values:
                continue
            book.ticker_sent = values  # layout
            last, bid, ask, low, high, volume = values
            if prev is None:
                n = TickerChanged(base=codes[0], counter=codes[1], last=last, bid=bid, ask=ask, low=low,
                                  high=high, volume=volume)
            else:  # changed fields only (UNSET = absent); no per-field dict: this runs per tick
                n = TickerChanged(
                    base=codes[0], counter=codes[1],
                    last=last if last != prev[0] else UNSET, bid=bid if bid != prev[1] else UNSET,
                    ask=ask if ask != prev[2] else UNSET, low=low if low != prev[3] else UNSET,
                    high=high if high != prev[4] else UNSET, volume=volume if volume != prev[5] else UNSET,
                )
            for w in list(book.ticker_watchers.values()):
                w.deliver(n)


def _stream_run(cls: type[Exchange], seed: int, **policy: Any) -> tuple[list[Any], dict[int, list[bytes]], str]:
    """A seeded stream of limit orders (resting, crossing, dust, persist false, tonces,
    errors), cancels and market orders, with the clock jumping past the ticker window now
    and then, through ``cls``; (replies, every session's notices as wire text, state hash)."""
    clock = Clock()
    ex_settings = settings({1: RICH, 2: RICH, 3: RICH, 4: {"XBT": "0.001", "GBP": "0.05", "EUR": "0"}},
                           policy=PolicySettings(**policy), max_open_orders=40)
    ex = cls(ex_settings, clock_us=clock, rng=random.Random(seed))
    boxes: dict[int, list[bytes]] = {}
    sessions = []
    for uid in (1, 2, 3, 4, 1):
        box: list[bytes] = []
        s = ex.open_internal_session(uid, lambda n, box=box: box.append(CODEC.encode(n)))
        boxes[s.id] = box
        sessions.append(s)
    quiet = ex.open_internal_session(2)  # no deliver: no notices built for it
    sessions.append(quiet)
    for s in (sessions[0], sessions[2]):
        ex.handle(s, WatchOrders(base=XBT_C, counter=GBP_C, watch=True))
        ex.handle(s, WatchTicker(base=XBT_C, counter=GBP_C, watch=True))
    rng = random.Random(seed)
    replies: list[Any] = []
    tonces = dict.fromkeys(range(1, 5), 0)
    for _ in range(700):
        r = rng.random()
        if r < 0.03:
            clock.advance(rng.choice([1, 61, 86_400, 90_000]))
        s = rng.choice(sessions)
        uid = s.user_id
        assert uid is not None
        kw: dict[str, Any] = {"base": XBT_C, "counter": GBP_C}
        if rng.random() < 0.4:
            tonces[uid] += rng.choice([1, 1, 1, 0, -1])
            kw["tonce"] = tonces[uid]
        if r < 0.2 and ex.open_orders(uid):
            o = rng.choice(ex.open_orders(uid))
            cmd: Any = CancelOrder(id=o.id)
        elif r < 0.3:
            cmd = PlaceOrder(quantity=rng.choice([-1, 1]) * rng.randrange(1, 3000) * 100, **kw)
        else:
            q = rng.choice([0, 1, 7, 999, 100_000, 2_500_000, 10**15]) * rng.choice([-1, 1])
            price = rng.choice([0, -5, 1, 2_999_000 + rng.randrange(0, 40) * 50])
            cmd = PlaceOrder(quantity=q, price=price, persist=rng.random() < 0.8, **kw)
        replies.append(ex.handle(s, cmd))
    ex.check_invariants()
    return replies, boxes, ex.state_hash()


@pytest.mark.parametrize("policy", [{}, {"open_notice_before_match": True}, {"self_trade": "cancel_resting"}])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_place_order_path_matches_the_one_it_replaced(seed: int, policy: dict[str, Any]) -> None:
    new = _stream_run(Exchange, seed, **policy)
    ref = _stream_run(_ReferenceExchange, seed, **policy)
    assert new[0] == ref[0]
    assert new[1] == ref[1]
    assert new[2] == ref[2]
    kinds = {type(r).__name__ for r in new[0]} | {n.split(b",")[0] for box in new[1].values() for n in box}
    assert {"PlaceOrderReply", "ErrorReply", "CancelOrderReply"} <= kinds
    assert {b'{"notice":"OrderOpened"', b'{"notice":"OrdersMatched"', b'{"notice":"TickerChanged"'} <= kinds
