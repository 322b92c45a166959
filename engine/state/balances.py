"""The local view of our balances: last observed plus the deltas we expect (IMPL-GUIDE).

``BalanceChanged`` notices arrive whenever the exchange moves a balance, on their own channel,
so "what can I spend now?" is answered from two parts per asset:

* the balance most recently **observed** (a ``BalanceChanged``, or a ``GetBalances`` reply);
* the **anticipated deltas**: changes our own actions and notices make certain, whose
  ``BalanceChanged`` has not arrived yet.

``available(asset) = observed + Σ anticipated``.  The deltas, exactly as IMPL-GUIDE
"Maintaining a Local View of Your Balances" lists them:

==========================================  ===========================================
event                                       anticipated delta
==========================================  ===========================================
PlaceOrder sent (limit)                     −reservation: bid ``ceil(q·p·cs/(bs·ps))`` in
                                            counter (:meth:`Scales.bid_reservation`), ask
                                            ``q`` in base
error reply to that PlaceOrder              the −reservation delta is removed again
own OrderClosed, ``r`` left                 +reservation of ``r`` (bid: counter, ask: base)
own OrdersMatched, our limit bid            +quantity base; +refund counter (below)
own OrdersMatched, our ask                  +(total − fee) counter
BalanceChanged                              its delta (new − last observed) is removed
==========================================  ===========================================

**The bid refund.**  A bid reserves ``R(rem) = ceil(rem·price·cs/(bs·ps))`` at its *own*
limit price.  A trade takes ``total + fee`` out of that reservation (the buyer's fee comes out
of the reservation, IMPL-GUIDE "How Fees Affect Trade Quantities"), and the exchange keeps
exactly ``R(bid_rem)`` for what is left; the excess comes back at once::

    refund = R(prev_rem) − total − fee − R(bid_rem)

With v1 scales, 12345 @ 1234500 reserves 1523991; a trade of 1234 with total 152338 and fee
46 leaves 1371607, of which ``R(11110) = 1371530`` stays reserved: 77 is refunded.  The
order's limit price and its remaining before the trade come from the order tracker in the
:class:`~engine.state.orders.Filled` event, so one notice stream feeds both in order.

**Market orders** reserve nothing up front (they never rest); each trade moves both assets
directly: a market bid anticipates +quantity base and −(total + fee) counter, a market ask
−quantity base and +(total − fee) counter.  Base-asset fees (not charged by Coinfloor today,
but the notice has the fields) are subtracted from the base delta.

**Matching.**  A ``BalanceChanged`` delta removes the oldest equal anticipated delta.  If none
is equal, the shortest run of consecutive anticipated deltas that sums to it is removed (an
exchange that reports one net change for several steps, e.g. reserve-then-fill of a taker).
Anything else is a *surprise* (another process of the same user, a deposit, or a bug): it is
already in the observed balance, so it is kept aside and cancels a matching delta we add
later (a notice that reached us after its BalanceChanged) instead of counting it twice.

**Stuck deltas are bugs** (IMPL-GUIDE): :meth:`BalanceView.stuck_deltas` lists anticipated
deltas older than ``stuck_after`` seconds of the injected clock.  After quiescence (no
command in flight, all notices delivered) nothing is anticipated and the view equals
``GetBalances`` (RELIABILITY P9, O5).  After a disconnect notices are lost, so the runner
reconciles and then :meth:`BalanceView.on_balances` resets the view from ``GetBalances``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from engine.protocol.messages import Balance, BalanceChanged, GetBalancesReply
from engine.scale import DEFAULT, Asset, Scales, asset_by_code, asset_by_symbol
from engine.state.orders import Closed, Filled, Opened, Order, OrderEvent
from engine.strategy import Side

__all__ = ["Delta", "BalanceStats", "BalanceView"]

AssetKey = Asset | int | str


class Delta(msgspec.Struct, frozen=True, gc=False):
    """One expected (or unexplained) change of one asset's balance, in scaled units.

    (A frozen msgspec Struct, not a frozen dataclass: one is made before every order is
    sent, and a frozen dataclass pays one ``object.__setattr__`` per field.)
    """

    asset: int
    amount: int
    reason: str
    ref: int | None
    created_at: float

    def __repr__(self) -> str:
        sym = asset_by_code(self.asset).symbol if self.asset in _SYMBOLS else f"{self.asset:#x}"
        return f"Delta({sym} {self.amount:+d}, {self.reason}, ref={self.ref}, t={self.created_at:g})"


_SYMBOLS = {0xF800, 0xFA00, 0xFA20}


@dataclass(slots=True)
class BalanceStats:
    observed: int = 0
    matched: int = 0
    matched_runs: int = 0
    surprises: int = 0
    surprises_cancelled: int = 0
    refunds_unknown: int = 0


class BalanceView:
    """Per-asset last-observed balance plus anticipated deltas, by IMPL-GUIDE's rules.

    ``scales`` picks the API version's scale factors (reservations are scale-aware);
    ``clock`` is local time in seconds (inject ``trio.current_time``); deltas pending longer
    than ``stuck_after`` seconds are reported by :meth:`stuck_deltas`.
    """

    def __init__(
        self,
        scales: Scales = DEFAULT,
        *,
        clock: Callable[[], float] = time.monotonic,
        stuck_after: float = 5.0,
    ) -> None:
        self.scales = scales
        self.stuck_after = stuck_after
        self._clock = clock
        self._observed: dict[int, int] = {}
        self._pending: dict[int, list[Delta]] = {}
        self._pending_sum: dict[int, int] = {}
        self._surprises: dict[int, list[Delta]] = {}
        self._reserve: dict[int, Delta] = {}  # order ref -> its pending −reservation delta
        # ref -> reservation delta a BalanceChanged settled before we knew the order was placed
        self._reserve_settled: dict[int, Delta] = {}
        self.stats = BalanceStats()

    # -- reading ---------------------------------------------------------------------------

    def available(self, asset: AssetKey) -> int:
        """Usable available balance now: last observed + Σ anticipated deltas."""
        code = _code(asset)
        return self._observed.get(code, 0) + self._pending_sum.get(code, 0)

    def observed(self, asset: AssetKey) -> int:
        """The balance the exchange last reported for ``asset`` (0 if never)."""
        return self._observed.get(_code(asset), 0)

    def anticipated(self, asset: AssetKey | None = None) -> list[Delta]:
        """Pending deltas (of one asset, or all), oldest first per asset."""
        if asset is not None:
            return list(self._pending.get(_code(asset), ()))
        return [d for ds in self._pending.values() for d in ds]

    def surprises(self) -> list[Delta]:
        """Observed changes nothing we did explains (yet)."""
        return [d for ds in self._surprises.values() for d in ds]

    @property
    def quiescent(self) -> bool:
        """True when nothing is anticipated and nothing is unexplained."""
        return not any(self._pending.values()) and not any(self._surprises.values())

    def stuck_deltas(self, now: float | None = None) -> list[Delta]:
        """Anticipated deltas pending longer than ``stuck_after``: a logic bug (IMPL-GUIDE)
        or lost notices.  ``now`` defaults to the injected clock."""
        t = self._clock() if now is None else now
        limit = t - self.stuck_after
        return [d for ds in self._pending.values() for d in ds if d.created_at < limit]

    def compare(self, balances: GetBalancesReply | Iterable[Balance]) -> dict[int, tuple[int, int]]:
        """{asset code: (our available, exchange balance)} for every asset that differs.

        Meaningful at quiescence (O5); an empty dict means the view is exact.
        """
        theirs = {b.asset: b.balance for b in _items(balances)}
        out = {}
        for code in set(theirs) | set(self._observed) | set(self._pending_sum):
            mine = self.available(code)
            if mine != theirs.get(code, 0):
                out[code] = (mine, theirs.get(code, 0))
        return out

    def snapshot(self) -> dict[str, int]:
        """{symbol: available} of every known asset, for logs and reports."""
        codes = set(self._observed) | set(self._pending_sum)
        return {(asset_by_code(c).symbol if c in _SYMBOLS else hex(c)): self.available(c) for c in sorted(codes)}

    # -- observations ----------------------------------------------------------------------

    def on_balances(self, balances: GetBalancesReply | Iterable[Balance], *, reset: bool = True) -> None:
        """Take a GetBalances reply as the observed balances (assets it omits are 0).

        With ``reset`` (the default) every anticipated delta and surprise is dropped: call
        it at quiescence, e.g. after the start-up or post-reconnect reconciliation, when
        nothing is in flight, so the reply already contains everything we anticipated.
        """
        self._observed = {b.asset: b.balance for b in _items(balances)}
        if reset:
            self._pending.clear()
            self._pending_sum.clear()
            self._surprises.clear()
            self._reserve.clear()
            self._reserve_settled.clear()

    def on_balance_changed(self, n: BalanceChanged) -> list[Delta]:
        """Apply a BalanceChanged: returns the anticipated deltas it settled ([] = surprise)."""
        code = n.asset
        d = n.balance - self._observed.get(code, 0)
        self._observed[code] = n.balance
        self.stats.observed += 1
        if d == 0:
            return []
        pending = self._pending.get(code)
        if pending:
            for i, delta in enumerate(pending):
                if delta.amount == d:
                    del pending[i]
                    self._settle(code, [delta])
                    self.stats.matched += 1
                    return [delta]
            run = _run_summing_to(pending, d)
            if run is not None:
                i, j = run
                settled = pending[i:j]
                del pending[i:j]
                self._settle(code, settled)
                self.stats.matched_runs += 1
                return settled
        self._surprises.setdefault(code, []).append(Delta(code, d, "unexplained BalanceChanged", None, self._clock()))
        self.stats.surprises += 1
        return []

    def reservation_anticipated(self, ref: int) -> bool:
        """True while the view counts order ``ref``'s reservation as taken (pending, or
        settled by a BalanceChanged of the same amount); False when none was anticipated
        or a surprise already observed absorbed it.  Lost-fill inference uses it to know
        what a never-sent order contributes to the balance residual."""
        return ref in self._reserve or ref in self._reserve_settled

    # -- our actions -----------------------------------------------------------------------

    def on_place_sent(self, order: Order, now: float | None = None) -> Delta | None:
        """A PlaceOrder for ``order`` is being sent: anticipate its reservation.

        Idempotent per order (a resubmission while the first delta is still pending adds
        nothing).  Market orders reserve nothing.  ``now``: this view's clock, when the
        caller has just read it (the runtime, for the order it placed at that time).
        """
        if order.price is None or order.quantity is None:
            return None
        if order.ref in self._reserve:
            return self._reserve[order.ref]
        market = order.market
        if order.side is Side.BUY:  # Scales.reservation, without two calls (before every order)
            code, amount = market.counter.code, self.scales.bid_reservation(order.quantity, order.price, market)
        else:
            code, amount = market.base.code, order.quantity
        delta = self._add(code, -amount, "reserve", order.ref, now)
        if delta is not None:
            self._reserve[order.ref] = delta
        return delta

    def on_place_failed(self, order: Order) -> None:
        """The PlaceOrder got an error reply: no reservation was taken, drop the delta.

        Deltas are matched by amount, so a BalanceChanged of another change with the same
        amount may already have settled this reservation's delta; then that other change's
        delta is the one still pending, and it goes instead.
        """
        delta = self._reserve.pop(order.ref, None)
        if delta is None:
            delta = self._reserve_settled.pop(order.ref, None)
            if delta is None:
                return
            self._remove_equal(delta)
            return
        pending = self._pending.get(delta.asset, [])
        for i, d in enumerate(pending):
            if d is delta:
                del pending[i]
                self._pending_sum[delta.asset] -= delta.amount
                return

    # -- order events ----------------------------------------------------------------------

    def apply(self, event: OrderEvent) -> None:
        """Feed one event from :meth:`OrderTracker.on_notice` (in notice order)."""
        if event.order is not None and self._reserve_settled:
            self._reserve_settled.pop(event.order.ref, None)  # placed: that match was right
        if type(event) is Filled:
            self.on_filled(event)
        elif type(event) is Closed:
            self.on_closed(event)
        elif not isinstance(event, (Opened, Filled, Closed)):
            raise TypeError(f"not an order event: {event!r}")

    def on_filled(self, ev: Filled) -> None:
        """Own OrdersMatched side: anticipate the base and counter movements of the trade."""
        if ev.inferred:
            return  # an audit found it in the balances: nothing left to anticipate
        f = ev.fill
        m = ev.market
        ref = ev.order.ref if ev.order is not None else None
        # A market order has no limit price and no remaining (``bid_rem``/``ask_rem`` are
        # absent for it); an own limit order we cannot attribute has a remaining but no price.
        market_order = ev.order_price is None and ev.remaining is None
        if ev.side is Side.BUY:
            self._add(m.base.code, f.quantity - f.base_fee, "bought", ref)
            if market_order:
                self._add(m.counter.code, -(f.total + f.counter_fee), "market buy", ref)
            elif ev.order_price is None or ev.prev_remaining is None or ev.remaining is None:
                self.stats.refunds_unknown += 1  # its BalanceChanged will be a surprise
            else:
                reserve = self.scales.bid_reservation
                refund = (
                    reserve(ev.prev_remaining, ev.order_price, m)
                    - f.total
                    - f.counter_fee
                    - reserve(ev.remaining, ev.order_price, m)
                )
                self._add(m.counter.code, refund, "bid refund", ref)
        else:
            self._add(m.counter.code, f.total - f.counter_fee, "sold", ref)
            if market_order:
                self._add(m.base.code, -(f.quantity + f.base_fee), "market sell", ref)
            elif f.base_fee:
                self._add(m.base.code, -f.base_fee, "base fee", ref)

    def on_closed(self, ev: Closed) -> None:
        """Own OrderClosed: the reservation still held for the remaining quantity returns."""
        if ev.remaining == 0:
            return
        ref = ev.order.ref if ev.order is not None else None
        if ev.side is Side.BUY:
            amount = self.scales.bid_reservation(ev.remaining, ev.price, ev.market)
            self._add(ev.market.counter.code, amount, "release", ref)
        else:
            self._add(ev.market.base.code, ev.remaining, "release", ref)

    # -- internals -------------------------------------------------------------------------

    def _add(self, code: int, amount: int, reason: str, ref: int | None, now: float | None = None) -> Delta | None:
        if amount == 0:
            return None  # IMPL-GUIDE: "add this amount, if it is non-zero"
        surprises = self._surprises.get(code)
        if surprises:
            for i, s in enumerate(surprises):
                if s.amount == amount:
                    # Its BalanceChanged came first and is already in the observed balance.
                    del surprises[i]
                    self.stats.surprises_cancelled += 1
                    return None
        delta = Delta(code, amount, reason, ref, self._clock() if now is None else now)
        self._pending.setdefault(code, []).append(delta)
        self._pending_sum[code] = self._pending_sum.get(code, 0) + amount
        return delta

    def _settle(self, code: int, deltas: list[Delta]) -> None:
        self._pending_sum[code] -= sum(d.amount for d in deltas)
        for d in deltas:
            if d.reason == "reserve" and d.ref is not None and self._reserve.get(d.ref) is d:
                del self._reserve[d.ref]
                self._reserve_settled[d.ref] = d

    def _remove_equal(self, delta: Delta) -> None:
        pending = self._pending.get(delta.asset, [])
        for i, d in enumerate(pending):
            if d.amount == delta.amount:
                del pending[i]
                self._pending_sum[delta.asset] -= d.amount
                if d.reason == "reserve" and d.ref is not None and self._reserve.get(d.ref) is d:
                    # It was another order's reservation: that order's BalanceChanged is the
                    # one already observed, so its reservation is now the settled one.
                    del self._reserve[d.ref]
                    self._reserve_settled[d.ref] = d
                return


def _run_summing_to(deltas: list[Delta], target: int) -> tuple[int, int] | None:
    """(i, j) of the shortest run ``deltas[i:j]`` (length >= 2) summing to ``target``."""
    n = len(deltas)
    best: tuple[int, int] | None = None
    for i in range(n):
        acc = deltas[i].amount
        for j in range(i + 1, n):
            acc += deltas[j].amount
            if acc == target:
                if best is None or j + 1 - i < best[1] - best[0]:
                    best = (i, j + 1)
                break
    return best


def _items(balances: GetBalancesReply | Iterable[Balance]) -> Iterable[Balance]:
    return balances.balances if isinstance(balances, GetBalancesReply) else balances


def _code(asset: AssetKey) -> int:
    if isinstance(asset, Asset):
        return asset.code
    if isinstance(asset, str):
        return asset_by_symbol(asset).code
    return asset
