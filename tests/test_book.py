"""The numpy L3 book against the dict-based reference, step by step (P6, P8, IMPL-GUIDE).

Streams come from the seeded self-consistent simulator in engine.state.events, salted with
the anomalies IMPL-GUIDE talks about (ids the view never saw, duplicate opens, matches down
to zero before the close) and with small price windows so that far orders and recentring
happen all the time.
"""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest

from engine.errors import LocalProtocolError, RemoteProtocolError
from engine.protocol.messages import (
    UNSET,
    BalanceChanged,
    BookOrder,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    WatchOrdersReply,
)
from engine.scale import XBT_EUR, XBT_GBP
from engine.state.book import ASK, BID, IGNORED, OWN, TOP_PRICE, TOP_QTY, Book
from engine.state.events import _Sim, decode_lines, generate_lines
from engine.state.naive_book import NaiveBook

XBT, GBP = XBT_GBP.codes


def opened(oid: int, qty: int, price: int, t: int = 1, tonce: int | None | object = UNSET) -> OrderOpened:
    return OrderOpened(id=oid, tonce=tonce, base=XBT, counter=GBP, quantity=qty, price=price, time=t)  # type: ignore[arg-type]


def closed(oid: int, qty: int, price: int, tonce: int | None | object = UNSET) -> OrderClosed:
    return OrderClosed(id=oid, tonce=tonce, base=XBT, counter=GBP, quantity=qty, price=price)  # type: ignore[arg-type]


def matched(bid: int | None, ask: int | None, bid_rem: int = 0, ask_rem: int = 0, **kw: object) -> OrdersMatched:
    sides: dict[str, object] = {}
    if bid is not None:
        sides.update(bid=bid, bid_rem=bid_rem)
    if ask is not None:
        sides.update(ask=ask, ask_rem=ask_rem)
    return OrdersMatched(base=XBT, counter=GBP, quantity=1, price=100, total=1, time=9, **sides, **kw)  # type: ignore[arg-type]


