"""Notices: per-recipient ordering on a random workload (P7), the IMPL-GUIDE balance view
and book view (P9/P6 in miniature), ticker and trade-volume notices, persist=false (F2),
self-trade policies, and stochastic-rounding fairness (S3)."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest

from engine.exchange.rounding import make_below, stochastic_round
from engine.exchange.settings import FeeTier, PolicySettings
from engine.protocol.messages import (
    UNSET,
    BalanceChanged,
    CancelAllOrders,
    CancelOrder,
    ErrorReply,
    GetTradeVolume,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
    TickerChanged,
    TradeVolumeChanged,
    WatchOrders,
    WatchTicker,
    WatchTickerReply,
)
from engine.scale import V2, XBT_GBP, ceil_div
from tests.test_exchange_core_helpers import GBP_C, XBT_C, Harness, settings

BOOK = {"base": XBT_C, "counter": GBP_C}


def _res(is_bid: bool, q: int, p: int) -> tuple[int, int]:
    """(asset, amount) a resting order of q at p reserves."""
    return (GBP_C, V2.bid_reservation(q, p, XBT_GBP)) if is_bid else (XBT_C, q)


class OwnView:
    """A client's view of its balances, kept by IMPL-GUIDE's anticipated-delta rules, plus
    checks of the ordering rules that the rules alone do not catch."""

    def __init__(self, user_id: int, balances: dict[int, int]) -> None:
        self.user_id = user_id
        self.balance = dict(balances)
        self.anticipated: dict[int, Counter[int]] = {a: Counter() for a in balances}
        self.orders: dict[int, list[Any]] = {}  # tonce -> [is_bid, price, remaining]
        self.closed_ids: set[int] = set()
        self.pending_reservation: tuple[int, int] | None = None
        self.reservation_seen = True
        self.errors: list[str] = []

    def expect(self, asset: int, delta: int) -> None:
        if delta:
            self.anticipated[asset][delta] += 1

    def unexpect(self, asset: int, delta: int) -> None:
        if delta:
            self.anticipated[asset][delta] -= 1
            if self.anticipated[asset][delta] == 0:
                del self.anticipated[asset][delta]

    def sent_limit(self, tonce: int, q: int, p: int) -> None:
        asset, amount = _res(q > 0, abs(q), p)
        self.expect(asset, -amount)
        self.pending_reservation = (asset, -amount)
        self.reservation_seen = False
        self.orders[tonce] = [q > 0, p, abs(q)]

    def failed_limit(self, tonce: int) -> None:
        assert self.pending_reservation is not None
        self.unexpect(*self.pending_reservation)
        self.pending_reservation = None
        self.reservation_seen = True
        self.orders.pop(tonce, None)

    def on(self, n: Notice) -> None:
        if isinstance(n, BalanceChanged):
            delta = n.balance - self.balance[n.asset]
            self.balance[n.asset] = n.balance
            if (n.asset, delta) == self.pending_reservation and not self.reservation_seen:
                self.reservation_seen = True
            if self.anticipated[n.asset][delta] > 0:
                self.unexpect(n.asset, delta)
            else:
                self.errors.append(f"unanticipated BalanceChanged {n}")
        elif isinstance(n, OrderOpened):
            assert n.tonce is not UNSET, "own order without tonce key"
            if not self.reservation_seen:
                self.errors.append(f"OrderOpened {n.id} before its reservation's BalanceChanged")
            if n.id in self.closed_ids:
                self.errors.append(f"OrderOpened {n.id} after its OrderClosed")
        elif isinstance(n, OrderClosed):
            if n.id in self.closed_ids:
                self.errors.append(f"OrderClosed {n.id} twice")
            self.closed_ids.add(n.id)
            o = self.orders.pop(n.tonce, None)  # type: ignore[arg-type]
            if o is not None:
                if abs(n.quantity) != o[2]:
                    self.errors.append(f"OrderClosed {n.id} quantity {n.quantity}, tracked {o[2]}")
                if n.quantity:
                    self.expect(*_res(o[0], abs(n.quantity), o[1]))
        elif isinstance(n, OrdersMatched):
            for oid in (n.bid, n.ask):
                if oid is not UNSET and oid in self.closed_ids:
                    self.errors.append(f"OrdersMatched for {oid} after its OrderClosed")
            if n.bid_tonce is not UNSET:
                self._matched_side(n, True)
            if n.ask_tonce is not UNSET:
                self._matched_side(n, False)

    def _matched_side(self, n: OrdersMatched, bid: bool) -> None:
        fee = n.bid_counter_fee if bid else n.ask_counter_fee
        assert isinstance(fee, int)
        has_order = (n.bid if bid else n.ask) is not UNSET
        if bid:
            self.expect(XBT_C, n.quantity)
            if has_order:
                o = self.orders[n.bid_tonce]  # type: ignore[index]
                before = V2.bid_reservation(o[2], o[1], XBT_GBP)
                after = V2.bid_reservation(n.bid_rem, o[1], XBT_GBP)  # type: ignore[arg-type]
                self.expect(GBP_C, before - n.total - fee - after)
                o[2] = n.bid_rem
            else:
                self.anticipated[GBP_C][-(n.total + fee)] += 1
        else:
            if has_order:
                o = self.orders[n.ask_tonce]  # type: ignore[index]
                o[2] = n.ask_rem
            else:
                self.expect(XBT_C, -n.quantity)
            self.anticipated[GBP_C][n.total - fee] += 1

    def quiescent(self, actual: dict[int, tuple[int, int]]) -> None:
        stuck = {a: +c for a, c in self.anticipated.items() if +c}
        if stuck:
            self.errors.append(f"stuck anticipated deltas {stuck}")
        for a, (avail, _) in actual.items():
            if self.balance[a] != avail:
                self.errors.append(f"view {a:#x}={self.balance[a]} but exchange says {avail}")
        self.anticipated = {a: Counter() for a in self.balance}


class BookView:
    """IMPL-GUIDE "Maintaining a Local View of an Order Book" from a watcher's stream."""

    def __init__(self) -> None:
        self.orders: dict[int, list[int]] = {}  # id -> [signed qty, price, time]
        self.errors: list[str] = []

    def snapshot(self, orders: list[Any]) -> None:
        for o in orders:
            self.orders[o.id] = [o.quantity, o.price, o.time]

    def on(self, n: Notice) -> None:
        if isinstance(n, OrderOpened):
            if n.id in self.orders:
                self.errors.append(f"OrderOpened {n.id} twice")
            self.orders[n.id] = [n.quantity, n.price, n.time]
        elif isinstance(n, OrderClosed):
            self.orders.pop(n.id, None)
        elif isinstance(n, OrdersMatched):
            if n.bid is not UNSET and n.bid in self.orders:
                self.orders[n.bid][0] = n.bid_rem  # type: ignore[assignment]
            if n.ask is not UNSET and n.ask in self.orders:
                self.orders[n.ask][0] = -n.ask_rem  # type: ignore[operator]

    def check(self, bids: list[Any], asks: list[Any]) -> None:
        want = {o.id: [o.quantity, o.price, o.time] for o in bids + asks}
        if want != self.orders:
            self.errors.append(f"book view differs: {len(want)} vs {len(self.orders)} orders")


