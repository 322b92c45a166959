"""Exchange core: IMPL-GUIDE known answers (P2), reservations and funds (S4), matching,
cancels, market orders, snapshots."""

from __future__ import annotations

import random

import pytest

from engine.exchange.core import Exchange
from engine.protocol.messages import (
    UNSET,
    CancelAllOrders,
    CancelOrder,
    CancelOrderReply,
    ErrorReply,
    GetBalances,
    GetOrders,
    OrderClosed,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
)
from engine.scale import V1, V2, XBT_GBP, ceil_div
from tests.test_exchange_core_helpers import GBP_C, XBT_C, Harness, ScriptedRng, settings

# ---------------------------------------------------------------------------------------
# P2: IMPL-GUIDE worked examples, all four rounding outcomes


def test_p2_bid_reservation_v1_known_answer() -> None:
    h = Harness(settings({1: {"GBP": "20000"}}, api_version=1))
    a = h.session(1)
    r = h.place(a, 12345, 1234500)
    assert isinstance(r, PlaceOrderReply) and r.id == 1
    assert h.ex.balances(1)[GBP_C] == (2_000_000 - 1_523_991, 1_523_991)


# (total rounds up?, buyer fee rounds up?) -> (total, fee, returned to the buyer)
P2_OUTCOMES = [
    ((True, True), (152338, 46, 77)),
    ((False, True), (152337, 46, 78)),
    ((True, False), (152338, 45, 78)),
    ((False, False), (152337, 45, 79)),
]


@pytest.mark.parametrize(("script", "expected"), P2_OUTCOMES)
def test_p2_partial_fill_fee_from_reservation_v1(script: tuple[bool, bool], expected: tuple[int, int, int]) -> None:
    total, fee, returned = expected
    rng = ScriptedRng([script[0], script[1], True])
    h = Harness(settings({1: {"GBP": "20000"}, 2: {"XBT": "1"}}, api_version=1), rng=rng)
    buyer, seller = h.session(1), h.session(2)
    h.place(buyer, 12345, 1234500, tonce=7)
    before = h.ex.balances(1)[GBP_C][0]
    h.notices(buyer)
    h.place(seller, -1234, 1234500)
    assert rng.draws == 3  # total, buyer fee, seller fee: each has a fractional part
    got = h.notices(buyer)
    matched = [n for n in got if isinstance(n, OrdersMatched)]
    assert len(matched) == 1
    m = matched[0]
    assert (m.quantity, m.total, m.bid_counter_fee, m.bid_rem, m.bid_tonce) == (1234, total, fee, 11110, 7)
    assert m.bid_base_fee == 0
    avail, reserved = h.ex.balances(1)[GBP_C]
    assert reserved == 1_371_530 == V1.bid_reservation(11110, 1234500, XBT_GBP)
    assert avail - before == returned
    assert h.ex.open_orders(1)[0].quantity == 11110
    # seller: total minus its own fee (0.03% of the total, rounded up by the script)
    assert h.ex.balances(2)[GBP_C][0] == total - ceil_div(total * 300, 10**6)


@pytest.mark.parametrize(("script", "expected"), P2_OUTCOMES)
def test_p2_partial_fill_fee_from_reservation_v2(script: tuple[bool, bool], expected: tuple[int, int, int]) -> None:
    """The same trade under v2 scales (XBT 1e8): totals and fees are the same money, the
    remaining quantity is finer and the excess follows the scale-aware formula."""
    total, fee, _ = expected
    rng = ScriptedRng([script[0], script[1], True])
    h = Harness(settings({1: {"GBP": "20000"}, 2: {"XBT": "1"}}), rng=rng)
    buyer, seller = h.session(1), h.session(2)
    q, p, x = 123_450_000, 1_234_500, 12_340_000  # 1.2345 XBT, 12345.00 GBP, 0.1234 XBT
    h.place(buyer, q, p)
    assert h.ex.balances(1)[GBP_C][1] == 1_523_991 == V2.bid_reservation(q, p, XBT_GBP)
    before = h.ex.balances(1)[GBP_C][0]
    h.place(seller, -x, p)
    left = 1_523_991 - total - fee  # 1371607 etc.
    rem = min(q - x, V2.max_bid_quantity(left, p, XBT_GBP))
    need = V2.bid_reservation(rem, p, XBT_GBP)
    assert h.ex.open_orders(1)[0].quantity == rem < q - x
    assert h.ex.balances(1)[GBP_C] == (before + left - need, need)
    assert 0 <= left - need < ceil_div(p * 100, 10**10) + 1  # less than one unit's worth


