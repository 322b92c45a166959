"""Snapshot files (engine/exchange/persistence.py): F6 graceful restart, refusal of bad files."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest

from engine.exchange.core import Exchange
from engine.exchange.participants import ManualClock, MarketSimulator, ParticipantsConfig
from engine.exchange.persistence import SnapshotError, load_exchange, save_snapshot
from engine.protocol.messages import PlaceOrder
from engine.scale import GBP, XBT
from tests.test_exchange_server_support import EPOCH_US, demo_settings

MINUTE_US = 60_000_000


def _busy_exchange() -> tuple[MarketSimulator, Exchange]:
    """Two minutes of simulated trading: hundreds of orders, trades, fees, volumes, limiters."""
    sim = MarketSimulator.standalone(demo_settings(), ParticipantsConfig(seed=4), start_us=EPOCH_US)
    sim.step_until(EPOCH_US + 2 * MINUTE_US)
    return sim, sim.exchange


def _everything(ex: Exchange) -> tuple[object, ...]:
    users = ex.users
    return (
        ex.state_hash(),
        {m: ex.book(*m) for m in ex.markets},
        {u: ex.balances(u) for u in users},
        {u: ex.open_orders(u) for u in users},
        ex.fees_collected(),
    )


def test_f6_graceful_restart_restores_the_same_state(tmp_path: Path) -> None:
    sim, ex = _busy_exchange()
    bids, asks = ex.book(XBT.code, GBP.code)
    assert len(bids) + len(asks) > 200 and sum(ex.fees_collected().values()) > 0
    path = tmp_path / "exchange.state.json"
    stored = save_snapshot(path, ex)
    assert stored == ex.state_hash()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind

    assert sim.clock is not None
    clock = ManualClock(sim.clock.now_us)
    restored = load_exchange(path, sim.exchange.settings, clock_us=clock, rng=random.Random(999))
    assert restored is not None
    assert _everything(restored) == _everything(ex)
    restored.check_invariants()

    # Same future: the rounding rng was restored too, so the same commands give the same state.
    for e in (ex, restored):
        s = e.open_internal_session(1)
        for q in (7_654_321, -3_333_333, 123_457):
            e.handle(s, PlaceOrder(base=XBT.code, counter=GBP.code, quantity=q))
    assert restored.state_hash() == ex.state_hash()


def test_restore_cancels_persist_false_orders_of_dead_connections(tmp_path: Path) -> None:
    clock = ManualClock(EPOCH_US)
    ex = Exchange(demo_settings(), clock_us=clock, rng=random.Random(1))
    s = ex.open_internal_session(1)
    volatile = ex.handle(s, PlaceOrder(base=XBT.code, counter=GBP.code, quantity=10_000, price=2_000_000, persist=False))
    durable = ex.handle(s, PlaceOrder(base=XBT.code, counter=GBP.code, quantity=20_000, price=1_900_000))
    path = tmp_path / "periodic.json"
    save_snapshot(path, ex)  # taken while the session was still open (a periodic snapshot)
    restored = load_exchange(path, ex.settings, clock_us=clock, rng=random.Random(1))
    assert restored is not None
    assert [o.id for o in restored.open_orders(1)] == [durable.id]  # type: ignore[union-attr]
    assert volatile.id not in {o.id for o in restored.open_orders(1)}  # type: ignore[union-attr]
    assert restored.balances(1)[GBP.code][1] == ex.open_orders(1)[1].quantity * 1_900_000 // 10**8
    restored.check_invariants()


def test_tampered_snapshot_is_refused(tmp_path: Path) -> None:
    _, ex = _busy_exchange()
    path = tmp_path / "s.json"
    save_snapshot(path, ex)
    doc = json.loads(path.read_text())
    acct = doc["snapshot"]["accounts"][0]
    acct["avail"][0][1] += 1  # one unit more for user 1: a different state
    path.write_text(json.dumps(doc))
    with pytest.raises(SnapshotError, match="state hash after restore"):
        load_exchange(path, ex.settings, clock_us=ManualClock(EPOCH_US), rng=random.Random(0))


def test_missing_file_means_fresh_start(tmp_path: Path) -> None:
    assert load_exchange(tmp_path / "none.json", demo_settings(), clock_us=ManualClock(0), rng=random.Random(0)) is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else", "version": 1}', "not a cftrade exchange snapshot"),
        ('{"format": "cftrade-exchange-snapshot", "version": 9}', "version 9"),
        ('{"format": "cftrade-exchange-snapshot", "version": 1, "state_hash": 5}', "lacks state_hash"),
    ],
)
def test_unusable_files_are_refused(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SnapshotError, match=match):
        load_exchange(path, demo_settings(), clock_us=ManualClock(0), rng=random.Random(0))


def test_snapshot_replaces_an_old_file_atomically_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("old")
    os.chmod(path, 0o644)
    ex = Exchange(demo_settings(), clock_us=ManualClock(EPOCH_US), rng=random.Random(1))
    save_snapshot(path, ex)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["state_hash"] == ex.state_hash()
