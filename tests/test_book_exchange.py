"""The book fed by the project's own exchange core (P6 against the real engine).

A wire session subscribes with WatchOrders while seeded participants place limit and market
orders and cancel; the book must equal the exchange's own book after every command, and its
market-order estimate must equal the exchange's EstimateMarketOrder answer.  Notices that
the reply was "delayed" behind are fed first, as a real socket may deliver them.
"""

from __future__ import annotations

import random

import pytest

from engine.exchange.core import Exchange
from engine.protocol.messages import (
    CancelOrder,
    EstimateMarketOrder,
    EstimateMarketOrderReply,
    Notice,
    PlaceOrder,
    PlaceOrderReply,
    WatchOrders,
    WatchOrdersReply,
)
from engine.scale import XBT_GBP
from engine.state.book import ASK, BID, Book
from engine.state.naive_book import NaiveBook
from tests.test_exchange_core_helpers import GBP_C, XBT_C, Clock, settings


def exchange_levels(ex: Exchange, side: int) -> list[tuple[int, int, int]]:
    bids, asks = ex.book(XBT_C, GBP_C)
    out: dict[int, list[int]] = {}
    for o in bids if side == BID else asks:
        lv = out.setdefault(o.price, [0, 0])
        lv[0] += abs(o.quantity)
        lv[1] += 1
    return [(p, q, c) for p, (q, c) in out.items()]  # best first, as the exchange lists them


def book_levels(book: Book, side: int) -> list[tuple[int, int, int]]:
    p, q, c = book.levels(side, 100_000)
    return list(zip(p.tolist(), q.tolist(), c.tolist(), strict=True))


@pytest.mark.parametrize("seed", range(4))
def test_P6_book_equals_the_exchange_book_and_its_estimates(seed: int) -> None:
    rnd = random.Random(seed)
    clock = Clock()
    users = {u: {"GBP": "10000000", "XBT": "1000"} for u in (1, 2, 3)}
    ex = Exchange(settings(users), clock_us=clock, rng=random.Random(seed))
    traders = {u: ex.open_internal_session(u) for u in users}
    inbox: list[Notice] = []
    watcher = ex.open_session(inbox.append)

    def place(u: int, qty: int, price: int | None) -> int | None:
        cmd = PlaceOrder(base=XBT_C, counter=GBP_C, quantity=qty, **({"price": price} if price else {}))
        r = ex.handle(traders[u], cmd)
        return r.id if isinstance(r, PlaceOrderReply) and isinstance(r.id, int) else None

    live: list[tuple[int, int]] = []

    def step() -> None:
        clock.advance(0.001)
        r = rnd.random()
        u = rnd.choice(list(users))
        if r < 0.55 or not live:
            side = rnd.choice((1, -1))
            price = 3_000_000 + rnd.randrange(-300, 300) - side * rnd.randrange(0, 200)
            oid = place(u, side * rnd.randrange(10**5, 10**8), price)
            if oid is not None:
                live.append((u, oid))
        elif r < 0.9:
            u, oid = live.pop(rnd.randrange(len(live)))
            ex.handle(traders[u], CancelOrder(id=oid))
        else:
            place(u, rnd.choice((1, -1)) * rnd.randrange(10**5, 3 * 10**8), None)

    for _ in range(150):  # a book exists before anyone watches it
        step()
    reply = ex.handle(watcher, WatchOrders(base=XBT_C, counter=GBP_C, watch=True))
    assert isinstance(reply, WatchOrdersReply)
    for _ in range(20):  # more activity while the reply is "in flight"
        step()
    book, ref = Book(XBT_GBP), NaiveBook(XBT_GBP)
    delayed = len(inbox)
    for n in inbox:  # the early notices arrive first, the reply after them
        book.apply(n)
        ref.apply(n)
    book.load_snapshot(reply)
    ref.load_snapshot(reply)
    del inbox[:]
    assert delayed > 0
    kinds: dict[str, int] = {}
    for i in range(1500):
        step()
        for n in inbox:
            assert book.apply(n) == ref.apply(n)
            kinds[type(n).__name__] = kinds.get(type(n).__name__, 0) + 1
        del inbox[:]
        book.check()
        for side in (BID, ASK):
            assert book_levels(book, side) == exchange_levels(ex, side), (i, side)
        if i % 10 == 0:
            for kw in ({"quantity": rnd.choice((1, -1)) * rnd.randrange(1, 5 * 10**9)},
                       {"total": rnd.choice((1, -1)) * rnd.randrange(1, 10**8)}):
                e = book.estimate(**kw)
                rep = ex.handle(watcher, EstimateMarketOrder(base=XBT_C, counter=GBP_C, **kw))
                assert isinstance(rep, EstimateMarketOrderReply)
                assert (e.quantity, e.total) == (rep.quantity, rep.total), kw
    assert book.checksum() == ref.checksum()
    assert book.stats().mismatched == 0
    assert len(book) > 20 and min(kinds.get(k, 0) for k in ("OrderOpened", "OrdersMatched", "OrderClosed")) > 50
