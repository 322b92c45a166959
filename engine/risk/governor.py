"""The risk governor: a gate in front of execution, per strategy, with named trading states.

The runner asks :meth:`RiskGovernor.check` about every intent before it reaches the wire and
tells :meth:`RiskGovernor.on_equity` about every mark after fills; everything else is manual
control (``halt``/``reduce``/``resume``) and read-outs.  It is plain synchronous code with an
injected clock; the only I/O is the small state file and one ``lstat`` of the kill file at
most every ``kill_file_interval`` seconds.

How a check flows::

    intent ─► shape (B4/B8) ─► trading state ─► per-order rules ─► rate budgets ─► allowed
                  │                  │                 │                 │
                  └──────────────────┴──── Denial(intent, reason, rule) ─┘

**Trading states** (NautilusTrader's names).  ACTIVE allows whatever passes the rules;
REDUCING only orders that bring the position towards zero (never past it) plus cancels; HALTED
only cancels.  A strategy enters HALTED by :meth:`halt`, by the kill switch in
:meth:`on_equity` (loss from the first mark above ``max_loss``, or drawdown from the peak mark
above ``max_drawdown``), or with everyone else through the global kill (``halt(None, ...)``,
or the kill file appearing).  Entering HALTED raises :meth:`needs_cancel`: the runner cancels
the strategy's orders and calls :meth:`cancel_done`.  HALTED and REDUCING are written to the
state file at once and reloaded on construction; only :meth:`resume` (a human) lifts them.

**Rate budgets** (RELIABILITY F16, L2).  Every intent spends exchange "order placements"
(LIMITS.md counts cancels too; a Replace spends two) from two limiters: the strategy's own
and the user's (LIMITS.md ``orders`` times the safety factor).  A strategy can therefore never
take more than its own budget, nor more than the user has left.  A strategy without an
``order_rate`` gets a fair share: what the user budget leaves after the explicit budgets,
divided among the fair-share strategies, so one runaway cannot starve the rest.  A
strategy's ``CancelAll`` is never refused (it is how it gets flat); it is charged what the
budgets have left.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from engine.errors import RiskDenied
from engine.limits import Limit, Limiter, SlidingWindow, TokenBucket, make_limiter
from engine.risk.checks import Refusal, pre_trade, safe_repr, token_cost
from engine.risk.model import MarketView, RiskLimits, TradingState, UserRiskLimits
from engine.risk.statefile import StateRecord, load_states, save_states
from engine.scale import DEFAULT, Market, Scales
from engine.strategy import Cancel, CancelAll, Denial, PlaceLimit, PlaceMarket, Side

__all__ = ["RiskGovernor", "RiskStatistics", "StrategyRiskStatistics"]

log = logging.getLogger("cftrade.risk")

HALTED = TradingState.HALTED
REDUCING = TradingState.REDUCING
ACTIVE = TradingState.ACTIVE


@dataclass(frozen=True, slots=True)
class StrategyRiskStatistics:
    """One strategy's risk read-out (a snapshot; later checks do not change it)."""

    state: TradingState
    reason: str | None
    """Why the strategy is not ACTIVE (the global kill's reason if that is the cause)."""
    allowed: int
    denied: int
    denials: Mapping[str, int]
    """Denials by rule name (see :data:`engine.risk.model.RULES`)."""
    budget: Limit
    """The strategy's own order budget (explicit, or its fair share of the user budget)."""
    tokens_left: int
    """Order placements it could spend now: min(own headroom, user headroom)."""
    needs_cancel: bool
    start_equity: int | None
    peak_equity: int | None
    last_equity: int | None


@dataclass(frozen=True, slots=True)
class RiskStatistics:
    """The governor's read-out: per strategy, plus the user-wide budget and kill switch."""

    strategies: Mapping[str, StrategyRiskStatistics]
    user_budget: Limit
    user_tokens_left: int
    kill_reason: str | None
    """The global kill switch's reason, or None when it is off."""
    oversubscribed: bool
    """True when explicit strategy budgets add up to more than the user budget (starvation
    of fair-share strategies becomes possible)."""
    persist_error: str | None
    """The last failure to write the state file (a halt still took effect in memory)."""