def _run_workload(seed: int, n_cmds: int, policy: PolicySettings) -> Counter[str]:
    """Run a random workload, check every recipient's stream; return the public notice counts."""
    rng = random.Random(seed)
    users = {u: {"GBP": "20000", "XBT": "2"} for u in (1, 2, 3)}
    h = Harness(settings(users, policy=policy), rng=random.Random(seed))
    views: dict[int, OwnView] = {}
    own_sessions = {}
    watching_own = {}
    for u in users:
        own_sessions[u] = h.session(u)
        watching_own[u] = h.session(u)  # a second session of the same user that also watches
        h.ex.handle(watching_own[u], WatchOrders(watch=True, **BOOK))
        views[u] = OwnView(u, {a: v[0] for a, v in h.ex.balances(u).items()})
    anon = h.session()
    book_view = BookView()
    r = h.ex.handle(anon, WatchOrders(watch=True, **BOOK))
    book_view.snapshot(r.orders)  # type: ignore[attr-defined]
    tonces = dict.fromkeys(users, 0)
    kinds: Counter[str] = Counter()
    for _ in range(n_cmds):
        u = rng.choice(list(users))
        s = own_sessions[u]
        view = views[u]
        roll = rng.random()
        tonces[u] += 1
        t = tonces[u]
        if roll < 0.6:
            q = rng.randrange(1_000_000, 30_000_000) * rng.choice((1, -1))
            p = rng.randrange(990_000, 1_010_000, 500)
            view.sent_limit(t, q, p)
            reply = h.ex.handle(s, PlaceOrder(tonce=t, quantity=q, price=p, persist=rng.random() < 0.8, **BOOK))
            if isinstance(reply, ErrorReply):
                view.failed_limit(t)
        elif roll < 0.7:
            sign = rng.choice((1, -1))
            if rng.random() < 0.5:
                cmd = PlaceOrder(tonce=t, quantity=sign * rng.randrange(1_000_000, 20_000_000), **BOOK)
            else:
                cmd = PlaceOrder(tonce=t, total=sign * rng.randrange(1_000, 100_000), **BOOK)
            h.ex.handle(s, cmd)
        elif roll < 0.95:
            h.ex.handle(s, CancelOrder(tonce=rng.randrange(max(1, t - 30), t + 1)))
        elif roll < 0.98:
            h.ex.handle(s, CancelAllOrders())
        else:
            # reconnect: persist=false orders of that session die with it (the closed
            # session hears nothing more; the user's other session sees the cancels)
            h.ex.close_session(s)
            assert h.notices(s) == []
            own_sessions[u] = h.session(u)
        h.ex.check_invariants()
        # the watching session of the owner drives the view; the plain session of the same
        # user must have received exactly the same own stream, each notice once
        for uu in users:
            other = h.notices(watching_own[uu])
            stream = [n for n in other if _is_own(n)]
            plain = h.notices(own_sessions[uu])
            if plain or roll < 0.98 or uu != u:
                assert plain == stream, "two sessions of the owner saw different own streams"
            for n in stream:
                views[uu].on(n)
            own_ids = {i for n in stream for i in _ids(n)}
            for n in other:
                if not _is_own(n):
                    # another user's order: the owner never also gets a public copy of its own
                    assert isinstance(n, (OrderOpened, OrderClosed, OrdersMatched))
                    assert not own_ids & set(_ids(n)), f"public copy of an own-order notice {n}"
            views[uu].quiescent(h.ex.balances(uu))
        for n in h.notices(anon):
            assert not _is_own(n)
            book_view.on(n)
            kinds[type(n).__name__] += 1
    book_view.check(*h.ex.book(XBT_C, GBP_C))
    errors = [e for v in views.values() for e in v.errors] + book_view.errors
    assert errors == [], errors[:5]
    return kinds


