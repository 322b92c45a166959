"""The fast replay (backtests/fast.py) against the same hand-made recordings as the exact one,
and fill by fill against the exact path on generated recordings.

Every queue-position, crossing, own-order, re-snapshot, multi-market and charging case of
tests/test_replay.py is run again with :class:`backtests.fast.FastReplay` in place of
:class:`backtests.replay.Replay` (their expectations are about fills and the strategy's view,
so they hold for both paths; what only the exact path has is asserted there under
``exact(r)``), plus the fast path's own checks: the exact/fast cross-check with each shipped
strategy, determinism, and what it refuses.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from backtests.fast import FastReplay
from backtests.generate import GenerateOptions, generate
from backtests.replay import Replay, ReplayOptions, load_recording
from engine.config import load_run_config
from engine.errors import ConfigError
from engine.strategy import Context, Strategy
from tests import test_replay as T

ROOT = Path(__file__).resolve().parents[1]
sim_file = T.sim_file  # the 20-minute simulated recording (a module fixture)


@pytest.fixture(autouse=True)
def _fast_path(monkeypatch):
    # tests.test_replay's helpers and cases build ``T.Replay``: the fast path here (this
    # module's own checks name Replay and FastReplay explicitly)
    monkeypatch.setattr(T, "Replay", FastReplay)


test_own_order_queues_behind_recorded_orders_at_its_price = T.test_own_order_queues_behind_recorded_orders_at_its_price
test_recorded_cancel_ahead_moves_us_up_the_queue = T.test_recorded_cancel_ahead_moves_us_up_the_queue
test_order_at_a_new_better_price_fills_first = T.test_order_at_a_new_better_price_fills_first
test_crossing_order_fills_against_the_recorded_book = T.test_crossing_order_fills_against_the_recorded_book
test_recorded_limit_order_crossing_our_quote_trades_with_it = T.test_recorded_limit_order_crossing_our_quote_trades_with_it
test_own_orders_in_a_recording_are_not_market_flow = T.test_own_orders_in_a_recording_are_not_market_flow
test_recorded_flow_passes_over_a_dust_bid_to_ours = T.test_recorded_flow_passes_over_a_dust_bid_to_ours
test_a_resnapshot_resynchronises_the_recorded_book = T.test_a_resnapshot_resynchronises_the_recorded_book
test_a_stand_in_sell_never_shows_in_the_strategy_feed = T.test_a_stand_in_sell_never_shows_in_the_strategy_feed
test_two_markets_two_strategies_and_window_event_count = T.test_two_markets_two_strategies_and_window_event_count
test_fills_are_charged_by_the_exchange_core = T.test_fills_are_charged_by_the_exchange_core


@pytest.mark.parametrize(("order_us", "first_fill"), [(0, T.T0 + 500), (1_000, T.T0 + 5_000), (8_000, T.T0 + 20_000),
                                                     (10_000, None)])
def test_order_latency_shifts_fills(tmp_path, order_us, first_fill):
    # (the fast path takes order latency; feed latency it refuses, see below)
    cfg = load_run_config(str(T.config(tmp_path, [["buy", "29995.00", "0.01"]])))
    exact = Replay(cfg, T._latency_data(), ReplayOptions(order_latency_us=order_us)).run()
    fast = FastReplay(cfg, T._latency_data(), ReplayOptions(order_latency_us=order_us)).run()
    assert [f.as_row() for f in fast.fills] == [f.as_row() for f in exact.fills]
    assert (fast.fills[0].time_us if fast.fills else None) == first_fill


# -- exact vs fast, fill by fill ---------------------------------------------------------------

ONE_TIER = {"min_volume": "0", "maker_ppm": 0, "taker_ppm": 200}


@pytest.fixture(scope="module")
def one_tier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo exchange with one fee tier (maker 0, taker 0.02 %), and 15 minutes of its
    simulated market recorded (seed 3).

    One tier, maker fee 0: the recorded users' copies in the exact path pay what the
    participants paid live whatever their replayed volume (the demo's two tiers:
    ``two_tiers`` below)."""
    d = tmp_path_factory.mktemp("one_tier")
    text = (ROOT / "configs" / "exchange.yaml").read_text()
    head, rest = text.split("fees:", 1)
    xcfg = d / "exchange.yaml"
    xcfg.write_text(head + "fees:\n  - " + msgspec.json.encode(ONE_TIER).decode() + "\n\n" + rest[rest.index("limits:"):])
    rec = d / "q15.npz"
    generate(rec, GenerateOptions(hours=0.25, seed=3, config=xcfg))
    return xcfg, rec


