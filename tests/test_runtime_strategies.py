"""Every shipped strategy runs end to end on the local exchange, in virtual time, and trades.

Each config of ``configs/`` is loaded as shipped (only ``run.state_dir`` moves into the test's
tmp dir) and run for ten virtual minutes against the embedded exchange and its simulated
market, over the real WebSocket client on memory streams.  The exchange is watched from its
own side (:class:`ExchangeTap`), so "it traded" and "nothing is left" are the exchange's word.
"""

from __future__ import annotations

from typing import Any

import pytest

from engine.protocol.messages import ErrorReply
from engine.runner import Runner
from engine.strategy import Context, Strategy, StrategyConfig
from tests.test_runtime_support import CONFIGS, USER, ExchangeTap, ledger, load_config, options


@pytest.mark.parametrize("name", ["market_maker", "twap", "grid", "mean_reversion"])
async def test_shipped_strategy_trades_end_to_end(name, tmp_path, autojump_clock):
    cfg = load_config(CONFIGS / f"{name}.yaml", tmp_path / "state")
    holder: list[ExchangeTap] = []
    runner = Runner(cfg, options(duration=600, drop_hook=lambda c, s: holder[0].hook(c, s)))
    holder.append(ExchangeTap(runner))
    tap = holder[0]
    result = await runner.run()

    s = result.summary
    assert result.exit_code == 0, s
    assert s["errors"] == [], s["errors"]
    (strategy,) = s["strategies"].values()
    assert strategy["errors"] == 0 and strategy["state"] == "ACTIVE", strategy
    # It traded, by its own account and by the exchange's.
    assert s["fills"] > 0 and strategy["trades"] > 0
    assert sum(f.count for f in tap.fills.values()) == s["fills"]
    assert tap.places(), "no PlaceOrder reached the exchange"
    # Nothing is left: the shutdown cancelled every own order, on both sides.
    assert s["open_orders_left"] == 0
    assert runner.exchange.open_orders(USER) == []
    # One session, no faults: the full ledger oracle holds (fills, balances, tonces...).
    assert s["sessions"] == 1
    led = ledger(runner, tap)
    assert led.clean, (led.line(), led)
    # No PlaceOrder was refused; a cancel may only lose the race with a fill (F4a: error 1).
    refused = [(type(c.cmd).__name__, c.reply.error_code) for c in tap.commands if isinstance(c.reply, ErrorReply)]
    assert {r for r in refused if r != ("CancelOrder", 1)} == set(), refused


class OrderProbe(Strategy):
    """Places a resting bid far from the market every 20 s, cancels it 10 s later, and
    records every on_order call as (ref, state)."""

    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        timer_interval: float = 10.0

    def on_start(self, ctx: Context) -> None:
        self.seen: list[tuple[int, str]] = []
        self.live = 0
        self.ticks = 0

    def on_timer(self, ctx: Context) -> None:
        self.ticks += 1
        bid = ctx.book.best_bid
        if self.live:
            ctx.cancel(self.live)
            self.live = 0
        elif bid is not None:
            self.live = ctx.buy(bid - bid // 20, 100_000)

    def on_order(self, ctx: Context, order: Any) -> None:
        self.seen.append((order.ref, order.state.name))


async def test_on_order_once_per_state_change(tmp_path, autojump_clock):
    # An order's OPEN comes from the OrderOpened notice *and* PlaceOrder's reply, its
    # CANCELLED from OrderClosed *and* CancelOrder's reply: the strategy hears each once.
    cfg = load_config("""
        markets: ["XBT:GBP"]
        strategies:
          - name: probe
            class: "tests.test_runtime_strategies:OrderProbe"
            market: "XBT:GBP"
        """, tmp_path / "state")
    runner = Runner(cfg, options(duration=300))
    result = await runner.run()
    assert result.exit_code == 0, result.summary
    assert runner.core is not None
    probe = runner.core.slots["probe"].strategy
    assert isinstance(probe, OrderProbe)
    seen = probe.seen
    assert len(seen) == len(set(seen)), [x for x in seen if seen.count(x) > 1]
    by_ref: dict[int, list[str]] = {}
    for ref, state in seen:
        by_ref.setdefault(ref, []).append(state)
    assert len(by_ref) >= 10, by_ref
    # every order but perhaps the last (cancelled by the shutdown) went OPEN -> ... -> CANCELLED
    assert all(states[0] == "OPEN" and states[-1] == "CANCELLED" for states in by_ref.values()), by_ref