def _ids(n: Notice) -> list[int]:
    """Ids of the orders a notice is about (own side only for an own OrdersMatched)."""
    if isinstance(n, (OrderOpened, OrderClosed)):
        return [n.id]
    if isinstance(n, OrdersMatched):
        own = n.bid_tonce is not UNSET or n.ask_tonce is not UNSET
        out = []
        if n.bid is not UNSET and (not own or n.bid_tonce is not UNSET):
            out.append(n.bid)
        if n.ask is not UNSET and (not own or n.ask_tonce is not UNSET):
            out.append(n.ask)
        return out
    return []


def _is_own(n: Notice) -> bool:
    if isinstance(n, (OrderOpened, OrderClosed)):
        return n.tonce is not UNSET
    if isinstance(n, OrdersMatched):
        return n.bid_tonce is not UNSET or n.ask_tonce is not UNSET
    return isinstance(n, (BalanceChanged, TradeVolumeChanged))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_p7_notice_ordering_per_recipient(seed: int) -> None:
    kinds = _run_workload(seed, 4000, PolicySettings())
    assert min(kinds["OrdersMatched"], kinds["OrderOpened"], kinds["OrderClosed"]) > 500, kinds


def test_p7_ordering_with_open_first_and_self_trade_cancel() -> None:
    kinds = _run_workload(11, 4000, PolicySettings(open_notice_before_match=True, self_trade="cancel_resting"))
    assert min(kinds["OrdersMatched"], kinds["OrderOpened"], kinds["OrderClosed"]) > 500, kinds


def test_market_order_side_keys_absent_and_owner_fields() -> None:
    h = Harness(settings({1: {"GBP": "100000"}, 2: {"XBT": "10"}}))
    b, s, w = h.session(1), h.session(2), h.session()
    h.ex.handle(w, WatchOrders(watch=True, **BOOK))
    ask = h.place(s, -10_000_000, 1_000_000, tonce=4)
    h.notices(b), h.notices(s), h.notices(w)
    h.place(b, 3_000_000, tonce=9)  # market buy
    mine = [n for n in h.notices(b) if isinstance(n, OrdersMatched)]
    theirs = [n for n in h.notices(s) if isinstance(n, OrdersMatched)]
    public = [n for n in h.notices(w) if isinstance(n, OrdersMatched)]
    assert len(mine) == len(theirs) == len(public) == 1
    m, t, p = mine[0], theirs[0], public[0]
    assert (m.bid, m.bid_rem, m.bid_tonce, m.ask, m.ask_rem) == (UNSET, UNSET, 9, ask.id, 7_000_000)  # type: ignore[attr-defined]
    assert m.bid_counter_fee == 9 and m.bid_base_fee == 0 and m.ask_tonce is UNSET and m.ask_counter_fee is UNSET
    assert (t.bid, t.bid_tonce, t.ask_tonce, t.ask_counter_fee) == (UNSET, UNSET, 4, 9)
    assert (p.bid, p.bid_tonce, p.ask_tonce, p.bid_counter_fee, p.ask_counter_fee) == (UNSET,) * 5
    assert p.ask == ask.id and p.ask_rem == 7_000_000 and p.total == 30_000  # type: ignore[attr-defined]
    assert not [n for n in h.notices(w) if isinstance(n, (OrderOpened, OrderClosed))]


