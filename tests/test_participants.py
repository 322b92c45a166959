"""Simulated market participants: the issue's "Done means" (one virtual hour, invariants
throughout, a lively book), determinism, stepping without trio, restart adoption, config."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from engine import configload
from engine.errors import ConfigError
from engine.exchange.core import Exchange
from engine.exchange.participants import (
    ManualClock,
    MarketParticipants,
    MarketSimulator,
    ParticipantsConfig,
    run_participants,
    settings_with_participants,
)
from engine.exchange.server import ExchangeServer, trio_clock_us
from engine.exchange.settings import UserSettings
from engine.scale import EUR, GBP, XBT
from tests.test_exchange_server_support import EPOCH_US, connect_memory, demo_settings

MINUTE_US = 60_000_000
GBP_BOOK = (XBT.code, GBP.code)


def _sim(seed: int = 7, **kw: Any) -> MarketSimulator:
    return MarketSimulator.standalone(demo_settings(), ParticipantsConfig(seed=seed, **kw), start_us=EPOCH_US)


def _book_size(ex: Exchange, codes: tuple[int, int] = GBP_BOOK) -> tuple[int, int]:
    bids, asks = ex.book(*codes)
    return len(bids), len(asks)


# -- the trio driver: one virtual hour ------------------------------------------------------


async def test_one_virtual_hour_lively_market_with_invariants_throughout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Issue 3 "Done means": participants trade for an hour of virtual time, the core's
    invariants hold at every check, the book holds hundreds of resting orders, trades
    happen all along, and a client watching over WebSocket keeps an exact local book."""
    clock = trio_clock_us(EPOCH_US)
    config = ParticipantsConfig(seed=11)
    settings = settings_with_participants(demo_settings(), config)
    ex = Exchange(settings, clock_us=clock, rng=random.Random(11))
    sim = MarketSimulator(ex, config, start_us=clock())
    server = ExchangeServer(ex)

    # A client over the real protocol, rebuilding the book from WatchOrders + notices
    # (IMPL-GUIDE "Maintaining a Local View of an Order Book").
    watcher = await connect_memory(server, nursery)
    await watcher.welcome()
    await watcher.send({"method": "WatchOrders", "base": XBT.code, "counter": GBP.code, "watch": True})
    local: dict[int, tuple[int, int]] = {}  # id -> (signed quantity, price)
    early: list[dict[str, Any]] = []
    snapshot_seen = trio.Event()

    def apply(n: dict[str, Any]) -> None:
        kind = n["notice"]
        if kind == "OrderOpened":
            assert n["id"] not in local and "tonce" not in n  # foreign orders: no tonce
            local[n["id"]] = (n["quantity"], n["price"])
        elif kind == "OrderClosed":
            local.pop(n["id"], None)
        elif kind == "OrdersMatched":
            assert "bid_base_fee" not in n and "ask_counter_fee" not in n  # fees only to owners
            if "bid" in n and n["bid"] in local:
                local[n["bid"]] = (n["bid_rem"], local[n["bid"]][1])
            if "ask" in n and n["ask"] in local:
                local[n["ask"]] = (-n["ask_rem"], local[n["ask"]][1])

    async def read_feed() -> None:
        while True:
            obj = await watcher.recv()
            if "notice" in obj:
                (apply if snapshot_seen.is_set() else early.append)(obj)
                continue
            assert obj["error_code"] == 0
            for o in obj["orders"]:
                local[o["id"]] = (o["quantity"], o["price"])
            for n in early:
                apply(n)
            snapshot_seen.set()

    nursery.start_soon(read_feed)
    await nursery.start(run_participants, sim, clock)
    await snapshot_seen.wait()

    samples: list[tuple[int, int]] = []
    trades_per_window: list[int] = []
    fills_before = 0
    t_end = trio.current_time() + 3600
    while trio.current_time() < t_end:
        await trio.sleep(10)
        ex.check_invariants()
        samples.append(_book_size(ex))
        if len(samples) % 60 == 0:  # every 10 virtual minutes
            fills = sum(a.stats.fills for a in sim.agents if a.market.codes == GBP_BOOK)
            trades_per_window.append(fills - fills_before)
            fills_before = fills

    stats = sim.statistics()
    assert trio.current_time() >= t_end and sim.now_us >= EPOCH_US + 3600 * 1_000_000 - 2_000_000
    assert stats["errors"] == {}  # no refused command: valid orders, budgets kept (no error 6)
    warm = samples[3:]  # after the first 30 s (liquidity providers build their ladders)
    # Hundreds of resting orders throughout (4 LPs x 60 per side = 480 when all are placed;
    # a jump sweeps part of one side, and the LPs rebuild it).
    assert min(b for b, _ in warm) >= 120 and min(a for _, a in warm) >= 120
    assert min(b + a for b, a in warm) >= 300
    assert sum(b + a for b, a in warm) / len(warm) >= 400
    assert len(trades_per_window) == 6 and min(trades_per_window) >= 100  # trading all hour long
    roles = stats["roles"]
    assert roles["liquidity_provider"]["cancels"] > 1000 and roles["taker"]["market_orders"] > 500
    assert sim.fair_values["XBT:GBP"].price != 3_000_000  # the fair value moved
    # The watcher's book, built only from the wire, equals the exchange's book exactly.
    await trio.sleep(1)  # let the last notices arrive
    bids, asks = ex.book(*GBP_BOOK)
    assert local == {o.id: (o.quantity, o.price) for o in [*bids, *asks]}
    # It was never idle-dropped: a stream of notices is traffic.
    assert server.statistics().closed_idle == 0 and server.statistics().open_connections == 1


