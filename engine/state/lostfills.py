"""Fills whose OrdersMatched died with a cut connection, solved from reconcile evidence.

Pure arithmetic, no I/O: :meth:`engine.runtime.TradingCore.infer_lost_fills` gathers the
evidence at a reconnect and records what :func:`solve` returns.

**Evidence** (all exact integers):

* trade volume beyond what we saw (GetTradeVolume): the lost base quantity ``Q`` per base
  asset and the lost total ``T_m`` per counter asset (which names the market);
* the balance residual per asset, GetBalances − our view, minus what the *untraded* part of
  every candidate explains (a closed ask's ``rem`` in base, a closed bid's ``R(rem)`` in
  counter, a drifted bid's ``R(r0) − R(rx)``, a never-sent order's anticipated reservation).
  What is left is the traded part: ``D_base = Σ_buy q − Σ_closed sells q`` and
  ``D_ctr = Σ_sell (t − f) − Σ_buy (t + f)``;
* GetOrders: an ask still open traded exactly ``r0 − rx``; a bid still open traded at most
  ``r0 − rx`` (the fee shrinks a bid's remaining further, IMPL-GUIDE).

**Base per side is exact**: ``Buy + Sell = Q`` and ``Buy − Sell = D_base``.  A side's
quantity is then given to that side's orders in the exchange's own matching priority (best
price first, then the oldest order), each up to what it could still trade: an ask its
remaining, a bid what its reservation pays for with the fee (the exchange's cap, with the
fee rate ``fee_ppm`` learned from our own fills).  That is exactly what happened whenever
the lost trades met our resting orders in matching order (one aggressor sweep, or several
against the same resting orders), which is what a cut mid-flow produces.  A market order
on a side with limit orders is tried both ways (it took the whole side, or nothing); when
both fit the evidence the gap is left alone.

**Counter per market is exact**: the totals of one market sum to ``T_m`` and the fees of
one market to ``F_m = Σ_sell t − Σ_buy t − D_ctr`` (exact when one side traded; when both
did, the buy side's total is taken nearest its limit-price value, ±1 unit per order).  The
per-order split of a market's total and fee is deterministic (largest remainder, in
proportion to each order's total at its limit price) and within one unit per trade of the
truth, because the exchange rounds each trade's total and fee stochastically and only the
sums survive.  So positions (base) are exact per order, and the counter amounts and fees
summed per market, hence realized PnL summed over strategies, equal the balances exactly.

**Left alone** (``Unsolved`` with the reason, logged by the caller): residuals that do not
add up (negative or odd side quantities, a side that cannot absorb its quantity, a fee
outside [0, 1 %] of the total, totals inconsistent with the limit prices), one side traded
in two markets at once, or two hypotheses that both fit (:class:`Ambiguous`): a market
order that may have taken the whole side or nothing, or an in-doubt PlaceOrder (reply
lost, no trace) whose being placed or not changes who traded (when it is the only one, the
runner learns its fate by resubmitting it with its tonce and solves the kept :class:`Gap`
again).  Leaving a gap alone keeps
balances exact (GetBalances) and only misses the fill; guessing could book a fill on an
order that never existed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

from engine.scale import Market, Scales
from engine.state.orders import Order
from engine.strategy import Side

__all__ = ["Ambiguous", "Candidate", "Gap", "Solution", "Unsolved", "solve", "bid_cap"]

PPM = 1_000_000


@dataclass(frozen=True, slots=True)
class Candidate:
    """An order that may have traded in the gap: ``r0`` is its remaining as we last saw it;
    ``rx`` what GetOrders says is left (``None``: absent from GetOrders, closed).
    ``maybe``: a PlaceOrder whose reply was lost and that left no other trace (no id, no
    fill, absent from GetOrders), so it may never have reached the book at all.  The
    residuals given to :func:`solve` assume it was placed; ``absent_shift`` is how much
    higher its asset's residual (base for an ask, counter for a bid) reads if it was not
    (its reservation, when our view never counted it)."""

    order: Order
    r0: int
    rx: int | None = None
    maybe: bool = False
    absent_shift: int = 0


@dataclass(frozen=True, slots=True)
class Solution:
    """One order's share of the lost trades: base ``quantity``, counter ``total`` and our
    ``fee``, and its ``remaining`` afterwards."""

    order: Order
    quantity: int
    total: int
    fee: int
    remaining: int


class Unsolved(Exception):
    """The evidence does not determine the lost fills; ``str()`` says why."""


class Ambiguous(Unsolved):
    """More than one answer fits the evidence (as opposed to none)."""


def bid_cap(reserved: int, price: int, market: Market, scales: Scales, fee_ppm: int) -> int:
    """The most base a bid holding ``reserved`` counter units can still buy at ``price``
    when total and fee both round up (the exchange's own cap, core._match)."""
    mul, den = scales.total_divisor(market)
    return ((reserved * PPM) // (PPM + fee_ppm) * den) // (price * mul)


def _priority(c: Candidate) -> tuple[int, int, int]:
    o = c.order
    price = o.price or 0
    # Best price first; within a price the oldest order (exchange id, else our tonce order).
    return (-price if o.side is Side.BUY else price, o.id if o.id is not None else 1 << 62, o.tonce or 0)


def _apportion(total: int, weights: list[Fraction]) -> list[int]:
    """Split ``total`` into integers in proportion to ``weights`` (largest remainder; ties
    to the earlier item), deterministic."""
    if not weights:
        return []
    s = sum(weights)
    if s <= 0:
        out = [0] * len(weights)
        out[0] = total
        return out
    raw = [total * w / s for w in weights]
    out = [int(r) for r in raw]  # floor: all weights are >= 0
    left = total - sum(out)
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[:left]:
        out[i] += 1
    return out


def _walk(side: list[Candidate], amount: int, caps: dict[int, int], mins: dict[int, int]) -> dict[int, int]:
    """Give ``amount`` to the limit orders of one side in matching priority, each at least
    its min (a drifted order traded for sure) and at most its cap."""
    got = {id(c.order): mins.get(id(c.order), 0) for c in side}
    left = amount - sum(got.values())
    if left < 0:
        raise Unsolved(f"side quantity {amount} below what open orders surely traded {sum(got.values())}")
    for c in sorted(side, key=_priority):
        k = id(c.order)
        take = min(left, caps[k] - got[k])
        if take > 0:
            got[k] += take
            left -= take
    if left:
        raise Unsolved(f"{left} of {amount} left over: the side's orders cannot have traded it")
    return got


def _never_placed(c: Candidate, d_base: int, d_counter: dict[Market, int]) -> int:
    """Shift the residuals for ``c`` never having been placed: its ``absent_shift`` goes to
    the base residual (returned) for an ask, to its market's counter residual (in place)
    for a bid."""
    if c.order.side is Side.SELL:
        return d_base + c.absent_shift
    if c.order.market in d_counter:
        d_counter[c.order.market] += c.absent_shift
    return d_base


MAX_MAYBE = 6
"""In-doubt PlaceOrders one gap may hold before it is left alone (2**n hypotheses)."""


def solve(
    cands: list[Candidate],
    lost_base: int,
    lost_total: dict[Market, int],
    d_base: int,
    d_counter: dict[Market, int],
    scales: Scales,
    fee_ppm: int = 0,
) -> list[Solution]:
    """Attribute the lost base quantity ``lost_base`` and per-market totals ``lost_total``
    to ``cands`` (all of one base asset) given the traded parts of the residuals
    ``d_base``/``d_counter`` (see the module docstring).  Raises :class:`Unsolved`.

    A ``maybe`` candidate (an in-doubt PlaceOrder) is tried both ways, placed (the
    residuals as given) and never placed (shifted by its ``absent_shift``); the answer
    stands only when every hypothesis that fits the evidence gives the same fills (found
    by the F1 campaign: a phantom ask with a better price took a lost fill that belonged
    to an older ask behind it)."""
    maybe = [c for c in cands if c.maybe]
    if len(maybe) > MAX_MAYBE:
        raise Unsolved(f"{len(maybe)} in-doubt PlaceOrders in one gap")
    sure = [c for c in cands if not c.maybe]
    found: dict[tuple[tuple[int, int, int, int, int], ...], list[Solution]] = {}
    first: Unsolved | None = None
    for mask in range(1 << len(maybe)):
        placed = [c for i, c in enumerate(maybe) if mask >> i & 1]
        db, dc = d_base, dict(d_counter)
        for i, c in enumerate(maybe):
            if not mask >> i & 1:
                db = _never_placed(c, db, dc)
        try:
            sol = _solve(sure + placed, lost_base, lost_total, db, dc, scales, fee_ppm)
        except Ambiguous:
            raise
        except Unsolved as e:
            first = first or e
            continue
        key = tuple(sorted((s.order.ref, s.quantity, s.total, s.fee, s.remaining) for s in sol if s.quantity))
        found.setdefault(key, sol)
    if len(found) > 1:
        refs = sorted(c.order.ref for c in maybe)
        raise Ambiguous(f"{len(found)} answers fit, depending on which in-doubt PlaceOrders (refs {refs}) were placed")
    if not found:
        assert first is not None
        raise first
    return next(iter(found.values()))


@dataclass(frozen=True, slots=True)
class Gap:
    """The evidence of one gap (the arguments of :func:`solve`), kept so that a gap only
    an in-doubt PlaceOrder makes ambiguous can be solved again once that order's fate is
    known (the runner resubmits it with its tonce: error 3 means it was placed)."""

    cands: tuple[Candidate, ...]
    lost_base: int
    lost_total: dict[Market, int]
    d_base: int
    d_counter: dict[Market, int]
    scales: Scales
    fee_ppm: int = 0

    def solve(self) -> list[Solution]:
        """:func:`solve` on this evidence."""
        return solve(list(self.cands), self.lost_base, self.lost_total, self.d_base, self.d_counter,
                     self.scales, self.fee_ppm)

    def in_doubt(self) -> list[Order]:
        """The in-doubt PlaceOrders among the candidates."""
        return [c.order for c in self.cands if c.maybe]

    def settle(self, order: Order, placed: bool) -> list[Solution]:
        """Solve again knowing whether in-doubt ``order`` was ``placed`` before the gap."""
        cands: list[Candidate] = []
        d_base, d_counter = self.d_base, dict(self.d_counter)
        for c in self.cands:
            if c.order is not order:
                cands.append(c)
            elif placed:
                cands.append(replace(c, maybe=False))
            else:
                d_base = _never_placed(c, d_base, d_counter)
        return solve(cands, self.lost_base, self.lost_total, d_base, d_counter, self.scales, self.fee_ppm)


def _solve(
    cands: list[Candidate],
    lost_base: int,
    lost_total: dict[Market, int],
    d_base: int,
    d_counter: dict[Market, int],
    scales: Scales,
    fee_ppm: int = 0,
) -> list[Solution]:
    """Attribute the lost base quantity ``lost_base`` and per-market totals ``lost_total``
    to ``cands`` (all of one base asset) given the traded parts of the residuals
    ``d_base``/``d_counter`` under one hypothesis: every candidate was on the book."""
    markets = [m for m, t in lost_total.items() if t]
    live = [c for c in cands if c.order.market in markets]
    drift_ask = sum(c.r0 - c.rx for c in live if c.rx is not None and c.order.side is Side.SELL)
    two_buy = lost_base - drift_ask + d_base
    if two_buy < 0 or two_buy % 2 or two_buy > 2 * (lost_base - drift_ask):
        raise Unsolved(f"base residual {d_base} does not fit lost volume {lost_base} (drifted asks {drift_ask})")
    amount = {Side.BUY: two_buy // 2, Side.SELL: lost_base - drift_ask - two_buy // 2}
    if fee_ppm <= 0 and len(markets) == 1 and not (amount[Side.BUY] and amount[Side.SELL] + drift_ask):
        # No fee history yet: one side traded in one market, so the gap's own fee sum is
        # exact (F = ±T − D_ctr) and gives the rate that caps a bid.
        m = markets[0]
        t = lost_total[m]
        fee = (-t if amount[Side.BUY] else t) - d_counter[m]
        fee_ppm = max(0, fee) * PPM // t
    # Caps, and what a drifted order surely traded (an ask exactly, a bid at least its
    # remaining drop less the fee's bite, bounded by the cap at the learned rate).
    caps: dict[int, int] = {}
    mins: dict[int, int] = {}
    for c in live:
        o, k = c.order, id(c.order)
        if o.price is None:
            caps[k] = o.quantity if o.quantity is not None else lost_base
        elif c.rx is not None:
            caps[k] = c.r0 - c.rx
            # An ask still open traded exactly its drop; a bid at most its drop (the fee
            # shrinks its remaining further) and surely something.
            mins[k] = c.r0 - c.rx if o.side is Side.SELL else 1
        elif o.side is Side.BUY:
            caps[k] = min(c.r0, bid_cap(scales.bid_reservation(c.r0, o.price, o.market), o.price, o.market,
                                        scales, fee_ppm))
        else:
            caps[k] = c.r0
    base: dict[int, int] = {}
    for side in (Side.BUY, Side.SELL):
        # A drifted ask's quantity is known and kept out of the side amount.
        group = [c for c in live if c.order.side is side and not (side is Side.SELL and c.rx is not None)]
        want = amount[side]
        spans = {c.order.market for c in group if caps[id(c.order)] > 0}
        if want and len(spans) > 1:
            raise Unsolved(f"{side.name} side of the gap spans markets {sorted(m.name for m in spans)}")
        limits = [c for c in group if c.order.price is not None]
        mkts = [c for c in group if c.order.price is None]
        options: list[dict[int, int]] = []
        if len(mkts) > 1 and want:
            raise Unsolved(f"{len(mkts)} market orders on the {side.name} side")
        try:
            options.append(_walk(limits, want, caps, mins) | {id(c.order): 0 for c in mkts})
        except Unsolved:
            if not mkts:
                raise
        if mkts and want and want <= caps[id(mkts[0].order)]:
            try:
                options.append(_walk(limits, 0, caps, mins) | {id(mkts[0].order): want})
            except Unsolved:
                pass
        if len(options) != 1:
            raise (Ambiguous if options else Unsolved)(f"{side.name} side: {len(options)} ways to place {want} fit the evidence")
        base.update(options[0])
    for c in live:
        if c.rx is not None and c.order.side is Side.SELL:
            base[id(c.order)] = c.r0 - c.rx
    out: list[Solution] = []
    for m in markets:
        out.extend(_counter(m, [c for c in live if c.order.market is m and base.get(id(c.order))], base,
                            lost_total[m], d_counter[m], scales))
    q_sum = sum(s.quantity for s in out)
    if q_sum != lost_base:
        raise Unsolved(f"orders of the traded markets explain {q_sum} of {lost_base} base")
    return out


def _counter(m: Market, traded: list[Candidate], base: dict[int, int], total: int, d_ctr: int,
             scales: Scales) -> list[Solution]:
    """Totals and fees of one market's traded orders (see the module docstring)."""
    if not traded:
        raise Unsolved(f"{m.name}: lost total {total} but none of our orders there can have traded")
    mul, den = scales.total_divisor(m)
    exact = {id(c.order): Fraction(base[id(c.order)] * (c.order.price or 0) * mul, den) for c in traded}
    buys = [c for c in traded if c.order.side is Side.BUY]
    sells = [c for c in traded if c.order.side is Side.SELL]
    if not buys or not sells:
        side_total = {Side.BUY: total if buys else 0, Side.SELL: total if sells else 0}
    else:
        eb = sum(exact[id(c.order)] for c in buys)
        # Fee F = Ts − Tb − D: pick Tb nearest its limit-price value that leaves a fee in range.
        fits = [tb for tb in range(int(eb) - len(buys) - 1, int(eb) + len(buys) + 2)
                if 0 <= tb <= total and 0 <= total - 2 * tb - d_ctr <= total // 100]
        if not fits:
            raise Unsolved(f"{m.name}: no buy/sell split of total {total} leaves a fee in range")
        tb = min(fits, key=lambda v: (abs(v - eb), v))
        side_total = {Side.BUY: tb, Side.SELL: total - tb}
    fee = side_total[Side.SELL] - side_total[Side.BUY] - d_ctr
    if not 0 <= fee <= total // 100:
        raise Unsolved(f"{m.name}: fee {fee} of total {total} out of range (counter residual {d_ctr})")
    totals: dict[int, int] = {}
    for side, group in ((Side.BUY, buys), (Side.SELL, sells)):
        if not group:
            continue
        st = side_total[side]
        limits = [c for c in group if c.order.price is not None]
        e = sum(exact[id(c.order)] for c in limits)
        # Maker fills trade at the order's own price; a taker's at a better one (never worse).
        slack = 2 * len(group) + 1
        if len(limits) == len(group) and (st > e + slack if side is Side.BUY else st < e - slack):
            raise Unsolved(f"{m.name}: {side.name} total {st} is worse than the limit prices allow ({float(e):.1f})")
        mkts = [c for c in group if c.order.price is None]
        if mkts:  # the market order takes whatever the side's limit orders did not
            parts = _apportion(min(st, int(e)), [exact[id(c.order)] for c in limits])
            for c, t in zip(limits, parts, strict=True):
                totals[id(c.order)] = t
            totals[id(mkts[0].order)] = st - sum(parts)
        else:
            for c, t in zip(group, _apportion(st, [exact[id(c.order)] for c in group]), strict=True):
                totals[id(c.order)] = t
    fees = _apportion(fee, [Fraction(totals[id(c.order)]) for c in traded])
    out = []
    for c, f in zip(traded, fees, strict=True):
        o, q = c.order, base[id(c.order)]
        rem = c.rx if c.rx is not None else max(0, c.r0 - q)
        out.append(Solution(o, q, totals[id(o)], f, rem))
    return out


def fee_rate(trades: list[tuple[int, int]]) -> int:
    """Our likely fee rate in ppm from ``(total, fee)`` of trades we saw (0 if none).

    Each trade's fee was ``total * ppm / 1e6`` rounded up or down, so it admits an interval
    of rates; the rate admitted by the most trades wins (the maker rate, for resting orders),
    and within it the roundest integer (fee schedules are round numbers).  A bid's cap
    depends on the exact rate, so a noisy average would not do."""
    events: list[tuple[int, int]] = []
    for total, fee in trades:
        if total <= 0 or fee < 0:
            continue
        lo = -((-(fee - 1) * PPM) // total) if fee > 0 else 0
        hi = ((fee + 1) * PPM) // total
        events += [(lo, 1), (hi + 1, -1)]
    if not events:
        return 0
    events.sort()
    best, cover, segments = 0, 0, []
    for i, (x, d) in enumerate(events):
        cover += d
        nxt = events[i + 1][0] if i + 1 < len(events) else x
        if nxt <= x:
            continue
        if cover > best:
            best, segments = cover, [(x, nxt - 1)]
        elif cover == best:
            segments.append((x, nxt - 1))
    for step in (100_000, 10_000, 1_000, 100, 10, 1):
        for lo, hi in segments:
            v = -(-lo // step) * step
            if v <= hi:
                return v
    return segments[0][0]
