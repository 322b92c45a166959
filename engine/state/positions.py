"""Positions and PnL per market, exact: scaled integers and ``Fraction``, never floats.

A :class:`Position` follows the **average-cost method** on the fills of our orders:

* ``base`` is the signed position in base units (long > 0, short < 0).
* ``cost`` is what the open position cost, signed like ``base``, in counter units as an exact
  ``Fraction``: buying adds the trade total, selling short adds minus the total.  The average
  entry price is ``cost / base`` (counter per base unit).
* A fill that *reduces* the position realises PnL on the part it closes, against the average
  cost of that part: closing ``c`` units of a position ``q`` with cost ``C`` removes
  ``C·c/q`` from the cost and realises ``proceeds − C·c/q`` (a long) or ``C·c/q − outlay``
  (a short).  A fill that crosses zero closes the whole position and opens the remainder at
  the fill's own price.  ``realized`` is an exact ``Fraction`` because the removed cost is a
  pro-rata share.
* Fees are kept apart (``fees`` in counter units, ``base_fees`` in base units) and are not in
  the cost basis, so ``realized`` is the trading result and :meth:`Position.net` subtracts
  the fees.  Totals are the exchange's (stochastically rounded) trade totals: the cash that
  really moved.
* ``unrealized(mark)`` values the open position at a given integer price (mid or last, the
  caller chooses): ``base·mark·cs/(bs·ps) − cost``, exact.

Trade values use :meth:`Scales.exact_total` for the mark, so API v1 and v2 both work.

    >>> from engine.scale import V1, XBT_GBP
    >>> p = Position(XBT_GBP, V1)
    >>> p.add(Side.BUY, 10_000, 100_00, 100_00)   # buy 1 XBT (v1: 10000 units) at £100 for £100
    >>> p.add(Side.SELL, 4_000, 110_00, 44_00)    # sell 0.4 XBT at £110 for £44
    >>> p.base, p.cost, p.realized                # 0.6 XBT left at a cost of £60; £4 made
    (6000, Fraction(6000, 1), Fraction(400, 1))
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

from engine.scale import DEFAULT, Market, Scales
from engine.state.orders import Filled, OrderEvent
from engine.strategy import Side

__all__ = ["Position", "PositionBook"]


@dataclass(slots=True)
class Position:
    """The position and PnL of one market (see the module docstring for the method)."""

    market: Market
    scales: Scales = DEFAULT
    base: int = 0
    cost: Fraction = field(default_factory=Fraction)
    realized: Fraction = field(default_factory=Fraction)
    fees: int = 0
    base_fees: int = 0
    volume_base: int = 0
    volume_counter: int = 0
    trades: int = 0

    def add(self, side: Side, quantity: int, price: int, total: int, counter_fee: int = 0, base_fee: int = 0) -> None:
        """Apply one fill: ``quantity`` base units at ``price`` for ``total`` counter units."""
        if quantity <= 0 or total < 0:
            raise ValueError(f"{self.market.name} fill: quantity must be > 0 and total >= 0, was {quantity}, {total}")
        buy = side is Side.BUY
        v = total if buy else -total  # the signed cash value of the fill (cost grows by it)
        q = self.base
        if q == 0 or (q > 0) == buy:  # opening or adding: the cost grows by the total
            self.cost += v
            self.base = q + (quantity if buy else -quantity)
        else:
            # Reducing: realise the closed part against its average cost.  Long: proceeds
            # (−part value) minus the cost removed; short: the cost removed (negative) minus the
            # outlay (part value): both are −v·c/quantity − C·c/|q|.  Over one common
            # denominator, so one Fraction (one gcd) instead of a chain of Fraction operations.
            aq = -q if q < 0 else q
            c = quantity if quantity < aq else aq
            cn, cd = self.cost.numerator, self.cost.denominator
            rn, rd = self.realized.numerator, self.realized.denominator
            self.realized = Fraction((rn * quantity - v * c * rd) * cd * aq - cn * c * rd * quantity,
                                     rd * quantity * cd * aq)
            if c < aq:  # a part of the position stays open at its average cost
                self.base = q + (c if buy else -c)
                self.cost = Fraction(cn * (aq - c), cd * aq)
            elif c < quantity:  # crosses zero: the rest opens at the fill's own price
                rest = quantity - c
                self.base = rest if buy else -rest
                self.cost = Fraction(v * rest, quantity)
            else:
                self.base = 0
                self.cost = Fraction(0)
        self.fees += counter_fee
        self.base_fees += base_fee
        self.volume_base += quantity
        self.volume_counter += total
        self.trades += 1

    @property
    def average_price(self) -> Fraction | None:
        """Average entry price of the open position in *scaled price* units, or None if flat."""
        if self.base == 0:
            return None
        mul, den = self.scales.total_divisor(self.market)
        # cost = base * price * mul / den  =>  price = cost * den / (base * mul)
        return self.cost * den / (self.base * mul)

    def market_value(self, mark: int) -> Fraction:
        """Value of the open position at integer price ``mark``, in counter units (signed)."""
        num, den = self.scales.exact_total(self.base, mark, self.market)
        return Fraction(num if self.base >= 0 else -num, den)

    def unrealized(self, mark: int) -> Fraction:
        """Unrealized PnL at ``mark`` (counter units): market value minus cost."""
        return self.market_value(mark) - self.cost

    def net_floor(self, mark: int | None = None) -> int:
        """``floor(net(mark))`` in counter units, from the fractions' integer parts.

        Equity marks (the kill switch after every fill, the replay's marks) need only the
        integer floor; building three Fractions for it (a gcd each) cost more than the mark.
        """
        r, c = self.realized, self.cost
        rn, rd = r.numerator, r.denominator
        if mark is None or self.base == 0:
            # cost is 0 when flat; without a mark it is not counted (as in net())
            return (rn - self.fees * rd) // rd
        mn, md = self.scales.exact_total(self.base, mark, self.market)
        if self.base < 0:
            mn = -mn
        cn, cd = c.numerator, c.denominator
        # rn/rd − fees + mn/md − cn/cd over the common denominator rd·md·cd (all > 0)
        return (((rn - self.fees * rd) * md + mn * rd) * cd - cn * rd * md) // (rd * md * cd)

    def net(self, mark: int | None = None) -> Fraction:
        """Realized (+ unrealized at ``mark``, if given) minus counter fees."""
        out = self.realized - self.fees
        if mark is not None:
            out += self.unrealized(mark)
        return out


class PositionBook:
    """Positions by market, fed with the order tracker's events.

    ``strategy`` limits the book to one strategy's orders (``None``: the whole account).
    Unattributed own fills (``order is None``) count for the account book only.
    """

    def __init__(self, scales: Scales = DEFAULT, *, strategy: str | None = None) -> None:
        self.scales = scales
        self.strategy = strategy
        self._positions: dict[Market, Position] = {}

    def position(self, market: Market) -> Position:
        """The (possibly flat) position in ``market``."""
        pos = self._positions.get(market)
        if pos is None:
            pos = self._positions[market] = Position(market, self.scales)
        return pos

    def apply(self, event: OrderEvent) -> None:
        """Apply a :class:`~engine.state.orders.Filled` (inferred ones too); others are ignored."""
        if type(event) is not Filled:
            return
        if self.strategy is not None and (event.order is None or event.order.strategy != self.strategy):
            return
        f = event.fill
        self.position(event.market).add(event.side, f.quantity, f.price, f.total, f.counter_fee, f.base_fee)

    def __iter__(self) -> Iterator[Position]:
        return iter(self._positions.values())