# -- stepping without trio ------------------------------------------------------------------


def test_stepping_is_deterministic_under_a_seed() -> None:
    a, b, c = _sim(5), _sim(5), _sim(6)
    for s in (a, b, c):
        s.step_until(EPOCH_US + 5 * MINUTE_US)
    assert a.exchange.state_hash() == b.exchange.state_hash()
    assert a.statistics() == b.statistics()
    assert c.exchange.state_hash() != a.exchange.state_hash()


def test_stepping_checks_invariants_and_both_books_are_lively() -> None:
    sim = _sim(3)
    ran = sim.step_until(EPOCH_US + 10 * MINUTE_US, check_every=25)
    assert ran == sim.events > 3000
    for codes in (GBP_BOOK, (XBT.code, EUR.code)):
        bids, asks = sim.exchange.book(*codes)
        assert len(bids) >= 60 and len(asks) >= 60
        assert bids[0].price < asks[0].price
    st = sim.statistics()
    assert st["errors"] == {} and st["roles"]["taker"]["fills"] > 100
    assert sim.clock is not None and sim.clock.now_us == EPOCH_US + 10 * MINUTE_US


def test_step_until_runs_nothing_early_and_keeps_time_order() -> None:
    sim = _sim(2)
    assert sim.next_event_us() == EPOCH_US  # liquidity providers start at once
    assert sim.step_until(EPOCH_US - 1) == 0
    sim.step_until(EPOCH_US + MINUTE_US)
    t = sim.next_event_us()
    assert t is not None and t > EPOCH_US + MINUTE_US
    assert sim.step_until(t - 1) == 0 and sim.step_until(t) >= 1


def test_disabled_participants_do_nothing() -> None:
    sim = _sim(enabled=False)
    assert sim.agents == [] and sim.next_event_us() is None
    assert sim.step_until(EPOCH_US + MINUTE_US) == 0


def test_restart_agents_adopt_their_resting_orders() -> None:
    sim = _sim(8)
    sim.step_until(EPOCH_US + 5 * MINUTE_US)
    ex = sim.exchange
    snap = ex.snapshot()
    assert sim.clock is not None
    clock = ManualClock(sim.clock.now_us)
    restored = Exchange.restore(ex.settings, snap, clock_us=clock, rng=random.Random(0))
    sim2 = MarketSimulator(restored, sim.config, start_us=clock.now_us, clock=clock)
    for a1, a2 in zip(sim.agents, sim2.agents, strict=True):
        assert a2.user_id == a1.user_id and set(a2.orders) == set(a1.orders)
    # The fair value resumes at the restored book's mid, not at the configured price.
    bids, asks = restored.book(*GBP_BOOK)
    assert sim2.fair_values["XBT:GBP"].price == (bids[0].price + asks[0].price) // 2
    sim2.step_until(clock.now_us + 5 * MINUTE_US, check_every=50)
    per_side = sim.config.markets[0].orders_per_side
    for a in sim2.agents:
        if a.role == "liquidity_provider":
            n_bids = sum(1 for o in a.orders.values() if o.quantity > 0)
            assert n_bids <= per_side and len(a.orders) - n_bids <= per_side  # no doubled ladder


# -- configuration ---------------------------------------------------------------------------


def test_participant_users_are_added_without_credentials() -> None:
    cfg = ParticipantsConfig(first_user_id=500)
    full = settings_with_participants(demo_settings(), cfg)
    added = full.users[2:]
    assert [u.user_id for u in added] == cfg.user_ids() == list(range(500, 500 + 11))
    assert all(not u.can_authenticate for u in added)
    assert added[0].balances == dict(cfg.balances)


def test_participant_user_id_collision_is_a_config_error() -> None:
    settings = demo_settings(users=1)
    settings = msgspec.structs.replace(settings, users=[*settings.users, UserSettings(user_id=1_000_003)])
    with pytest.raises(ConfigError, match="collide with configured user"):
        settings_with_participants(settings, ParticipantsConfig())


def test_participant_market_must_be_an_exchange_market() -> None:
    from engine.exchange.settings import MarketSettings

    settings = msgspec.structs.replace(demo_settings(), markets=[MarketSettings(base="XBT", counter="GBP")])
    with pytest.raises(ConfigError, match="'XBT:EUR' is not an exchange market"):
        settings_with_participants(settings, ParticipantsConfig())


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("markets:\n  - market: \"XBT:GBP\"\n    volatilty: 0.3\n", "did you mean 'volatility'"),
        ("markets:\n  - market: \"XBT:USD\"\n", "unknown market 'XBT:USD'"),
        ("markets:\n  - lp_lots: [5, 1]\n", "lp_lots must be"),
        ("markets:\n  - market_fraction: 0.8\n    passive_fraction: 0.5\n", "must not exceed 1"),
        ("budget_fraction: 1.5\n", "budget_fraction must be within"),
        ("markets:\n  - market: \"XBT:GBP\"\n  - market: \"XBT:GBP\"\n", "lists a market twice"),
    ],
)
def test_bad_participants_config_names_the_key(yaml_text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        configload.loads(yaml_text, ParticipantsConfig, filename="p.yaml")


def test_market_participants_defaults_are_valid() -> None:
    assert MarketParticipants().market == "XBT:GBP"
    assert ParticipantsConfig().user_count == 11
