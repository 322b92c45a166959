"""P2/P3: scale conversions and the scale-aware reservation formula."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ScaleError
from engine.scale import (
    EUR,
    GBP,
    V1,
    V2,
    XBT,
    XBT_EUR,
    XBT_GBP,
    ceil_div,
    format_price,
    market_by_codes,
    market_by_name,
    parse_price,
    to_scaled,
)


def test_p3_scale_md_table_v1_and_v2():
    assert V1.parse_amount("12.3456", XBT) == 123456
    assert V2.parse_amount("12.3456", XBT) == 1234560000
    assert V2.parse_amount("9876.54", GBP) == 987654
    assert V1.parse_amount("1.5", XBT) == 15000
    assert V2.parse_amount("20", GBP) == 2000
    assert parse_price("543.21", XBT_GBP) == 54321
    assert parse_price("1000", XBT_EUR) == 100000


def test_p3_guard_v1_example_is_not_v2():
    # SCALE.md's "Ƀ1.5 -> 15000" is an API v1 figure; under v2 it is 150000000.
    assert V2.parse_amount("1.5", XBT) == 150_000_000 != 15000
    assert V2.format_amount(15000, XBT) == "0.00015000"


def test_codes_match_spec():
    assert (XBT.code, EUR.code, GBP.code) == (0xF800, 0xFA00, 0xFA20) == (63488, 64000, 64032)
    assert market_by_codes(63488, 64032) is XBT_GBP
    assert market_by_name("XBT:EUR") is XBT_EUR
    assert market_by_name("XBT/GBP") is XBT_GBP
    with pytest.raises(ScaleError, match="unknown market"):
        market_by_name("XBT:USD")


@pytest.mark.parametrize(
    "text, asset, why",
    [
        ("0.123456789", XBT, "at most 8 decimal places"),
        ("1.001", GBP, "at most 2 decimal places"),
        ("1e3", GBP, "plain decimal"),
        ("NaN", GBP, "plain decimal"),
        ("Infinity", XBT, "plain decimal"),
        ("1,5", GBP, "plain decimal"),
        ("", GBP, "plain decimal"),
        ("0x10", GBP, "plain decimal"),
        ("99999999999999999999", XBT, "64-bit"),
    ],
)
def test_p3_unrepresentable_amounts_are_refused(text, asset, why):
    with pytest.raises(ScaleError, match=why):
        V2.parse_amount(text, asset)


def test_floats_are_refused_not_rounded():
    with pytest.raises(ScaleError, match="decimal text"):
        to_scaled(0.1, 100)  # type: ignore[arg-type]
    with pytest.raises(ScaleError, match="decimal text"):
        to_scaled(True, 100)  # type: ignore[arg-type]


def test_trailing_zeros_beyond_scale_are_exact():
    assert V2.parse_amount("1.500", GBP) == 150
    assert V2.parse_amount("-0.01", GBP) == -1
    assert to_scaled(Decimal("1.25"), 100) == 125
    assert to_scaled(Decimal("1E+2"), 100) == 10000


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_p3_round_trip_amounts(v):
    for asset in (XBT, GBP, EUR):
        for sc in (V1, V2):
            assert sc.parse_amount(sc.format_amount(v, asset), asset) == v


@given(st.integers(min_value=1, max_value=2**40))
def test_p3_round_trip_prices(p):
    assert parse_price(format_price(p, XBT_GBP), XBT_GBP) == p


def test_p2_impl_guide_reservation_v1():
    # IMPL-GUIDE: "an order to buy 12345 units ... at a price of 1234500 would reserve 1523991"
    assert V1.bid_reservation(12345, 1234500, XBT_GBP) == 1523991
    assert V1.reservation(12345, 1234500, XBT_GBP) == (GBP, 1523991)
    assert V1.reservation(-12345, 1234500, XBT_GBP) == (XBT, 12345)


def test_p2_impl_guide_reservation_v2_equivalent():
    # The same order in v2 units: 1.2345 XBT = 123450000, price unchanged.
    q = V2.parse_amount(V1.format_amount(12345, XBT), XBT)
    assert q == 123_450_000
    assert V2.bid_reservation(q, 1234500, XBT_GBP) == 1523991


def test_p2_partial_fill_requirement_v1():
    # After the fee the reservation left is 1371607; 11111 would need 1371653, 11110 needs 1371530.
    assert V1.bid_reservation(11111, 1234500, XBT_GBP) == 1371653
    assert V1.bid_reservation(11110, 1234500, XBT_GBP) == 1371530
    assert V1.max_bid_quantity(1371607, 1234500, XBT_GBP) == 11110


@given(
    st.integers(min_value=1, max_value=10**12),
    st.integers(min_value=1, max_value=10**9),
    st.sampled_from([V1, V2]),
)
def test_p2_reservation_formula_property(q, p, sc):
    cs, bs, ps = GBP.scale(sc.api), XBT.scale(sc.api), XBT_GBP.price_scale
    r = sc.bid_reservation(q, p, XBT_GBP)
    assert r == ceil_div(q * p * cs, bs * ps)
    # r is the least integer covering the exact total
    assert r * bs * ps >= q * p * cs > (r - 1) * bs * ps
    # max_bid_quantity is the inverse: the largest q' whose reservation fits
    m = sc.max_bid_quantity(r, p, XBT_GBP)
    assert m >= q
    assert sc.bid_reservation(m, p, XBT_GBP) <= r < sc.bid_reservation(m + 1, p, XBT_GBP)
