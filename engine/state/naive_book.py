"""The obviously-correct order book: a dict of orders and sorted price levels (bisect).

It is the reference the numpy :class:`engine.state.book.Book` is tested against, step by
step, and the baseline ``cftrade bench book`` measures it against.  It follows the same
IMPL-GUIDE rules and the same documented choices, in plain Python:

* notices before the snapshot are buffered and applied after it;
* OrderClosed / an OrdersMatched side for an id not in the view is ignored (and counted);
* ``ask_rem`` is positive on the wire; the side is kept with the order;
* an order matched down to 0 stays in the view until its OrderClosed, but only orders with
  remaining > 0 count in the price levels (so no level is ever empty);
* an OrderOpened for an id already in the view replaces it (counted as a duplicate);
* an OrderOpened with price <= 0 (or above 2**62) or quantity 0 is ignored (counted);
* a notice that disagrees with the view (closing quantity, remaining going up, a bid id
  naming an ask) is applied as the guide says and counted as a mismatch.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

from engine.protocol.messages import (
    UNSET,
    BookOrder,
    Notice,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    WatchOrdersReply,
)
from engine.scale import V2, XBT_GBP, Market, Scales

__all__ = ["NaiveBook", "order_hash"]

TOP_PRICE, TOP_QTY, OWN, IGNORED = 1, 2, 4, 8
MAX_PRICE = 1 << 62
_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    x &= _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return x


def order_hash(oid: int, key: int, rem: int, time: int, own: bool) -> int:
    """The per-order hash summed (mod 2**64) by both books' ``checksum``.

    ``key`` is ``-price`` for a bid and ``+price`` for an ask.
    """
    return _mix(oid ^ _mix(key ^ _mix(rem ^ _mix(time + int(own)))))


class NaiveBook:
    """Reference book: ``orders[id] = [key, remaining, time, own]`` with ``key`` = -price
    for bids, +price for asks, and per side ``levels[key] = [quantity, count]`` plus a sorted
    key list (ascending key = best first on both sides)."""

    def __init__(self, market: Market = XBT_GBP, scales: Scales = V2) -> None:
        self.market = market
        self.scales = scales
        self.base, self.counter = market.codes
        self.orders: dict[int, list[int]] = {}
        self.levels: tuple[dict[int, list[int]], dict[int, list[int]]] = ({}, {})
        self.keys: tuple[list[int], list[int]] = ([], [])
        self.pending: list[Notice] | None = []
        self.ignored = self.mismatched = self.duplicates = self.invalid = 0
        self.best_bid: int | None = None
        self.best_ask: int | None = None

    # -- feeding -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.pending is None

    def load_snapshot(self, snapshot: WatchOrdersReply | Sequence[BookOrder]) -> int:
        orders = snapshot.orders if isinstance(snapshot, WatchOrdersReply) else snapshot
        assert orders is not UNSET
        pending = self.pending or []
        self.__init__(self.market, self.scales)  # type: ignore[misc]
        for o in orders:
            self._open(o.id, o.price, o.quantity, o.time, False)
        self.pending = None
        self._touch()
        flags = TOP_PRICE | TOP_QTY
        for n in pending:
            flags |= self.apply(n)
        return flags

    def apply(self, n: Notice) -> int:
        """Apply one notice; returns the same change flags as Book.apply."""
        if not isinstance(n, OrderOpened | OrderClosed | OrdersMatched):
            return 0
        if (n.base, n.counter) != (self.base, self.counter):
            return 0
        if self.pending is not None:
            self.pending.append(n)
            return 0
        before = self._top()
        if isinstance(n, OrderOpened):
            own = n.tonce is not UNSET
            flags = (OWN if own else 0) | self._open(n.id, n.price, n.quantity, n.time, own)
        elif isinstance(n, OrderClosed):
            flags = OWN if n.tonce is not UNSET else 0
            o = self.orders.get(n.id)
            if o is None:
                self.ignored += 1
                flags |= IGNORED
            else:
                if n.quantity != (o[1] if o[0] < 0 else -o[1]):
                    self.mismatched += 1
                self._remove(n.id)
        else:
            flags = OWN if n.bid_tonce is not UNSET or n.ask_tonce is not UNSET else 0
            for oid, rem, is_bid in ((n.bid, n.bid_rem, True), (n.ask, n.ask_rem, False)):
                if oid is UNSET:
                    continue
                o = self.orders.get(oid)
                if o is None:
                    self.ignored += 1
                    flags |= IGNORED
                    continue
                r = -1 if rem is UNSET else rem
                if (o[0] < 0) != is_bid or r > o[1] or r < 0:
                    self.mismatched += 1
                if r >= 0:
                    self._set_rem(o, r)
        self._touch()
        after = self._top()
        if after[0] != before[0] or after[2] != before[2]:
            flags |= TOP_PRICE | TOP_QTY
        elif after != before:
            flags |= TOP_QTY
        return flags

    # -- the rules -------------------------------------------------------------------------

    def _open(self, oid: int, price: int, quantity: int, time: int, own: bool) -> int:
        if price <= 0 or price > MAX_PRICE or quantity == 0:
            self.invalid += 1
            return IGNORED
        if oid in self.orders:
            self.duplicates += 1
            self._remove(oid)
        key = -price if quantity > 0 else price
        o = [key, 0, time, int(own)]
        self.orders[oid] = o
        self._set_rem(o, abs(quantity))
        return 0

    def _remove(self, oid: int) -> None:
        o = self.orders.pop(oid)
        self._set_rem(o, 0)

    def _set_rem(self, o: list[int], new: int) -> None:
        key, old = o[0], o[1]
        o[1] = new
        side = 0 if key < 0 else 1
        levels, keys = self.levels[side], self.keys[side]
        if old > 0:
            lv = levels[key]
            lv[0] -= old
            lv[1] -= 1
            if lv[1] == 0:
                del levels[key]
                del keys[bisect.bisect_left(keys, key)]
        if new > 0:
            got = levels.get(key)
            if got is None:
                levels[key] = [new, 1]
                bisect.insort(keys, key)
            else:
                got[0] += new
                got[1] += 1

    def _top(self) -> tuple[int, int, int, int]:
        bk, ak = self.keys
        bid = (-bk[0], self.levels[0][bk[0]][0]) if bk else (0, 0)
        ask = (ak[0], self.levels[1][ak[0]][0]) if ak else (0, 0)
        return bid[0], bid[1], ask[0], ask[1]

    def _touch(self) -> None:
        bk, ak = self.keys
        self.best_bid = -bk[0] if bk else None
        self.best_ask = ak[0] if ak else None

    # -- queries -------------------------------------------------------------------------

    def level_list(self, side: int, n: int = 10) -> list[tuple[int, int, int]]:
        """[(price, quantity, count)] of the best ``n`` levels of side 0 (bid) or 1 (ask)."""
        return [(abs(k), *self.levels[side][k]) for k in self.keys[side][:n]]  # type: ignore[misc]

    def queue_ahead(self, oid: int) -> int | None:
        o = self.orders.get(oid)
        if o is None:
            return None
        return sum(
            p[1] for i, p in self.orders.items() if i != oid and p[0] == o[0] and (p[2], i) < (o[2], oid)
        )

    def estimate(self, *, quantity: int | None = None, total: int | None = None) -> tuple[int, Fraction]:
        """(quantity, exact total) of a market order walking the levels (see Book.estimate)."""
        want = quantity if quantity is not None else total
        assert want
        side = 1 if want > 0 else 0
        mul, den = self.scales.total_divisor(self.market)
        left = Fraction(abs(want))
        q_sum, t_sum = 0, Fraction(0)
        for k in self.keys[side]:
            q = self.levels[side][k][0]
            unit = Fraction(abs(k) * mul, den)  # counter units per base unit
            take = min(q, int(left)) if quantity is not None else min(q, math.floor(left / unit))
            if take == 0:
                break
            q_sum += take
            t_sum += take * unit
            left -= take if quantity is not None else take * unit
            if left == 0 or take < q:
                break
        return q_sum, t_sum

    def checksum(self) -> int:
        return sum(order_hash(i, o[0], o[1], o[2], bool(o[3])) for i, o in self.orders.items()) & _M64

    def __len__(self) -> int:
        return len(self.orders)

    def apply_all(self, notices: Iterable[Notice]) -> int:
        f = 0
        for n in notices:
            f |= self.apply(n)
        return f
