"""Every shipped strategy runs end to end on the local exchange, in virtual time, and trades.

Each config of ``configs/`` is loaded as shipped (only ``run.state_dir`` moves into the test's
tmp dir) and run for ten virtual minutes against the embedded exchange and its simulated
market, over the real WebSocket client on memory streams.  The exchange is watched from its
own side (:class:`ExchangeTap`), so "it traded" and "nothing is left" are the exchange's word.
"""

from __future__ import annotations

import pytest

from engine.protocol.messages import ErrorReply
from engine.runner import Runner
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
