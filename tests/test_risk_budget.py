"""Order budgets of the risk governor: runaway strategies (F16) and fair share of a user (L2).

The clock is injected; times are exact binary fractions so window edges are exact.
"""

from __future__ import annotations

import pytest

from engine.limits import Limit
from engine.risk import MarketView, RiskGovernor, RiskLimits, UserRiskLimits
from engine.scale import XBT_GBP
from engine.strategy import Cancel, CancelAll, PlaceLimit, Replace, Side

P = 5_000_000
BOOK = MarketView(best_bid=P - 100, best_ask=P + 100, last=P)
ORDER = PlaceLimit(Side.BUY, P, 1)
DT = 2.0**-14  # 16,384 intents per second: faster than the 10,000/s of F16, and exact in binary


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def governor(user: UserRiskLimits | None = None, **strategies: Limit | None) -> tuple[RiskGovernor, Clock]:
    clock = Clock()
    g = RiskGovernor(user or UserRiskLimits(), state_path=None, now=clock)
    for name, rate in strategies.items():
        g.add_strategy(name, RiskLimits(order_rate=rate))
    return g, clock


def burst(g: RiskGovernor, clock: Clock, name: str, n: int, start: float, intent=ORDER) -> list[float]:
    """Emit ``n`` intents DT apart from ``start``; return the times that were allowed."""
    allowed = []
    for i in range(n):
        clock.t = start + i * DT
        if g.check(name, intent, BOOK, XBT_GBP) is None:
            allowed.append(clock.t)
    return allowed


# -- F16: a runaway strategy gets at most its budget --------------------------------------------


def test_F16_runaway_gets_exactly_its_budget_and_refills_at_exact_times():
    g, clock = governor(run=Limit(100, 100.0))
    allowed = burst(g, clock, "run", 10_000, 0.0)
    assert allowed == [i * DT for i in range(100)]
    st = g.statistics().strategies["run"]
    assert (st.allowed, dict(st.denials), st.tokens_left) == (100, {"order_rate": 9_900}, 0)

    clock.t = 99.5
    d = g.check("run", ORDER, BOOK, XBT_GBP)
    assert d is not None and d.reason == "order_rate: strategy run budget of 100 per 100 s used, next token in 0.5 s"
    # the sliding window frees each token exactly 100 s after it was spent
    for k in range(3):
        clock.t = 100.0 + k * DT
        assert g.check("run", ORDER, BOOK, XBT_GBP) is None
        d = g.check("run", ORDER, BOOK, XBT_GBP)
        assert d is not None and d.rule == "order_rate"
        assert d.reason.endswith(f"next token in {DT:.6f} s")
    clock.t = 100.0 + 2.5 * DT
    assert g.check("run", ORDER, BOOK, XBT_GBP).rule == "order_rate"
    # one second of runaway at 100 s: exactly the 97 tokens left over from the first burst
    assert len(burst(g, clock, "run", 16_384, 100.0 + 3 * DT)) == 97


def test_F16_runaway_under_a_token_bucket():
    g, clock = governor(UserRiskLimits(algorithm="bucket"), run=Limit(100, 100.0))
    assert len(burst(g, clock, "run", 10_000, 0.0)) == 100  # the full bucket, then nothing
    clock.t = 0.5
    assert g.check("run", ORDER, BOOK, XBT_GBP).reason.endswith("next token in 0.5 s")
    clock.t = 1.0
    assert g.check("run", ORDER, BOOK, XBT_GBP) is None  # 1 token per second
    assert g.check("run", ORDER, BOOK, XBT_GBP).rule == "order_rate"
    clock.t = 3.0
    assert [g.check("run", ORDER, BOOK, XBT_GBP) is None for _ in range(3)] == [True, True, False]


def test_user_budget_caps_a_generous_strategy_budget():
    g, clock = governor(big=Limit(2000, 1000.0))
    assert len(burst(g, clock, "big", 5_000, 0.0)) == 900  # LIMITS.md 1000 per 1000 s x 0.9
    d = g.check("big", ORDER, BOOK, XBT_GBP)
    assert d is not None and d.rule == "user_order_rate"
    assert d.reason.startswith("user_order_rate: user budget of 900 per 1000 s used, next token in 999.69")


