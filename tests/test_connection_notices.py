"""The notice stream's overflow policy, checked against a simple reference model.

Own notices are never dropped; public L3 notices are dropped only behind a FeedGap marker
for their book; tickers are conflated so the consumer's fold equals the fold of everything
sent; and everything that is delivered comes out in wire order.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.client.notices import (
    MAX_PENDING_TICKERS,
    FeedGap,
    NoticeQueue,
    ReplyEvent,
    SessionEnded,
    SessionStarted,
    is_own,
    merge_tickers,
)
from engine.protocol.messages import (
    UNSET,
    BalanceChanged,
    GetOrders,
    GetOrdersReply,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    TickerChanged,
    TradeVolumeChanged,
)

XBT, GBP, EUR = 1, 2, 3


def opened(i: int, counter: int = GBP, **kw: Any) -> OrderOpened:
    return OrderOpened(id=i, base=XBT, counter=counter, quantity=1, price=10, time=i, **kw)


def matched(**kw: Any) -> OrdersMatched:
    return OrdersMatched(base=XBT, counter=GBP, quantity=1, price=10, total=1, time=1, **kw)


@pytest.mark.parametrize(
    "notice, own",
    [
        (opened(1), False),
        (opened(1, tonce=None), True),  # present-but-null tonce: own order placed without tonce
        (opened(1, tonce=5), True),
        (OrderClosed(id=1, base=XBT, counter=GBP, quantity=0, price=1), False),
        (OrderClosed(id=1, tonce=None, base=XBT, counter=GBP, quantity=0, price=1), True),
        (matched(bid=1, ask=2), False),
        (matched(bid=1, ask=2, bid_tonce=None), True),
        (matched(ask=2, ask_tonce=3), True),
        (BalanceChanged(asset=GBP, balance=1), True),
        (TradeVolumeChanged(asset=XBT, volume=1), True),
        (TickerChanged(base=XBT, counter=GBP, last=1), False),
    ],
)
def test_P8_own_means_a_tonce_key_is_present(notice, own):
    assert is_own(notice) is own


def test_merge_tickers_keeps_absent_vs_null():
    a = TickerChanged(base=XBT, counter=GBP, bid=5, last=3, volume=10)
    b = TickerChanged(base=XBT, counter=GBP, last=None, ask=7)
    m = merge_tickers(a, b)
    assert (m.bid, m.last, m.ask, m.volume, m.low) == (5, None, 7, 10, UNSET)
    assert merge_tickers(a, TickerChanged(base=XBT, counter=GBP)) == a


def test_ticker_conflation_moves_forward_past_other_events():
    q = NoticeQueue()
    q.put(TickerChanged(base=XBT, counter=GBP, bid=1))
    q.put(opened(1))
    q.put(TickerChanged(base=XBT, counter=EUR, bid=9))
    q.put(TickerChanged(base=XBT, counter=GBP, ask=2))
    assert [q.receive_nowait() for _ in range(3)] == [
        opened(1),
        TickerChanged(base=XBT, counter=EUR, bid=9),
        TickerChanged(base=XBT, counter=GBP, bid=1, ask=2),
    ]
    with pytest.raises(trio.WouldBlock):
        q.receive_nowait()
    assert q.statistics().tickers_conflated == 1


def test_ticker_flood_merges_in_place_without_growing():
    q = NoticeQueue()
    for i in range(1000):
        q.put(TickerChanged(base=XBT, counter=GBP, last=i))
    assert len(q._slots) == 1 and len(q) == 1
    assert q.receive_nowait() == TickerChanged(base=XBT, counter=GBP, last=999)


def test_too_many_ticker_books_count_as_public():
    q = NoticeQueue(max_public=1)
    for c in range(MAX_PENDING_TICKERS + 2):
        q.put(TickerChanged(base=XBT, counter=100 + c, last=1), session=4)
    stats = q.statistics()
    assert stats.public_queued == 1 and stats.dropped_public == 1
    events = [q.receive_nowait() for _ in range(len(q))]
    assert events[-1] == FeedGap(4, XBT, 100 + MAX_PENDING_TICKERS + 1)


def test_feed_gap_once_per_book_until_consumed():
    q = NoticeQueue(max_public=2)
    for i in range(5):
        q.put(opened(i), session=3)
    assert q.statistics().feed_gaps == 1
    assert [q.receive_nowait() for _ in range(3)] == [opened(0), opened(1), FeedGap(3, XBT, GBP)]
    for i in range(5, 9):
        q.put(opened(i), session=3)
    assert [q.receive_nowait() for _ in range(3)] == [opened(5), opened(6), FeedGap(3, XBT, GBP)]
    assert q.statistics().dropped_public == 5


def test_own_overflow_is_reported_but_nothing_is_dropped():
    q = NoticeQueue(max_own=3, max_public=1)
    own = [BalanceChanged(asset=GBP, balance=i) for i in range(5)]
    results = [q.put(n) for n in own]
    assert results == [True, True, True, False, False]
    reply = ReplyEvent(1, GetOrders(tag=1), GetOrdersReply(tag=1, orders=[]))
    assert q.put(reply) is False  # echoed replies are own too
    assert [q.receive_nowait() for _ in range(6)] == [*own, reply]
    assert q.statistics().own_overflows == 3 and q.statistics().peak_own == 6


async def test_receive_waits_and_ends_after_close_and_drain(autojump_clock):
    q = NoticeQueue()

    async def producer() -> None:
        await trio.sleep(3.0)
        q.put(SessionStarted(1, 1))
        q.put(SessionEnded(1, "bye"))
        q.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        got = [e async for e in q]
    assert got == [SessionStarted(1, 1), SessionEnded(1, "bye")]
    assert trio.current_time() == 3.0
    with pytest.raises(trio.EndOfChannel):
        q.receive_nowait()
    with pytest.raises(trio.ClosedResourceError):
        q.put(SessionStarted(2, 1))


async def test_wait_own_below(autojump_clock):
    q = NoticeQueue(max_own=4)
    for i in range(6):
        q.put(BalanceChanged(asset=GBP, balance=i))
    woke: list[float] = []

    async def waiter() -> None:
        await q.wait_own_below(2)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        for _ in range(4):
            await trio.sleep(1.0)
            q.receive_nowait()
    assert woke == [4.0]


# -- the policy against a reference model ------------------------------------------------------

books = st.sampled_from([(XBT, GBP), (XBT, EUR)])
public_l3 = st.builds(lambda i, b: opened(i, counter=b[1]), st.integers(0, 10**6), books)
own = st.one_of(
    st.builds(lambda i: BalanceChanged(asset=GBP, balance=i), st.integers(0, 10**6)),
    st.builds(lambda i, b: opened(i, counter=b[1], tonce=i), st.integers(1, 10**6), books),
)
ticker = st.builds(
    lambda b, last, bid: TickerChanged(base=b[0], counter=b[1], last=last, bid=bid),
    books,
    st.one_of(st.none(), st.integers(0, 100), st.just(UNSET)),
    st.one_of(st.none(), st.integers(0, 100), st.just(UNSET)),
)
steps = st.lists(st.one_of(public_l3, own, ticker, st.just("read")), max_size=200)


@settings(max_examples=300, deadline=None)
@given(steps=steps, max_public=st.integers(1, 8))
def test_policy_against_reference_model(steps, max_public):
    q = NoticeQueue(max_own=10**6, max_public=max_public)
    sent: list[Any] = []
    got: list[Any] = []
    for step in steps:
        if step == "read":
            try:
                got.append(q.receive_nowait())
            except trio.WouldBlock:
                pass
        else:
            sent.append(step)
            assert q.put(step, session=1)
        assert q.statistics().public_queued <= max_public
    while True:
        try:
            got.append(q.receive_nowait())
        except trio.WouldBlock:
            break
    # 1. own notices: all delivered, in order
    assert [e for e in got if not isinstance(e, FeedGap | TickerChanged) and is_own(e)] == [
        e for e in sent if not isinstance(e, TickerChanged) and is_own(e)
    ]
    # 2. non-ticker events keep wire order: delivered ones form a subsequence of what was sent
    it = iter([e for e in sent if not isinstance(e, TickerChanged)])
    assert all(any(e == s for s in it) for e in got if not isinstance(e, FeedGap | TickerChanged))
    # 3. a public notice is missing only if a FeedGap for its book was delivered
    delivered_public = [e for e in got if isinstance(e, OrderOpened) and not is_own(e)]
    missing = len([e for e in sent if isinstance(e, OrderOpened) and not is_own(e)]) - len(delivered_public)
    assert missing == q.statistics().dropped_public
    gapped = {(g.base, g.counter) for g in got if isinstance(g, FeedGap)}
    sent_public = [e for e in sent if isinstance(e, OrderOpened) and not is_own(e)]
    remaining = list(delivered_public)
    for e in sent_public:
        if remaining and remaining[0] == e:
            remaining.pop(0)
        else:
            assert (e.base, e.counter) in gapped
    # 4. tickers: folding what was delivered gives the fold of what was sent, per book
    for book in {(t.base, t.counter) for t in sent if isinstance(t, TickerChanged)}:
        def fold(events: list[Any], book: tuple[int, int] = book) -> TickerChanged:
            acc = TickerChanged(base=book[0], counter=book[1])
            for t in events:
                if isinstance(t, TickerChanged) and (t.base, t.counter) == book:
                    acc = merge_tickers(acc, t)
            return acc

        assert fold(got) == fold(sent)
    # 5. ticker delivery never outnumbers tickers sent
    assert sum(isinstance(e, TickerChanged) for e in got) <= sum(isinstance(e, TickerChanged) for e in sent)