def test_p2_reservation_formula_property_v2() -> None:
    """Reservations of random bids match ceil(q*p*cs/(bs*ps)) and cancel returns them exactly."""
    rng = random.Random(5)
    h = Harness(settings({1: {"GBP": "90000000"}}))
    a = h.session(1)
    for _ in range(300):
        q = rng.randrange(1, 10**9)
        p = rng.randrange(1, 10**7)
        before = h.ex.balances(1)[GBP_C]
        r = h.place(a, q, p)
        assert isinstance(r, PlaceOrderReply)
        want = ceil_div(q * p * 100, 10**8 * 100)
        assert h.ex.balances(1)[GBP_C] == (before[0] - want, before[1] + want)
        c = h.do(a, CancelOrder(id=r.id))
        assert isinstance(c, CancelOrderReply)
        assert h.ex.balances(1)[GBP_C] == before


# ---------------------------------------------------------------------------------------
# S4: funds boundary


@pytest.mark.parametrize("side", ["bid", "ask"])
def test_s4_funds_boundary(side: str) -> None:
    q, p = 123_456_789, 2_345_678
    need = V2.bid_reservation(q, p, XBT_GBP) if side == "bid" else q
    asset = GBP_C if side == "bid" else XBT_C
    signed = q if side == "bid" else -q
    for have, ok in ((need - 1, False), (need, True)):
        h = Harness(settings({1: {}}))
        h.ex.deposit(1, asset, have)
        a = h.session(1)
        r = h.place(a, signed, p)
        if not ok:
            assert r == ErrorReply(error_code=4, error_msg="You have insufficient funds.")
            assert h.ex.balances(1)[asset] == (have, 0)
            continue
        assert isinstance(r, PlaceOrderReply)
        assert h.ex.balances(1)[asset] == (0, need)
        c = h.do(a, CancelOrder(id=r.id))
        assert isinstance(c, CancelOrderReply) and c.quantity == signed
        assert h.ex.balances(1)[asset] == (need, 0)


def test_s4_market_buy_stops_when_balance_exhausted() -> None:
    h = Harness(settings({1: {"GBP": "100.00"}, 2: {"XBT": "10"}}))
    buyer, seller = h.session(1), h.session(2)
    h.place(seller, -500_000_000, 1_000_000)  # 5 XBT at 10,000.00
    r = h.place(buyer, 100_000_000)  # market buy 1 XBT, can afford ~0.01
    assert isinstance(r, PlaceOrderReply) and r.id is UNSET and r.time is UNSET
    bought = h.ex.balances(1)[XBT_C][0]
    assert r.remaining == 100_000_000 - bought
    # 100.00 GBP buys 0.01 XBT minus the fee's worth; nothing more is affordable
    assert 999_000 <= bought < 1_000_000
    gbp_left = h.ex.balances(1)[GBP_C][0]
    assert 0 <= gbp_left < 2  # less than one more satoshi's total plus fee


def test_market_order_with_zero_balance_is_error_4() -> None:
    h = Harness(settings({1: {"XBT": "1"}, 2: {"XBT": "10"}}))
    buyer, seller = h.session(1), h.session(2)
    h.place(seller, -500_000_000, 1_000_000)
    r = h.place(buyer, 100_000_000)
    assert r == ErrorReply(error_code=4, error_msg="You have insufficient funds.")


