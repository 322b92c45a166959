"""An inventory-skewed market maker in the Avellaneda–Stoikov spirit, in integer arithmetic.

Avellaneda and Stoikov quote around a *reservation price* that moves against inventory,
``r = mid − q·γ·σ²·(T−t)``, with a spread that widens with volatility.  Here the same shape
is kept with exchange integers only:

* ``mid`` is the book's integer mid (floor of (bid + ask) / 2), in price units;
* ``σ`` is the standard deviation of recent mid changes, in price units (integer sqrt of an
  integer variance over ``vol_window`` samples);
* inventory ``q`` is the strategy's position measured in order sizes (kept as a ratio);
* reservation = mid − skew_per_size × q, and the half-spread is
  ``half_spread + vol_mult_pct × σ / 100``.

Quotes are refreshed when the wanted price moves by ``requote_threshold`` or more (each
requote costs two rate-limit tokens, so the threshold bounds the order rate).  No bid is
posted once the position reaches ``max_inventory``, no ask once it reaches −max_inventory.
"""

from __future__ import annotations

import math
from collections import deque

from engine.configload import Amount, Price
from engine.registry import register
from engine.strategy import Context, Side, Strategy, StrategyConfig


@register("market_maker")
class MarketMaker(Strategy):
    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        size: Amount = "0.01"
        """Quote size in base units, decimal text (e.g. "0.01" XBT)."""
        half_spread: Price = "1.00"
        """Minimum distance of each quote from the reservation price, decimal price text."""
        skew_per_size: Price = "0.50"
        """Reservation-price shift per order-size of inventory, decimal price text (γσ²(T−t) folded in)."""
        vol_window: int = 50
        """Number of mid samples for the volatility estimate."""
        vol_mult_pct: int = 100
        """Extra half-spread as a percentage of the mid-change standard deviation."""
        max_inventory: Amount = "0.05"
        """Absolute position at which the side that would grow it stops quoting."""
        requote_threshold: Price = "0.50"
        """Requote only when the wanted price moved at least this much (bounds the order rate)."""
        min_requote_seconds: float = 3.0
        """At most one requote per side this often: LIMITS.md allows ~1 order command a
        second per user, and a requote costs two (cancel + place)."""

    def on_start(self, ctx: Context) -> None:
        p = self.p
        assert isinstance(p, MarketMaker.Config)
        self.size = ctx.amount(p.size)
        self.half = ctx.price(p.half_spread)
        self.skew = ctx.price(p.skew_per_size)
        self.max_inv = ctx.amount(p.max_inventory)
        self.threshold = max(ctx.price(p.requote_threshold), 1)
        # The last mid, the mid changes over the window (vol_window mids: one change fewer)
        # and their running sum and sum of squares: sigma() is O(1) per book update.
        self.last_mid: int | None = None
        self.diffs: deque[int] = deque(maxlen=max(p.vol_window, 2) - 1)
        self.sum_d = 0
        self.sum_d2 = 0
        self.vol_mult = p.vol_mult_pct
        self.quotes: dict[Side, int] = {}  # side -> ref of the live quote
        self.min_gap_us = int(p.min_requote_seconds * 1_000_000)
        self.last_requote: dict[Side, int] = {}

    def add_mid(self, mid: int) -> None:
        """Record a new mid (a repeat of the last one is not a sample)."""
        last = self.last_mid
        if last == mid:
            return
        self.last_mid = mid
        if last is None:
            return
        diffs = self.diffs
        if len(diffs) == diffs.maxlen:  # the oldest change leaves the window
            old = diffs[0]
            self.sum_d -= old
            self.sum_d2 -= old * old
        d = mid - last
        diffs.append(d)
        self.sum_d += d
        self.sum_d2 += d * d

    def sigma(self) -> int:
        """Standard deviation of mid changes in price units (integer, floor)."""
        n = len(self.diffs)
        if n < 2:
            return 0
        # var = Σ(x·n − S)² / n³ = (n²·Σx² − n·S²) / n³, all integers (S = Σx)
        s = self.sum_d
        var_num = n * n * self.sum_d2 - n * s * s
        return math.isqrt(var_num // (n**3))

    def wanted(self, ctx: Context, mid: int) -> dict[Side, int]:
        pos = ctx.position()
        reservation = mid - (self.skew * pos) // self.size
        half = self.half + self.vol_mult * self.sigma() // 100
        out: dict[Side, int] = {}
        if pos < self.max_inv:
            out[Side.BUY] = reservation - half
        if pos > -self.max_inv:
            out[Side.SELL] = reservation + half
        return out

    def on_book(self, ctx: Context) -> None:
        bid, ask = ctx.book.best_bid, ctx.book.best_ask
        if bid is None or ask is None:
            return
        mid = (bid + ask) // 2
        self.add_mid(mid)
        self.requote(ctx, self.wanted(ctx, mid), bid, ask)

    def requote(self, ctx: Context, want: dict[Side, int], bid: int, ask: int) -> None:
        # Move the side that gets out of the way first: when the new bid would reach our own
        # resting ask (the market jumped up), replace the ask before the bid, or the bid is
        # refused as a self-cross (the risk view counts an order as gone once its cancel is
        # sent, and the exchange executes our commands in order).
        sides = (Side.BUY, Side.SELL)
        ask_ref = self.quotes.get(Side.SELL)
        own_ask = ctx.order(ask_ref) if ask_ref is not None else None
        new_bid = want.get(Side.BUY)
        if new_bid is not None and own_ask is not None and own_ask.price is not None and new_bid >= own_ask.price:
            sides = (Side.SELL, Side.BUY)
        for side in sides:
            ref = self.quotes.get(side)
            order = ctx.order(ref) if ref is not None else None
            if order is not None and not order.is_open:
                order = None
            if ref is not None and order is None:
                del self.quotes[side]  # filled or cancelled: quote afresh
            if order is not None and not _working(order):
                continue  # not acknowledged yet (or a cancel is in flight): wait for it
            price = want.get(side)
            if price is not None:
                # never cross the touch: a maker quote stays on its own side of the book
                price = min(price, ask - 1) if side is Side.BUY else max(price, bid + 1)
            if price is None or price <= 0:
                if order is not None:
                    ctx.cancel(order.ref)
                continue
            new_ref = 0
            if order is None:
                # ask the rate budget first: an intent it cannot pay for would only come back
                # as a denial (same outcome, at the cost of the whole risk gate)
                if ctx.order_budget() < 1:
                    continue
                new_ref = ctx.buy(price, self.size) if side is Side.BUY else ctx.sell(price, self.size)
            elif order.price is not None and abs(order.price - price) >= self.threshold:
                if ctx.now_us - self.last_requote.get(side, -self.min_gap_us) < self.min_gap_us:
                    continue
                self.last_requote[side] = ctx.now_us
                if ctx.order_budget() < 2:  # a replace is a cancel and a place
                    continue
                new_ref = ctx.replace(order.ref, price, self.size)
            if new_ref:  # 0: the risk governor said no (on_risk_denied tells why)
                self.quotes[side] = new_ref

    def on_order(self, ctx: Context, order: object) -> None:
        # forget quotes that are no longer live so the next book update replaces them
        for side, ref in list(self.quotes.items()):
            if getattr(order, "ref", None) == ref and not getattr(order, "is_open", True):
                del self.quotes[side]


def _working(order: object) -> bool:
    """Acknowledged and resting (not pending, not being cancelled)."""
    state = getattr(order, "state", None)
    return getattr(state, "name", "OPEN") in ("OPEN", "PARTIALLY_FILLED")