def test_cancels_spend_tokens_and_replace_spends_two_atomically():
    g, clock = governor(s=Limit(3, 10.0))
    assert g.check("s", Cancel(1), BOOK, XBT_GBP) is None
    assert g.check("s", ORDER, BOOK, XBT_GBP) is None
    # a Replace is CancelOrder + PlaceOrder: 2 tokens, only 1 left -> denied, nothing taken
    d = g.check("s", Replace(1, P, 1), BOOK, XBT_GBP)
    assert d is not None and d.rule == "order_rate"
    assert g.check("s", Cancel(2), BOOK, XBT_GBP) is None  # the last token is still there
    assert g.check("s", Cancel(3), BOOK, XBT_GBP).rule == "order_rate"
    clock.t = 10.0
    assert g.check("s", Replace(1, P, 1), BOOK, XBT_GBP) is None
    g2, _ = governor(one=Limit(1, 1.0))
    assert g2.check("one", Replace(1, P, 1), BOOK, XBT_GBP).reason == (
        "order_rate: Replace needs 2 order placements; the strategy one budget is 1 per 1 s"
    )


def test_cancel_all_is_never_refused_and_is_charged_what_is_left():
    g, clock = governor(s=Limit(10, 10.0))
    assert len(burst(g, clock, "s", 7, 0.0)) == 7
    five_open = MarketView(best_bid=P - 100, best_ask=P + 100, open_orders=5)
    assert g.check("s", CancelAll(), five_open, XBT_GBP) is None
    assert g.statistics().strategies["s"].tokens_left == 0  # charged 3 of the 5 cancels
    assert g.check("s", CancelAll(), five_open, XBT_GBP) is None  # still never refused
    assert g.check("s", ORDER, BOOK, XBT_GBP).rule == "order_rate"


# -- L2: many strategies share one user's budget fairly -------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13, 20])
def test_L2_a_runaway_cannot_starve_the_others(n):
    g, clock = governor(**{f"s{i}": None for i in range(n)})
    share = 900 // n
    # s0 runs away first, at 16k intents/s for about 0.6 s
    assert len(burst(g, clock, "s0", 10_000, 0.0)) == share
    # the others come later and still get their whole share
    for i in range(1, n):
        assert len(burst(g, clock, f"s{i}", 2 * share + 10, 10.0 * i)) == share
    stats = g.statistics()
    assert stats.user_tokens_left == 900 - n * share
    assert all(s.budget == Limit(share, 1000.0, "user") for s in stats.strategies.values())
    assert not stats.oversubscribed


@pytest.mark.parametrize("n", [2, 7, 20])
def test_L2_fair_share_within_10_percent_when_all_compete(n):
    g, clock = governor(**{f"s{i}": None for i in range(n)})
    got = dict.fromkeys(g.statistics().strategies, 0)
    for step in range(3000):  # round-robin, as the runner feeds strategy intents
        clock.t = step * DT
        name = f"s{step % n}"
        got[name] += g.check(name, ORDER, BOOK, XBT_GBP) is None
    mean = sum(got.values()) / n
    assert sum(got.values()) <= 900
    assert all(abs(v - mean) <= 0.1 * mean for v in got.values()), got


def test_L2_explicit_budgets_first_fair_shares_from_the_rest():
    g, clock = governor(a=Limit(300, 1000.0), b=None, c=None)
    assert [s.budget.count for s in g.statistics().strategies.values()] == [300, 300, 300]
    assert len(burst(g, clock, "a", 1000, 0.0)) == 300
    assert len(burst(g, clock, "b", 1000, 1.0)) == 300
    assert len(burst(g, clock, "c", 1000, 2.0)) == 300


def test_strategy_budget_is_min_of_its_own_and_what_the_user_has_left():
    g, clock = governor(a=Limit(600, 1000.0), b=Limit(600, 1000.0))
    assert g.statistics().oversubscribed
    assert len(burst(g, clock, "a", 1000, 0.0)) == 600
    assert g.statistics().strategies["b"].tokens_left == 300
    assert len(burst(g, clock, "b", 1000, 1.0)) == 300
    assert g.check("b", ORDER, BOOK, XBT_GBP).rule == "user_order_rate"


def test_fair_share_shrinks_when_a_strategy_joins_but_spending_is_remembered():
    g, clock = governor(a=None)
    assert len(burst(g, clock, "a", 500, 0.0)) == 500  # alone: share 900
    g.add_strategy("b", RiskLimits())  # share 450 each; a has spent 500 in this window
    assert g.check("a", ORDER, BOOK, XBT_GBP).rule == "order_rate"
    assert len(burst(g, clock, "b", 1000, 1.0)) == 400  # b: min(450, the 400 the user has left)
    clock.t = 1000.0  # a's first 500 leave the window
    assert len(burst(g, clock, "a", 1000, 1000.0)) == 450