def test_market_sell_by_quantity_and_by_total() -> None:
    h = Harness(settings({1: {"GBP": "100000"}, 2: {"XBT": "10"}}))
    buyer, seller = h.session(1), h.session(2)
    h.place(buyer, 100_000_000, 1_000_000, tonce=1)  # bid 1 XBT @ 10,000
    h.place(buyer, 100_000_000, 900_000, tonce=2)  # bid 1 XBT @ 9,000
    r = h.place(seller, -150_000_000)  # sell 1.5 XBT at market
    assert isinstance(r, PlaceOrderReply) and r.remaining == 0
    assert h.ex.balances(2)[XBT_C] == (850_000_000, 0)
    # by total: sell for 2,000.00 GBP of the 0.5 XBT left at 9,000: 0.22222222 XBT
    r = h.place(seller, total=-200_000)
    assert isinstance(r, PlaceOrderReply)
    assert 0 <= r.remaining <= 1
    sold = 850_000_000 - h.ex.balances(2)[XBT_C][0]
    assert sold == 22_222_222


def test_market_buy_by_total_reports_remaining_when_book_runs_out() -> None:
    h = Harness(settings({1: {"GBP": "100000"}, 2: {"XBT": "10"}}))
    buyer, seller = h.session(1), h.session(2)
    h.place(seller, -10_000_000, 1_000_000)  # 0.1 XBT @ 10,000 = 1,000.00
    r = h.place(buyer, total=300_000)  # wants 3,000.00 worth
    assert isinstance(r, PlaceOrderReply)
    assert h.ex.balances(1)[XBT_C][0] == 10_000_000
    assert r.remaining == 300_000 - 100_000


# ---------------------------------------------------------------------------------------
# matching, priority, cancels


def test_price_time_priority_and_price_improvement() -> None:
    h = Harness(settings({1: {"XBT": "10"}, 2: {"XBT": "10"}, 3: {"GBP": "100000"}}))
    s1, s2, s3 = h.session(1), h.session(2), h.session(3)
    a1 = h.place(s1, -100_000_000, 1_000_100)
    a2 = h.place(s2, -100_000_000, 1_000_000)
    a3 = h.place(s1, -100_000_000, 1_000_000)
    assert isinstance(a1, PlaceOrderReply) and isinstance(a2, PlaceOrderReply) and isinstance(a3, PlaceOrderReply)
    h.notices(s3)
    r = h.place(s3, 250_000_000, 1_000_100)
    assert isinstance(r, PlaceOrderReply)
    matched = [n for n in h.notices(s3) if isinstance(n, OrdersMatched)]
    assert [(m.ask, m.price) for m in matched] == [(a2.id, 1_000_000), (a3.id, 1_000_000), (a1.id, 1_000_100)]
    # the taker bid paid the asks' prices, and got the excess of its reservation back
    bids, asks = h.ex.book(XBT_C, GBP_C)
    assert bids == [] and [o.id for o in asks] == [a1.id]


def test_cancel_by_tonce_and_cancel_all_resets_tonce() -> None:
    h = Harness(settings({1: {"GBP": "1000"}}))
    a = h.session(1)
    h.place(a, 1000, 100, tonce=10)
    h.place(a, 1000, 100, tonce=20)
    r = h.do(a, CancelOrder(tonce=10))
    assert isinstance(r, CancelOrderReply) and r.tonce == 10 and r.quantity == 1000
    assert h.place(a, 1000, 100, tonce=15) == ErrorReply(error_code=3, error_msg="Tonce is out of sequence.")
    all_ = h.do(a, CancelAllOrders())
    assert [o.tonce for o in all_.orders] == [20]  # type: ignore[attr-defined]
    assert isinstance(h.place(a, 1000, 100, tonce=1), PlaceOrderReply)


def test_watch_orders_snapshot_and_get_orders() -> None:
    h = Harness(settings({1: {"GBP": "1000", "XBT": "1"}}))
    a = h.session(1)
    h.place(a, 1000, 100, tonce=1)
    h.place(a, -1000, 200)
    r = h.do(a, GetOrders())
    assert [(o.quantity, o.price, o.tonce) for o in r.orders] == [(1000, 100, 1), (-1000, 200, None)]  # type: ignore[attr-defined]
    bal = h.do(a, GetBalances())
    assert {b.asset: b.balance for b in bal.balances}[XBT_C] == 100_000_000 - 1000  # type: ignore[attr-defined]


