"""LIMITS.md as data, and pure rate limiters driven by an injected clock.

Both sides use these: the client's :mod:`engine.governor` wraps them in trio waiting, and the
local exchange enforces them with error 6.  Nothing here reads a clock or does I/O; every
method takes ``now`` in seconds (``trio.current_time()`` on the client, the exchange's
injected clock on the server), so tests are exact.

LIMITS.md:

==========================  ====================================  ===========
metric                      limit                                 scope
==========================  ====================================  ===========
open orders                 1,000                                 user
authentication attempts     1,000 per hour                        user
order placements*           1,000 per 1,000 seconds               user
information requests†       10 per 10 seconds                     session
records requests‡           10 per minute                         user
==========================  ====================================  ===========

\\* includes cancellations (CancelOrder, CancelAllOrders) and EstimateMarketOrder.
† GetBalances, GetOrders, GetTradeVolume.  ‡ no WebSocket command is a records request.

The spec does not say which algorithm applies.  The default is a *sliding window* (at most N
events in any interval of length T), the strictest reading: a client that obeys it obeys a
token bucket of the same numbers too.  ``TokenBucket`` is available as a setting.
WatchOrders and WatchTicker are not rate-limited (the spec lists them in no metric).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

Scope = Literal["user", "session"]
Algorithm = Literal["window", "bucket"]

MAX_OPEN_ORDERS = 1000


@dataclass(frozen=True, slots=True)
class Limit:
    """``count`` events per ``per`` seconds, counted per user or per session."""

    count: int
    per: float
    scope: Scope = "user"

    def __post_init__(self) -> None:
        if self.count <= 0 or self.per <= 0:
            raise ValueError(f"limit must be positive, got {self.count} per {self.per} s")

    def __str__(self) -> str:
        return f"{self.count} per {self.per:g} s"


DEFAULT_LIMITS: dict[str, Limit] = {
    "orders": Limit(1000, 1000.0, "user"),
    "info": Limit(10, 10.0, "session"),
    "auth": Limit(1000, 3600.0, "user"),
    "records": Limit(10, 60.0, "user"),
}

METRIC_FOR_METHOD: dict[str, str] = {
    "PlaceOrder": "orders",
    "CancelOrder": "orders",
    "CancelAllOrders": "orders",
    "EstimateMarketOrder": "orders",
    "GetBalances": "info",
    "GetOrders": "info",
    "GetTradeVolume": "info",
    "Authenticate": "auth",
}

# The exact error_msg of error 6 for each metric, as WEBSOCKET-README words it.
RATE_ERROR_MSG: dict[str, str] = {
    "orders": "You are sending orders too rapidly.",
    "info": "You are making information requests too rapidly.",
    "auth": "You are making authentication attempts too rapidly.",
    "records": "You are making records requests too rapidly.",
}


class Limiter(Protocol):
    limit: Limit

    def try_acquire(self, now: float, n: int = 1) -> float:
        """Take ``n`` tokens if possible and return 0.0; otherwise take nothing and
        return the seconds until ``n`` tokens will be available."""
        ...

    def headroom(self, now: float) -> int:
        """Tokens that could be taken right now."""
        ...

    def take(self, now: float, n: int = 1) -> bool:
        """Take ``n`` tokens and return True, or take none and return False: ``headroom(now)
        >= n`` then ``try_acquire(now, n)``, in one call (False rather than ValueError when
        ``n`` exceeds the limit).  For the per-order hot paths.

        Not quite ``try_acquire(now, n) == 0.0``: when the event that must leave the window
        sits on its edge up to float rounding, try_acquire takes nothing yet reports a wait
        of 0.0."""
        ...


@dataclass(slots=True)
class SlidingWindow:
    """At most ``limit.count`` events in any half-open interval of ``limit.per`` seconds."""

    limit: Limit
    _times: deque[float] = field(default_factory=deque)

    def _expire(self, now: float) -> None:
        horizon = now - self.limit.per
        times = self._times
        while times and times[0] <= horizon:
            times.popleft()

    def try_acquire(self, now: float, n: int = 1) -> float:
        if n > self.limit.count:
            raise ValueError(f"cannot take {n} tokens from a limit of {self.limit}")
        self._expire(now)
        times = self._times
        if len(times) + n <= self.limit.count:
            times.extend([now] * n)
            return 0.0
        # The (len + n - count)-th oldest event must leave the window first.
        oldest_needed = times[len(times) + n - self.limit.count - 1]
        return max(oldest_needed + self.limit.per - now, 0.0)

    def headroom(self, now: float) -> int:
        # _expire, inline: the risk gate asks the user budget before every order.
        limit = self.limit
        times = self._times
        horizon = now - limit.per
        while times and times[0] <= horizon:
            times.popleft()
        return limit.count - len(times)

    def take(self, now: float, n: int = 1) -> bool:
        # _expire and the count test inlined: this runs twice or three times per order sent.
        limit = self.limit
        times = self._times
        horizon = now - limit.per
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) + n > limit.count:
            return False
        if n == 1:
            times.append(now)
        else:
            times.extend([now] * n)
        return True


@dataclass(slots=True)
class TokenBucket:
    """A bucket of ``limit.count`` tokens refilled continuously at count/per per second."""

    limit: Limit
    _tokens: float = -1.0
    _last: float = 0.0

    def _refill(self, now: float) -> None:
        if self._tokens < 0:
            self._tokens, self._last = float(self.limit.count), now
            return
        rate = self.limit.count / self.limit.per
        self._tokens = min(float(self.limit.count), self._tokens + (now - self._last) * rate)
        self._last = now

    def try_acquire(self, now: float, n: int = 1) -> float:
        if n > self.limit.count:
            raise ValueError(f"cannot take {n} tokens from a limit of {self.limit}")
        self._refill(now)
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        rate = self.limit.count / self.limit.per
        return (n - self._tokens) / rate

    def headroom(self, now: float) -> int:
        self._refill(now)
        return int(self._tokens)

    def take(self, now: float, n: int = 1) -> bool:
        if n > self.limit.count:
            return False
        self._refill(now)
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


def make_limiter(limit: Limit, algorithm: Algorithm = "window") -> Limiter:
    if algorithm == "window":
        return SlidingWindow(limit)
    if algorithm == "bucket":
        return TokenBucket(limit)
    raise ValueError(f"unknown rate-limit algorithm {algorithm!r} (window or bucket)")
