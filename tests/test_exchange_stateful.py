"""S1: a Hypothesis state machine drives the exchange core and a naive reference engine
side by side and compares them after every step.

The reference is written to be obviously right rather than fast: every open order sits in
one plain list, the best counterparty is ``min()`` over that list by (price, id), and the
"largest affordable quantity" questions are answered by binary search over the worst-case
cost instead of the core's closed-form formulas.  Both engines draw stochastic rounding
from ``random.Random`` seeded alike, in the same order (total, buyer fee, seller fee, each
only when it has a fractional part), so their results agree to the unit.

After every step: replies identical; every balance (available and reserved), open order
and resting order identical; fees identical; and the core's own invariants (book not
crossed, price-time priority, conservation per asset, reserved == sum of reservations
(O6), at most ``max_open_orders`` per user).  A restart rule snapshots and restores the
core mid-run: identical state hash, then identical behaviour.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.exchange.core import Exchange, Session
from engine.exchange.settings import (
    ExchangeSettings,
    FeeTier,
    LimitsSettings,
    PolicySettings,
    UserSettings,
)
from engine.protocol.messages import (
    CancelAllOrders,
    CancelAllOrdersReply,
    CancelOrder,
    CancelOrderReply,
    ErrorReply,
    EstimateMarketOrder,
    EstimateMarketOrderReply,
    PlaceOrder,
    PlaceOrderReply,
    Reply,
)
from engine.scale import GBP, XBT

B, C = XBT.code, GBP.code
MUL, DEN = 100, 10**8 * 100  # v2 XBT:GBP: total = q * p * 100 / (1e8 * 100)
PPM = 10**6
INT64_MAX = 2**63 - 1
BUCKET = 60_000_000
WINDOW = 30 * 86_400_000_000
USERS = (1, 2, 3)
MAX_OPEN = 4
TIERS = [(0, 200, 400), (50_000_000, 100, 300)]  # (min XBT volume, maker ppm, taker ppm)
PRICES = [98_000, 99_000, 99_500, 100_000, 100_500, 101_000, 102_000]


def cdiv(a: int, b: int) -> int:
    return -((-a) // b)


def worst_cost(x: int, p: int, ppm: int) -> int:
    """What a buyer pays for x at p if the total and the fee both round up."""
    t = cdiv(x * p * MUL, DEN)
    return t + cdiv(t * ppm, PPM)


def largest(lo: int, hi: int, ok: Any) -> int:
    """Largest x in [lo, hi] with ok(x), given ok is monotone decreasing and ok(lo)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def affordable(budget: int, p: int, ppm: int, hi: int) -> int:
    """Largest x <= hi a buyer with ``budget`` can pay for at p, fee included, worst case."""
    return largest(0, hi, lambda v: v == 0 or worst_cost(v, p, ppm) <= budget)


def within_total(total_left: int, p: int, hi: int) -> int:
    """Largest x <= hi whose total at p, rounded up, stays within ``total_left``."""
    return largest(0, hi, lambda v: cdiv(v * p * MUL, DEN) <= total_left)


