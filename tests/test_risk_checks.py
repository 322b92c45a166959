"""Pre-trade rules of the risk governor: each allows at its boundary and denies one unit past it.

Prices and quantities are V2-scaled XBT:GBP ints: 1 XBT = 10**8, £50,000.00 = 5_000_000.
"""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError
from engine.limits import Limit
from engine.risk import (
    RULES,
    MarketView,
    RiskGovernor,
    RiskLimits,
    TradingState,
    UserRiskLimits,
    pre_trade,
)
from engine.scale import V1, V2, XBT_GBP
from engine.strategy import Cancel, CancelAll, PlaceLimit, PlaceMarket, Replace, Side

BUY, SELL = Side.BUY, Side.SELL
XBT = 10**8
P = 5_000_000  # £50,000.00
BOOK = MarketView(best_bid=P - 100, best_ask=P + 100, last=P)  # mid exactly P
BIG_USER = UserRiskLimits(orders=Limit(10**6, 1000.0))  # rate budgets out of the way


def gov(limits: RiskLimits, user: UserRiskLimits = BIG_USER) -> RiskGovernor:
    g = RiskGovernor(user, state_path=None, now=lambda: 0.0)
    g.add_strategy("s", limits)
    return g


def verdict(limits: RiskLimits, intent: object, view: MarketView = BOOK, user: UserRiskLimits = BIG_USER):
    """(rule, reason) of the denial, or None if allowed."""
    d = gov(limits, user).check("s", intent, view, XBT_GBP)
    return None if d is None else (d.rule, d.reason)


def rule(limits: RiskLimits, intent: object, view: MarketView = BOOK) -> str | None:
    v = verdict(limits, intent, view)
    return None if v is None else v[0]


# -- per-order limits ---------------------------------------------------------------------------


def test_max_order_quantity_boundary():
    lim = RiskLimits(max_order_quantity=XBT)
    assert verdict(lim, PlaceLimit(BUY, P, XBT)) is None
    assert verdict(lim, PlaceLimit(SELL, P, XBT + 1)) == (
        "max_order_quantity",
        "max_order_quantity: 1.00000001 XBT > limit 1.00000000 XBT",
    )
    assert verdict(lim, PlaceLimit(BUY, P, 5 * XBT))[1] == "max_order_quantity: 5.00000000 XBT > limit 1.00000000 XBT"
    assert rule(lim, PlaceMarket(BUY, quantity=XBT)) is None
    assert rule(lim, PlaceMarket(BUY, quantity=XBT + 1)) == "max_order_quantity"
    assert rule(lim, Replace(7, P, XBT)) is None
    assert rule(lim, Replace(7, P, XBT + 1)) == "max_order_quantity"


def test_max_order_notional_uses_the_exact_ceiling():
    # 1 XBT at £50,000.00 is exactly 5_000_000 pence; one satoshi more is 5_000_000.05 -> 5_000_001
    lim = RiskLimits(max_order_notional=5_000_000)
    assert verdict(lim, PlaceLimit(BUY, P, XBT)) is None
    assert verdict(lim, PlaceLimit(SELL, P, XBT + 1)) == (
        "max_order_notional",
        "max_order_notional: 50000.01 GBP > limit 50000.00 GBP",
    )
    # a satoshi is worth 0.05 pence here: 20 satoshis are exactly 1 penny, 21 round up to 2
    tiny = RiskLimits(max_order_notional=1)
    assert rule(tiny, PlaceLimit(BUY, P, 20)) is None
    assert rule(tiny, PlaceLimit(BUY, P, 21)) == "max_order_notional"


def test_max_order_notional_of_market_orders():
    lim = RiskLimits(max_order_notional=5_000_000)
    far = MarketView(best_bid=P - 1, best_ask=P)
    # by quantity: far-side best price x quantity (a buy is valued at the best ask)
    assert rule(lim, PlaceMarket(BUY, quantity=XBT), far) is None
    assert rule(lim, PlaceMarket(BUY, quantity=XBT + 1), far) == "max_order_notional"
    assert rule(lim, PlaceMarket(SELL, quantity=XBT + 1), far) is None  # best bid is one tick lower
    # by total: the total itself
    assert rule(lim, PlaceMarket(BUY, total=5_000_000), far) is None
    assert verdict(lim, PlaceMarket(SELL, total=5_000_001), far)[1] == "max_order_notional: 50000.01 GBP > limit 50000.00 GBP"
    # no far side: cannot be valued, fail closed
    assert verdict(lim, PlaceMarket(BUY, quantity=1), MarketView(best_bid=P))[1] == (
        "max_order_notional: cannot value a market buy: no best ask"
    )
    assert rule(RiskLimits(), PlaceMarket(BUY, quantity=1), MarketView()) is None  # nothing to enforce