# ---------------------------------------------------------------------------------------
# ticker and trade volume


def test_ticker_reply_and_changed_fields_only() -> None:
    h = Harness(settings({1: {"GBP": "100000"}, 2: {"XBT": "10"}}))
    b, s, w = h.session(1), h.session(2), h.session()
    r = h.ex.handle(w, WatchTicker(watch=True, **BOOK))
    assert r == WatchTickerReply(last=None, bid=None, ask=None, low=None, high=None, volume=0)
    h.place(b, 10_000_000, 1_000_000)
    assert h.notices(w) == [TickerChanged(base=XBT_C, counter=GBP_C, bid=1_000_000)]
    h.place(s, -4_000_000, 990_000)  # trades at the bid's price 1,000,000
    assert h.notices(w) == [TickerChanged(base=XBT_C, counter=GBP_C, last=1_000_000, low=1_000_000, high=1_000_000, volume=4_000_000)]
    h.place(s, -1_000_000, 1_200_000)
    assert h.notices(w) == [TickerChanged(base=XBT_C, counter=GBP_C, ask=1_200_000)]
    h.do(b, CancelAllOrders())
    assert h.notices(w) == [TickerChanged(base=XBT_C, counter=GBP_C, bid=None)]
    # 24 hours later the trade leaves the window: refresh pushes low/high/volume
    h.clock.advance(24 * 3600)
    h.ex.refresh_tickers()
    assert h.notices(w) == [TickerChanged(base=XBT_C, counter=GBP_C, low=None, high=None, volume=0)]
    assert h.ex.ticker(XBT_C, GBP_C)["last"] == 1_000_000
    assert h.ex.handle(w, WatchTicker(watch=False, **BOOK)) == WatchTickerReply()
    h.place(b, 1_000_000, 1_000_000)
    assert h.notices(w) == []


def test_trade_volume_notices_and_30_day_window() -> None:
    h = Harness(settings({1: {"GBP": "100000"}, 2: {"XBT": "10"}}))
    b, s = h.session(1), h.session(2)
    h.place(b, 10_000_000, 1_000_000)
    h.notices(b)
    h.place(s, -4_000_000, 1_000_000)
    vols = [n for n in h.notices(b) if isinstance(n, TradeVolumeChanged)]
    assert vols == [TradeVolumeChanged(asset=XBT_C, volume=4_000_000), TradeVolumeChanged(asset=GBP_C, volume=40_000)]
    assert h.ex.handle(s, GetTradeVolume(asset=XBT_C)).volume == 4_000_000  # type: ignore[attr-defined]
    h.clock.advance(30 * 24 * 3600)
    assert h.ex.handle(s, GetTradeVolume(asset=XBT_C)).volume == 0  # type: ignore[attr-defined]


def test_fee_tiers_by_30_day_volume() -> None:
    fees = [FeeTier(min_volume="0", maker_ppm=1000, taker_ppm=2000), FeeTier(min_volume="1", maker_ppm=0, taker_ppm=500)]
    h = Harness(settings({1: {"GBP": "1000000"}, 2: {"XBT": "100"}}, fees=fees))
    b, s = h.session(1), h.session(2)

    def trade(q: int) -> OrdersMatched:
        h.place(s, -q, 1_000_000)  # the seller rests (maker) ...
        h.notices(b)
        h.place(b, q, 1_010_000)  # ... the buyer takes; 1% headroom pays its fee
        return next(n for n in h.notices(b) if isinstance(n, OrdersMatched))

    m = trade(50_000_000)  # 0.5 XBT = 5,000.00 GBP; the buyer is taker at 0.2%
    assert (m.quantity, m.total, m.bid_counter_fee) == (50_000_000, 500_000, 1000)
    m = trade(60_000_000)  # still below 1 XBT before this trade: 0.2%
    assert m.bid_counter_fee == 1200
    m = trade(10_000_000)  # 1.1 XBT traded: taker 0.05%
    assert m.bid_counter_fee == 50
    # the seller (maker) paid 0.1% twice, then 0 once its own volume reached 1 XBT
    assert h.ex.fees_collected()[GBP_C] == (1000 + 1200 + 50) + (500 + 600 + 0)


