"""The replay engine (issue 6 item 2): FIFO queue position, crossing, latency, exact charging, S2.

Hand-made recordings pin each rule with a scripted strategy; a recording of the simulated
market (the exchange's participants, run without trio) drives the shipped market maker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from backtests.parity import write_recording
from backtests.replay import (
    STRATEGY_USER_ID,
    Replay,
    ReplayData,
    ReplayOptions,
    load_recording,
    replay_data_from_messages,
    run_backtest,
)
from engine.config import load_run_config
from engine.errors import ConfigError, RemoteProtocolError
from engine.exchange.cli import load_config
from engine.exchange.participants import MarketSimulator
from engine.protocol.messages import (
    UNSET,
    BookOrder,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    WatchOrders,
    WatchOrdersReply,
    WatchTicker,
)
from engine.runner import DEFAULT_EXCHANGE_CONFIG
from engine.scale import GBP, XBT, XBT_GBP
from engine.state.book import ASK, BID
from engine.strategy import Context, PlaceLimit, Side, Strategy, StrategyConfig

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000_000
B, C = XBT_GBP.codes


class Scripted(Strategy):
    """Places the given limit orders at start, then does nothing (a probe for the rules)."""

    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        orders: list[list[str]] = msgspec.field(default_factory=list)
        """[side, price, quantity] as decimal text, e.g. ["buy", "29990.00", "0.01"]."""

    def on_start(self, ctx: Context) -> None:
        for side, price, qty in self.p.orders:  # type: ignore[attr-defined]
            ctx.emit(PlaceLimit(Side.BUY if side == "buy" else Side.SELL, ctx.price(price), ctx.amount(qty), True))


# -- recordings ------------------------------------------------------------------------------


def opened(t: int, oid: int, qty: int, price: int, *, tonce: Any = UNSET) -> OrderOpened:
    return OrderOpened(id=oid, tonce=tonce, base=B, counter=C, quantity=qty, price=price, time=t)


def closed(oid: int, qty: int, price: int, *, tonce: Any = UNSET) -> OrderClosed:
    return OrderClosed(id=oid, tonce=tonce, base=B, counter=C, quantity=qty, price=price)


def matched(t: int, qty: int, price: int, **ids: Any) -> OrdersMatched:
    return OrdersMatched(base=B, counter=C, quantity=qty, price=price, total=qty * price // 10**8, time=t, **ids)


def book(t: int = T0) -> tuple[int, Any, WatchOrdersReply]:
    """Asks 1 (0.01) and 2 (0.02) at 30010.00, 3 at 30020.00; bids 10, 11, 12 (0.01 each)
    at 29990.00 and 13 (0.05) at 29980.00."""
    orders = [
        BookOrder(id=1, quantity=-1_000_000, price=3_001_000, time=t - 50),
        BookOrder(id=2, quantity=-2_000_000, price=3_001_000, time=t - 40),
        BookOrder(id=3, quantity=-1_000_000, price=3_002_000, time=t - 30),
        BookOrder(id=10, quantity=1_000_000, price=2_999_000, time=t - 20),
        BookOrder(id=11, quantity=1_000_000, price=2_999_000, time=t - 10),
        BookOrder(id=12, quantity=1_000_000, price=2_999_000, time=t - 5),
        BookOrder(id=13, quantity=5_000_000, price=2_998_000, time=t - 1),
    ]
    return (t, XBT_GBP, WatchOrdersReply(orders=orders))


def data(*notices: tuple[int, Notice]) -> ReplayData:
    return replay_data_from_messages([book(), *((t, None, n) for t, n in notices)], "<test>")


def config(tmp_path: Path, orders: list[list[str]] | None = None) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(
        'markets: ["XBT:GBP"]\n'
        "strategies:\n"
        "  - name: probe\n"
        '    class: "tests.test_replay:Scripted"\n'
        '    market: "XBT:GBP"\n'
        f"    params: {{orders: {msgspec.json.encode(orders or []).decode()}}}\n"
        f'run: {{seed: 5, state_dir: "{tmp_path / "state"}"}}\n'
    )
    return p


def replay(tmp_path: Path, rd: ReplayData, orders: list[list[str]] | None = None, **opts: Any) -> Replay:
    cfg = load_run_config(str(config(tmp_path, orders)))
    r = Replay(cfg, rd, ReplayOptions(**opts))
    r.result = r.run()  # type: ignore[attr-defined]
    return r


def exact(r: Any) -> bool:
    """Is ``r`` the exact path?  tests/test_replay_fast.py re-runs the hand-made cases with
    :class:`backtests.fast.FastReplay`, which keeps no copies of the recorded orders in its
    exchange core and sends stand-in orders only when recorded flow reaches ours: what only
    the exact path has (the core's book, stand-in counts, recorded events as notices) is
    asserted on it alone; fills and the strategy's own view are asserted on both."""
    from backtests.fast import FastReplay

    return not isinstance(r, FastReplay)


def view_levels(r: Any, side: int) -> list[tuple[int, int, int]]:
    """The strategy's view of one side of XBT:GBP: (price, quantity, orders) per level."""
    p, q, c = r.core.books[XBT_GBP].levels(side, 100)
    return list(zip(p.tolist(), q.tolist(), c.tolist(), strict=True))


def simulated_recording(path: Path, *, minutes: float, seed: int = 7, warmup_s: int = 30) -> int:
    """The simulated XBT:GBP market of configs/exchange.yaml, as a watcher receives it, with
    receive time = exchange time; written in the cftrade-rec/1 format.  Returns the lines."""
    xcfg = load_config(DEFAULT_EXCHANGE_CONFIG)
    parts = msgspec.structs.replace(xcfg.participants, markets=[xcfg.participants.markets[0]], seed=seed)
    sim = MarketSimulator.standalone(xcfg.exchange_settings(participants=False), parts, start_us=T0, seed=seed)
    sim.step_until(T0 + warmup_s * 1_000_000)
    clock = sim.clock
    assert clock is not None
    msgs: list[Any] = []
    s = sim.exchange.open_internal_session(1, lambda n: msgs.append((clock.now_us, None, n)))
    msgs.append((clock.now_us, XBT_GBP, sim.exchange.handle(s, WatchOrders(base=B, counter=C, watch=True))))
    sim.exchange.handle(s, WatchTicker(base=B, counter=C, watch=True))
    sim.step_until(clock.now_us + int(minutes * 60_000_000))
    return write_recording(path, msgs, header={"markets": ["XBT:GBP"], "source": "test simulation"})


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "sim.jsonl"
    simulated_recording(path, minutes=20)
    return path


# -- queue position (FIFO) -----------------------------------------------------------------


def test_own_order_queues_behind_recorded_orders_at_its_price(tmp_path):
    # We join 29990.00 behind bids 10, 11 and 12.  Recorded sellers take 10, then 11, then
    # half of 12 (whose owner then cancels the rest): none of that reaches us.  The next
    # recorded sale, at 29980.00 against bid 13, finds us first at the better price.
    t = T0 + 1_000_000
    rd = data(
        (t, matched(t, 1_000_000, 2_999_000, bid=10, bid_rem=0)), (t, closed(10, 0, 2_999_000)),
        (t + 1, matched(t + 1, 1_000_000, 2_999_000, bid=11, bid_rem=0)), (t + 1, closed(11, 0, 2_999_000)),
        (t + 2, matched(t + 2, 500_000, 2_999_000, bid=12, bid_rem=500_000)),
        (t + 3, closed(12, 500_000, 2_999_000)),
        (t + 4, matched(t + 4, 300_000, 2_998_000, bid=13, bid_rem=4_700_000)),
    )
    r = replay(tmp_path, rd, [["buy", "29990.00", "0.01"]])
    fills = r.result.fills  # type: ignore[attr-defined]
    assert [(f.side, f.price, f.quantity, f.time_us) for f in fills] == [(1, 2_999_000, 300_000, t + 4)]
    st = r.stats
    assert st.flow_short == 0
    # bid 13 was not touched in the replay: the flow went to us
    assert [lv for lv in view_levels(r, BID) if lv[0] == 2_998_000] == [(2_998_000, 5_000_000, 1)]
    if exact(r):  # every recorded sale is re-sent; the fast path sends only the one that reaches us
        assert st.flow_sent == 4
        bids, _ = r.exchange.book(B, C)
        assert [(o.price, o.quantity) for o in bids if o.price == 2_998_000] == [(2_998_000, 5_000_000)]
    else:
        assert st.flow_sent == 1


def test_recorded_cancel_ahead_moves_us_up_the_queue(tmp_path):
    t = T0 + 1_000_000
    rd = data(
        (t, closed(10, 1_000_000, 2_999_000)), (t, closed(11, 1_000_000, 2_999_000)),
        (t + 1, matched(t + 1, 1_500_000, 2_999_000, bid=12, bid_rem=0)),
    )
    # 12 was ahead of us: it buys first, we take the rest.
    r = replay(tmp_path, rd, [["buy", "29990.00", "0.01"]])
    fills = r.result.fills  # type: ignore[attr-defined]
    # Both paths: 12 buys all it holds.  (The exact path's copy of 12, user M, pays the
    # replay's maker fee out of its reservation, which alone would buy only the largest x
    # with ceil(x*p) + fee <= ceil(0.01*p): it must not pass that difference on to us.)
    reserved = -(-1_000_000 * 2_999_000 // 10**8)
    assert (reserved * 10**6 // (10**6 + 100)) * 10**8 // 2_999_000 == 999_899
    twelve = 1_000_000
    assert [(f.price, f.quantity, f.time_us) for f in fills] == [(2_999_000, 1_500_000 - twelve, t + 1)]


def test_order_at_a_new_better_price_fills_first(tmp_path):
    t = T0 + 1_000_000
    rd = data((t, matched(t, 1_000_000, 2_999_000, bid=10, bid_rem=0)), (t, closed(10, 0, 2_999_000)))
    r = replay(tmp_path, rd, [["buy", "29995.00", "0.01"]])
    fills = r.result.fills  # type: ignore[attr-defined]
    assert len(fills) == 1
    f = fills[0]
    # Our bid pays its fee out of its reservation (IMPL-GUIDE), so it buys a little less
    # than 0.01; the seller's last units go on to bid 10, which the recording then closes.
    assert (f.side, f.price, f.time_us) == (1, 2_999_500, t)
    assert 999_000 < f.quantity < 1_000_000
    assert r.stats.flow_quantity == 1_000_000


def test_crossing_order_fills_against_the_recorded_book(tmp_path):
    # A bid for 0.015 at 30010.00 meets asks 1 (0.01) and 2 (0.02), in that order.
    r = replay(tmp_path, data(), [["buy", "30010.00", "0.015"]])
    fills = r.result.fills  # type: ignore[attr-defined]
    assert [f.price for f in fills] == [3_001_000, 3_001_000]
    assert fills[0].quantity == 1_000_000  # all of ask 1 (older) first
    assert 499_000 < fills[1].quantity <= 500_000  # then ask 2, within what the reservation pays
    assert all(f.time_us == T0 for f in fills)
    # what is left at 30010.00, in the strategy's view: ask 2's rest
    assert [lv for lv in view_levels(r, ASK) if lv[0] == 3_001_000] == [(3_001_000, 3_000_000 - sum(f.quantity for f in fills), 1)]
    if exact(r):
        _, asks = r.exchange.book(B, C)
        assert -sum(o.quantity for o in asks if o.price == 3_001_000) == 3_000_000 - sum(f.quantity for f in fills)


def test_recorded_limit_order_crossing_our_quote_trades_with_it(tmp_path):
    # Live, nobody sat at 30005.00; in the replay we do, so the recorded bid that arrives
    # at 30006.00 (it opened there, crossing nothing, live) takes our ask first.
    t = T0 + 1_000_000
    rd = data((t, opened(t, 40, 2_000_000, 3_000_600)))
    r = replay(tmp_path, rd, [["sell", "30005.00", "0.01"]])
    fills = r.result.fills  # type: ignore[attr-defined]
    assert [(f.side, f.price, f.quantity, f.time_us) for f in fills] == [(-1, 3_000_500, 1_000_000, t)]


# -- latency ---------------------------------------------------------------------------------


def _latency_data() -> ReplayData:
    sells = []
    for k, dt in enumerate((500, 5_000, 20_000)):
        t = T0 + dt
        sells += [(t, matched(t, 1_000_000, 2_999_000, bid=10 + k, bid_rem=0)), (t, closed(10 + k, 0, 2_999_000))]
    return data(*sells)


@pytest.mark.parametrize(
    ("order_us", "feed_us", "first_fill"),
    [
        # Start-up: the subscription reaches the exchange after the order latency, the
        # snapshot comes back after the feed latency, the strategy starts and its order
        # reaches the exchange one order latency later: at T0 + 2 x order + feed.
        (0, 0, T0 + 500),  # we are there before the first recorded sale
        (1_000, 0, T0 + 5_000),  # we arrive at T0 + 2 ms: the sale at 0.5 ms went to bid 10
        (0, 6_000, T0 + 20_000),  # at T0 + 6 ms
        (2_000, 4_000, T0 + 20_000),  # at T0 + 8 ms
        (10_000, 5_000, None),  # at T0 + 25 ms: every sale is over
    ],
)
def test_latency_shifts_fills(tmp_path, order_us, feed_us, first_fill):
    r = replay(tmp_path, _latency_data(), [["buy", "29995.00", "0.01"]], order_latency_us=order_us,
               feed_latency_us=feed_us)
    fills = r.result.fills  # type: ignore[attr-defined]
    assert (fills[0].time_us if fills else None) == first_fill
    assert r.result.summary["replay"]["order_latency_us"] == order_us  # type: ignore[attr-defined]


# -- own orders in a recording of a live run ------------------------------------------------


def test_own_orders_in_a_recording_are_not_market_flow(tmp_path):
    t = T0 + 1_000_000
    rd = data(
        # our live bid at 29995.00 (it carries our tonce) ...
        (t, opened(t, 50, 1_000_000, 2_999_500, tonce=77)),
        # ... was hit by a market sell: that sell is recorded flow and is replayed
        (t + 1, matched(t + 1, 400_000, 2_999_500, bid=50, bid_tonce=77, bid_rem=600_000)),
        # our live ask crossed bid 10 and took it: not replayed (ours); its close waits
        (t + 2, matched(t + 2, 1_000_000, 2_999_000, bid=10, ask=51, ask_tonce=78, bid_rem=0, ask_rem=0)),
        (t + 2, closed(10, 0, 2_999_000)),
        (t + 3, closed(50, 600_000, 2_999_500, tonce=77)),
    )
    r = replay(tmp_path, rd, [])
    st = r.stats
    assert st.own_recorded == 2 and st.flow_sent == 0 and st.flow_short == 400_000
    # nothing of ours was replayed as someone else's order, and bid 10 left at the end of
    # its instant (our replayed strategy did not take it: nobody will)
    assert view_levels(r, BID) == [(2_999_000, 2_000_000, 2), (2_998_000, 5_000_000, 1)]
    if exact(r):
        bids, _ = r.exchange.book(B, C)
        assert [(o.price, o.quantity) for o in bids] == [(2_999_000, 1_000_000)] * 2 + [(2_998_000, 5_000_000)]
    assert r.result.fills == []  # type: ignore[attr-defined]


def test_recorded_flow_passes_over_a_dust_bid_to_ours(tmp_path):
    # Our sell of 0.01 takes bid 14 at 30000.00 (the total and the maker fee are exact: no
    # rounding draw).  The bid pays both out of what it reserved; what that leaves it can
    # pay for is all it keeps, and that cannot pay for one unit plus its fee: it is dust.
    # Live, the next sale closed it and went on to the next bid; the recorded close of 14
    # waits for the end of that instant (ours took from 14 live).  The sale reaches our bid,
    # behind the dust, in full: in the exact path the exchange core closes the dust bid,
    # and the fast path's walk must do the same instead of selling it what it holds.
    fee_ppm, taker_ppm = 100, 300  # configs/exchange.yaml's first tier (the stand-ins pay its maker fee)
    price, q14, ours = 3_000_000, 1_000_120, 1_000_000

    def value(q: int) -> int:  # what a bid of q at price reserves: ceil(q * price)
        return -(-q * price // 10**8)

    def can_buy(reserved: int) -> int:  # the core's cap: the largest x whose total and fee fit
        return (reserved * 10**6 // (10**6 + fee_ppm)) * 10**8 // price

    total, fee = ours * price // 10**8, ours * price // 10**8 * fee_ppm // 10**6
    assert total * 10**8 == ours * price and fee * 10**6 == total * fee_ppm  # exact: no draw
    assert can_buy(value(q14)) >= ours
    rem = min(q14 - ours, (value(q14) - total - fee) * 10**8 // price)
    assert rem > 0 and can_buy(value(rem)) == 0  # the premise: 14 keeps dust
    t1, t2, sale = T0 + 10, T0 + 1_000_000, 500_000
    rd = data(
        (T0, opened(T0, 14, q14, price)),
        (t1, matched(t1, ours, price, bid=14, ask=900, ask_tonce=77, bid_rem=rem, ask_rem=0)),
        (t2, closed(14, rem, price)),
        (t2, matched(t2, sale, 2_999_000, bid=10, bid_rem=1_000_000 - sale)),
    )
    r = replay(tmp_path, rd, [["sell", "30000.00", "0.01"], ["buy", "29992.00", "0.01"]])
    fills = r.result.fills  # type: ignore[attr-defined]
    assert [(f.side, f.price, f.quantity, f.total, f.fee) for f in fills if f.side < 0] == [(-1, price, ours, total, total * taker_ppm // 10**6)]
    assert [(f.side, f.price, f.quantity, f.time_us) for f in fills if f.side > 0] == [(1, 2_999_200, sale, t2)]
    assert all(lv[0] != price for lv in view_levels(r, BID))  # the dust bid is gone


# -- exact charging --------------------------------------------------------------------------


def test_fills_are_charged_by_the_exchange_core(tmp_path, sim_file):
    cfg = load_run_config(str(ROOT / "configs" / "market_maker.yaml"), resolve_secrets=False)
    rd = load_recording(sim_file)
    r = Replay(cfg, rd, ReplayOptions(seed=3))
    res = r.run()
    assert len(res.fills) > 20
    # The balance view (IMPL-GUIDE deltas) ends equal to the exchange's balances ...
    assert res.summary["replay"]["balance_view_mismatch"] == {}
    # ... and the exchange's balances are the opening ones moved by exactly the fills:
    # buys pay total + fee out of GBP, sells receive total - fee (fees from the core).
    opening = {XBT.code: 10 * 10**8, GBP.code: 250_000_00}
    xbt = opening[XBT.code] + sum(f.side * f.quantity for f in res.fills)
    gbp = opening[GBP.code] - sum(f.side * f.total + f.fee for f in res.fills)
    bal = r.exchange.balances(STRATEGY_USER_ID)
    assert bal[XBT.code] == (xbt, 0) and bal[GBP.code] == (gbp, 0)
    assert sum(f.fee for f in res.fills) > 0
    # every strategy order is closed, and the core's invariants (conservation) hold
    assert res.final_state["open_orders"] == 0
    r.exchange.check_invariants()
    assert res.summary["strategies"]["mm"]["trades"] == len(res.fills)
    # marks: one per second at least, and one per fill
    marks = res.marks_for("mm")
    assert len(marks) >= 20 * 60 and (marks["time_us"][1:] >= marks["time_us"][:-1]).all()
    assert marks["position"][-1] == sum(f.side * f.quantity for f in res.fills)


def test_s2_same_inputs_and_seed_give_the_same_hash(tmp_path, sim_file):
    cfg = load_run_config(str(ROOT / "configs" / "market_maker.yaml"), resolve_secrets=False)
    rd = load_recording(sim_file)
    runs = [Replay(cfg, rd, ReplayOptions(seed=11)).run() for _ in range(3)]
    assert len({r.final_hash for r in runs}) == 1
    assert len({r.summary["replay"]["exchange_state_hash"] for r in runs}) == 1
    assert [f.as_row() for f in runs[0].fills] == [f.as_row() for f in runs[2].fills]
    other = Replay(cfg, rd, ReplayOptions(seed=12)).run()
    # another seed: other rounding draws, so another exchange state
    assert other.summary["replay"]["exchange_state_hash"] != runs[0].summary["replay"]["exchange_state_hash"]


def test_run_backtest_from_paths_and_window(tmp_path, sim_file):
    cfg_path = ROOT / "configs" / "market_maker.yaml"
    full = run_backtest(cfg_path, sim_file, ReplayOptions(seed=1))
    rd = load_recording(sim_file)
    mid = (rd.start_us + rd.end_us) // 2
    late = run_backtest(cfg_path, rd, ReplayOptions(seed=1, start_us=mid))
    early = run_backtest(cfg_path, rd, ReplayOptions(seed=1, end_us=mid))
    assert full.config_path == str(cfg_path) and full.events == rd.total_events
    assert late.fills and all(f.time_us >= mid for f in late.fills)
    assert early.fills and all(f.time_us <= mid for f in early.fills)


# -- bad input -------------------------------------------------------------------------------


def test_recording_without_the_strategy_market_is_refused(tmp_path):
    eur = replay_data_from_messages([], "<empty>")
    cfg = load_run_config(str(config(tmp_path, [])))
    with pytest.raises(ConfigError, match="no WatchOrders snapshot of XBT:GBP"):
        Replay(cfg, eur)


def test_time_going_backwards_is_refused():
    with pytest.raises(RemoteProtocolError, match="goes backwards"):
        replay_data_from_messages([book(T0), (T0 - 1, None, closed(1, -1_000_000, 3_001_000))], "<test>")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recording(tmp_path / "nope.jsonl")


def test_bare_recording_layout_is_read(tmp_path):
    # engine.state.events' layout: the snapshot line, then notices, no receive times
    from engine.protocol.codec import CODEC

    p = tmp_path / "bare.jsonl"
    _, _, snap = book()
    t = T0 + 1_000
    p.write_bytes(b"\n".join([CODEC.encode(snap), CODEC.encode(matched(t, 1_000_000, 2_999_000, bid=10, bid_rem=0)),
                              CODEC.encode(closed(10, 0, 2_999_000))]) + b"\n")
    rd = load_recording(p)
    assert len(rd.snapshots) == 1 and len(rd.events) == 2 and rd.end_us == t


def test_two_markets_two_strategies_and_window_event_count(tmp_path):
    from engine.scale import XBT_EUR

    eb, ec = XBT_EUR.codes
    eur_book = WatchOrdersReply(orders=[BookOrder(id=100, quantity=-1_000_000, price=3_500_000, time=T0),
                                        BookOrder(id=101, quantity=1_000_000, price=3_490_000, time=T0)])
    t = T0 + 1_000_000
    eur_sale = OrdersMatched(base=eb, counter=ec, quantity=500_000, price=3_490_000, total=17450, time=t + 5,
                             bid=101, bid_rem=500_000)
    rd = replay_data_from_messages([
        book(), (T0, XBT_EUR, eur_book),
        (t, None, matched(t, 1_000_000, 2_999_000, bid=10, bid_rem=0)), (t, None, closed(10, 0, 2_999_000)),
        (t + 5, None, eur_sale),
        (t + 9_000_000, None, closed(11, 1_000_000, 2_999_000)),
    ], "<two markets>")
    p = tmp_path / "two.yaml"
    p.write_text(
        'markets: ["XBT:GBP", "XBT:EUR"]\n'
        "strategies:\n"
        '  - {name: gbp, class: "tests.test_replay:Scripted", market: "XBT:GBP", '
        'params: {orders: [["buy", "29995.00", "0.01"]]}}\n'
        '  - {name: eur, class: "tests.test_replay:Scripted", market: "XBT:EUR", '
        'params: {orders: [["buy", "34950.00", "0.01"]]}}\n'
    )
    cfg = load_run_config(str(p))
    res = Replay(cfg, rd, ReplayOptions()).run()
    by = {(f.strategy, f.price, f.time_us) for f in res.fills}
    assert by == {("gbp", 2_999_500, t), ("eur", 3_495_000, t + 5)}
    assert res.events == rd.total_events == 6
    # a window that stops before the last recorded cancel replays (and counts) less
    cut = Replay(cfg, rd, ReplayOptions(end_us=t + 5)).run()
    assert cut.events == 5 and len(cut.fills) == 2


def test_a_resnapshot_resynchronises_the_recorded_book(tmp_path):
    # After a gap the recorder took a new snapshot: bid 10 is gone (its cancel was lost),
    # bid 20 is new (its OrderOpened was lost).  The replayed book follows the snapshot.
    _, _, first = book()
    assert first.orders is not UNSET
    t = T0 + 5_000_000
    second = WatchOrdersReply(orders=[o for o in first.orders if o.id != 10]
                              + [BookOrder(id=20, quantity=2_000_000, price=2_999_500, time=t - 1)])
    rd = replay_data_from_messages([book(), (t, XBT_GBP, second)], "<gap>")
    r = replay(tmp_path, rd, [])
    if exact(r):  # the recorded orders' copies in the core follow it
        bids, asks = r.exchange.book(B, C)
        assert [(o.price, o.quantity) for o in bids] == [(2_999_500, 2_000_000), (2_999_000, 1_000_000),
                                                         (2_999_000, 1_000_000), (2_998_000, 5_000_000)]
        assert len(asks) == 3
    assert view_levels(r, BID) == [(2_999_500, 2_000_000, 1), (2_999_000, 2_000_000, 2), (2_998_000, 5_000_000, 1)]
    # the strategy's own view (the replay exchange's feed) agrees
    view = r.core.books[XBT_GBP]
    assert (view.best_bid, view.best_bid_qty, len(view)) == (2_999_500, 2_000_000, 7)


def test_a_stand_in_sell_never_shows_in_the_strategy_feed(tmp_path):
    # The recording says bid 10, the only bid, bought all 0.01.  Its copy pays the replay's
    # maker fee out of its reservation, which alone would buy only 999 899 units and leave
    # the stand-in sell 101 that cannot rest; the copy buys what the recording says (it is
    # reserved enough for this fill), and the stand-in sell, filled, is never seen.
    t = T0 + 1_000_000
    snap = WatchOrdersReply(orders=[BookOrder(id=1, quantity=-1_000_000, price=3_001_000, time=T0 - 2),
                                    BookOrder(id=10, quantity=1_000_000, price=2_999_000, time=T0 - 1)])
    rd = replay_data_from_messages([(T0, XBT_GBP, snap), (t, None, matched(t, 1_000_000, 2_999_000, bid=10, bid_rem=0)),
                                    (t, None, closed(10, 0, 2_999_000))], "<one bid>")
    cfg = load_run_config(str(config(tmp_path, [])))
    probe = Replay(cfg, rd, ReplayOptions())
    seen: list[Any] = []
    on_notice = probe.core.on_notice

    def spy(n: Notice) -> None:
        seen.append(n)
        on_notice(n)

    probe.core.on_notice = spy  # type: ignore[method-assign]
    probe.run()
    view = probe.core.books[XBT_GBP]
    assert (view.best_bid, view.best_ask) == (None, 3_001_000)
    bids, asks = probe.exchange.book(B, C)
    if exact(probe):
        assert probe.stats.transient_rests == 0
        kinds = [type(n).__name__ for n in seen]
        assert kinds == ["OrdersMatched", "OrderClosed"]  # the trade, then bid 10's stand-in leaves
        assert (seen[0].quantity, seen[0].bid_rem, seen[1].quantity) == (1_000_000, 0, 0)
        # the recorded taker was a market sell: no ask side (not the stand-in's limit order)
        assert seen[0].ask is UNSET and seen[0].ask_rem is UNSET
        probe.exchange.check_invariants()
        assert bids == [] and [o.price for o in asks] == [3_001_000]
    else:
        # the fast path applies recorded events to the view in compiled batches (no notices)
        # and, with no order of ours to reach, sends no stand-in and keeps no copies
        assert seen == [] and probe.stats.flow_sent == 0 and bids == asks == []


@pytest.mark.parametrize("taker_buy", [False, True])
def test_the_strategy_sees_the_recorded_taker(tmp_path, taker_buy):
    # A recorded limit taker (id 20) left with a remaining: the exact path's stand-in (a
    # limit sell, or a market buy) trades in its place, and the strategy's feed shows the
    # recorded taker's remaining under an id no replay order has -- not the stand-in's id
    # and remaining 0 (or no id at all for the market buy).
    t = T0 + 1_000_000
    snap = WatchOrdersReply(orders=[BookOrder(id=1, quantity=-1_000_000, price=3_001_000, time=T0 - 2),
                                    BookOrder(id=10, quantity=1_000_000, price=2_999_000, time=T0 - 1)])
    if taker_buy:
        n = matched(t, 400_000, 3_001_000, bid=20, bid_rem=600_000, ask=1, ask_rem=600_000)
    else:
        n = matched(t, 400_000, 2_999_000, bid=10, bid_rem=600_000, ask=20, ask_rem=700_000)
    rd = replay_data_from_messages([(T0, XBT_GBP, snap), (t, None, n)], "<one taker>")
    cfg = load_run_config(str(config(tmp_path, [])))
    probe = Replay(cfg, rd, ReplayOptions())
    seen: list[Any] = []
    on_notice = probe.core.on_notice

    def spy(x: Notice) -> None:
        seen.append(x)
        on_notice(x)

    probe.core.on_notice = spy  # type: ignore[method-assign]
    probe.run()
    trades = [x for x in seen if type(x) is OrdersMatched]
    if not exact(probe):
        assert trades == []  # the fast path applies recorded events to the view in batches
        return
    (m,) = trades
    if taker_buy:
        assert (m.bid & 0xFFFF, m.bid_rem, m.ask_rem) == (20, 600_000, 600_000)
        assert m.bid not in probe.exchange._orders
    else:
        assert (m.ask & 0xFFFF, m.ask_rem, m.bid_rem) == (20, 700_000, 600_000)
        assert m.ask not in probe.exchange._orders
    view = probe.core.books[XBT_GBP]
    assert (view.best_bid_qty if not taker_buy else view.best_ask_qty) == 600_000
