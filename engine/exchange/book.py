"""Resting orders and the price-time priority book of one market.

Each side keeps its price levels in two structures:

* ``keys``: a sorted Python list of level keys, ascending, with the *best* level last so
  that taking or dropping the best level is ``list.pop()``.  A bid's key is its price, an
  ask's key is minus its price (the lowest ask has the largest key).
* ``levels``: price -> ``OrderedDict`` of id -> :class:`Order` in arrival order.  An
  OrderedDict gives O(1) append, O(1) removal of any order (cancel) and O(1) access to the
  oldest order (the next to match): price-time priority with no scans.

New levels are placed with ``bisect.insort`` (a memmove of at most a few thousand
pointers); the common case, an order joining an existing level, is one dict append.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import msgspec

from engine.exchange.windows import Ticker


class Order(msgspec.Struct, gc=False):
    """A limit order on the book (mutable: the engine updates it as it fills).

    ``quantity`` is the remaining amount, always positive; ``is_bid`` gives the side.
    ``reserved`` is what the order holds: counter units for a bid (always
    ``ceil(quantity*price*mul/den)`` while it rests), base units for an ask (== quantity).
    ``session_id`` is the session that placed it (persist=false orders die with it).
    A msgspec Struct rather than a slotted class: it is built twice as fast, and it holds
    only ints, so it can opt out of the cycle collector (``gc=False``).
    """

    id: int
    user_id: int
    tonce: int | None
    base: int
    counter: int
    is_bid: bool
    quantity: int
    price: int
    time: int
    persist: bool
    session_id: int
    reserved: int

    @property
    def signed_quantity(self) -> int:
        """The wire quantity: positive for a bid, negative for an ask."""
        return self.quantity if self.is_bid else -self.quantity


class BookSide:
    """One side of a book: levels by price, best level last in ``keys``."""

    __slots__ = ("is_bid", "keys", "levels", "count")

    def __init__(self, is_bid: bool) -> None:
        self.is_bid = is_bid
        self.keys: list[int] = []
        self.levels: dict[int, OrderedDict[int, Order]] = {}
        self.count = 0

    def add(self, order: Order) -> None:
        """Append ``order`` at the back of its price level."""
        level = self.levels.get(order.price)
        if level is None:
            level = self.levels[order.price] = OrderedDict()
            insort(self.keys, order.price if self.is_bid else -order.price)
        level[order.id] = order
        self.count += 1

    def remove(self, order: Order) -> None:
        """Take ``order`` off the book (it must be on this side)."""
        price = order.price
        level = self.levels[price]
        del level[order.id]
        self.count -= 1
        if not level:
            del self.levels[price]
            keys = self.keys
            key = price if self.is_bid else -price
            if keys[-1] == key:
                keys.pop()
            else:
                del keys[bisect_left(keys, key)]

    def best(self) -> Order | None:
        """The order that matches next (best price, oldest), or None."""
        keys = self.keys
        if not keys:
            return None
        k = keys[-1]
        level = self.levels[k if self.is_bid else -k]
        return next(iter(level.values()))

    def best_price(self) -> int | None:
        keys = self.keys
        if not keys:
            return None
        k = keys[-1]
        return k if self.is_bid else -k

    def __iter__(self) -> Iterator[Order]:
        """Every order, best first (price, then time)."""
        levels = self.levels
        bid = self.is_bid
        for k in reversed(self.keys):
            yield from levels[k if bid else -k].values()

    def __len__(self) -> int:
        return self.count


class Book:
    """The two sides of one market, its total divisor (``mul``/``den``), its ticker, its
    fee schedule and who watches it."""

    __slots__ = (
        "base",
        "counter",
        "codes",
        "bids",
        "asks",
        "mul",
        "den",
        "ticker",
        "fee_tiers",
        "flat_fees",
        "order_watchers",
        "ticker_watchers",
        "ticker_sent",
    )

    def __init__(self, base: int, counter: int, mul: int, den: int, fee_tiers: list[tuple[int, int, int]]) -> None:
        self.base = base
        self.counter = counter
        self.codes = (base, counter)
        self.mul = mul
        self.den = den
        self.bids = BookSide(True)
        self.asks = BookSide(False)
        self.ticker = Ticker()
        # (min volume, maker ppm, taker ppm), highest min volume first
        self.fee_tiers = sorted(fee_tiers, key=lambda t: t[0], reverse=True)
        # (maker ppm, taker ppm) when one tier covers every volume: no lookup per trade
        self.flat_fees: tuple[int, int] | None = (
            (fee_tiers[0][1], fee_tiers[0][2]) if len(fee_tiers) == 1 else None
        )
        # session id -> Session (insertion-ordered for deterministic delivery)
        self.order_watchers: dict[int, Any] = {}
        self.ticker_watchers: dict[int, Any] = {}
        # The ticker values its watchers last saw (last, bid, ask, low, high, volume), the
        # baseline of the next TickerChanged's changed fields; None until first sent.
        self.ticker_sent: tuple[Any, ...] | None = None

    def side(self, is_bid: bool) -> BookSide:
        return self.bids if is_bid else self.asks