# ---------------------------------------------------------------------------------------
# persist=false (F2) and self-trade


def test_f2_persist_false_cancelled_on_close_only_for_that_session() -> None:
    h = Harness(settings({1: {"GBP": "100000"}}))
    s1, s2 = h.session(1), h.session(1)
    keep = h.place(s1, 1_000_000, 100_000, persist=True)
    gone = h.place(s1, 1_000_000, 100_000, persist=False)
    other = h.place(s2, 1_000_000, 100_000, persist=False)
    assert all(isinstance(r, PlaceOrderReply) for r in (keep, gone, other))
    h.notices(s2)
    h.ex.close_session(s1)
    h.ex.check_invariants()
    assert [o.id for o in h.ex.open_orders(1)] == [keep.id, other.id]  # type: ignore[attr-defined]
    seen = h.notices(s2)
    assert [type(n).__name__ for n in seen] == ["OrderClosed", "BalanceChanged"]
    assert seen[0].id == gone.id  # type: ignore[attr-defined]
    assert h.ex.balances(1)[GBP_C][1] == 2 * V2.bid_reservation(1_000_000, 100_000, XBT_GBP)
    h.ex.close_session(s1)  # idempotent


def test_cancel_orphaned_orders_after_restore() -> None:
    from engine.exchange.core import Exchange

    h = Harness(settings({1: {"GBP": "100000"}}))
    s1 = h.session(1)
    h.place(s1, 1_000_000, 100_000, persist=True)
    h.place(s1, 1_000_000, 100_000, persist=False)
    ex2 = Exchange.restore(h.ex.settings, h.ex.snapshot(), clock_us=h.clock, rng=random.Random())
    assert ex2.cancel_orphaned_orders() == 1
    assert len(ex2.open_orders(1)) == 1
    ex2.check_invariants()


@pytest.mark.parametrize("policy", ["allow", "cancel_resting"])
def test_self_trade_policy(policy: str) -> None:
    h = Harness(settings({1: {"GBP": "100000", "XBT": "10"}}, policy=PolicySettings(self_trade=policy)))  # type: ignore[arg-type]
    s = h.session(1)
    ask = h.place(s, -10_000_000, 1_000_000, tonce=1)
    h.notices(s)
    r = h.place(s, 5_000_000, 1_000_000, tonce=2)
    assert isinstance(r, PlaceOrderReply)
    got = h.notices(s)
    if policy == "allow":
        m = [n for n in got if isinstance(n, OrdersMatched)]
        assert len(m) == 1 and m[0].bid_tonce == 2 and m[0].ask_tonce == 1
        assert m[0].bid_counter_fee is not UNSET and m[0].ask_counter_fee is not UNSET
        assert h.ex.fees_collected()[GBP_C] > 0
    else:
        assert not [n for n in got if isinstance(n, OrdersMatched)]
        assert [o.id for o in h.ex.open_orders(1)] == [r.id]
        assert ask.id not in [o.id for o in h.ex.open_orders(1)]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------
# S3: stochastic rounding is fair


def test_s3_stochastic_rounding_is_unbiased() -> None:
    rng = random.Random(2024)
    below = make_below(random.Random(7))
    n = 200_000
    total_err = 0.0
    sq = 0.0
    for _ in range(n):
        den = rng.choice((100, 10**6, 10**10, 7, 12345))
        num = rng.randrange(0, 1000 * den)
        q, r = divmod(num, den)
        got = q + (1 if r and below(den) < r else 0)
        assert got in (q, q + 1) and (r or got == q)
        f = r / den
        total_err += got - num / den
        sq += f * (1 - f)  # variance of one rounding error
    sigma = math.sqrt(sq)
    assert abs(total_err) < 3 * sigma, (total_err, sigma)


def test_fast_draws_equal_randrange() -> None:
    """The engine's fast draw is the same stream as random.Random.randrange (so a reference
    engine may use either)."""
    a, b = random.Random(99), random.Random(99)
    below = make_below(a)
    dens = [1, 2, 3, 100, 10**6, 10**10, 2**64 + 13]
    assert [below(d) for d in dens * 500] == [b.randrange(d) for d in dens * 500]
    c, d = random.Random(5), random.Random(5)
    assert [stochastic_round(12345, 100, c) for _ in range(1000)] == [
        123 + (1 if d.randrange(100) < 45 else 0) for _ in range(1000)
    ]
    assert ceil_div(7, 2) == 4
