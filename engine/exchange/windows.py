"""Trailing windows: a user's 30-day trade volume and a book's 24-hour ticker.

Both keep one-minute buckets rather than one entry per trade, so memory stays bounded
(43,200 buckets for 30 days at most, 1,440 for a day) however many trades happen.  A trade
made in the minute starting at ``b`` counts while ``now < b + window``: it leaves the window
between ``window - 1 min`` and ``window`` after it happened.  Time comes from the
exchange's (monotonic) clock in microseconds; nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque

BUCKET_US = 60_000_000
DAY_US = 86_400_000_000
VOLUME_WINDOW_US = 30 * DAY_US
TICKER_WINDOW_US = DAY_US


class PairVolume:
    """One user's trailing traded amounts in one market: base and counter side by side.

    A user's volume in an asset is the sum over the markets that trade it (see
    ``Exchange._asset_volume``); keeping both amounts of a trade in one bucket makes a
    trade one update per side instead of two.
    """

    __slots__ = ("window_us", "buckets", "base", "counter")

    def __init__(self, window_us: int = VOLUME_WINDOW_US) -> None:
        self.window_us = window_us
        self.buckets: deque[list[int]] = deque()  # [bucket start, base amount, counter amount]
        self.base = 0
        self.counter = 0

    def expire(self, now: int) -> None:
        buckets = self.buckets
        horizon = now - self.window_us
        while buckets and buckets[0][0] <= horizon:
            _, b, c = buckets.popleft()
            self.base -= b
            self.counter -= c

    def add(self, now: int, base: int, counter: int) -> None:
        """Add one side of a trade made at ``now``."""
        buckets = self.buckets
        if buckets and buckets[0][0] <= now - self.window_us:
            self.expire(now)
        start = now - now % BUCKET_US
        if buckets and buckets[-1][0] == start:
            last = buckets[-1]
            last[1] += base
            last[2] += counter
        else:
            buckets.append([start, base, counter])
        self.base += base
        self.counter += counter

    def to_json(self) -> list[list[int]]:
        return [list(b) for b in self.buckets]

    @classmethod
    def from_json(cls, data: list[list[int]], window_us: int = VOLUME_WINDOW_US) -> PairVolume:
        out = cls(window_us)
        for start, b, c in data:
            out.buckets.append([start, b, c])
            out.base += b
            out.counter += c
        return out


class Ticker:
    """Last price and the trailing 24-hour low, high and base volume of one book."""

    __slots__ = ("last", "buckets", "low", "high", "volume", "window_us")

    def __init__(self, window_us: int = TICKER_WINDOW_US) -> None:
        self.window_us = window_us
        self.last: int | None = None
        self.buckets: deque[list[int]] = deque()  # [bucket start, low, high, volume]
        self.low: int | None = None
        self.high: int | None = None
        self.volume = 0

    def trade(self, now: int, price: int, quantity: int) -> None:
        buckets = self.buckets
        if buckets and buckets[0][0] <= now - self.window_us:
            self.expire(now)
        self.last = price
        b = now - now % BUCKET_US
        if buckets and buckets[-1][0] == b:
            cur = buckets[-1]
            if price < cur[1]:
                cur[1] = price
            if price > cur[2]:
                cur[2] = price
            cur[3] += quantity
        else:
            buckets.append([b, price, price, quantity])
        self.volume += quantity
        if self.low is None or price < self.low:
            self.low = price
        if self.high is None or price > self.high:
            self.high = price

    def expire(self, now: int) -> None:
        buckets = self.buckets
        horizon = now - self.window_us
        if not buckets or buckets[0][0] > horizon:
            return
        while buckets and buckets[0][0] <= horizon:
            self.volume -= buckets.popleft()[3]
        # Rare (at most once per bucket): recompute the extremes of what is left.
        if buckets:
            self.low = min(b[1] for b in buckets)
            self.high = max(b[2] for b in buckets)
        else:
            self.low = self.high = None

    def to_json(self) -> dict[str, object]:
        return {"last": self.last, "buckets": [list(b) for b in self.buckets]}

    @classmethod
    def from_json(cls, data: dict[str, object], window_us: int = TICKER_WINDOW_US) -> Ticker:
        t = cls(window_us)
        last = data["last"]
        t.last = last if isinstance(last, int) else None
        for start, lo, hi, vol in data["buckets"]:  # type: ignore[attr-defined]
            t.buckets.append([start, lo, hi, vol])
            t.volume += vol
        if t.buckets:
            t.low = min(b[1] for b in t.buckets)
            t.high = max(b[2] for b in t.buckets)
        return t