@pytest.mark.parametrize("name", ["market_maker", "grid", "twap", "mean_reversion"])
def test_exact_and_fast_paths_give_the_same_fills(one_tier, name):
    # The exact path with rounding="strategy" (the strategy's trades draw from their own
    # stream, recorded-only trades round down) against the fast path: the same fills --
    # price, quantity, time, side, and here also total and fee -- and the same final hash.
    xcfg, rec = one_tier
    cfg = load_run_config(str(ROOT / "configs" / f"{name}.yaml"), resolve_secrets=False)
    rd = load_recording(rec)
    opts = ReplayOptions(seed=1, rounding="strategy", exchange_config=str(xcfg))
    exact = Replay(cfg, rd, opts).run()
    fast = FastReplay(cfg, rd, opts).run()
    assert len(exact.fills) >= 10
    assert [f.as_row() for f in fast.fills] == [f.as_row() for f in exact.fills]
    assert fast.final_hash == exact.final_hash
    assert fast.summary["replay"]["mode"] == "fast" and exact.summary["replay"]["mode"] == "exact"
    assert fast.summary["replay"]["balance_view_mismatch"] == {}


@pytest.fixture(scope="module")
def two_tiers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 minutes of the demo exchange's simulated market (its two fee tiers), seed 5."""
    rec = tmp_path_factory.mktemp("two_tiers") / "q15.npz"
    generate(rec, GenerateOptions(hours=0.25, seed=5))
    return rec


@pytest.mark.parametrize("rounding", ["strategy", "shared"])
@pytest.mark.parametrize("name", ["market_maker", "grid", "twap", "mean_reversion"])
def test_exact_path_copies_hold_what_the_recording_says(two_tiers, name, rounding):
    # The demo's fees: the exact path's copies of recorded orders pay the replay's maker
    # fee out of their reservations and round with the replay's draws, so alone they would
    # keep a few units more or less than the recording's bid_rem and pass them on to the
    # next order in the queue -- sometimes ours (the market maker and mean reversion then
    # forked here).  They hold what the recording says, as the fast path's view does: the
    # same fills and final hash on both paths, and the exact path's core stays consistent.
    # With one shared rounding stream the fast path draws for each recorded maker a walk
    # fills and for nothing when a walk's flow finds no order, as the exact path trades.
    cfg = load_run_config(str(ROOT / "configs" / f"{name}.yaml"), resolve_secrets=False)
    rd = load_recording(two_tiers)
    opts = ReplayOptions(seed=1, rounding=rounding)
    probe = Replay(cfg, rd, opts)
    exact = probe.run()
    fast = FastReplay(cfg, rd, opts).run()
    assert len(exact.fills) >= 10
    assert [f.as_row() for f in fast.fills] == [f.as_row() for f in exact.fills]
    assert fast.final_hash == exact.final_hash
    st = probe.stats
    assert st.copies_set > 0 and st.copies_emptied == st.copies_unfunded == 0
    probe.exchange.check_invariants()


def test_s2_fast_same_seed_same_hash(one_tier):
    xcfg, rec = one_tier
    cfg = load_run_config(str(ROOT / "configs" / "market_maker.yaml"), resolve_secrets=False)
    rd = load_recording(rec)
    runs = [FastReplay(cfg, rd, ReplayOptions(seed=11)).run() for _ in range(2)]
    assert runs[0].final_hash == runs[1].final_hash and len(runs[0].fills) > 20
    assert [f.as_row() for f in runs[0].fills] == [f.as_row() for f in runs[1].fills]
    other = FastReplay(cfg, rd, ReplayOptions(seed=12)).run()
    # another seed: other rounding draws for the strategy's trades
    assert other.final_hash != runs[0].final_hash


# -- what the fast path refuses ----------------------------------------------------------------


class TickerWatcher(Strategy):
    def on_ticker(self, ctx: Context) -> None:  # pragma: no cover - never run
        pass


def _cfg(tmp_path: Path, cls: str = "tests.test_replay:Scripted") -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(f'markets: ["XBT:GBP"]\nstrategies:\n  - {{name: s, class: "{cls}", market: "XBT:GBP"}}\n')
    return p


@pytest.mark.parametrize(
    ("cls", "opts", "why"),
    [
        ("tests.test_replay:Scripted", {"feed_latency_us": 1}, "feed_latency_us = 0 only"),
        ("tests.test_replay_fast:TickerWatcher", {}, "builds no tickers"),
        ("tests.test_replay:Scripted", {"tickers": True}, "builds no tickers"),
    ],
)
def test_fast_path_refuses_what_it_cannot_do(tmp_path, cls, opts, why):
    cfg = load_run_config(str(_cfg(tmp_path, cls)))
    with pytest.raises(ConfigError, match=why):
        FastReplay(cfg, T.data(), ReplayOptions(**opts))


def test_unknown_rounding_is_refused():
    with pytest.raises(ConfigError, match="rounding must be"):
        ReplayOptions(rounding="nearest")
