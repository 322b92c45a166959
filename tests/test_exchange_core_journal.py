"""F6 in the core: genesis snapshot + journal replay reproduces the state hash exactly; the
journal holds no secrets; a torn last line is tolerated, damage elsewhere refused."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.exchange.core import Exchange
from engine.exchange.journal import JournalError, JournalWriter, read_journal, replay
from engine.exchange.settings import LimitsSettings, RateLimitSettings
from engine.protocol import auth
from engine.protocol.messages import (
    Authenticate,
    CancelAllOrders,
    CancelOrder,
    EstimateMarketOrder,
    GetBalances,
    PlaceOrder,
    WatchOrders,
    WatchTicker,
)
from tests.test_exchange_core_helpers import GBP_C, XBT_C, Clock, settings

BOOK = {"base": XBT_C, "counter": GBP_C}
COOKIE = "HGREqcILTz8blHa/jsUTVTNBJlg="


def _login(s_nonce: bytes, uid: int, phrase: str = "opensesame") -> Authenticate:
    nonce = auth.new_nonce()
    sig = auth.sign(auth.derive_private_key(uid, phrase), auth.signed_message(uid, s_nonce, nonce))
    return Authenticate(user_id=uid, cookie=COOKIE, nonce=auth.b64_nonce(nonce), signature=sig)


def _workload(ex: Exchange, clock: Clock, seed: int, n: int) -> None:
    rng = random.Random(seed)
    wire = ex.open_session(lambda n: None)
    ex.handle(wire, _login(wire.server_nonce, 3, phrase="wrong"))  # uses an auth token, fails
    ex.handle(wire, _login(wire.server_nonce, 3))
    ex.handle(wire, WatchOrders(watch=True, **BOOK))
    ex.handle(wire, WatchTicker(watch=True, **BOOK))
    sessions = {1: ex.open_internal_session(1), 2: ex.open_internal_session(2), 3: wire}
    for i in range(n):
        u = rng.choice([1, 2, 3])
        s = sessions[u]
        clock.advance(rng.choice([0, 0.001, 1, 600]))
        r = rng.random()
        if r < 0.55:
            q = rng.randrange(1_000_000, 20_000_000) * rng.choice((1, -1))
            ex.handle(s, PlaceOrder(tonce=i + 1, quantity=q, price=rng.randrange(99_000, 101_000, 250),
                                    persist=rng.random() < 0.7, **BOOK))
        elif r < 0.65:
            ex.handle(s, PlaceOrder(total=rng.randrange(-50_000, 50_000) or 1, **BOOK))
        elif r < 0.85:
            ex.handle(s, CancelOrder(tonce=rng.randrange(1, i + 2)))
        elif r < 0.88:
            ex.handle(s, CancelAllOrders())
        elif r < 0.92:
            ex.handle(s, GetBalances())
        elif r < 0.94:
            ex.handle(s, EstimateMarketOrder(quantity=5_000_000, **BOOK))
        elif r < 0.96:
            ex.deposit(u, GBP_C, 1000)
        elif r < 0.98 and u != 3:
            ex.close_session(s)
            sessions[u] = ex.open_internal_session(u)
        else:
            ex.refresh_tickers()


def test_f6_snapshot_plus_journal_replay_reproduces_the_hash(tmp_path: Path) -> None:
    users = {u: {"GBP": "20000", "XBT": "2"} for u in (1, 2, 3)}
    st = settings(users, limits=LimitsSettings(auth=RateLimitSettings(count=5, per=3600.0)))
    clock = Clock()
    ex = Exchange(st, clock_us=clock, rng=random.Random(7))
    genesis = ex.snapshot()
    path = tmp_path / "exchange.journal"
    with JournalWriter(path) as w:
        ex.journal = w.record
        _workload(ex, clock, seed=3, n=1500)
        ex.journal = None
        assert w.events > 1500
    text = path.read_text()
    assert COOKIE not in text and "signature" not in text and "opensesame" not in text
    assert (path.stat().st_mode & 0o777) == 0o600
    events = read_journal(path)
    # a journal missing its tail does not reach the same state (the hash sees everything)
    partial = Exchange.restore(st, genesis, clock_us=Clock(0), rng=random.Random(), credentials={})
    replay(partial, events[:-5])
    assert partial.state_hash() != ex.state_hash()
    # replay needs no credentials at all
    ex2 = Exchange.restore(st, genesis, clock_us=Clock(0), rng=random.Random(), credentials={})
    replay(ex2, events)
    ex2.check_invariants()
    assert ex2.state_hash() == ex.state_hash()
    # and the replayed exchange goes on exactly like the original
    ex.journal = None
    a, b = ex.open_internal_session(1), ex2.open_internal_session(1)
    cmd = PlaceOrder(quantity=7_000_000, price=100_500, **BOOK)
    assert ex.handle(a, cmd) == ex2.handle(b, cmd)
    assert ex.state_hash() == ex2.state_hash()


def test_torn_last_line_is_ignored_but_damage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_text('{"op":"deposit","uid":1,"asset":64032,"amount":5}\n{"op":"dep')
    assert read_journal(path) == [{"op": "deposit", "uid": 1, "asset": 64032, "amount": 5}]
    path.write_text('{"op":"deposit"}\nnot json\n{"op":"refresh","t":1}\n')
    with pytest.raises(JournalError, match=":2: not a JSON event"):
        read_journal(path)
    ex = Exchange(settings({1: {"GBP": "1"}}), clock_us=Clock(), rng=random.Random(), credentials={})
    with pytest.raises(JournalError, match="never opened"):
        replay(ex, [{"op": "cmd", "sid": 9, "t": 1, "cmd": '{"method":"GetOrders"}'}])
    with pytest.raises(JournalError, match="unknown op"):
        replay(ex, [{"op": "frobnicate"}])
