"""The shipped market maker's own arithmetic and manners (strategies/market_maker.py).

Its end-to-end trading is tested in tests/test_runtime_strategies.py and by the mm_calm
golden scenario; here: the O(1) volatility estimate equals the textbook one, and asking the
rate budget before acting changes no fill while sparing the intents the governor would deny.
"""

from __future__ import annotations

import math

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from backtests.replay import ReplayOptions, run_backtest
from backtests.scenarios import load_scenario, make_data
from engine.config import OrderRate, load_run_config
from engine.runtime import StrategyContext
from strategies.market_maker import MarketMaker


def _reference_sigma(mids: list[int], window: int) -> int:
    """The population standard deviation of the mid changes over the last ``window`` mids."""
    m = mids[-max(window, 2):]
    if len(m) < 3:
        return 0
    d = [b - a for a, b in zip(m, m[1:], strict=False)]
    n = len(d)
    mean = sum(d) / n  # exact enough: the isqrt below is compared with a tolerance-free floor
    var_num = sum((x * n - sum(d)) ** 2 for x in d)
    assert abs(var_num / n**3 - sum((x - mean) ** 2 for x in d) / n) < 1e-6 * max(1, var_num / n**3)
    return math.isqrt(var_num // n**3)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 12), st.lists(st.integers(2_990_000, 3_010_000), max_size=60))
def test_sigma_running_sums_equal_the_windowed_formula(window, samples):
    mm = MarketMaker("mm", MarketMaker.Config(vol_window=window))
    mm.on_start(_Ctx())
    kept: list[int] = []  # the mids as samples: a repeat of the last one is not a new sample
    for mid in samples:
        mm.add_mid(mid)
        if not kept or kept[-1] != mid:
            kept.append(mid)
        assert mm.sigma() == _reference_sigma(kept, window)


class _Ctx:
    """Just what on_start reads (scaled amounts and prices of XBT:GBP, v2)."""

    def amount(self, text: str) -> int:
        return round(float(text) * 10**8)

    def price(self, text: str) -> int:
        return round(float(text) * 100)


def test_mm_asks_its_rate_budget_first_same_fills_without_denied_intents(tmp_path, monkeypatch):
    # mm_calm's market, with a budget tight enough that a requote often finds it spent
    sc = load_scenario("mm_calm")
    data = make_data(sc, tmp_path / "mm_calm.jsonl")
    cfg = load_run_config(sc.spec.config)
    tight = [msgspec.structs.replace(s, order_rate=OrderRate(count=4, per=30.0)) for s in cfg.strategies]
    cfg = msgspec.structs.replace(cfg, strategies=tight)
    opts = ReplayOptions(seed=sc.spec.replay.seed, exchange_config=sc.spec.data.exchange)

    polite = run_backtest(cfg, data, opts)
    monkeypatch.setattr(StrategyContext, "order_budget", lambda self: 10**9)  # never asks: always tries
    blind = run_backtest(cfg, data, opts)

    p, b = polite.summary["strategies"]["mm"], blind.summary["strategies"]["mm"]
    assert b["denials"] > 0 and b["trades"] > 0  # the budget did bind
    assert p["denials"] == 0 and p["intents"] < b["intents"]
    assert [f.as_row() for f in polite.fills] == [f.as_row() for f in blind.fills]
    assert polite.final_hash == blind.final_hash
