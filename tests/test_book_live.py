"""A Book fed by a real WebSocket connection to the local exchange (127.0.0.1, port 0).

Participants trade through the exchange core while the client watches the feed over the
wire; after every burst the client syncs with an EstimateMarketOrder round trip and its
book must equal the exchange's book, level by level, and the estimate the exchange's.
"""

from __future__ import annotations

import random

import trio
from trio_websocket import open_websocket_url

from engine.exchange.server import serve_exchange
from engine.protocol.codec import CODEC, ReplyFrame
from engine.protocol.messages import (
    CancelOrder,
    EstimateMarketOrder,
    EstimateMarketOrderReply,
    PlaceOrder,
    PlaceOrderReply,
    WatchOrdersReply,
)
from engine.scale import XBT_GBP
from engine.state.book import ASK, BID, Book
from tests.test_exchange_server_support import BASE, COUNTER, make_exchange


async def test_P6_book_over_websocket_equals_the_exchange(nursery: trio.Nursery) -> None:
    ex = make_exchange()
    server = await nursery.start(lambda task_status: serve_exchange(ex, task_status=task_status))
    traders = [ex.open_internal_session(u) for u in (1, 2)]
    rnd = random.Random(3)
    live: list[tuple[int, int]] = []

    def burst(k: int) -> None:
        for _ in range(k):
            u = rnd.randrange(2)
            if live and rnd.random() < 0.35:
                u, oid = live.pop(rnd.randrange(len(live)))
                ex.handle(traders[u], CancelOrder(id=oid))
                continue
            side = rnd.choice((1, -1))
            price = 3_000_000 + rnd.randrange(-200, 200) - side * rnd.randrange(0, 100)
            r = ex.handle(traders[u], PlaceOrder(base=BASE, counter=COUNTER, quantity=side * rnd.randrange(10**5, 10**7), price=price))
            if isinstance(r, PlaceOrderReply) and isinstance(r.id, int):
                live.append((u, r.id))

    burst(60)
    book = Book(XBT_GBP)
    with trio.fail_after(20):
        async with open_websocket_url(server.url) as ws:
            await ws.get_message()  # Welcome
            await ws.send_message(CODEC.encode_text(book.watch_command(tag=1)))
            burst(30)  # notices racing the reply: buffered if they come first
            tag = 1
            for round_ in range(25):
                tag += 1
                q = rnd.choice((1, -1)) * rnd.randrange(10**5, 10**9)
                await ws.send_message(CODEC.encode_text(EstimateMarketOrder(tag=tag, base=BASE, counter=COUNTER, quantity=q)))
                while True:  # feed frames in arrival order until our estimate comes back
                    frame = CODEC.decode_server_frame(await ws.get_message())
                    if not isinstance(frame, ReplyFrame):
                        book.apply(frame)
                    elif frame.tag == 1:
                        reply = CODEC.decode_reply(frame, WatchOrdersReply)
                        assert isinstance(reply, WatchOrdersReply)
                        book.load_snapshot(reply)
                    elif frame.tag == tag:
                        est = CODEC.decode_reply(frame, EstimateMarketOrderReply)
                        break
                assert isinstance(est, EstimateMarketOrderReply)
                mine = book.estimate(quantity=q)
                assert (mine.quantity, mine.total) == (est.quantity, est.total)
                book.check()
                bids, asks = ex.book(BASE, COUNTER)
                for side, orders in ((BID, bids), (ASK, asks)):
                    agg: dict[int, list[int]] = {}
                    for o in orders:
                        lv = agg.setdefault(o.price, [0, 0])
                        lv[0] += abs(o.quantity)
                        lv[1] += 1
                    p, qs, c = book.levels(side, 10_000)
                    assert list(zip(p.tolist(), qs.tolist(), c.tolist(), strict=True)) == [(k, v[0], v[1]) for k, v in agg.items()], round_
                burst(20)
    assert book.ready and len(book) > 20 and book.stats().mismatched == 0
