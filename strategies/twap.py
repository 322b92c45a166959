"""TWAP / iceberg executor: work a target quantity over a time window.

Every ``interval`` seconds the executor computes how much *should* have been done by now on a
straight line from 0 at the start to ``quantity`` at ``duration``, and works the shortfall:

* as an **iceberg**: at most ``display`` is shown as a passive limit order at the touch on our
  own side (best bid for a buy), refreshed when it is filled or when the touch moves away by
  more than ``chase``;
* if the schedule falls behind by more than ``max_lag`` (a fraction of the target, in percent),
  the lag is taken with a market order.

When the target is done (or the window is over and ``finish_with_market`` is true) the
executor cancels its orders and stops trading.
"""

from __future__ import annotations

from engine.configload import Amount, Price
from engine.registry import register
from engine.strategy import Context, Fill, Side, Strategy, StrategyConfig


@register("twap")
class Twap(Strategy):
    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        side: str = "buy"
        """"buy" or "sell"."""
        quantity: Amount = "0.5"
        """Target quantity in base units, decimal text."""
        duration: float = 600.0
        """Seconds over which to spread the target."""
        display: Amount = "0.02"
        """Largest quantity shown on the book at once (iceberg tip)."""
        chase: Price = "1.00"
        """Re-peg the tip when the touch moves away by at least this price distance."""
        max_lag_pct: int = 10
        """Take liquidity with a market order when behind schedule by more than this % of target."""
        finish_with_market: bool = True
        """At the end of the window, buy/sell what is left at market."""
        timer_interval: float | None = 5.0

    def on_start(self, ctx: Context) -> None:
        p = self.p
        assert isinstance(p, Twap.Config)
        if p.side not in ("buy", "sell"):
            raise ValueError(f"side must be 'buy' or 'sell', was {p.side!r}")
        self.side = Side.BUY if p.side == "buy" else Side.SELL
        self.target = ctx.amount(p.quantity)
        self.display = ctx.amount(p.display)
        self.chase = ctx.price(p.chase)
        self.start_us = ctx.now_us
        self.duration_us = int(p.duration * 1_000_000)
        self.done = 0
        self.tip: int | None = None
        self.finished = False

    def scheduled(self, now_us: int) -> int:
        elapsed = min(max(now_us - self.start_us, 0), self.duration_us)
        return self.target * elapsed // self.duration_us if self.duration_us else self.target

    def on_fill(self, ctx: Context, fill: Fill) -> None:
        self.done += fill.quantity

    def on_timer(self, ctx: Context) -> None:
        if self.finished:
            return
        p = self.p
        assert isinstance(p, Twap.Config)
        left = self.target - self.done
        now = ctx.now_us
        if left <= 0 or (now - self.start_us >= self.duration_us and not p.finish_with_market):
            self.finish(ctx)
            return
        lag = self.scheduled(now) - self.done
        if now - self.start_us >= self.duration_us or lag * 100 > self.target * p.max_lag_pct:
            take = left if now - self.start_us >= self.duration_us else lag
            if take > 0 and not self.market_pending(ctx):
                ctx.market_order(self.side, quantity=take)
            if now - self.start_us >= self.duration_us:
                self.finish(ctx)
                return
        self.work_tip(ctx, left)

    def market_pending(self, ctx: Context) -> bool:
        return any(o.is_open and o.price is None for o in ctx.open_orders())

    def work_tip(self, ctx: Context, left: int) -> None:
        touch = ctx.book.best_bid if self.side is Side.BUY else ctx.book.best_ask
        if touch is None:
            return
        live = {o.ref: o for o in ctx.open_orders() if o.is_open}
        tip = live.get(self.tip) if self.tip is not None else None
        qty = min(self.display, left)
        if tip is None:
            self.tip = ctx.buy(touch, qty) if self.side is Side.BUY else ctx.sell(touch, qty)
        elif tip.price is not None and abs(tip.price - touch) >= self.chase:
            self.tip = ctx.replace(tip.ref, touch, min(qty, tip.remaining) or qty)

    def on_book(self, ctx: Context) -> None:
        if not self.finished and self.tip is None:
            self.work_tip(ctx, self.target - self.done)

    def finish(self, ctx: Context) -> None:
        self.finished = True
        ctx.cancel_all()
