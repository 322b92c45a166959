"""The strategy API: a base class with plain hooks, intents, and the read-only context.

A strategy never awaits and never touches the socket.  The runtime (live runner or backtest)
calls its hooks with a :class:`Context`; the strategy decides and *emits intents* through the
context (``ctx.buy(...)``, ``ctx.cancel(...)``) or returns them from the hook.  Every intent
passes the risk governor before anything reaches the wire; a denial comes back through
``on_risk_denied`` with a reason.  The same strategy object runs unchanged live and in replays::

    @register("my_quoter")
    class MyQuoter(Strategy):
        class Config(StrategyConfig):
            size: Amount = "0.01"          # decimal text, converted once by the runtime
            spread_ticks: int = 10

        def on_book(self, ctx: Context) -> None:
            bid, ask = ctx.book.best_bid, ctx.book.best_ask
            if bid is None or ask is None or ctx.open_orders():
                return
            ctx.buy(bid - self.p.spread_ticks, ctx.amount(self.p.size))

All prices and quantities here are scaled integers (SCALE.md); ``ctx.amount("0.01")`` and
``ctx.price("543.21")`` convert decimal text through :mod:`engine.scale` for convenience.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgspec

if TYPE_CHECKING:
    from engine.scale import Market


class Side(enum.IntEnum):
    """Order side; the value is the sign of the wire quantity (bids positive, asks negative)."""

    BUY = 1
    SELL = -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


# -- intents ---------------------------------------------------------------------------------
# Quantities are positive base-asset units; the side carries the sign.  ``ref`` is the
# client-side order reference (intent id) the runtime assigns; strategies use it to cancel or
# replace.  Intents are frozen values so they can be logged, journaled and compared.


@dataclass(frozen=True, slots=True)
class PlaceLimit:
    side: Side
    price: int
    quantity: int
    persist: bool = False
    ref: int = 0


@dataclass(frozen=True, slots=True)
class PlaceMarket:
    """A market order by base ``quantity`` or by counter ``total`` (exactly one)."""

    side: Side
    quantity: int | None = None
    total: int | None = None
    ref: int = 0


@dataclass(frozen=True, slots=True)
class Cancel:
    ref: int


@dataclass(frozen=True, slots=True)
class CancelAll:
    """Cancel every open order of *this strategy* (never the user-wide CancelAllOrders)."""


@dataclass(frozen=True, slots=True)
class Replace:
    """Cancel ``ref`` and place a new limit order at ``price``/``quantity`` on the same side."""

    ref: int
    price: int
    quantity: int
    new_ref: int = 0


Intent = PlaceLimit | PlaceMarket | Cancel | CancelAll | Replace


@dataclass(frozen=True, slots=True)
class Denial:
    """A risk-governor refusal as the strategy sees it."""

    intent: Intent
    reason: str
    rule: str


@dataclass(frozen=True, slots=True)
class Trade:
    """A public trade seen on the book feed (OrdersMatched), own or not."""

    market: str
    price: int
    quantity: int
    time: int
    own: bool
    aggressor: Side | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    """One fill of one of this strategy's orders, with its fees (counter asset)."""

    ref: int
    side: Side
    price: int
    quantity: int
    total: int
    fee: int
    time: int


@dataclass(frozen=True, slots=True)
class Ticker:
    market: str
    last: int | None
    bid: int | None
    ask: int | None
    low: int | None
    high: int | None
    volume: int


class StrategyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every strategy's parameter class (strict: unknown keys are errors)."""

    timer_interval: float | None = None
    """Seconds between ``on_timer`` calls, or null for no timer."""
    book_interval: float | None = None
    """Conflate ``on_book``: at most one call per this many seconds.  A change of the best
    bid/ask inside the interval is not lost: one call follows at the interval's end, with
    the book as it is then.  Null or 0: a call on every change of the touch.  The live
    runner and both backtest replays apply the same rule, so parity holds either way."""

    def __post_init__(self) -> None:
        for name in ("timer_interval", "book_interval"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, was {v!r}")


class OrderView(Protocol):
    """One of the strategy's own orders as hooks see it (read-only)."""

    @property
    def ref(self) -> int: ...

    @property
    def side(self) -> Side: ...

    @property
    def price(self) -> int | None: ...

    @property
    def quantity(self) -> int:
        """Original quantity (positive base units)."""
        ...

    @property
    def remaining(self) -> int:
        """Quantity still open (positive base units)."""
        ...

    @property
    def is_open(self) -> bool:
        """True while the order may still trade (pending, open, partially filled, unknown)."""
        ...


class BookView(Protocol):
    """What a strategy may read of the order book (engine.state.book.Book has much more:
    ``levels``, ``estimate``, ``queue_ahead``...).  Best prices are plain attributes."""

    best_bid: int | None
    best_ask: int | None


class Context(Protocol):
    """The strategy's window on the world: read-only state plus intent emitters.

    Implemented by the live runner and by the backtester, identically.
    """

    name: str
    market: Market
    book: Any
    params: Any

    @property
    def now_us(self) -> int:
        """Exchange-clock microseconds (wall clock live, virtual in replays)."""
        ...

    def open_orders(self) -> Sequence[OrderView]: ...

    def order(self, ref: int) -> OrderView | None:
        """This strategy's order for intent ``ref`` (open or not), or None."""
        ...

    def position(self) -> int:
        """Signed base-asset position of this strategy (scaled)."""
        ...

    def available(self, asset_symbol: str) -> int:
        """Usable available balance of the user (balance view incl. anticipated deltas)."""
        ...

    def order_budget(self) -> int:
        """Order placements the strategy's rate budget allows right now (cancels count; a
        replace costs 2).  Asking first saves sending intents the risk governor would deny."""
        ...

    def amount(self, text: str) -> int: ...

    def price(self, text: str) -> int: ...

    def buy(self, price: int, quantity: int, *, persist: bool = False) -> int: ...

    def sell(self, price: int, quantity: int, *, persist: bool = False) -> int: ...

    def market_order(self, side: Side, *, quantity: int | None = None, total: int | None = None) -> int: ...

    def cancel(self, ref: int) -> None: ...

    def cancel_all(self) -> None: ...

    def replace(self, ref: int, price: int, quantity: int) -> int: ...

    def emit(self, intent: Intent) -> int: ...


class Strategy:
    """Base class: override the hooks you need.  Hooks are plain functions, never async.

    Hooks may emit intents through ``ctx`` or return an iterable of intents (or None).  An
    exception escaping a hook halts *this* strategy (its orders are cancelled); others go on.
    """

    Config: ClassVar[type[StrategyConfig]] = StrategyConfig

    def __init__(self, name: str, params: StrategyConfig) -> None:
        self.name = name
        self.p = params

    def on_start(self, ctx: Context) -> Iterable[Intent] | None:
        """After the start-up barrier: state is reconciled, the book is live."""
        return None

    def on_book(self, ctx: Context) -> Iterable[Intent] | None:
        """The top of the book changed."""
        return None

    def on_trade(self, ctx: Context, trade: Trade) -> Iterable[Intent] | None:
        return None

    def on_ticker(self, ctx: Context, ticker: Ticker) -> Iterable[Intent] | None:
        return None

    def on_order(self, ctx: Context, order: Any) -> Iterable[Intent] | None:
        """One of this strategy's orders changed state (opened, cancelled, rejected, ...)."""
        return None

    def on_fill(self, ctx: Context, fill: Fill) -> Iterable[Intent] | None:
        return None

    def on_timer(self, ctx: Context) -> Iterable[Intent] | None:
        return None

    def on_risk_denied(self, ctx: Context, denial: Denial) -> Iterable[Intent] | None:
        return None

    def on_stop(self, ctx: Context) -> Iterable[Intent] | None:
        """Before shutdown; the runtime cancels the strategy's orders afterwards anyway."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