def test_notional_divisor_follows_the_api_version():
    # V1 XBT scale is 10**4: 1 XBT = 10_000 and the notional divisor is 10_000 (RELIABILITY §0.8)
    g = RiskGovernor(BIG_USER, state_path=None, now=lambda: 0.0, scales=V1)
    g.add_strategy("s", RiskLimits(max_order_notional=5_000_000))
    assert g.check("s", PlaceLimit(BUY, P, 10_000), BOOK, XBT_GBP) is None
    d = g.check("s", PlaceLimit(BUY, P, 10_001), BOOK, XBT_GBP)
    assert d is not None and d.reason == "max_order_notional: 50005.00 GBP > limit 50000.00 GBP"
    assert V2.bid_reservation(XBT, P, XBT_GBP) == V1.bid_reservation(10_000, P, XBT_GBP) == 5_000_000


def test_max_position_worst_case_includes_open_orders():
    lim = RiskLimits(max_position=XBT)
    view = MarketView(best_bid=P - 100, best_ask=P + 100, position=XBT // 2, open_buy_quantity=XBT // 4)
    assert rule(lim, PlaceLimit(BUY, P, XBT // 4), view) is None
    assert verdict(lim, PlaceLimit(BUY, P, XBT // 4 + 1), view) == (
        "max_position",
        "max_position: worst-case position +1.00000001 XBT exceeds limit 1.00000000 XBT "
        "(position +0.50000000 XBT, open buys 0.25000000 XBT, this buy 0.25000001 XBT)",
    )
    # short side: 0.5 long, 0.5 already offered, so 1.0 more takes it to -1.0 exactly
    short = MarketView(best_bid=P - 100, best_ask=P + 100, position=XBT // 2, open_sell_quantity=XBT // 2)
    assert rule(lim, PlaceLimit(SELL, P, XBT), short) is None
    assert rule(lim, PlaceLimit(SELL, P, XBT + 1), short) == "max_position"
    assert rule(lim, PlaceMarket(SELL, quantity=XBT + 1), short) == "max_position"


def test_max_position_lets_an_oversized_position_shrink():
    lim = RiskLimits(max_position=XBT)
    over = MarketView(best_bid=P - 100, best_ask=P + 100, position=3 * XBT)
    assert rule(lim, PlaceLimit(SELL, P, XBT)) is None
    assert rule(lim, PlaceLimit(SELL, P, XBT), over) is None
    assert rule(lim, PlaceLimit(BUY, P, 1), over) == "max_position"


def test_market_order_by_total_is_sized_at_the_best_far_price():
    lim = RiskLimits(max_position=XBT)
    view = MarketView(best_bid=P - 100, best_ask=P)
    # £50,000.00 buys at most 1 XBT at a best ask of £50,000.00 (deeper asks are dearer)
    assert rule(lim, PlaceMarket(BUY, total=5_000_000), view) is None
    assert rule(lim, PlaceMarket(BUY, total=5_000_001), view) == "max_position"
    assert verdict(lim, PlaceMarket(BUY, total=1), MarketView(best_bid=P))[1] == (
        "max_position: cannot size a market buy by total: no best ask"
    )


def test_open_orders_per_strategy_boundary():
    lim = RiskLimits(max_open_orders=3)
    two = MarketView(best_bid=P - 100, best_ask=P + 100, open_orders=2, user_open_orders=2)
    three = MarketView(best_bid=P - 100, best_ask=P + 100, open_orders=3, user_open_orders=3)
    assert rule(lim, PlaceLimit(BUY, P, 1), two) is None
    assert verdict(lim, PlaceLimit(BUY, P, 1), three) == ("max_open_orders", "max_open_orders: 3 open + 1 > limit 3")
    # market orders never rest, and a replace swaps one resting order for another
    assert rule(lim, PlaceMarket(BUY, quantity=1), three) is None
    assert rule(lim, Replace(1, P, 1), three) is None


def test_L3_1001st_open_order_is_denied_locally():
    g = gov(RiskLimits())
    for n in range(1000):
        view = MarketView(best_bid=P - 100, best_ask=P + 100, open_orders=n, user_open_orders=n)
        assert g.check("s", PlaceLimit(BUY, P - 100 - n, 1), view, XBT_GBP) is None
    full = MarketView(best_bid=P - 100, best_ask=P + 100, open_orders=1000, user_open_orders=1000)
    d = g.check("s", PlaceLimit(BUY, P - 2000, 1), full, XBT_GBP)
    assert d is not None and d.rule == "user_max_open_orders"
    assert d.reason == "user_max_open_orders: the user has 1000 open + 1 > limit 1000 (LIMITS.md)"
    # counted per user: other strategies' orders use up the same 1000
    others = MarketView(best_bid=P - 100, best_ask=P + 100, open_orders=0, user_open_orders=1000)
    assert rule(RiskLimits(), PlaceLimit(BUY, P, 1), others) == "user_max_open_orders"
    small = UserRiskLimits(max_open_orders=10, orders=Limit(10**6, 1000.0))
    assert verdict(RiskLimits(), PlaceLimit(BUY, P, 1), MarketView(best_ask=P + 1, user_open_orders=9), small) is None
    assert verdict(RiskLimits(), PlaceLimit(BUY, P, 1), MarketView(best_ask=P + 1, user_open_orders=10), small)[0] == (
        "user_max_open_orders"
    )


def test_user_max_open_orders_cannot_exceed_limits_md():
    with pytest.raises(ConfigError, match=r"max_open_orders must be an int in 1..1000"):
        UserRiskLimits(max_open_orders=1001)


# -- price band ---------------------------------------------------------------------------------


def test_price_band_boundary_against_the_mid():
    lim = RiskLimits(price_band_bps=500)  # 5% of the mid 5_000_000 is 250_000
    assert rule(lim, PlaceLimit(SELL, P + 250_000, 1)) is None
    assert verdict(lim, PlaceLimit(SELL, P + 250_001, 1)) == (
        "price_band",
        "price_band: sell at 52500.01 GBP is 501 bps from the mid 50000.00 GBP > band 500 bps",
    )
    assert rule(lim, PlaceLimit(BUY, P - 250_000, 1)) is None
    assert rule(lim, PlaceLimit(BUY, P - 250_001, 1)) == "price_band"
    assert rule(lim, Replace(3, P - 250_001, 1)) == "price_band"


def test_price_band_with_a_half_tick_mid_is_exact():
    # mid of 100 and 101 is 100.5 (kept as 201/2); 100% band: 201 is exactly 100.5 away
    lim = RiskLimits(price_band_bps=10_000)
    view = MarketView(best_bid=100, best_ask=101)
    assert rule(lim, PlaceLimit(SELL, 201, 1), view) is None
    assert verdict(lim, PlaceLimit(SELL, 202, 1), view)[1] == (
        "price_band: sell at 2.02 GBP is 10100 bps from the mid 1.005 GBP > band 10000 bps"
    )


def test_B8_price_ten_times_off_the_market_is_denied():
    lim = RiskLimits(price_band_bps=1000)
    d = verdict(lim, PlaceLimit(BUY, 10 * P, 1))
    assert d is not None and d[0] == "price_band" and "90000 bps" in d[1]
    assert rule(lim, PlaceLimit(SELL, P // 10, 1)) == "price_band"


def test_price_band_reference_falls_back_and_is_configurable():
    lim = RiskLimits(price_band_bps=100)
    only_last = MarketView(best_bid=P, last=2 * P)  # one-sided book: no mid, use last
    assert rule(lim, PlaceLimit(BUY, 2 * P, 1), only_last) is None
    assert "from the last 100000.00 GBP" in verdict(lim, PlaceLimit(BUY, P, 1), only_last)[1]
    by_last = RiskLimits(price_band_bps=100, price_band_reference="last")
    both = MarketView(best_bid=P - 100, best_ask=P + 100, last=2 * P)
    assert rule(by_last, PlaceLimit(BUY, 2 * P, 1), both) is None
    assert rule(lim, PlaceLimit(BUY, 2 * P, 1), both) == "price_band"  # mid wins by default
    assert rule(by_last, PlaceLimit(BUY, P, 1), MarketView(best_bid=P - 100, best_ask=P + 100)) is None  # mid fallback
    # nothing to measure against: fail closed
    assert verdict(lim, PlaceLimit(BUY, P, 1), MarketView()) == (
        "price_band",
        "price_band: no reference price (no bid and ask for a mid, no last trade) for a buy at 50000.00 GBP",
    )
    assert rule(lim, PlaceMarket(BUY, quantity=1), BOOK) is None  # market orders have no price to band


# -- no self-crossing ---------------------------------------------------------------------------

OWN = ((SELL, P + 200), (SELL, P + 100), (BUY, P - 100), (BUY, P - 300))


def test_self_cross_boundary():
    view = MarketView(best_bid=P - 100, best_ask=P + 100, own_resting=OWN)
    lim = RiskLimits()
    assert rule(lim, PlaceLimit(BUY, P + 99, 1), view) is None
    assert verdict(lim, PlaceLimit(BUY, P + 100, 1), view) == (
        "self_cross",
        "self_cross: buy at 50001.00 GBP would cross the user's own resting ask at 50001.00 GBP",
    )
    assert rule(lim, PlaceLimit(SELL, P - 99, 1), view) is None
    assert rule(lim, PlaceLimit(SELL, P - 100, 1), view) == "self_cross"
    assert rule(lim, Replace(5, P + 100, 1), view) == "self_cross"  # either side would do it
    assert rule(lim, PlaceLimit(BUY, P + 100, 1), MarketView(own_resting=((BUY, P + 500),))) is None


def test_self_cross_market_orders():
    lim = RiskLimits()
    asks_only = MarketView(best_bid=P - 100, best_ask=P + 100, own_resting=((SELL, P + 900),))
    assert rule(lim, PlaceMarket(BUY, quantity=1), asks_only) == "self_cross"
    assert rule(lim, PlaceMarket(BUY, total=100), asks_only) == "self_cross"
    assert rule(lim, PlaceMarket(SELL, quantity=1), asks_only) is None


def test_replace_side_narrows_the_checks():
    view = MarketView(best_bid=P - 100, best_ask=P + 100, own_resting=OWN)
    g = gov(RiskLimits())
    assert g.check("s", Replace(5, P + 100, 1), view, XBT_GBP, replace_side=SELL) is None
    d = g.check("s", Replace(5, P + 100, 1), view, XBT_GBP, replace_side=BUY)
    assert d is not None and d.rule == "self_cross"


# -- bad output (B4, B8) ------------------------------------------------------------------------

BAD = [
    (PlaceLimit(BUY, P, float("nan")), "quantity must be an int in scaled XBT units, got float nan"),  # type: ignore[arg-type]
    (PlaceLimit(BUY, P, 1.0), "quantity must be an int in scaled XBT units, got float 1.0"),  # type: ignore[arg-type]
    (PlaceLimit(BUY, P, True), "quantity must be an int in scaled XBT units, got bool True"),
    (PlaceLimit(BUY, P, "100"), "got str '100'"),  # type: ignore[arg-type]
    (PlaceLimit(BUY, P, Decimal("1")), "got Decimal Decimal('1')"),  # type: ignore[arg-type]
    (PlaceLimit(BUY, P, np.int64(5)), "got int64 np.int64(5) (convert numpy integers with int())"),  # type: ignore[arg-type]
    (PlaceLimit(BUY, P, 0), "quantity must be > 0, got 0"),
    (PlaceLimit(SELL, P, -XBT), "quantity must be > 0, got -100000000"),
    (PlaceLimit(BUY, P, 2**63), "quantity int 9223372036854775808 does not fit a signed 64-bit integer"),
    (PlaceLimit(BUY, 0, 1), "price must be > 0, got 0"),
    (PlaceLimit(BUY, -5, 1), "price must be > 0, got -5"),
    (PlaceLimit(BUY, float("inf"), 1), "price must be an int in scaled XBT:GBP price units, got float inf"),  # type: ignore[arg-type]
    (PlaceLimit(BUY, None, 1), "price must be an int in scaled XBT:GBP price units, got NoneType None"),  # type: ignore[arg-type]
    (PlaceLimit(1, P, 1), "side must be Side.BUY or Side.SELL, got int 1"),  # type: ignore[arg-type]
    (PlaceLimit(BUY, P, 1, persist="no"), "persist must be a bool, got str 'no'"),  # type: ignore[arg-type]
    (PlaceLimit(BUY, 2**62, 2**62), "order total would overflow"),
    (PlaceMarket(BUY), "a market order needs exactly one of quantity or total"),
    (PlaceMarket(BUY, quantity=1, total=1), "a market order needs exactly one of quantity or total"),
    (PlaceMarket(SELL, total=-1), "total must be > 0, got -1"),
    (PlaceMarket(SELL, quantity=float("-inf")), "got float -inf"),  # type: ignore[arg-type]
    (Replace(1, P, 0), "quantity must be > 0, got 0"),
    (Replace("1", P, 1), "ref must be an int, got str '1'"),  # type: ignore[arg-type]
    (Cancel(None), "ref must be an int, got NoneType None"),  # type: ignore[arg-type]
    ({"side": "buy"}, "not an intent"),
    (None, "not an intent"),
]


@pytest.mark.parametrize(("intent", "why"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_B4_B8_bad_output_is_denied_with_a_reason(intent, why):
    d = gov(RiskLimits()).check("s", intent, BOOK, XBT_GBP)
    assert d is not None
    assert d.rule == "invalid_intent"
    assert d.reason.startswith("invalid_intent: ")
    assert why in d.reason
    assert d.intent is intent


def test_huge_reprs_are_truncated_in_reasons():
    # repr() of a 5000-digit int raises ValueError: the gate must still answer, briefly
    d = gov(RiskLimits()).check("s", PlaceLimit(BUY, P, 10**5000), BOOK, XBT_GBP)
    assert d is not None and d.rule == "invalid_intent"
    assert d.reason == "invalid_intent: quantity int <16610-bit int> does not fit a signed 64-bit integer"

    class Hostile:
        def __repr__(self) -> str:
            raise RuntimeError("boom")

    d = gov(RiskLimits()).check("s", Hostile(), BOOK, XBT_GBP)
    assert d is not None and d.rule == "invalid_intent"
    assert d.reason.endswith("Hostile <unrepresentable Hostile: RuntimeError>")


# -- trading states -----------------------------------------------------------------------------


def test_halted_allows_only_cancels():
    g = gov(RiskLimits())
    g.halt("s", "operator")
    for intent in (PlaceLimit(BUY, P, 1), PlaceMarket(SELL, quantity=1), Replace(1, P, 1)):
        d = g.check("s", intent, BOOK, XBT_GBP)
        assert d is not None and d.rule == "halted", intent
        assert d.reason == f"halted: trading is HALTED; only cancels are allowed, not {type(intent).__name__}"
    assert g.check("s", Cancel(1), BOOK, XBT_GBP) is None
    assert g.check("s", CancelAll(), BOOK, XBT_GBP) is None
    assert g.check("s", PlaceLimit(BUY, P, 0), BOOK, XBT_GBP).rule == "invalid_intent"  # shape first


def test_reducing_allows_only_orders_towards_zero():
    lim = RiskLimits()
    g = gov(lim)
    g.reduce("s", "end of day")
    long = MarketView(best_bid=P - 100, best_ask=P + 100, position=XBT, open_sell_quantity=XBT // 4)
    assert g.check("s", PlaceLimit(SELL, P, XBT * 3 // 4), long, XBT_GBP) is None
    d = g.check("s", PlaceLimit(SELL, P, XBT * 3 // 4 + 1), long, XBT_GBP)
    assert d is not None and d.rule == "reducing"
    assert d.reason == (
        "reducing: trading is REDUCING; a sell of 0.75000001 XBT with open sells 0.25000000 XBT would take "
        "the position from +1.00000000 XBT to -0.00000001 XBT, not towards zero"
    )
    assert g.check("s", PlaceLimit(BUY, P, 1), long, XBT_GBP).rule == "reducing"
    assert g.check("s", PlaceMarket(SELL, quantity=XBT * 3 // 4), long, XBT_GBP) is None
    assert g.check("s", Replace(9, P, XBT * 3 // 4), long, XBT_GBP, replace_side=SELL) is None
    short = MarketView(best_bid=P - 100, best_ask=P + 100, position=-XBT)
    assert g.check("s", PlaceLimit(BUY, P, XBT), short, XBT_GBP) is None
    assert g.check("s", PlaceLimit(BUY, P, XBT + 1), short, XBT_GBP).rule == "reducing"
    assert g.check("s", PlaceMarket(BUY, total=5_000_100), short, XBT_GBP) is None  # 1 XBT at the best ask
    assert g.check("s", PlaceMarket(BUY, total=5_000_101), short, XBT_GBP).rule == "reducing"
    flat = MarketView(best_bid=P - 100, best_ask=P + 100, position=0)
    assert g.check("s", PlaceLimit(SELL, P, 1), flat, XBT_GBP).rule == "reducing"
    assert g.check("s", PlaceLimit(BUY, P, 1), flat, XBT_GBP).rule == "reducing"
    assert g.check("s", Cancel(3), flat, XBT_GBP) is None
    assert g.check("s", CancelAll(), flat, XBT_GBP) is None
    assert g.state("s") is TradingState.REDUCING


def test_pre_trade_is_pure_and_reusable():
    lim, user = RiskLimits(max_order_quantity=XBT), UserRiskLimits()
    args = (BOOK, XBT_GBP, lim, user, TradingState.ACTIVE, V2)
    assert pre_trade(PlaceLimit(BUY, P, XBT), *args) is None
    assert pre_trade(PlaceLimit(BUY, P, XBT + 1), *args).rule == "max_order_quantity"
    assert pre_trade(PlaceLimit(BUY, P, XBT), BOOK, XBT_GBP, lim, user, TradingState.HALTED, V2).rule == "halted"


def test_limits_validation():
    with pytest.raises(ConfigError, match=r"risk.max_position must be an int >= 0"):
        RiskLimits(max_position=-1)
    with pytest.raises(ConfigError, match=r"risk.max_order_quantity must be an int >= 0"):
        RiskLimits(max_order_quantity=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"risk.price_band_bps must be an int >= 0"):
        RiskLimits(price_band_bps=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"price_band_reference must be 'mid' or 'last'"):
        RiskLimits(price_band_reference="bid")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"safety_factor must be in \(0, 1\]"):
        UserRiskLimits(safety_factor=1.5)
    assert UserRiskLimits().order_budget == Limit(900, 1000.0, "user")
    assert UserRiskLimits(safety_factor=0.29, orders=Limit(100, 10.0)).order_budget.count == 29  # not 28


# -- properties: whatever a strategy emits, the gate answers; what it allows respects every limit --

LIM = RiskLimits(
    max_order_quantity=2 * XBT,
    max_order_notional=8_000_000,
    max_position=3 * XBT,
    max_open_orders=5,
    price_band_bps=300,
)
junk = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
sides = st.sampled_from([BUY, SELL])
qtys = st.integers(min_value=-10, max_value=3 * XBT)
prices = st.integers(min_value=P * 965 // 1000, max_value=P * 1035 // 1000)
any_intent = st.one_of(
    st.builds(PlaceLimit, st.one_of(sides, junk), st.one_of(prices, junk), st.one_of(qtys, junk)),
    st.builds(PlaceMarket, st.one_of(sides, junk), st.one_of(st.none(), qtys, junk), st.one_of(st.none(), qtys, junk)),
    st.builds(Replace, st.one_of(st.integers(0, 9), junk), st.one_of(prices, junk), st.one_of(qtys, junk)),
    st.builds(Cancel, st.one_of(st.integers(0, 9), junk)),
    st.just(CancelAll()),
    junk,
)
typed_intent = st.one_of(
    st.builds(PlaceLimit, sides, prices, qtys),
    st.builds(PlaceMarket, sides, quantity=qtys),
    st.builds(PlaceMarket, sides, total=st.integers(-10, 10_000_000)),
    st.builds(Replace, st.integers(0, 9), prices, qtys),
    st.builds(Cancel, st.integers(0, 9)),
    st.just(CancelAll()),
)
maybe_price = st.one_of(st.none(), st.none(), prices)
views = st.builds(
    MarketView,
    best_bid=st.just(P - 500),
    best_ask=st.just(P + 500),
    last=st.just(P),
    position=st.integers(-4 * XBT, 4 * XBT),
    open_orders=st.integers(0, 5),
    user_open_orders=st.integers(6, 1000),
    open_buy_quantity=st.integers(0, XBT),
    open_sell_quantity=st.integers(0, XBT),
    own_best_bid=maybe_price,
    own_best_ask=maybe_price,
)
states = st.sampled_from(list(TradingState))


@settings(max_examples=300, deadline=None)
@given(intent=any_intent, view=views)
def test_B8_any_output_gets_a_well_formed_answer(intent, view):
    d = gov(LIM).check("s", intent, view, XBT_GBP)
    if d is not None:
        assert d.rule in RULES and d.rule != "internal_error"
        assert d.reason.startswith(d.rule + ": ")


@settings(max_examples=1000, deadline=None)
@given(intent=typed_intent, view=views, state=states, replace_side=st.one_of(st.none(), sides))
def test_allowed_intents_respect_every_limit(intent, view, state, replace_side):
    g = gov(LIM)
    if state is TradingState.HALTED:
        g.halt("s", "test")
    elif state is TradingState.REDUCING:
        g.reduce("s", "test")
    d = g.check("s", intent, view, XBT_GBP, replace_side=replace_side)
    if d is not None:
        assert d.rule in RULES and d.rule != "internal_error"
        return
    if isinstance(intent, (Cancel, CancelAll)):
        return
    assert state is not TradingState.HALTED
    # the reference model: plain arithmetic on the intent, independent of the implementation
    if isinstance(intent, PlaceMarket):
        far = view.best_ask if intent.side is BUY else view.best_bid
        q = intent.quantity if intent.quantity is not None else -(-intent.total * XBT // far)
        notional = -(-q * far // XBT) if intent.quantity is not None else intent.total
        price, sides_ = None, [intent.side]
    else:
        q, price = intent.quantity, intent.price
        notional = -(-q * price // XBT)
        if isinstance(intent, Replace):
            sides_ = [replace_side] if replace_side is not None else [BUY, SELL]
        else:
            sides_ = [intent.side]
    assert 0 < q <= LIM.max_order_quantity and 0 < notional <= LIM.max_order_notional
    if price is not None:
        assert abs(price - P) * 10000 <= 300 * P
    if isinstance(intent, PlaceLimit):
        assert view.open_orders < LIM.max_open_orders and view.user_open_orders < 1000
    for side in sides_:
        sign = 1 if side is BUY else -1
        worst = view.position + sign * ((view.open_buy_quantity if sign > 0 else view.open_sell_quantity) + q)
        assert abs(worst) <= LIM.max_position or abs(worst) < abs(view.position)
        if state is TradingState.REDUCING:
            assert abs(worst) < abs(view.position) and worst * view.position >= 0
        own_far = view.own_best_ask if side is BUY else view.own_best_bid
        if price is None:
            assert own_far is None  # a market order could meet any own order on the far side
        elif own_far is not None:
            assert price < own_far if side is BUY else price > own_far


def test_tighten_takes_the_stricter_limit_field_by_field():
    own = RiskLimits(max_order_quantity=XBT, max_position=None, price_band_bps=300, order_rate=Limit(10, 10.0))
    glob = RiskLimits(max_order_quantity=2 * XBT, max_position=5 * XBT, price_band_bps=200, price_band_reference="last")
    t = own.tighten(glob)
    assert (t.max_order_quantity, t.max_position, t.price_band_bps) == (XBT, 5 * XBT, 200)
    assert t.price_band_reference == "mid" and t.order_rate == Limit(10, 10.0)
    assert RiskLimits().tighten(glob) == glob


def test_self_cross_with_precomputed_own_best_prices():
    lim = RiskLimits()
    view = MarketView(best_bid=P - 100, best_ask=P + 100, own_best_bid=P - 100, own_best_ask=P + 100)
    assert rule(lim, PlaceLimit(BUY, P + 99, 1), view) is None
    assert rule(lim, PlaceLimit(BUY, P + 100, 1), view) == "self_cross"
    assert rule(lim, PlaceLimit(SELL, P - 100, 1), view) == "self_cross"
    # both inputs together: the union counts
    mixed = MarketView(best_bid=P - 100, best_ask=P + 100, own_best_ask=P + 300, own_resting=((SELL, P + 50),))
    assert rule(lim, PlaceLimit(BUY, P + 50, 1), mixed) == "self_cross"
    assert rule(lim, PlaceMarket(BUY, quantity=1), MarketView(best_ask=P, own_best_ask=P + 900)) == "self_cross"
