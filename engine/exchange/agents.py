"""Simulated market participants: plain ``def`` agents that trade through the exchange core.

Every agent is one user with one *internal* session (``exchange.open_internal_session``):
it sends ordinary decoded commands to ``exchange.handle`` and learns about its own orders
only from the notices the core delivers to that session, exactly as a client over the wire
would.  Nothing here awaits or reads a clock; the :class:`~engine.exchange.participants.
MarketSimulator` calls :meth:`Agent.wake` at the agent's chosen times and the agent returns
its next wake time.

Two kinds:

* :class:`LiquidityProvider` keeps a ladder of resting orders on both sides of the fair
  value (denser near the touch), one command per wake: first it cancels its orders left on
  the wrong side of a moved fair value, then it tops up the thinner side, and when both sides
  are full it re-quotes (cancels the order farthest out, or a random one).
* :class:`Taker` arrives as a Poisson process and sends market orders (by quantity or by
  total), marketable limit orders a little through the fair value, or passive limit orders
  that rest and are cancelled after a while.

Agents keep their own order budget inside LIMITS.md (a sliding window at 90% of the orders
limit) so the simulated market never draws error 6, and they never cross their own orders
(a bid is never placed at or above one of their asks, and vice versa).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.exchange.fairvalue import FairValue
from engine.limits import Limit, SlidingWindow
from engine.protocol.messages import (
    CancelOrder,
    Command,
    ErrorReply,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    Reply,
)
from engine.scale import Market, Scales

if TYPE_CHECKING:
    from engine.exchange.core import Exchange


@dataclass(slots=True)
class AgentStats:
    """What an agent did; summed into the simulator's statistics."""

    commands: int = 0
    placed: int = 0
    market_orders: int = 0
    cancels: int = 0
    fills: int = 0
    filled_base: int = 0
    skipped_budget: int = 0
    errors: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class OwnOrder:
    """An agent's resting order as its notices describe it (quantity signed, remaining)."""

    quantity: int
    price: int
    time: int


class Agent:
    """Base: one user, one internal session, own-order tracking from notices, an order budget."""

    role = "agent"

    def __init__(
        self,
        name: str,
        exchange: Exchange,
        user_id: int,
        market: Market,
        fair_value: FairValue,
        rng: random.Random,
        scales: Scales,
        budget: Limit | None,
    ) -> None:
        self.name = name
        self.exchange = exchange
        self.user_id = user_id
        self.market = market
        self.base, self.counter = market.codes
        self.fv = fair_value
        self.rng = rng
        self.scales = scales
        self.stats = AgentStats()
        self.orders: dict[int, OwnOrder] = {}
        self._budget = SlidingWindow(budget) if budget is not None else None
        self.session = exchange.open_internal_session(user_id, self.on_notice)
        # After a restart from a snapshot the user's orders are still on the book: adopt
        # them, or the agent would quote a second ladder on top of the first.
        for o in exchange.open_orders(user_id):
            if (o.base, o.counter) == market.codes:
                self.orders[o.id] = OwnOrder(o.quantity, o.price, o.time)

    # -- notices (called synchronously by the core, in engine order) ---------------------

    def on_notice(self, notice: Notice) -> None:
        if isinstance(notice, OrdersMatched):
            self._on_matched(notice)
        elif isinstance(notice, OrderOpened):
            if notice.base == self.base and notice.counter == self.counter:
                self.orders[notice.id] = OwnOrder(notice.quantity, notice.price, notice.time)
        elif isinstance(notice, OrderClosed):
            self.orders.pop(notice.id, None)

    def _on_matched(self, n: OrdersMatched) -> None:
        st = self.stats
        if n.own_bid:
            st.fills += 1
            st.filled_base += n.quantity
            if isinstance(n.bid, int) and isinstance(n.bid_rem, int):
                o = self.orders.get(n.bid)
                if o is not None:
                    o.quantity = n.bid_rem
        if n.own_ask:
            st.fills += 1
            st.filled_base += n.quantity
            if isinstance(n.ask, int) and isinstance(n.ask_rem, int):
                o = self.orders.get(n.ask)
                if o is not None:
                    o.quantity = -n.ask_rem

    # -- commands ---------------------------------------------------------------------

    def has_budget(self, now_us: int) -> bool:
        """True iff one more order command fits the agent's budget (the token is taken)."""
        if self._budget is None:
            return True
        if self._budget.try_acquire(now_us / 1_000_000) == 0.0:
            return True
        self.stats.skipped_budget += 1
        return False

    def send(self, cmd: Command) -> Reply:
        self.stats.commands += 1
        reply = self.exchange.handle(self.session, cmd)
        if isinstance(reply, ErrorReply):
            errs = self.stats.errors
            errs[reply.error_code] = errs.get(reply.error_code, 0) + 1
        return reply

    def place_limit(self, quantity: int, price: int, *, check_cross: bool = True) -> Reply | None:
        """A limit order, unless it would cross one of our own orders (then nothing is sent).

        ``check_cross=False`` is for callers that already guarantee it (it costs a pass
        over our orders)."""
        if check_cross:
            if quantity > 0:
                if any(o.quantity < 0 and o.price <= price for o in self.orders.values()):
                    return None
            elif any(o.quantity > 0 and o.price >= price for o in self.orders.values()):
                return None
        self.stats.placed += 1
        return self.send(PlaceOrder(base=self.base, counter=self.counter, quantity=quantity, price=price))

    def cancel(self, order_id: int) -> Reply:
        self.stats.cancels += 1
        return self.send(CancelOrder(id=order_id))

    def lots(self, lot: int, lo: int, hi: int) -> int:
        return lot * self.rng.randint(lo, hi)

    def wake(self, now_us: int) -> int | None:  # pragma: no cover - abstract
        raise NotImplementedError