def test_full_fill_closes_with_quantity_zero() -> None:
    h = Harness(settings({1: {"GBP": "1000"}, 2: {"XBT": "1"}}))
    b, s = h.session(1), h.session(2)
    h.place(b, 2_000_000, 100_000)  # 0.02 XBT at 1,000.00
    h.notices(s)
    h.place(s, -1_000_000, 100_000)
    got = h.notices(s)
    kinds = [type(n).__name__ for n in got]
    # the ask never rested: reservation, match, proceeds, volumes, closed with quantity 0
    assert kinds == [
        "BalanceChanged", "OrdersMatched", "BalanceChanged", "TradeVolumeChanged", "TradeVolumeChanged", "OrderClosed",
    ]
    closed = got[-1]
    assert isinstance(closed, OrderClosed) and closed.quantity == 0 and closed.tonce is None


def test_open_notice_before_match_policy() -> None:
    from engine.exchange.settings import PolicySettings

    h = Harness(settings({1: {"GBP": "1000"}, 2: {"XBT": "1"}}, policy=PolicySettings(open_notice_before_match=True)))
    b, s = h.session(1), h.session(2)
    h.place(b, 1_000_000, 100_000)
    h.notices(s)
    h.place(s, -3_000_000, 100_000)
    kinds = [type(n).__name__ for n in h.notices(s)]
    assert kinds.index("BalanceChanged") < kinds.index("OrderOpened") < kinds.index("OrdersMatched")
    # the bid's fee comes out of its reservation, so it buys a little under 0.01 XBT
    bought = h.ex.balances(1)[XBT_C][0]
    assert 990_000 < bought < 1_000_000
    assert h.ex.open_orders(2)[0].quantity == -(3_000_000 - bought)


# ---------------------------------------------------------------------------------------
# snapshot / restore


def test_snapshot_restore_identical_hash_and_behaviour() -> None:
    h = Harness(settings({1: {"GBP": "100000", "XBT": "10"}, 2: {"GBP": "100000", "XBT": "10"}}))
    a, b = h.session(1), h.session(2)
    rng = random.Random(9)
    for i in range(200):
        s = a if i % 2 else b
        q = rng.randrange(1, 10**8) * rng.choice((1, -1))
        h.place(s, q, rng.randrange(990_000, 1_010_000), persist=True)
    snap = h.ex.snapshot()
    ex2 = Exchange.restore(h.ex.settings, snap, clock_us=h.clock, rng=random.Random())
    assert ex2.state_hash() == h.ex.state_hash()
    ex2.check_invariants()
    # new sessions on both sides (a restart drops every connection; ids continue)
    a, b = h.ex.open_internal_session(1), h.ex.open_internal_session(2)
    a2, b2 = ex2.open_internal_session(1), ex2.open_internal_session(2)
    assert (a.id, b.id) == (a2.id, b2.id)
    for i in range(100):
        q = rng.randrange(1, 10**8) * rng.choice((1, -1))
        p = rng.randrange(990_000, 1_010_000)
        cmd = PlaceOrder(base=XBT_C, counter=GBP_C, quantity=q, price=p, persist=bool(i % 3))
        r1 = h.ex.handle(a if i % 2 else b, cmd)
        r2 = ex2.handle(a2 if i % 2 else b2, cmd)
        assert r1 == r2
    assert ex2.state_hash() == h.ex.state_hash()


def test_verify_each_command_catches_a_broken_invariant() -> None:
    from engine.exchange.settings import PolicySettings

    h = Harness(settings({1: {"GBP": "1000"}}, policy=PolicySettings(verify_each_command=True)))
    s = h.session(1)
    h.place(s, 1_000_000, 100_000)
    h.ex._accounts[1].avail[GBP_C] += 1  # money from nowhere
    with pytest.raises(AssertionError, match="conservation broken"):
        h.ex.handle(s, GetOrders())