class _Strategy:
    __slots__ = (
        "name",
        "limits",
        "market",
        "limiter",
        "fair",
        "allowed",
        "denials",
        "start",
        "peak",
        "last",
        "needs_cancel",
    )

    def __init__(self, name: str, limits: RiskLimits, market: Market | None) -> None:
        self.name = name
        self.limits = limits
        self.market = market
        self.limiter: Limiter
        self.fair = limits.order_rate is None
        self.allowed = 0
        self.denials: dict[str, int] = {}
        self.start: int | None = None
        self.peak: int | None = None
        self.last: int | None = None
        self.needs_cancel = False


def _rebudget(old: Limiter | None, limit: Limit, algorithm: str) -> Limiter:
    """A limiter for ``limit`` that keeps the history of ``old`` (fair shares shrink as
    strategies are added; what a strategy already spent still counts)."""
    new = make_limiter(limit, "bucket" if algorithm == "bucket" else "window")
    if isinstance(old, SlidingWindow) and isinstance(new, SlidingWindow):
        new._times.extend(old._times)
    elif isinstance(old, TokenBucket) and isinstance(new, TokenBucket) and old._tokens >= 0:
        new._tokens = min(old._tokens, float(limit.count))
        new._last = old._last
    return new


def _seconds(t: float) -> str:
    """Seconds to the microsecond, without trailing zeros: ``99.5``, ``0.000061``."""
    return f"{t:.6f}".rstrip("0").rstrip(".")