def _exp_us(rng: random.Random, rate_per_s: float) -> int:
    """A Poisson inter-arrival time in whole microseconds (at least 1)."""
    return max(1, int(rng.expovariate(rate_per_s) * 1_000_000))


class LiquidityProvider(Agent):
    """Keeps ``per_side`` orders on each side of the fair value, re-quoting as it moves."""

    role = "liquidity_provider"

    def __init__(
        self,
        *args: object,
        per_side: int,
        half_spread_bps: float,
        level_spacing_bps: float,
        lot: int,
        lots: tuple[int, int],
        actions_per_second: float,
        requote_probability: float,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.per_side = per_side
        self.half_spread_bps = half_spread_bps
        self.level_spacing_bps = level_spacing_bps
        self.lot = lot
        self.lot_range = lots
        self.rate = actions_per_second
        self.requote_probability = requote_probability

    def _ladder(self, fv: int) -> tuple[int, int]:
        inner = max(1, round(fv * self.half_spread_bps / 10_000))
        spacing = max(1, round(fv * self.level_spacing_bps / 10_000))
        return inner, spacing

    def wake(self, now_us: int) -> int | None:
        # Below half its ladder (at start, after a jump swept a side) it works ten times as
        # fast, like a market maker (re)building its quotes; the budget still bounds it.
        rate = self.rate * 10 if len(self.orders) < self.per_side else self.rate
        nxt = now_us + _exp_us(self.rng, rate)
        if not self.has_budget(now_us):
            return nxt
        self.act(self.fv.price)
        return nxt

    def act(self, fv: int) -> None:
        """One command: cancel a stale order, top up a side, or re-quote."""
        orders = self.orders
        rng = self.rng
        inner, spacing = self._ladder(fv)
        outer = inner + self.per_side * spacing
        # One pass over our orders: the most stale (on the wrong side of a moved fair value,
        # what takers pick off), the farthest beyond the ladder, and the count per side.
        stale_id, stale_by, far_id, far_by, n_bids = None, 0, None, 0, 0
        for oid, o in orders.items():
            if o.quantity > 0:
                n_bids += 1
                by = o.price - fv + 1
                out = fv - o.price - outer
            else:
                by = fv - o.price + 1
                out = o.price - fv - outer
            if by > stale_by:
                stale_id, stale_by = oid, by
            if out > far_by:
                far_id, far_by = oid, out
        # 1. Pull the worst stale order first.  Once none is left every bid is below the
        #    fair value and every ask above it, so new quotes cannot cross our own.
        if stale_id is not None:
            self.cancel(stale_id)
            return
        n_asks = len(orders) - n_bids
        # 2. Top up the thinner side; levels are drawn denser near the touch.
        if n_bids < self.per_side or n_asks < self.per_side:
            if n_bids == n_asks:
                side = 1 if rng.random() < 0.5 else -1
            else:
                side = 1 if n_bids < n_asks else -1
            level = int(rng.random() ** 2 * self.per_side)
            offset = inner + level * spacing + rng.randrange(spacing)
            qty = self.lots(self.lot, *self.lot_range)
            if side > 0:
                self.place_limit(qty, max(1, fv - offset), check_cross=False)
            else:
                self.place_limit(-qty, fv + offset, check_cross=False)
            return
        # 3. Both sides full: cancel the order farthest out, or (sometimes) a random one, so
        #    the ladder follows the fair value and the book keeps changing.
        if far_id is None and rng.random() < self.requote_probability:
            far_id = rng.choice(list(orders))
        if far_id is not None:
            self.cancel(far_id)


class Taker(Agent):
    """Arrives at Poisson times; trades at or through the fair value, sometimes rests."""

    role = "taker"

    def __init__(
        self,
        *args: object,
        arrivals_per_minute: float,
        lot: int,
        lots: tuple[int, int],
        market_fraction: float,
        total_fraction: float,
        passive_fraction: float,
        slippage_bps: float,
        passive_bps: tuple[float, float],
        resting_seconds: float,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rate = arrivals_per_minute / 60.0
        self.lot = lot
        self.lot_range = lots
        self.market_fraction = market_fraction
        self.total_fraction = total_fraction
        self.passive_fraction = passive_fraction
        self.slippage_bps = slippage_bps
        self.passive_bps = passive_bps
        self.resting_us = int(resting_seconds * 1_000_000)

    def wake(self, now_us: int) -> int | None:
        nxt = now_us + _exp_us(self.rng, self.rate)
        if not self.has_budget(now_us):
            return nxt
        # Resting leftovers are cancelled once they are old: that is this arrival's action.
        for oid, o in self.orders.items():
            if o.time + self.resting_us <= now_us:
                self.cancel(oid)
                return nxt
        self.trade(self.fv.price)
        return nxt

    def trade(self, fv: int) -> None:
        rng = self.rng
        side = 1 if rng.random() < 0.5 else -1
        qty = self.lots(self.lot, *self.lot_range)
        r = rng.random()
        if r < self.market_fraction:
            self.stats.market_orders += 1
            if rng.random() < self.total_fraction:
                num, den = self.scales.exact_total(qty, fv, self.market)
                total = max(1, num // den)
                cmd = PlaceOrder(base=self.base, counter=self.counter, total=side * total)
            else:
                cmd = PlaceOrder(base=self.base, counter=self.counter, quantity=side * qty)
            self.send(cmd)
            return
        if r < self.market_fraction + self.passive_fraction:
            lo, hi = self.passive_bps
            away = max(1, round(fv * rng.uniform(lo, hi) / 10_000))
            price = fv - away if side > 0 else fv + away
        else:
            through = round(fv * self.slippage_bps / 10_000)
            price = fv + through if side > 0 else fv - through
        self.place_limit(side * qty, max(1, price))


def poisson_first_wake(rng: random.Random, now_us: int, rate_per_s: float) -> int:
    """The first wake of a Poisson agent (staggers agents that start together)."""
    if rate_per_s <= 0 or math.isinf(rate_per_s):
        return now_us
    return now_us + _exp_us(rng, rate_per_s)