class RefOrder:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class Reference:
    """The naive engine. Replies are tuples comparable with :func:`core_reply`."""

    def __init__(self, balances: dict[int, dict[int, int]], seed: int, self_trade: str, now: int) -> None:
        assets = [B, 0xFA00, C]
        self.avail = {u: {a: balances[u].get(a, 0) for a in assets} for u in balances}
        self.reserved = {u: dict.fromkeys(assets, 0) for u in balances}
        self.orders: list[RefOrder] = []
        self.hw = dict.fromkeys(balances, 0)
        self.volume: dict[int, list[tuple[int, int]]] = {u: [] for u in balances}
        self.fees = dict.fromkeys(assets, 0)
        self.rng = random.Random(seed)
        self.next_id = 1
        self.self_trade = self_trade
        self.now = now
        self.fills = 0

    # -- helpers

    def rnd(self, num: int, den: int) -> int:
        q, r = divmod(num, den)
        if r and self.rng.randrange(den) < r:
            q += 1
        return q

    def vol(self, u: int) -> int:
        return sum(a for t, a in self.volume[u] if (t - t % BUCKET) > self.now - WINDOW)

    def ppm(self, u: int, maker: bool) -> int:
        v = self.vol(u)
        fit = [t for t in TIERS if t[0] <= v] or [min(TIERS)]
        tier = max(fit)
        return tier[1] if maker else tier[2]

    def need(self, o: RefOrder) -> int:
        return cdiv(o.qty * o.price * MUL, DEN) if o.bid else o.qty

    def close(self, o: RefOrder) -> None:
        self.orders.remove(o)
        asset = C if o.bid else B
        self.reserved[o.uid][asset] -= o.res
        self.avail[o.uid][asset] += o.res
        o.res = 0

    # -- matching

    def match(self, u: int, buy: bool, taker: RefOrder | None, limit: int | None,
              want_q: int | None, want_t: int | None) -> tuple[int, int, bool]:
        traded_q = traded_t = 0
        while True:
            if taker is not None:
                left = taker.qty
            elif want_q is not None:
                left = want_q - traded_q
            else:
                left = INT64_MAX
            if left == 0:
                break
            opp = [o for o in self.orders if o.bid != buy]
            if limit is not None:
                opp = [o for o in opp if (o.price <= limit if buy else o.price >= limit)]
            if not opp:
                break
            m = min(opp, key=lambda o: (o.price, o.id)) if buy else min(opp, key=lambda o: (-o.price, o.id))
            p = m.price
            if self.self_trade == "cancel_resting" and m.uid == u:
                self.close(m)
                continue
            x = min(m.qty, left)
            if want_t is not None:
                x = within_total(want_t - traded_t, p, x)
            if buy:
                ppm_b, ppm_a = self.ppm(u, False), self.ppm(m.uid, True)
                budget = taker.res if taker is not None else self.avail[u][C]
                afford = affordable(budget, p, ppm_b, max(x, 1))
                x = min(x, afford)
                if x <= 0:
                    return traded_q, traded_t, taker is not None and afford <= 0
                t = self.fill(u, m.uid, taker, m, x, p, ppm_b, ppm_a)
            else:
                ppm_a, ppm_b = self.ppm(u, False), self.ppm(m.uid, True)
                afford = affordable(m.res, p, ppm_b, m.qty)
                if afford <= 0:
                    self.close(m)  # dust bid
                    continue
                x = min(x, afford)
                if taker is None:
                    x = min(x, self.avail[u][B])
                if x <= 0:
                    break
                t = self.fill(m.uid, u, m, taker, x, p, ppm_b, ppm_a)
            traded_q += x
            traded_t += t
        return traded_q, traded_t, False

    def fill(self, buyer: int, seller: int, bid: RefOrder | None, ask: RefOrder | None,
             x: int, p: int, ppm_b: int, ppm_a: int) -> int:
        self.fills += 1
        event("fill" if self.fills < 5 else "5+ fills")
        t = self.rnd(x * p * MUL, DEN)
        fb = self.rnd(t * ppm_b, PPM)
        fa = self.rnd(t * ppm_a, PPM)
        if bid is not None:
            left_res = bid.res - t - fb
            q = within_total(left_res, bid.price, bid.qty - x)  # IMPL-GUIDE: what the rest covers
            need = cdiv(q * bid.price * MUL, DEN)
            self.reserved[buyer][C] -= bid.res - need
            self.avail[buyer][C] += left_res - need
            bid.qty, bid.res = q, need
        else:
            self.avail[buyer][C] -= t + fb
        self.avail[buyer][B] += x
        if ask is not None:
            ask.qty -= x
            ask.res -= x
            self.reserved[seller][B] -= x
        else:
            self.avail[seller][B] -= x
        self.avail[seller][C] += t - fa
        self.fees[C] += fb + fa
        self.volume[buyer].append((self.now, x))
        self.volume[seller].append((self.now, x))
        for o in (bid, ask):
            if o is not None and o.qty == 0 and o in self.orders:
                self.orders.remove(o)
        return t

    # -- commands

    def place(self, u: int, sid: int, tonce: int | None, q: int | None, p: int | None,
              total: int | None, persist: bool) -> tuple[Any, ...]:
        if tonce == 0:
            return (8, "Tonce must not be zero.")
        if p is not None:
            assert q is not None
            if q == 0:
                return (8, "Quantity must not be zero.")
            if p == 0:
                return (8, "Price must not be zero.")
            if p < 0:
                return (8, "Price must be positive.")
            bid = q > 0
            need = cdiv(abs(q) * p * MUL, DEN) if bid else abs(q)
            if abs(q) * p > INT64_MAX or need > INT64_MAX:
                return (8, "Order total would overflow.")
            if tonce is not None and tonce <= self.hw[u]:
                return (3, "Tonce is out of sequence.")
            if sum(1 for o in self.orders if o.uid == u) >= MAX_OPEN:
                return (5, "You have too many outstanding orders.")
            asset = C if bid else B
            if self.avail[u][asset] < need:
                return (4, "You have insufficient funds.")
            if tonce is not None:
                self.hw[u] = tonce
            o = RefOrder(id=self.next_id, uid=u, tonce=tonce, bid=bid, qty=abs(q), price=p,
                         time=self.now, persist=persist, sid=sid, res=need)
            self.next_id += 1
            self.avail[u][asset] -= need
            self.reserved[u][asset] += need
            _, _, dust = self.match(u, bid, o, p, None, None)
            if o.qty > 0 and not dust:
                self.orders.append(o)
            else:
                self.reserved[u][asset] -= o.res
                self.avail[u][asset] += o.res
            return ("limit", o.id, self.now)
        amount = q if q is not None else total
        assert amount is not None
        if amount == 0:
            return (8, "Quantity must not be zero." if q is not None else "Total must not be zero.")
        if tonce is not None and tonce <= self.hw[u]:
            return (3, "Tonce is out of sequence.")
        buy = amount > 0
        if self.avail[u][C if buy else B] <= 0:
            return (4, "You have insufficient funds.")
        if tonce is not None:
            self.hw[u] = tonce
        if q is not None:
            tq, _, _ = self.match(u, buy, None, None, abs(q), None)
            return ("market", abs(q) - tq)
        _, tt, _ = self.match(u, buy, None, None, None, abs(amount))
        return ("market", abs(amount) - tt)

    def cancel(self, u: int, oid: int | None, tonce: int | None) -> tuple[Any, ...]:
        found = [o for o in self.orders if o.uid == u and (o.id == oid if oid is not None else o.tonce == tonce)]
        if not found:
            return (1, "The specified order was not found.")
        o = found[0]
        q = o.qty if o.bid else -o.qty
        self.close(o)
        return ("cancelled", o.id, o.tonce, q, o.price, o.time)

    def cancel_all(self, u: int) -> tuple[Any, ...]:
        mine = sorted((o for o in self.orders if o.uid == u), key=lambda o: o.id)
        out = [(o.id, o.tonce, o.qty if o.bid else -o.qty, o.price, o.time) for o in mine]
        for o in mine:
            self.close(o)
        self.hw[u] = 0
        return ("all", out)

    def close_session(self, sid: int) -> None:
        for o in sorted([o for o in self.orders if o.sid == sid and not o.persist], key=lambda o: o.id):
            self.close(o)

    def estimate(self, buy: bool, q: int | None, total: int | None) -> tuple[Any, ...]:
        if (q if q is not None else total) == 0:
            return (8, "Quantity must not be zero." if q is not None else "Total must not be zero.")
        side = [o for o in self.orders if o.bid != buy]
        side.sort(key=(lambda o: (o.price, o.id)) if buy else (lambda o: (-o.price, o.id)))
        got_q, num = 0, 0
        for o in side:
            if q is not None:
                x = min(o.qty, abs(q) - got_q)
            else:
                x = min(o.qty, (abs(total) * DEN - num) // (o.price * MUL))  # type: ignore[arg-type]
            if x <= 0:
                break
            got_q += x
            num += x * o.price * MUL
        return ("estimate", got_q, (2 * num + DEN) // (2 * DEN))


def core_reply(r: Reply) -> tuple[Any, ...]:
    if isinstance(r, ErrorReply):
        return (r.error_code, r.error_msg)
    if isinstance(r, PlaceOrderReply):
        return ("limit", r.id, r.time) if isinstance(r.id, int) else ("market", r.remaining)
    if isinstance(r, CancelOrderReply):
        return ("cancelled", r.id, r.tonce, r.quantity, r.price, r.time)
    if isinstance(r, CancelAllOrdersReply):
        return ("all", [(o.id, o.tonce, o.quantity, o.price, o.time) for o in r.orders])
    if isinstance(r, EstimateMarketOrderReply):
        return ("estimate", r.quantity, r.total)
    raise AssertionError(f"unexpected reply {r!r}")


quantities = st.one_of(st.integers(100_000, 40_000_000), st.integers(1, 300))
tonce_modes = st.sampled_from(["next", "none", "next", "next", "next", "same", "low", "zero"])
market_amounts = st.one_of(st.integers(10_000, 30_000_000), st.integers(1, 200), st.just(0))


class ExchangeVsReference(RuleBasedStateMachine):
    self_trade = "allow"

    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed: int) -> None:
        opening = {1: {"GBP": "1500", "XBT": "0.15"}, 2: {"GBP": "1500", "XBT": "0.15"}, 3: {"GBP": "300", "XBT": "0.6"}}
        self.settings = ExchangeSettings(
            users=[UserSettings(user_id=u, balances=b) for u, b in opening.items()],
            fees=[FeeTier(min_volume="0", maker_ppm=200, taker_ppm=400), FeeTier(min_volume="0.5", maker_ppm=100, taker_ppm=300)],
            limits=LimitsSettings(enabled=False),
            max_open_orders=MAX_OPEN,
            policy=PolicySettings(self_trade=self.self_trade),  # type: ignore[arg-type]
        )
        self.now = 1_700_000_000_000_000
        self.ex = Exchange(self.settings, clock_us=lambda: self.now, rng=random.Random(seed), credentials={})
        self.ref = Reference(self.settings.opening_balances(), seed, self.self_trade, self.now)
        self.sessions: dict[int, Session] = {u: self.ex.open_internal_session(u) for u in USERS}
        self.steps = 0
        # a book to trade against from the first step: each user rests a bid and an ask
        for u in USERS:
            for q, p in ((5_000_000 * u, 99_500 - 500 * u), (-4_000_000 * u, 100_500 + 500 * u)):
                t = self.ref.hw[u] + 1
                ref = self.ref.place(u, self.sessions[u].id, t, q, p, None, True)
                self._both(u, PlaceOrder(base=B, counter=C, tonce=t, quantity=q, price=p), ref)

    def _tonce(self, u: int, mode: str) -> int | None:
        hw = self.ref.hw[u]
        return {"none": None, "next": hw + 1, "same": hw, "low": hw - 1, "zero": 0}[mode]

    def _both(self, u: int, cmd: Any, ref_result: Any) -> None:
        got = core_reply(self.ex.handle(self.sessions[u], cmd))
        assert got == ref_result, (cmd, got, ref_result)
        event(f"{type(cmd).__name__} -> {got[0]}")

    def _place_limit(self, u: int, buy: bool, q: int, p: int, mode: str, persist: bool) -> None:
        tonce = self._tonce(u, mode)
        sq = q if buy else -q
        cmd = PlaceOrder(base=B, counter=C, quantity=sq, price=p, persist=persist,
                         **({} if tonce is None else {"tonce": tonce}))
        ref = self.ref.place(u, self.sessions[u].id, tonce, sq, p, None, persist)
        self._both(u, cmd, ref)

    # Hypothesis picks rules uniformly: two rules for limit orders make them (and so
    # fills) twice as frequent as each other command.
    @rule(u=st.sampled_from(USERS), buy=st.booleans(), q=quantities, p=st.sampled_from(PRICES),
          mode=tonce_modes, persist=st.booleans())
    def place_limit(self, u: int, buy: bool, q: int, p: int, mode: str, persist: bool) -> None:
        self._place_limit(u, buy, q, p, mode, persist)

    @rule(u=st.sampled_from(USERS), buy=st.booleans(), q=quantities, p=st.sampled_from(PRICES),
          mode=tonce_modes, persist=st.booleans())
    def place_limit_too(self, u: int, buy: bool, q: int, p: int, mode: str, persist: bool) -> None:
        self._place_limit(u, buy, q, p, mode, persist)

    @rule(u=st.sampled_from(USERS), buy=st.booleans(), by_total=st.booleans(),
          amount=market_amounts, mode=tonce_modes)
    def place_market(self, u: int, buy: bool, by_total: bool, amount: int, mode: str) -> None:
        tonce = self._tonce(u, mode)
        signed = amount if buy else -amount
        kw: dict[str, Any] = {} if tonce is None else {"tonce": tonce}
        if by_total:
            cmd = PlaceOrder(base=B, counter=C, total=signed, **kw)
            ref = self.ref.place(u, self.sessions[u].id, tonce, None, None, signed, True)
        else:
            cmd = PlaceOrder(base=B, counter=C, quantity=signed, **kw)
            ref = self.ref.place(u, self.sessions[u].id, tonce, signed, None, None, True)
        self._both(u, cmd, ref)

    @rule(u=st.sampled_from(USERS), pick=st.integers(0, 50))
    def cancel_by_id(self, u: int, pick: int) -> None:
        # any order id, including other users' (must look not found) and unknown ones
        ids = sorted(o.id for o in self.ref.orders) + [self.ref.next_id + 5]
        oid = ids[pick % len(ids)]
        self._both(u, CancelOrder(id=oid), self.ref.cancel(u, oid, None))

    @rule(u=st.sampled_from(USERS), back=st.integers(0, 6))
    def cancel_by_tonce(self, u: int, back: int) -> None:
        tonce = self.ref.hw[u] - back
        if tonce == 0:
            tonce = 1
        self._both(u, CancelOrder(tonce=tonce), self.ref.cancel(u, None, tonce))

    @rule(u=st.sampled_from(USERS))
    def cancel_all(self, u: int) -> None:
        self._both(u, CancelAllOrders(), self.ref.cancel_all(u))

    @rule(u=st.sampled_from(USERS))
    def reconnect(self, u: int) -> None:
        """persist=false orders of the closed session are cancelled."""
        old = self.sessions[u]
        self.ex.close_session(old)
        self.ref.close_session(old.id)
        self.sessions[u] = self.ex.open_internal_session(u)

    @rule(u=st.sampled_from(USERS), asset=st.sampled_from([B, C]), amount=st.integers(1, 10**8))
    def deposit(self, u: int, asset: int, amount: int) -> None:
        self.ex.deposit(u, asset, amount)
        self.ref.avail[u][asset] += amount

    @rule(seconds=st.sampled_from([1, 60, 3600, 86_400, 10 * 86_400, 25 * 86_400]))
    def advance_time(self, seconds: int) -> None:
        self.now += seconds * 1_000_000
        self.ref.now = self.now

    @rule(buy=st.booleans(), by_total=st.booleans(), amount=st.integers(0, 50_000_000))
    def estimate(self, buy: bool, by_total: bool, amount: int) -> None:
        signed = amount if buy else -amount
        if by_total:
            cmd = EstimateMarketOrder(base=B, counter=C, total=signed)
            ref = self.ref.estimate(buy, None, signed)
        else:
            cmd = EstimateMarketOrder(base=B, counter=C, quantity=signed)
            ref = self.ref.estimate(buy, signed, None)
        self._both(1, cmd, ref)

    @rule()
    def restart(self) -> None:
        """Snapshot, restore, compare hashes; every connection is gone after a restart."""
        before = self.ex.state_hash()
        ex2 = Exchange.restore(self.settings, self.ex.snapshot(), clock_us=lambda: self.now,
                               rng=random.Random(), credentials={})
        assert ex2.state_hash() == before
        self.ex = ex2
        self.ex.cancel_orphaned_orders()
        for o in sorted([o for o in self.ref.orders if not o.persist], key=lambda o: o.id):
            self.ref.close(o)
        self.sessions = {u: self.ex.open_internal_session(u) for u in USERS}

    @invariant()
    def same_state(self) -> None:
        self.steps += 1
        ex, ref = self.ex, self.ref
        ex.check_invariants()
        for u in USERS:
            bal = ex.balances(u)
            want = {a: (ref.avail[u][a], ref.reserved[u][a]) for a in ref.avail[u]}
            assert bal == want, (u, bal, want)
            mine = sorted((o for o in ref.orders if o.uid == u), key=lambda o: o.id)
            got = [(o.id, o.tonce, o.quantity, o.price, o.time) for o in ex.open_orders(u)]
            assert got == [(o.id, o.tonce, o.qty if o.bid else -o.qty, o.price, o.time) for o in mine]
            assert len(got) <= MAX_OPEN
            assert ex.tonce_high_water(u) == ref.hw[u]
        bids, asks = ex.book(B, C)
        ref_bids = sorted((o for o in ref.orders if o.bid), key=lambda o: (-o.price, o.id))
        ref_asks = sorted((o for o in ref.orders if not o.bid), key=lambda o: (o.price, o.id))
        assert [(o.id, o.quantity, o.price) for o in bids] == [(o.id, o.qty, o.price) for o in ref_bids]
        assert [(o.id, o.quantity, o.price) for o in asks] == [(o.id, -o.qty, o.price) for o in ref_asks]
        if ref_bids and ref_asks:
            assert ref_bids[0].price < ref_asks[0].price
        assert ex.fees_collected()[C] == ref.fees[C]
        # conservation in the reference too (independently of the core's own check)
        supply = ex.supply()
        for a in (B, C):
            held = sum(ref.avail[u][a] + ref.reserved[u][a] for u in USERS)
            assert held + ref.fees[a] == supply[a]


class ExchangeVsReferenceCancelResting(ExchangeVsReference):
    self_trade = "cancel_resting"


_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestExchangeVsReference = ExchangeVsReference.TestCase
TestExchangeVsReference.settings = _SETTINGS
TestExchangeVsReferenceCancelResting = ExchangeVsReferenceCancelResting.TestCase
TestExchangeVsReferenceCancelResting.settings = settings(_SETTINGS, max_examples=60)
