"""A simple mean-reversion taker: fade the mid when it strays from its moving average.

The moving average is an exponential one kept in fixed point (``EMA_SCALE`` per price unit,
integer arithmetic): ``ema += (mid·S − ema) · num / den`` with ``num/den = 2/(span+1)``.
When the mid is more than ``threshold_bps`` above the average the strategy sells ``size`` at
market (below: buys), as long as the resulting position stays within ``max_position``, and then
waits ``cooldown`` seconds.  With ``mode: trend`` the signal is inverted (follow the move).
"""

from __future__ import annotations

from engine.configload import Amount
from engine.registry import register
from engine.strategy import Context, Side, Strategy, StrategyConfig

EMA_SCALE = 1_000_000


@register("mean_reversion")
class MeanReversion(Strategy):
    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        size: Amount = "0.01"
        """Market order size in base units, decimal text."""
        span: int = 100
        """EMA span in book updates."""
        threshold_bps: int = 20
        """Act when |mid − ema| exceeds this many basis points of the ema."""
        max_position: Amount = "0.05"
        """Absolute position limit of the strategy itself (the risk governor has its own)."""
        cooldown: float = 10.0
        """Seconds to wait after each order."""
        mode: str = "revert"
        """"revert" (fade the move) or "trend" (follow it)."""
        warmup: int = 50
        """Book updates to observe before the first order."""

    def on_start(self, ctx: Context) -> None:
        p = self.p
        assert isinstance(p, MeanReversion.Config)
        if p.mode not in ("revert", "trend"):
            raise ValueError(f"mode must be 'revert' or 'trend', was {p.mode!r}")
        if p.span < 1:
            raise ValueError("span must be >= 1")
        self.size = ctx.amount(p.size)
        self.max_pos = ctx.amount(p.max_position)
        self.ema: int | None = None
        self.seen = 0
        self.next_ok_us = 0

    def on_book(self, ctx: Context) -> None:
        p = self.p
        assert isinstance(p, MeanReversion.Config)
        bid, ask = ctx.book.best_bid, ctx.book.best_ask
        if bid is None or ask is None:
            return
        mid_fp = (bid + ask) * EMA_SCALE // 2
        if self.ema is None:
            self.ema = mid_fp
        else:
            self.ema += (mid_fp - self.ema) * 2 // (p.span + 1)
        self.seen += 1
        if self.seen < p.warmup or ctx.now_us < self.next_ok_us:
            return
        dev = mid_fp - self.ema
        if abs(dev) * 10_000 <= self.ema * p.threshold_bps:
            return
        side = Side.SELL if dev > 0 else Side.BUY
        if p.mode == "trend":
            side = side.opposite
        pos = ctx.position()
        if abs(pos + side * self.size) > self.max_pos:
            return
        ctx.market_order(side, quantity=self.size)
        self.next_ok_us = ctx.now_us + int(p.cooldown * 1_000_000)