def test_core_bench_checks_itself() -> None:
    from benchmarks.bench_exchange_core import run_core_bench

    r = run_core_bench(3000, seed=2)
    assert r["invariants"] == "ok" and r["deterministic"] is True
    assert r["ops"] == 3000 and r["ops_per_s"] > 0 and r["resting_bids"] > 0 and r["fees_gbp"] > 0


def test_restore_refuses_a_snapshot_of_other_users_or_scales() -> None:
    from engine.errors import ConfigError

    h = Harness(settings({1: {"GBP": "10"}, 2: {"GBP": "10"}}))
    snap = h.ex.snapshot()
    with pytest.raises(ConfigError, match=r"only in snapshot \[2\], only in settings \[3\]"):
        Exchange.restore(settings({1: {"GBP": "10"}, 3: {"GBP": "10"}}), snap, clock_us=h.clock, rng=random.Random())
    with pytest.raises(ConfigError, match="api_version 2"):
        Exchange.restore(settings({1: {"GBP": "10"}, 2: {"GBP": "10"}}, api_version=1), snap, clock_us=h.clock, rng=random.Random())


# -- set_remaining (replays only) ----------------------------------------------------------


def test_set_remaining_keeps_queue_reservations_and_conservation():
    # The replay's copies of recorded orders follow the recorded remainders: the order stays
    # where it is in its queue, reserves what a resting order of that quantity reserves
    # (O6), the difference moves between reserved and available, and conservation holds.
    h = Harness(settings({1: {"GBP": "20000"}, 2: {"XBT": "1"}}))
    s1, s2 = h.session(1), h.session(2)
    first = h.place(s1, 1_000_000, 2_999_000)
    second = h.place(s1, 500_000, 2_999_000)
    ask = h.place(s2, -700_000, 3_001_000)
    ex = h.ex
    mul, den = ex._books[(XBT_C, GBP_C)].mul, ex._books[(XBT_C, GBP_C)].den
    supply = ex.supply()
    before = ex.balances(1)[GBP_C]
    h.notices(s1)
    assert ex.set_remaining(first.id, 1_000_033)  # type: ignore[attr-defined]
    ex.check_invariants()
    bids, _ = ex.book(XBT_C, GBP_C)
    assert [(o.id, abs(o.quantity)) for o in bids] == [(first.id, 1_000_033), (second.id, 500_000)]
    moved = ceil_div(1_000_033 * 2_999_000 * mul, den) - ceil_div(1_000_000 * 2_999_000 * mul, den)
    assert moved > 0
    avail, reserved = ex.balances(1)[GBP_C]
    assert (avail, reserved) == (before[0] - moved, before[1] + moved)
    assert ex.set_remaining(ask.id, 600_000)  # type: ignore[attr-defined]
    assert ex.balances(2)[XBT_C] == (1 * 10**8 - 600_000, 600_000)
    # extra: a bid holds more than the formula until its next fill, which returns it
    assert ex.set_remaining(first.id, 1_000_000, 50)  # type: ignore[attr-defined]
    assert ex._orders[first.id].reserved == ceil_div(1_000_000 * 2_999_000 * mul, den) + 50  # type: ignore[attr-defined]
    h.place(s2, -400_000, 2_999_000)
    ex.check_invariants()
    assert ex._orders[first.id].quantity == 600_000  # type: ignore[attr-defined]
    # 0 closes (OrderClosed, reservation back); refused: unknown order, negative, unfunded, extra on an ask
    assert ex.set_remaining(second.id, 0)  # type: ignore[attr-defined]
    assert [type(n).__name__ for n in h.notices(s1)][-2:] == ["OrderClosed", "BalanceChanged"]
    assert not ex.set_remaining(second.id, 5)  # type: ignore[attr-defined]
    assert not ex.set_remaining(first.id, -1)  # type: ignore[attr-defined]
    assert not ex.set_remaining(first.id, 10**12)  # type: ignore[attr-defined]
    assert not ex.set_remaining(ask.id, 10, 1)  # type: ignore[attr-defined]
    ex.check_invariants()
    assert ex.supply() == supply
