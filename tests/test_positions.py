"""Positions and PnL: average cost, exact integers and fractions, hand-computed cases."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.scale import V1, V2, XBT_EUR, XBT_GBP
from engine.state.orders import OrderTracker
from engine.state.positions import Position, PositionBook
from engine.strategy import Side
from tests.test_orders import Clock, matched, ok

M = XBT_GBP
B, S = Side.BUY, Side.SELL
# v1 scales: 1 XBT = 10000 units, £1 = 100 units, price £1 = 100.


def test_partial_close_of_a_long_realizes_against_the_average_cost():
    p = Position(M, V1)
    p.add(B, 10_000, 100_00, 100_00)  # 1 XBT at £100
    p.add(B, 10_000, 120_00, 120_00)  # 1 XBT at £120
    assert (p.base, p.cost, p.average_price) == (20_000, 22_000, 110_00)
    p.add(S, 5_000, 130_00, 65_00)  # 0.5 XBT at £130: cost removed £55, made £10
    assert (p.base, p.cost, p.realized) == (15_000, 16_500, 1_000)
    assert p.average_price == 110_00  # selling at average cost leaves the average alone


def test_pro_rata_cost_is_an_exact_fraction():
    p = Position(M, V1)
    p.add(B, 3, 1, 10)  # 3 units for 10p
    p.add(S, 1, 1, 4)  # 1 unit for 4p: cost removed 10/3
    assert p.realized == Fraction(2, 3) and p.cost == Fraction(20, 3) and p.base == 2
    p.add(S, 2, 1, 7)
    assert p.realized == Fraction(2, 3) + 7 - Fraction(20, 3) == 1 and p.cost == 0 and p.base == 0


def test_short_then_cover_past_zero_opens_a_long_at_the_fill_price():
    p = Position(M, V1)
    p.add(S, 10_000, 100_00, 100_00)  # short 1 XBT at £100
    assert (p.base, p.cost, p.average_price) == (-10_000, -10_000, 100_00)
    p.add(B, 4_000, 90_00, 36_00)  # cover 0.4 at £90: +£4
    assert (p.base, p.cost, p.realized) == (-6_000, -6_000, 400)
    p.add(B, 10_000, 80_00, 80_00)  # cover 0.6 at £80 (+£12) and go long 0.4 at £80
    assert (p.base, p.cost, p.realized, p.average_price) == (4_000, 3_200, 1_600, 80_00)
    assert p.unrealized(85_00) == 200 and p.market_value(85_00) == 3_400
    assert p.volume_base == 24_000 and p.volume_counter == 216_00 and p.trades == 3


def test_unrealized_of_a_short_and_fees_in_net():
    p = Position(M, V1)
    p.add(S, 6_000, 100_00, 60_00, counter_fee=18)
    assert p.unrealized(95_00) == 300  # buy back for £57 what was sold for £60
    assert p.unrealized(105_00) == -300
    assert p.net() == -18 and p.net(95_00) == 282
    assert p.fees == 18


def test_v2_scales_value_the_position_exactly():
    p = Position(M, V2)
    p.add(B, 10**8, 50_000_00, 5_000_000)  # 1 XBT at £50,000 (v2: 1e8 units)
    assert p.average_price == 50_000_00
    assert p.unrealized(50_000_01) == 1  # one price tick on one XBT is a penny
    p.add(S, 1, 60_000_00, 1)  # one satoshi: total rounds to 1p (exact value 0.0006)
    assert p.realized == 1 - Fraction(5_000_000, 10**8)
    assert p.unrealized(40_000_00) == Fraction(4_000_000 * (10**8 - 1), 10**8) - p.cost


def test_flat_position_has_no_average_and_zero_cost():
    p = Position(M, V1)
    assert p.average_price is None and p.unrealized(123) == 0
    p.add(B, 7, 3, 2)
    p.add(S, 7, 3, 3)
    assert p.base == 0 and p.cost == 0 and p.realized == 1 and p.average_price is None


def test_bad_fill_is_refused():
    with pytest.raises(ValueError, match="XBT:GBP fill: quantity must be > 0"):
        Position(M, V1).add(B, 0, 1, 1)


def test_position_book_from_tracker_events_with_strategy_filter():
    tr = OrderTracker(clock=Clock())
    book, mm = PositionBook(V1), PositionBook(V1, strategy="mm")
    a = tr.place(1, M, B, quantity=100, price=100_00, tonce=1, strategy="mm")
    b = tr.place(2, XBT_EUR, S, quantity=50, price=90_00, tonce=2, strategy="other")
    tr.on_place_reply(a, ok(7))
    tr.on_place_reply(b, ok(8))
    events = tr.on_notice(matched(qty=100, price=100_00, total=100, bid=7, bid_tonce=1, bid_rem=0, bid_fee=1, ask=9))
    events += tr.on_notice(
        matched(qty=50, price=90_00, total=45, ask=8, ask_tonce=2, ask_rem=0, ask_fee=1, bid=9, market=XBT_EUR)
    )
    events += tr.on_notice(matched(qty=5, price=1, total=1, bid=100, ask=101, bid_rem=0, ask_rem=0))  # not ours
    for ev in events:
        book.apply(ev)
        mm.apply(ev)
    assert (book.position(M).base, book.position(XBT_EUR).base) == (100, -50)
    assert book.position(M).fees == 1 and book.position(XBT_EUR).cost == -45
    assert mm.position(M).base == 100 and mm.position(XBT_EUR).base == 0
    assert {p.market for p in book} == {M, XBT_EUR}
    # An inferred (audit) fill counts for positions like any other.
    tr2 = OrderTracker(clock=Clock())
    c = tr2.place(3, M, S, quantity=10, price=100_00, tonce=3)
    book.apply(tr2.record_inferred_fill(c, quantity=10, total=10))
    assert book.position(M).base == 90


class _UnitLots:
    """Reference: apply a fill one base unit at a time at its average unit value."""

    def __init__(self) -> None:
        self.q, self.cost, self.realized = 0, Fraction(0), Fraction(0)

    def add(self, side: Side, quantity: int, total: int) -> None:
        unit = Fraction(total, quantity)
        for _ in range(quantity):
            d = 1 if side is B else -1
            if self.q and (self.q > 0) != (d > 0):
                avg = self.cost / self.q  # a positive price per unit, long or short
                self.realized += (unit - avg) if self.q > 0 else (avg - unit)
                self.cost -= avg if self.q > 0 else -avg
            else:
                self.cost += unit * d
            self.q += d
            if self.q == 0:
                self.cost = Fraction(0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(Side), st.integers(1, 40), st.integers(0, 500)), max_size=25))
def test_average_cost_equals_the_unit_by_unit_reference_and_cash_identity(fills):
    p, ref, cash = Position(M, V1), _UnitLots(), 0
    for side, qty, total in fills:
        p.add(side, qty, 1, total)
        ref.add(side, qty, total)
        cash += -total if side is B else total
        assert (p.base, p.cost, p.realized) == (ref.q, ref.cost, ref.realized)
        assert cash == p.realized - p.cost  # cash moved = realized − cost of what is open


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([V1, V2]),
       st.lists(st.tuples(st.sampled_from(Side), st.integers(1, 10**6), st.integers(0, 10**7), st.integers(0, 900)),
                max_size=20),
       st.one_of(st.none(), st.integers(1, 10**7)))
def test_net_floor_is_the_floor_of_the_exact_net(scales, fills, mark):
    # net_floor takes the fractions apart for speed; it must stay the exact floor, long,
    # short or flat, with or without a mark, fees included.
    p = Position(XBT_GBP, scales)
    for side, qty, total, fee in fills:
        p.add(side, qty, 1, total, counter_fee=fee)
        assert p.net_floor(mark) == math.floor(p.net(mark))
