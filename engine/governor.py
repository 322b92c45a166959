"""The rate-limit governor: LIMITS.md budgets in front of the socket.

One limiter per LIMITS.md metric (from :mod:`engine.limits`), plus the open-orders budget::

    governor = Governor()                        # 90 % of the exchange's numbers
    await governor.acquire("orders")             # waits (trio time) until a token is free
    governor.acquire_nowait("info")              # or raises RateLimited at once
    governor.open_order_slot_nowait()            # before sending a limit PlaceOrder
    governor.release_open_order_slot()           # on its OrderClosed / error reply
    governor.set_open_orders(len(reply.orders))  # after a GetOrders reconciliation

=========  ===========================  ==================================================
metric     exchange limit (LIMITS.md)   commands (``engine.limits.METRIC_FOR_METHOD``)
=========  ===========================  ==================================================
orders     1000 per 1000 s per user     PlaceOrder, CancelOrder, CancelAllOrders,
                                        EstimateMarketOrder
info       10 per 10 s per session      GetBalances, GetOrders, GetTradeVolume
auth       1000 per hour per user       Authenticate
records    10 per minute per user       (no WebSocket command today)
=========  ===========================  ==================================================

**Safety factor.**  The governor runs below the exchange's numbers so that clock skew, a
different counting algorithm on the exchange side (the spec does not name one) and a few
commands from another tool never push us into error 6.  ``safety_factor=0.9`` (the default,
RELIABILITY.md section 6.2) gives 900 orders per 1000 s, 9 info requests per 10 s, 900
authentications per hour and 9 records requests per minute: ``floor(count * factor)``, never
below 1, over the same period.  ``safety_factor=1.0`` runs at exactly the exchange's limits.
The open-orders budget is a count we keep exactly, so it is not scaled: it defaults to the
exchange's 1000 (pass ``max_open_orders`` to lower it).

**Counting choices where the spec is silent.**  The default limiter is a sliding window (at
most N events in any interval of length T), the strictest reading, so a client that obeys it
also obeys a token bucket of the same numbers.  The info limit is per *session* at the
exchange; one governor keeps one window across reconnects, which is stricter than needed and
therefore safe.  WatchOrders and WatchTicker are in no metric and are never limited.

**Waiting.**  ``acquire`` sleeps with ``trio.sleep`` until the limiter's retry time, so under
``trio.testing.MockClock`` the 1001st order is granted at exactly t = 1000 s.  Waiters of one
metric are served first come, first served (a trio ``Lock`` is fair); ``acquire_nowait`` takes
a free token without queueing behind them.  Cancelling a waiting ``acquire`` takes nothing.

**Sub-budgets.**  ``governor.child("mm-1", fraction=0.25)`` returns a governor with a quarter
of the parent's budget in every metric; each token it grants is taken from the child *and*
every ancestor, so children can never overdraw the parent together.  Per-strategy budgets
(RELIABILITY F16, L2) are built on this; risk checks (notional, price bands, HALTED) are not
part of this module.

State changes are plain ``def``; only the two waiting methods are ``async``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import trio

from engine.errors import RateLimited
from engine.limits import (
    DEFAULT_LIMITS,
    MAX_OPEN_ORDERS,
    METRIC_FOR_METHOD,
    Algorithm,
    Limit,
    Limiter,
    make_limiter,
)
from engine.protocol.messages import Command

__all__ = [
    "DEFAULT_SAFETY_FACTOR",
    "OPEN_ORDERS",
    "Governor",
    "GovernorStatistics",
    "MetricStatistics",
    "metric_for",
    "scaled_limit",
]

DEFAULT_SAFETY_FACTOR = 0.9
OPEN_ORDERS = "open_orders"
"""The metric name used in :class:`RateLimited` when the open-orders budget is full."""


def metric_for(command: Command | type[Command] | str) -> str | None:
    """The LIMITS.md metric a command counts against, or None (WatchOrders, WatchTicker)."""
    if isinstance(command, str):
        method = command
    else:
        method = command.__struct_config__.tag  # type: ignore[assignment]
    return METRIC_FOR_METHOD.get(method)


def scaled_limit(limit: Limit, safety_factor: float) -> Limit:
    """``limit`` with its count scaled by ``safety_factor`` (floor, at least 1)."""
    # The epsilon keeps 1000 * 0.9 at 900 whatever the float rounding of the product.
    count = max(1, math.floor(limit.count * safety_factor + 1e-9))
    return Limit(count, limit.per, limit.scope)


def _check_factor(what: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise ValueError(f"{what} must be a number in (0, 1], was {value!r}")


@dataclass(frozen=True, slots=True)
class MetricStatistics:
    """One metric of :meth:`Governor.statistics`.

    ``headroom`` is the number of tokens :meth:`Governor.acquire_nowait` could take right now
    (the smallest over this governor and its ancestors).
    """

    metric: str
    limit: Limit
    exchange_limit: Limit
    headroom: int
    granted: int
    denied: int
    waits: int
    tasks_waiting: int


@dataclass(frozen=True, slots=True)
class GovernorStatistics:
    """A snapshot of a governor: headroom per metric and the open-orders budget."""

    name: str
    safety_factor: float
    metrics: Mapping[str, MetricStatistics]
    open_orders: int
    max_open_orders: int
    open_order_waiters: int

    def headroom(self, metric: str) -> int:
        return self.metrics[metric].headroom


class _Metric:
    __slots__ = ("name", "limit", "exchange_limit", "limiter", "lock", "granted", "denied", "waits")

    def __init__(self, name: str, exchange_limit: Limit, limit: Limit, algorithm: Algorithm) -> None:
        self.name = name
        self.exchange_limit = exchange_limit
        self.limit = limit
        self.limiter: Limiter = make_limiter(limit, algorithm)
        self.lock = trio.Lock()
        self.granted = 0
        self.denied = 0
        self.waits = 0


class Governor:
    """LIMITS.md budgets as trio-aware limiters; see the module docstring for the policy.

    ``limits`` maps metric name to the exchange's :class:`~engine.limits.Limit` (default
    ``DEFAULT_LIMITS``); each is scaled by ``safety_factor``.  ``algorithm`` is ``"window"``
    (default) or ``"bucket"``.
    """

    def __init__(
        self,
        limits: Mapping[str, Limit] | None = None,
        *,
        safety_factor: float = DEFAULT_SAFETY_FACTOR,
        algorithm: Algorithm = "window",
        max_open_orders: int = MAX_OPEN_ORDERS,
        name: str = "governor",
    ) -> None:
        _check_factor("safety_factor", safety_factor)
        if isinstance(max_open_orders, bool) or not isinstance(max_open_orders, int) or max_open_orders < 1:
            raise ValueError(f"max_open_orders must be a positive int, was {max_open_orders!r}")
        source = DEFAULT_LIMITS if limits is None else limits
        self.name = name
        self.safety_factor = safety_factor
        self._algorithm: Algorithm = algorithm
        self._metrics: dict[str, _Metric] = {
            m: _Metric(m, lim, scaled_limit(lim, safety_factor), algorithm) for m, lim in source.items()
        }
        # Validate the algorithm name now rather than at the first acquire.
        make_limiter(Limit(1, 1.0), algorithm)
        self._parent: Governor | None = None
        self._children: dict[str, Governor] = {}
        self.max_open_orders = max_open_orders
        self._open_orders = 0
        self._slot_lot = trio.lowlevel.ParkingLot()

    # -- sub-budgets ---------------------------------------------------------------------

    def child(self, name: str, *, fraction: float) -> Governor:
        """A sub-budget holding ``fraction`` of this governor's budget in every metric.

        Tokens and open-order slots the child grants are also taken from this governor
        (and its ancestors), so the children of one governor can never overdraw it.
        Asking twice for the same name returns the same child.
        """
        _check_factor("fraction", fraction)
        if name in self._children:
            return self._children[name]
        limits = {m: scaled_limit(s.limit, fraction) for m, s in self._metrics.items()}
        child = Governor(
            limits,
            safety_factor=1.0,
            algorithm=self._algorithm,
            max_open_orders=max(1, math.floor(self.max_open_orders * fraction + 1e-9)),
            name=f"{self.name}/{name}",
        )
        for m, s in child._metrics.items():
            s.exchange_limit = self._metrics[m].exchange_limit
        child._parent = self
        self._children[name] = child
        return child

    @property
    def parent(self) -> Governor | None:
        return self._parent

    # -- rate metrics --------------------------------------------------------------------

    def _metric(self, metric: str) -> _Metric:
        try:
            return self._metrics[metric]
        except KeyError:
            known = ", ".join(sorted(self._metrics))
            raise ValueError(f"unknown rate-limit metric {metric!r} (known: {known})") from None

    def _chain(self, metric: str) -> list[_Metric]:
        chain = []
        gov: Governor | None = self
        while gov is not None:
            chain.append(gov._metric(metric))
            gov = gov._parent
        return chain

    def _try(self, metric: str, n: int, now: float) -> float:
        """Take ``n`` tokens from the whole chain and return 0.0, or take none and return
        the seconds until every limiter of the chain could grant ``n``."""
        chain = self._chain(metric)
        own = chain[0]
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= own.limit.count:
            raise ValueError(f"{metric}: cannot take {n!r} tokens from a budget of {own.limit}")
        wait = 0.0
        for m in chain:
            if m.limiter.headroom(now) < n:
                # Short of tokens: try_acquire takes nothing and says how long to wait.
                wait = max(wait, m.limiter.try_acquire(now, n))
        if wait > 0.0:
            return wait
        for m in chain:
            m.limiter.try_acquire(now, n)
        return 0.0

    def acquire_nowait(self, metric: str, n: int = 1) -> None:
        """Take ``n`` tokens of ``metric`` now, or raise :class:`RateLimited` (taking none).

        The exception carries ``metric`` and ``retry_after`` (seconds until the tokens are
        free, assuming nobody else takes them first).
        """
        m = self._metric(metric)
        wait = self._try(metric, n, trio.current_time())
        if wait == 0.0:
            m.granted += n
            return
        m.denied += 1
        raise RateLimited(
            f"{metric}: {m.limit} used, next token in {wait:.1f} s",
            metric=metric,
            retry_after=wait,
        )

    async def acquire(self, metric: str, n: int = 1) -> None:
        """Wait until ``n`` tokens of ``metric`` are free and take them.

        Waiters of the same metric are served in arrival order.  Always checkpoints.
        """
        m = self._metric(metric)
        async with m.lock:
            waited = False
            while True:
                wait = self._try(metric, n, trio.current_time())
                if wait == 0.0:
                    m.granted += n
                    return
                if not waited:
                    m.waits += 1
                    waited = True
                # Loop rather than trust one sleep: a token bucket's float refill can leave
                # us a hair short, and acquire_nowait callers may take the freed token.
                await trio.sleep(wait)

    def take_nowait(self, metric: str, now: float | None = None) -> bool:
        """Take one token of ``metric`` now and return True, or take none and return False
        (a task waits in :meth:`acquire` for it, or some budget of the chain is used up).

        The same decision as ``not waiting(m) and headroom(m) >= 1`` followed by
        ``acquire_nowait(m)``, in one call: this runs before every order sent inline.
        ``now`` is trio's current time if the caller has it at hand (``trio.current_time()``
        is three Python calls; a caller with the clock's bound method pays one).
        """
        m = self._metrics.get(metric)
        if m is None:
            m = self._metric(metric)  # raises the ValueError naming the known metrics
        if m.lock.locked():
            return False
        if now is None:
            now = trio.current_time()
        if self._parent is None:
            if not m.limiter.take(now):
                return False
        else:
            chain = self._chain(metric)
            for c in chain:
                if c.limiter.headroom(now) < 1:
                    return False
            for c in chain:
                c.limiter.try_acquire(now, 1)
        m.granted += 1
        return True

    def waiting(self, metric: str) -> bool:
        """True while a task waits in :meth:`acquire` for ``metric`` (it comes first)."""
        return self._metric(metric).lock.locked()

    def headroom(self, metric: str) -> int:
        """Tokens of ``metric`` that :meth:`acquire_nowait` could take right now."""
        now = trio.current_time()
        return min(m.limiter.headroom(now) for m in self._chain(metric))

    def limit(self, metric: str) -> Limit:
        """The effective (scaled) limit of ``metric`` in this governor."""
        return self._metric(metric).limit

    # -- open orders ---------------------------------------------------------------------

    @property
    def open_orders(self) -> int:
        return self._open_orders

    def _slot_free(self) -> bool:
        gov: Governor | None = self
        while gov is not None:
            if gov._open_orders >= gov.max_open_orders:
                return False
            gov = gov._parent
        return True

    def open_order_slot_nowait(self) -> None:
        """Reserve one open-order slot (before sending a limit PlaceOrder), or raise
        :class:`RateLimited` with ``metric="open_orders"`` and ``retry_after=inf``: a slot
        frees only when an order closes, not after a known time."""
        if not self._slot_free():
            raise RateLimited(
                f"{OPEN_ORDERS}: {self._open_orders} of {self.max_open_orders} orders open "
                f"(budget {self.name}); a slot frees when an order closes",
                metric=OPEN_ORDERS,
                retry_after=math.inf,
            )
        gov: Governor | None = self
        while gov is not None:
            gov._open_orders += 1
            gov = gov._parent

    async def open_order_slot(self) -> None:
        """Wait until an open-order slot is free and reserve it."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._slot_free():
            # Park on the lot of whichever governor of the chain is full; any release wakes it.
            await self._full_governor()._slot_lot.park()
        self.open_order_slot_nowait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _full_governor(self) -> Governor:
        gov: Governor | None = self
        while gov is not None:
            if gov._open_orders >= gov.max_open_orders:
                return gov
            gov = gov._parent
        return self

    def release_open_order_slot(self, n: int = 1) -> None:
        """Give back ``n`` slots: the order closed, or its PlaceOrder failed or was a
        market order.  Releasing more than is held clamps at zero (a reconciliation with
        :meth:`set_open_orders` is the source of truth)."""
        gov: Governor | None = self
        while gov is not None:
            gov._open_orders = max(0, gov._open_orders - n)
            gov._slot_lot.unpark_all()
            gov = gov._parent

    def set_open_orders(self, count: int) -> None:
        """Set the number of open orders from a reconciliation (``len(GetOrders.orders)``).

        On a child this adjusts the ancestors by the same difference."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"open order count must be a non-negative int, was {count!r}")
        delta = count - self._open_orders
        gov: Governor | None = self
        while gov is not None:
            gov._open_orders = max(0, gov._open_orders + delta)
            gov._slot_lot.unpark_all()
            gov = gov._parent

    # -- statistics ----------------------------------------------------------------------

    def statistics(self) -> GovernorStatistics:
        now = trio.current_time()
        metrics = {}
        for name, m in self._metrics.items():
            headroom = min(c.limiter.headroom(now) for c in self._chain(name))
            metrics[name] = MetricStatistics(
                metric=name,
                limit=m.limit,
                exchange_limit=m.exchange_limit,
                headroom=headroom,
                granted=m.granted,
                denied=m.denied,
                waits=m.waits,
                tasks_waiting=m.lock.statistics().tasks_waiting + (1 if m.lock.locked() else 0),
            )
        return GovernorStatistics(
            name=self.name,
            safety_factor=self.safety_factor,
            metrics=MappingProxyType(metrics),
            open_orders=self._open_orders,
            max_open_orders=self.max_open_orders,
            open_order_waiters=len(self._slot_lot),
        )

    def __repr__(self) -> str:
        return f"Governor({self.name!r}, safety_factor={self.safety_factor}, open_orders={self._open_orders}/{self.max_open_orders})"