class RiskGovernor:
    """Pre-trade checks, trading states, kill switch and order budgets for one Coinfloor user.

    ``state_path``  JSON file holding HALTED/REDUCING across restarts (None: memory only).
    ``now``         monotonic clock in seconds for the rate budgets (``trio.current_time``
                    live, a virtual clock in tests); default :func:`time.monotonic`.
    ``kill_file``   while this path exists everything is HALTED (checked by
                    :meth:`poll_kill_file`, and by :meth:`check` at most every
                    ``kill_file_interval`` seconds of ``now``).
    ``scales``      API-version scales for notional maths and readable reasons.
    ``wall_clock``  Unix seconds stamped on state records (operators read them).

    >>> from engine.scale import XBT_GBP
    >>> from engine.strategy import PlaceLimit, Side
    >>> gov = RiskGovernor(UserRiskLimits(), state_path=None, now=lambda: 0.0)
    >>> gov.add_strategy("mm", RiskLimits(max_order_quantity=100_000_000))
    >>> view = MarketView(best_bid=50000, best_ask=50100)
    >>> gov.check("mm", PlaceLimit(Side.BUY, 50000, 500_000_000), view, XBT_GBP).reason
    'max_order_quantity: 5.00000000 XBT > limit 1.00000000 XBT'
    """

    def __init__(
        self,
        user_limits: UserRiskLimits | None = None,
        *,
        state_path: Path | None,
        now: Callable[[], float] | None = None,
        kill_file: Path | None = None,
        kill_file_interval: float = 0.5,
        scales: Scales = DEFAULT,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._user = user_limits if user_limits is not None else UserRiskLimits()
        self._budget = self._user.order_budget
        self._user_limiter = make_limiter(self._budget, self._user.algorithm)
        self._state_path = Path(state_path) if state_path is not None else None
        self._now = now if now is not None else time.monotonic
        self._wall = wall_clock
        self._scales = scales
        self._strategies: dict[str, _Strategy] = {}
        self._kill: StateRecord | None = None
        self._records: dict[str, StateRecord] = {}
        if self._state_path is not None:
            self._kill, self._records = load_states(self._state_path)
            if self._kill is not None or self._records:
                log.warning(
                    "risk state %s reloaded: kill=%s, strategies=%s",
                    self._state_path,
                    self._kill.reason if self._kill else None,
                    {n: r.state.value for n, r in self._records.items()},
                )
        self._persist_error: str | None = None
        self._kill_file = Path(kill_file) if kill_file is not None else None
        self._kill_interval = kill_file_interval
        self._next_kill_poll = -math.inf
        self.poll_kill_file()

    # -- strategies ------------------------------------------------------------------------

    def add_strategy(self, name: str, limits: RiskLimits, *, market: Market | None = None) -> None:
        """Register a strategy.  ``market`` is only used to format equity in kill reasons.

        A strategy the state file lists as HALTED starts HALTED, with :meth:`needs_cancel`
        raised: its orders may have outlived the previous process.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"strategy name must be a non-empty str, got {name!r}")
        if name in self._strategies:
            raise ValueError(f"strategy {name!r} is already registered with the risk governor")
        if not isinstance(limits, RiskLimits):
            raise TypeError(f"limits for {name!r} must be RiskLimits, got {type(limits).__name__}")
        s = _Strategy(name, limits, market)
        if limits.order_rate is not None:
            s.limiter = make_limiter(limits.order_rate, self._user.algorithm)
        self._strategies[name] = s
        s.needs_cancel = self.state(name) is HALTED
        self._share_budget()

    def _share_budget(self) -> None:
        fair = [s for s in self._strategies.values() if s.fair]
        if not fair:
            return
        per = self._budget.per
        explicit = sum(
            math.ceil(s.limits.order_rate.count * per / s.limits.order_rate.per)
            for s in self._strategies.values()
            if s.limits.order_rate is not None
        )
        share = max((self._budget.count - explicit) // len(fair), 1)
        for s in fair:
            old = getattr(s, "limiter", None)
            if old is None or old.limit.count != share:
                s.limiter = _rebudget(old, Limit(share, per, "user"), self._user.algorithm)

    def _get(self, name: str) -> _Strategy:
        try:
            return self._strategies[name]
        except KeyError:
            known = ", ".join(sorted(self._strategies)) or "none"
            raise KeyError(f"unknown strategy {name!r} (known: {known})") from None

    def state(self, name: str) -> TradingState:
        """The strategy's trading state (HALTED while the global kill is on)."""
        self._get(name)
        return self._state_of(name)

    def is_halted(self, name: str) -> bool:
        """``state(name) is HALTED`` for a registered strategy, without the lookup that names
        unknown ones (the runtime asks before every strategy hook)."""
        if self._kill is not None:
            return True
        rec = self._records.get(name)
        return rec is not None and rec.state is HALTED

    def _state_of(self, name: str) -> TradingState:
        if self._kill is not None:
            return HALTED
        rec = self._records.get(name)
        return ACTIVE if rec is None else rec.state

    def reason(self, name: str) -> str | None:
        """Why the strategy is not ACTIVE, or None."""
        self._get(name)
        return self._reason_of(name)

    def _reason_of(self, name: str) -> str | None:
        if self._kill is not None:
            return self._kill.reason
        rec = self._records.get(name)
        return None if rec is None else rec.reason

    # -- the gate --------------------------------------------------------------------------

    def check(
        self,
        name: str,
        intent: object,
        view: MarketView,
        market: Market,
        *,
        replace_side: Side | None = None,
    ) -> Denial | None:
        """Judge one intent of strategy ``name``: None = allowed (and its tokens are spent).

        Never raises for a bad intent: NaN, floats, bools, numpy ints, zero/negative/huge
        sizes, a price far off the market, a non-intent object all come back as a
        :class:`~engine.strategy.Denial` with a stable ``rule`` and a reason that names the
        rule and the numbers.  An unexpected internal error also denies (rule
        ``internal_error``): a risk gate fails closed.  ``replace_side`` is the side of the
        order a :class:`~engine.strategy.Replace` replaces (without it the replace must pass
        on both sides).
        """
        s = self._strategies.get(name)
        if s is None:
            known = ", ".join(sorted(self._strategies)) or "none"
            reason = f"unknown_strategy: {name!r} is not registered (known: {known})"
            return Denial(intent, reason, "unknown_strategy")  # type: ignore[arg-type]  # any object may be judged
        now = self._now()
        if self._kill_file is not None and now >= self._next_kill_poll:
            self._next_kill_poll = now + self._kill_interval
            self.poll_kill_file()
        refusal: Refusal | None
        try:
            refusal = pre_trade(
                intent,
                view,
                market,
                s.limits,
                self._user,
                self._state_of(name),
                self._scales,
                replace_side=replace_side,
            )
            if refusal is None:
                refusal = self._spend(s, intent, view, now)
        except Exception as e:  # a gate that crashes would let the runner guess; deny instead
            log.exception("risk check of %s for strategy %s failed", safe_repr(intent, 200), name)
            refusal = Refusal("internal_error", f"internal_error: {type(e).__name__}: {e}")
        if refusal is None:
            s.allowed += 1
            return None
        s.denials[refusal.rule] = s.denials.get(refusal.rule, 0) + 1
        return Denial(intent, refusal.reason, refusal.rule)  # type: ignore[arg-type]  # any object may be judged

    def _spend(self, s: _Strategy, intent: object, view: MarketView, now: float) -> Refusal | None:
        t = type(intent)
        cost = 1 if t is PlaceLimit or t is PlaceMarket or t is Cancel else token_cost(intent, view)
        user = self._user_limiter
        own = s.limiter
        if (type(intent) is not CancelAll and cost <= own.limit.count and cost <= user.limit.count
                and user.headroom(now) >= cost and own.take(now, cost)):
            # The common case, decided without building the refusal texts below (a limiter
            # that cannot grant takes nothing, so a refusal falls through to them intact).
            # The user budget was just found to have room at this ``now``: it grants.
            user.take(now, cost)
            return None
        if isinstance(intent, CancelAll):
            n = min(cost, s.limiter.headroom(now), user.headroom(now))
            if n > 0:
                s.limiter.try_acquire(now, n)
                user.try_acquire(now, n)
            return None
        for limiter, rule, who in ((s.limiter, "order_rate", f"strategy {s.name}"), (user, "user_order_rate", "user")):
            if cost > limiter.limit.count:
                return Refusal(rule, f"{rule}: {type(intent).__name__} needs {cost} order placements; the {who} budget is {limiter.limit}")
            if limiter.headroom(now) < cost:
                wait = limiter.try_acquire(now, cost)  # takes nothing here: it only says when
                return Refusal(rule, f"{rule}: {who} budget of {limiter.limit} used, next token in {_seconds(wait)} s")
        s.limiter.try_acquire(now, cost)
        user.try_acquire(now, cost)
        return None

    # -- post-trade ------------------------------------------------------------------------

    def on_equity(self, name: str, equity: int) -> list[str]:
        """Record an equity mark (counter units: realized + unrealized - fees) for ``name``.

        The first mark is the start; the highest the peak.  Returns the reasons the kill switch
        tripped (empty if it did not): loss from start above ``max_loss``, drawdown from the
        peak above ``max_drawdown``.  On a trip the strategy is HALTED (persisted) and
        :meth:`needs_cancel` is raised.  A loss above ``reduce_at_loss`` (and no trip) puts
        an ACTIVE strategy in REDUCING instead (persisted, :meth:`needs_cancel` raised).  A mark that is not an int halts too (fail closed).
        """
        s = self._get(name)
        if type(equity) is not int:
            reason = f"bad_equity: equity mark must be an int in counter units, got {type(equity).__name__} {equity!r}"
            return [reason] if self._halt_one(s, reason) else []
        if s.start is None or s.peak is None:
            s.start = s.peak = equity
        s.last = equity
        if equity > s.peak:
            s.peak = equity
        rec = self._records.get(name)
        if rec is not None and rec.state is HALTED:
            return []
        fmt = self._equity_fmt(s)
        reasons = []
        loss = s.start - equity
        if s.limits.max_loss is not None and loss > s.limits.max_loss:
            reasons.append(
                f"max_loss: loss {fmt(loss)} > limit {fmt(s.limits.max_loss)} (equity {fmt(equity)}, start {fmt(s.start)})"
            )
        drawdown = s.peak - equity
        if s.limits.max_drawdown is not None and drawdown > s.limits.max_drawdown:
            reasons.append(
                f"max_drawdown: drawdown {fmt(drawdown)} > limit {fmt(s.limits.max_drawdown)} "
                f"(equity {fmt(equity)}, peak {fmt(s.peak)})"
            )
        if reasons:
            self._halt_one(s, "; ".join(reasons))
        elif (s.limits.reduce_at_loss is not None and loss > s.limits.reduce_at_loss
              and (rec is None or rec.state is ACTIVE) and self._kill is None):
            # The soft limit: REDUCING, persisted like HALTED.  Its resting orders are
            # cancelled (they may add to the position); it may then only reduce.
            reason = (f"reduce_at_loss: loss {fmt(loss)} > limit {fmt(s.limits.reduce_at_loss)} "
                      f"(equity {fmt(equity)}, start {fmt(s.start)})")
            self.reduce(name, reason)
            s.needs_cancel = True
            reasons.append(reason)
        return reasons

    def _equity_fmt(self, s: _Strategy) -> Callable[[int], str]:
        market = s.market
        if market is None:
            return lambda v: f"{v} counter units"
        return lambda v: f"{self._scales.format_amount(v, market.counter)} {market.counter.symbol}"

    # -- manual controls -------------------------------------------------------------------

    def halt(self, name: str | None, reason: str) -> None:
        """HALT one strategy, or every strategy with ``name=None`` (the manual kill switch).

        Takes effect at once, is persisted, and raises :meth:`needs_cancel`.  Halting an
        already HALTED strategy keeps the first reason.  Never raises for a failed write (the
        halt holds in memory; see ``statistics().persist_error``).
        """
        reason = str(reason)
        if name is None:
            if self._kill is None:
                self._kill = StateRecord(HALTED, reason, self._wall())
                for s in self._strategies.values():
                    s.needs_cancel = True
                log.warning("risk: global kill, every strategy HALTED: %s", reason)
                self._persist()
            return
        self._halt_one(self._get(name), reason)

    def _halt_one(self, s: _Strategy, reason: str) -> bool:
        rec = self._records.get(s.name)
        if rec is not None and rec.state is HALTED:
            return False
        self._records[s.name] = StateRecord(HALTED, reason, self._wall())
        s.needs_cancel = True
        log.warning("risk: strategy %s HALTED: %s", s.name, reason)
        self._persist()
        return True

    def reduce(self, name: str, reason: str) -> None:
        """Put ``name`` in REDUCING (from ACTIVE, or from HALTED as a partial resume).

        Refused with :class:`RiskDenied` while the global kill or the kill file is on.
        """
        self._get(name)
        self._refuse_while_killed(f"reduce {name}")
        records = dict(self._records)
        records[name] = StateRecord(REDUCING, str(reason), self._wall())
        self._commit(self._kill, records)
        log.warning("risk: strategy %s REDUCING: %s", name, reason)

    def resume(self, name: str | None) -> None:
        """Back to ACTIVE: one strategy, or with ``None`` the global kill and every strategy.

        The only way out of HALTED or REDUCING (a human decides).  Refused with
        :class:`RiskDenied` while the kill file exists, and for one strategy while the global
        kill is on.  Starts a fresh loss/drawdown baseline at the next equity mark; the state
        file is written before anything changes, and a failed write raises (nothing changes).
        """
        if name is None:
            self._refuse_while_kill_file("resume all")
            self._commit(None, {})
            targets = list(self._strategies.values())
        else:
            s = self._get(name)
            self._refuse_while_killed(f"resume {name}")
            records = dict(self._records)
            records.pop(name, None)
            self._commit(self._kill, records)
            targets = [s]
        for s in targets:
            s.needs_cancel = False
            s.start = s.peak = None
        log.warning("risk: resumed %s", "every strategy" if name is None else name)

    def _refuse_while_kill_file(self, what: str) -> None:
        if self._kill_file is not None and os.path.lexists(self._kill_file):
            raise RiskDenied(f"{what} refused: kill file {self._kill_file} exists; remove it first")

    def _refuse_while_killed(self, what: str) -> None:
        self._refuse_while_kill_file(what)
        if self._kill is not None:
            raise RiskDenied(f"{what} refused: the global kill is on ({self._kill.reason}); resume(None) first")

    def poll_kill_file(self) -> bool:
        """True if the kill file exists; its appearance HALTs everything (a global kill).

        Cheap (one ``lstat``); the runner may poll it on a timer.  Removing the file does
        not resume anything: :meth:`resume` does.
        """
        if self._kill_file is None:
            return False
        present = os.path.lexists(self._kill_file)
        if present and self._kill is None:
            self.halt(None, self._kill_file_reason(self._kill_file))
        return present

    @staticmethod
    def _kill_file_reason(path: str | os.PathLike[str]) -> str:
        """"kill file PATH: REASON" with the ``--reason`` that ``cftrade kill`` wrote into the
        file (JSON), so the halt records why; "kill file PATH exists" for any other file (a
        bare ``touch``).  Not followed if it is a symlink, and read only up to 4 KiB."""
        reason = ""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as fh:
                data = json.loads(fh.read(4096))
            if isinstance(data, dict) and isinstance(data.get("reason"), str):
                reason = " ".join(data["reason"].split())[:200]
        except (OSError, ValueError):
            pass
        return f"kill file {path}: {reason}" if reason else f"kill file {path} exists"

    # -- cancels the runner owes -----------------------------------------------------------

    def needs_cancel(self, name: str) -> bool:
        """True once ``name`` entered HALTED until :meth:`cancel_done`: cancel its orders."""
        s = self._strategies.get(name)  # asked after every strategy hook: one call, not two
        return (s if s is not None else self._get(name)).needs_cancel

    def cancel_done(self, name: str) -> None:
        """The runner has cancelled every open order of ``name`` (after a halt)."""
        self._get(name).needs_cancel = False

    # -- persistence -----------------------------------------------------------------------

    def _commit(self, kill: StateRecord | None, records: dict[str, StateRecord]) -> None:
        if self._state_path is not None:
            save_states(self._state_path, kill, records)  # raises: the caller's change is void
        self._kill, self._records = kill, records
        self._persist_error = None

    def _persist(self) -> None:
        """Write the current states for a halt: never raises (the halt holds in memory)."""
        if self._state_path is None:
            return
        try:
            save_states(self._state_path, self._kill, self._records)
            self._persist_error = None
        except OSError as e:
            self._persist_error = f"{self._state_path}: {e.strerror or e}"
            log.error("risk: cannot persist trading states to %s: %s", self._state_path, e)

    # -- read-outs -------------------------------------------------------------------------

    def tokens_left(self, name: str) -> int:
        """Order placements strategy ``name`` could spend now: min(own headroom, user headroom).

        The same figure :meth:`check` tests an intent's cost against, so a strategy that asks
        first need not send an intent that the order-rate rules would deny.
        """
        now = self._now()
        return min(self._get(name).limiter.headroom(now), self._user_limiter.headroom(now))

    def statistics(self) -> RiskStatistics:
        """A frozen snapshot of states, denials by rule and tokens left."""
        now = self._now()
        user_left = self._user_limiter.headroom(now)
        per_strategy = {}
        for name, s in self._strategies.items():
            per_strategy[name] = StrategyRiskStatistics(
                state=self._state_of(name),
                reason=self._reason_of(name),
                allowed=s.allowed,
                denied=sum(s.denials.values()),
                denials=MappingProxyType(dict(s.denials)),
                budget=s.limiter.limit,
                tokens_left=min(s.limiter.headroom(now), user_left),
                needs_cancel=s.needs_cancel,
                start_equity=s.start,
                peak_equity=s.peak,
                last_equity=s.last,
            )
        explicit = sum(
            s.limits.order_rate.count / s.limits.order_rate.per
            for s in self._strategies.values()
            if s.limits.order_rate is not None
        )
        return RiskStatistics(
            strategies=MappingProxyType(per_strategy),
            user_budget=self._budget,
            user_tokens_left=user_left,
            kill_reason=self._kill.reason if self._kill else None,
            oversubscribed=explicit > self._budget.count / self._budget.per,
            persist_error=self._persist_error,
        )
