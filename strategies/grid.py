"""A static price grid: resting buys below and sells above a centre, flipped when filled.

At start the grid is centred on the mid: ``levels`` buy orders at centre − k·spacing and
``levels`` sell orders at centre + k·spacing (k = 1..levels), each of ``size``.  When a buy at
price P fills completely, a sell is placed at P + spacing (and vice versa), so the grid earns
the spacing on every round trip while inventory stays bounded by the number of levels.
"""

from __future__ import annotations

from engine.configload import Amount, Price
from engine.registry import register
from engine.strategy import Context, Fill, Side, Strategy, StrategyConfig


@register("grid")
class Grid(Strategy):
    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        levels: int = 5
        """Orders on each side of the centre."""
        spacing: Price = "5.00"
        """Distance between grid lines, decimal price text."""
        size: Amount = "0.01"
        """Quantity of every grid order, base units, decimal text."""

    def on_start(self, ctx: Context) -> None:
        p = self.p
        assert isinstance(p, Grid.Config)
        if p.levels <= 0:
            raise ValueError("levels must be > 0")
        self.spacing = ctx.price(p.spacing)
        self.size = ctx.amount(p.size)
        self.placed = False
        # ref -> (side, price) of each grid order, to flip it when filled
        self.lines: dict[int, tuple[Side, int]] = {}
        self.filled: dict[int, int] = {}

    def on_book(self, ctx: Context) -> None:
        if self.placed:
            return
        bid, ask = ctx.book.best_bid, ctx.book.best_ask
        if bid is None or ask is None:
            return
        p = self.p
        assert isinstance(p, Grid.Config)
        centre = (bid + ask) // 2
        for k in range(1, p.levels + 1):
            self.place(ctx, Side.BUY, centre - k * self.spacing)
            self.place(ctx, Side.SELL, centre + k * self.spacing)
        self.placed = True

    def place(self, ctx: Context, side: Side, price: int) -> None:
        if price <= 0:
            return
        ref = ctx.buy(price, self.size) if side is Side.BUY else ctx.sell(price, self.size)
        self.lines[ref] = (side, price)

    def on_fill(self, ctx: Context, fill: Fill) -> None:
        if fill.ref in self.lines:
            self.filled[fill.ref] = self.filled.get(fill.ref, 0) + fill.quantity

    def on_order(self, ctx: Context, order: object) -> None:
        # Flip a line when its order is done and traded.  A bid may close having bought a
        # little less than its size (its fee comes out of the reservation, IMPL-GUIDE), so
        # "done" is the order closing, not the filled quantity reaching the size.
        ref = getattr(order, "ref", None)
        if ref not in self.lines or getattr(order, "is_open", True):
            return
        side, price = self.lines.pop(ref)
        if self.filled.pop(ref, 0) > 0 and getattr(order, "remaining", 0) == 0:
            self.place(ctx, side.opposite, price + side * self.spacing)