def salted_stream(seed: int, n: int, resting: int) -> tuple[list[BookOrder], list[Notice]]:
    """A simulator stream with a snapshot, plus anomalies a view must survive."""
    rnd = random.Random(seed)
    sim = _Sim(rnd, XBT_GBP)
    for _ in range(resting):
        sim.open()
    snap = [BookOrder(id=i, quantity=o[2] if o[0] == 0 else -o[2], price=o[1], time=o[3]) for i, o in sim.orders.items()]
    rnd.shuffle(snap)
    # Keep only part of the book in the snapshot, like the top-1000 cut: later notices for
    # the missing ids must be ignored.
    snap = snap[: max(1, len(snap) * 9 // 10)]
    out: list[Notice] = []
    while len(out) < n:
        r = rnd.random()
        bias = 0.3 * (resting - len(sim.live)) / resting  # keep the book near its size
        if r < 0.12:
            sim.take(out, full_fill_p=0.5)
        elif r < 0.56 + bias or len(sim.live) < 5:
            out.append(sim.open())
        elif r < 0.95:
            out.append(sim.cancel())
        elif r < 0.97:
            # Pull a whole best level: the touch moves, the price wanders, windows recentre.
            side = rnd.randrange(2)
            for _ in range(rnd.randrange(1, 8)):
                p = sim.best(side)
                if p is None:
                    break
                for oid in list(sim.queues[side][p]):
                    o = sim._drop(oid)
                    out.append(sim._closed(oid, o, o[2]))
        elif r < 0.98:
            out.append(closed(rnd.randrange(1, 10**6), 5, 100))  # never seen
        elif r < 0.99:
            out.append(matched(rnd.randrange(1, 10**6), rnd.randrange(1, 10**6), 3, 4))  # never seen
        elif sim.live:
            oid = rnd.choice(sim.live)  # a duplicate OrderOpened (the stream contradicts itself)
            o = sim.orders[oid]
            out.append(opened(oid, o[2] if o[0] == 0 else -o[2], o[1], o[3]))
    return snap, out


def levels_of(book: Book, side: int, n: int) -> list[tuple[int, int, int]]:
    p, q, c = book.levels(side, n)
    return list(zip(p.tolist(), q.tolist(), c.tolist(), strict=True))


def assert_same(book: Book, ref: NaiveBook, n_levels: int = 10) -> None:
    book.check()  # level totals = sum of remaining, counts, bitmap, cursors, table
    assert (book.best_bid, book.best_ask) == (ref.best_bid, ref.best_ask)
    for side in (BID, ASK):
        lv = levels_of(book, side, n_levels)
        assert lv == ref.level_list(side, n_levels)
        prices = [p for p, _, _ in lv]
        assert prices == sorted(prices, reverse=side == BID)  # bids descending, asks ascending
        assert all(q > 0 and c > 0 for _, q, c in lv)  # no empty level
    if book.best_bid is not None and book.best_ask is not None:
        assert book.best_bid < book.best_ask
    assert len(book) == len(ref)


# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window", [64, 256, None])
def test_P6_random_stream_matches_reference_after_every_step(seed: int, window: int | None) -> None:
    snap, stream = salted_stream(seed, 2500, resting=150)
    book, ref = Book(window=window), NaiveBook()
    assert book.load_snapshot(snap) == ref.load_snapshot(snap)
    assert_same(book, ref, 1000)
    for i, n in enumerate(stream):
        assert book.apply(n) == ref.apply(n), i
        assert_same(book, ref, 8 if i % 50 else 1000)
        assert book.best_bid_qty == (ref.level_list(BID, 1) or [(0, 0)])[0][1]
    assert book.checksum() == ref.checksum()
    s = book.stats()
    assert (s.ignored, s.mismatched, s.duplicates) == (ref.ignored, ref.mismatched, ref.duplicates)
    assert s.ignored > 0 and s.duplicates > 0
    if window == 64:
        assert s.recentres > 5  # the small window really moved


def test_P6_notices_before_the_snapshot_are_buffered_then_applied() -> None:
    """RELIABILITY P6: the reply delayed by 0..50 notices, 1,000 seeds, 0 divergences."""
    for seed in range(1000):
        rnd = random.Random(seed)
        snap, stream = salted_stream(seed, 200, resting=60)
        early = rnd.randrange(0, 51)  # the reply is delayed by 0..50 notices
        book, ref = Book(), NaiveBook()
        for n in stream[:early]:
            assert book.apply(n) == 0
        assert not book.ready and book.best_bid is None and len(book) == 0
        assert book.stats().buffered == early
        book.load_snapshot(WatchOrdersReply(tag=7, orders=snap))
        assert book.ready and book.stats().buffered == 0
        ref.load_snapshot(snap)
        ref.apply_all(stream[:early])
        assert_same(book, ref)
        for n in stream[early:]:
            book.apply(n)
            ref.apply(n)
        assert_same(book, ref, 1000 if seed % 10 == 0 else 10)
        assert book.checksum() == ref.checksum()


def test_unknown_ids_are_ignored_by_close_and_by_each_match_side() -> None:
    book = Book()
    book.load_snapshot([BookOrder(id=10, quantity=500, price=100, time=1), BookOrder(id=11, quantity=-700, price=105, time=2)])
    before = book.checksum()
    assert book.apply(closed(99, 5, 100)) == IGNORED
    assert book.apply(matched(98, 97, 1, 1)) == IGNORED
    assert book.checksum() == before and book.stats().ignored == 3
    # One side known, the other not: the known side is applied, the unknown one ignored.
    f = book.apply(matched(10, 96, bid_rem=200, ask_rem=5))
    assert f == IGNORED | TOP_QTY
    assert book.best_bid_qty == 200 and book.stats().ignored == 4


def test_P8_ask_rem_is_positive_and_the_side_is_kept() -> None:
    book, ref = Book(), NaiveBook()
    snap = [BookOrder(id=1, quantity=-900, price=3_000_100, time=1), BookOrder(id=2, quantity=-50, price=3_000_100, time=2)]
    book.load_snapshot(snap)
    ref.load_snapshot(snap)
    n = matched(None, 1, ask_rem=400)
    assert book.apply(n) == ref.apply(n) == TOP_QTY
    assert book.best_ask == 3_000_100 and book.best_ask_qty == 450
    o = book.order(1)
    assert o is not None and o.quantity == -400 and o.side == ASK
    # Filled to zero: the order stays (its OrderClosed follows) but leaves the level.
    book.apply(matched(None, 1, ask_rem=0))
    assert 1 in book and book.best_ask_qty == 50 and levels_of(book, ASK, 5) == [(3_000_100, 50, 1)]
    book.apply(closed(1, 0, 3_000_100))
    assert 1 not in book and book.stats().mismatched == 0
    assert len(book) == 1


def test_P8_a_present_tonce_key_marks_own_orders_even_when_null() -> None:
    book = Book()
    book.load_snapshot([])
    assert book.apply(opened(1, 10, 100, tonce=None)) & OWN
    assert book.apply(opened(2, 10, 99)) & OWN == 0
    assert book.apply(opened(3, -10, 101, tonce=5)) & OWN
    assert book.order(1).own and not book.order(2).own and book.order(3).own  # type: ignore[union-attr]
    assert book.apply(matched(2, None, bid_rem=5)) & OWN == 0
    assert book.apply(matched(2, 3, bid_rem=4, ask_rem=9, ask_tonce=None)) & OWN
    assert book.apply(closed(1, 10, 100, tonce=None)) & OWN
    assert book.apply(closed(2, 4, 99)) & OWN == 0


def test_top_flags_and_touch_attributes() -> None:
    book = Book()
    assert book.load_snapshot([]) & TOP_PRICE
    assert (book.best_bid, book.best_ask, book.spread, book.mid) == (None, None, None, None)
    assert book.apply(opened(1, 10, 100)) == TOP_PRICE | TOP_QTY
    assert book.apply(opened(2, 5, 99)) == 0  # behind the touch
    assert book.apply(opened(3, 7, 100)) == TOP_QTY  # joins the touch
    assert book.apply(opened(4, -3, 103)) == TOP_PRICE | TOP_QTY
    assert (book.best_bid, book.best_bid_qty, book.best_ask, book.best_ask_qty) == (100, 17, 103, 3)
    assert book.spread == 3 and book.mid2 == 203 and book.mid == Fraction(203, 2)
    assert book.apply(closed(1, 10, 100)) == TOP_QTY
    assert book.apply(closed(3, 7, 100)) == TOP_PRICE | TOP_QTY
    assert book.best_bid == 99


def test_huge_sparse_ids_and_prices_far_apart() -> None:
    rnd = random.Random(5)
    book, ref = Book(window=64), NaiveBook()
    book.load_snapshot([])
    ref.load_snapshot([])
    live: list[int] = []
    prices = [1, 2, 3, 50, 10**6, 3_000_000, 2**40, 2**62]
    for step in range(3000):
        if live and rnd.random() < 0.45:
            oid = live.pop(rnd.randrange(len(live)))
            o = book.order(oid)
            assert o is not None
            n: Notice = closed(oid, o.quantity, o.price)
        else:
            oid = rnd.choice([rnd.randrange(2**63), rnd.randrange(1, 2**20) << 40, rnd.randrange(2**63 - 4096, 2**63)])
            if oid in live:
                continue
            live.append(oid)
            side = rnd.choice((1, -1))
            base = rnd.choice(prices)
            p = max(1, min(2**62, base + rnd.randrange(-40, 40)))
            if ref.best_ask is not None and side > 0:
                p = min(p, ref.best_ask - 1)
            if ref.best_bid is not None and side < 0:
                p = max(p, ref.best_bid + 1)
            if p < 1 or (ref.best_ask is not None and side > 0 and p >= ref.best_ask):
                live.pop()
                continue
            n = opened(oid, side * rnd.randrange(1, 10**12), p, step)
        assert book.apply(n) == ref.apply(n)
        assert_same(book, ref, 3 if step % 100 else 10_000)
    assert book.checksum() == ref.checksum()
    assert book.stats().recentres > 20 and book.stats().capacity > 64  # it grew


def test_invalid_orders_are_ignored_and_counted() -> None:
    book = Book()
    book.load_snapshot([])
    assert book.apply(opened(1, 0, 100)) == IGNORED
    assert book.apply(opened(2, 5, 0)) == IGNORED
    assert book.apply(opened(3, 5, -7)) == IGNORED
    assert book.apply(opened(4, 5, 2**62 + 1)) == IGNORED
    assert len(book) == 0 and book.stats().invalid == 4


def test_other_markets_and_other_notices_are_ignored() -> None:
    book = Book(XBT_GBP)
    book.load_snapshot([])
    eur = OrderOpened(id=1, base=XBT_EUR.base.code, counter=XBT_EUR.counter.code, quantity=5, price=10, time=1)
    assert book.apply(eur) == 0 and len(book) == 0
    assert book.apply(BalanceChanged(asset=GBP, balance=5)) == 0


def test_queue_ahead_is_fifo_by_time_then_id() -> None:
    book, ref = Book(), NaiveBook()
    snap = [
        BookOrder(id=5, quantity=10, price=100, time=3),
        BookOrder(id=4, quantity=20, price=100, time=3),
        BookOrder(id=9, quantity=40, price=100, time=1),
        BookOrder(id=7, quantity=80, price=101, time=0),
        BookOrder(id=8, quantity=-160, price=102, time=0),
    ]
    book.load_snapshot(snap)
    ref.load_snapshot(snap)
    assert book.queue_ahead(9) == 0
    assert book.queue_ahead(4) == 40  # same time as 5, lower id: ahead of it
    assert book.queue_ahead(5) == 60
    assert book.queue_ahead(7) == 0 and book.queue_ahead(8) == 0
    assert book.queue_ahead(12345) is None
    book.apply(matched(9, None, bid_rem=15))
    assert book.queue_ahead(5) == 35  # 15 left of order 9, then order 4's 20
    rnd = random.Random(1)
    snap2, stream = salted_stream(3, 600, resting=100)
    b2, r2 = Book(), NaiveBook()
    b2.load_snapshot(snap2)
    r2.load_snapshot(snap2)
    for n in stream:
        b2.apply(n)
        r2.apply(n)
    for oid in rnd.sample(sorted(r2.orders), 60):
        assert b2.queue_ahead(oid) == r2.queue_ahead(oid)


def test_estimate_matches_the_reference_walk() -> None:
    snap, stream = salted_stream(11, 800, resting=200)
    book, ref = Book(window=128), NaiveBook()
    book.load_snapshot(snap)
    ref.load_snapshot(snap)
    for n in stream:
        book.apply(n)
        ref.apply(n)
    rnd = random.Random(2)
    for _ in range(200):
        side = rnd.choice((1, -1))
        if rnd.random() < 0.5:
            q = side * rnd.randrange(1, 3 * 10**10)
            e = book.estimate(quantity=q)
            assert (e.quantity, e.total_exact) == ref.estimate(quantity=q)
            assert e.complete == (e.quantity == abs(q))
        else:
            t = side * rnd.randrange(1, 10**8)
            e = book.estimate(total=t)
            assert (e.quantity, e.total_exact) == ref.estimate(total=t)
            assert e.total_exact <= abs(t)
        assert e.total == int(e.total_exact + Fraction(1, 2))  # half up
        c = book.estimate(quantity=e.quantity or side, rounding="ceil")
        assert c.total in (int(c.total_exact), int(c.total_exact) + 1) and c.total >= c.total_exact


def test_estimate_worked_example_and_errors() -> None:
    book = Book()  # v2: total = q * p / 1e8
    book.load_snapshot([BookOrder(id=1, quantity=-10**8, price=3_000_000, time=1), BookOrder(id=2, quantity=-10**8, price=3_000_100, time=2)])
    e = book.estimate(quantity=15 * 10**7)  # buy 1.5 XBT: 1 @ 30000.00 + 0.5 @ 30001.00
    assert (e.quantity, e.total, e.levels, e.complete) == (15 * 10**7, 4_500_050, 2, True)
    e = book.estimate(total=3_000_001)  # £30000.01: 1 XBT, then 1p buys 33 satoshi at £30001.00
    assert e.quantity == 10**8 + 33 and e.total_exact == 3_000_000 + Fraction(33 * 3_000_100, 10**8)
    assert e.total == 3_000_001  # 3000000.990033 half up
    assert book.estimate(total=3_000_001, rounding="floor").total == 3_000_000
    e = book.estimate(quantity=-5)  # no bids
    assert (e.quantity, e.total, e.complete) == (0, 0, False)
    with pytest.raises(LocalProtocolError, match="either quantity or total"):
        book.estimate()
    with pytest.raises(LocalProtocolError, match="Quantity must not be zero"):
        book.estimate(quantity=0)


def test_levels_beyond_the_window_are_aggregated_exactly() -> None:
    book, ref = Book(window=64), NaiveBook()
    snap = [BookOrder(id=i, quantity=i, price=1000 - 7 * (i % 50), time=i) for i in range(1, 400)]
    snap += [BookOrder(id=1000 + i, quantity=-i, price=2000 + 13 * (i % 40), time=i) for i in range(1, 300)]
    book.load_snapshot(snap)
    ref.load_snapshot(snap)
    assert book.stats().far_bids > 0 and book.stats().far_asks > 0
    for side in (BID, ASK):
        assert levels_of(book, side, 10_000) == ref.level_list(side, 10_000)
        p, cum = book.cumulative_depth(side, 60)
        assert cum.tolist() == np.cumsum([q for _, q, _ in ref.level_list(side, 60)]).tolist()


def test_the_view_of_a_live_recording_equals_the_simulator_book() -> None:
    lines = generate_lines(20_000, seed=4, resting=400)
    snap, notices = decode_lines(lines)
    book = Book()
    book.load_snapshot(snap)
    book.apply_all(notices)
    book.check()
    cols = book.orders()
    assert cols["id"].tolist() == sorted(cols["id"].tolist())
    assert (cols["quantity"] != 0).all()  # every full fill was followed by its OrderClosed
    assert book.stats().mismatched == 0


def test_snapshot_errors() -> None:
    from engine.protocol.messages import ErrorReply

    book = Book()
    with pytest.raises(RemoteProtocolError, match="without 'orders'"):
        book.load_snapshot(WatchOrdersReply(tag=1))
    with pytest.raises(RemoteProtocolError, match="WatchOrders failed"):
        book.load_snapshot(ErrorReply(tag=1, error_code=1, error_msg="You specified an invalid asset pair."))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="power of two"):
        Book(window=100)


def test_reset_goes_back_to_buffering() -> None:
    book = Book()
    book.load_snapshot([BookOrder(id=1, quantity=5, price=10, time=1)])
    assert book.best_bid == 10
    book.reset()
    assert not book.ready and book.best_bid is None and len(book) == 0
    book.apply(opened(2, 5, 11))
    assert len(book) == 0 and book.stats().buffered == 1
    book.load_snapshot([])
    assert book.best_bid == 11


def test_levels_take_the_strategy_api_side() -> None:
    # Side.BUY is an IntEnum equal to 1, which is ASK: told apart by type, BUY is the bids.
    from engine.strategy import Side

    book = Book()
    book.load_snapshot([BookOrder(id=1, quantity=5, price=990, time=1), BookOrder(id=2, quantity=-7, price=1010, time=2)])
    for api, raw in ((Side.BUY, BID), (Side.SELL, ASK)):
        assert [a.tolist() for a in book.levels(api, 3)] == [a.tolist() for a in book.levels(raw, 3)]
        assert [a.tolist() for a in book.cumulative_depth(api, 3)] == [a.tolist() for a in book.cumulative_depth(raw, 3)]
    assert book.levels(Side.BUY, 1)[0].tolist() == [990]
    for bad in (2, -1, True, "bid"):
        with pytest.raises(ValueError, match="side must be"):
            book.levels(bad, 1)  # type: ignore[arg-type]
