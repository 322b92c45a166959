"""A lively simulated market: a fair-value process, liquidity providers and takers per book.

Configured in the exchange YAML under ``participants:`` (see configs/exchange.yaml)::

    participants:
      seed: 7
      markets:
        - market: "XBT:GBP"
          initial_price: "30000.00"
          volatility: 0.8            # annualised, GBM
          liquidity_providers: 4     # each keeps orders_per_side bids and asks
          takers: 3

Two ways to run it, same agents, same results for the same seed and event times:

* **stepping, no trio** (backtests, fast generation)::

      sim = MarketSimulator.standalone(settings, config, start_us=1_700_000_000_000_000)
      sim.step_until(sim.now_us + 3_600_000_000)        # one hour, as fast as the core goes
      sim.exchange.book(XBT.code, GBP.code)

* **trio driver** next to the server, in real or virtual time::

      sim = MarketSimulator(exchange, config, start_us=clock_us())
      nursery.start_soon(run_participants, sim, clock_us)

Every participant is a user without credentials (``first_user_id`` upwards), so it cannot be
logged into over the wire; :func:`settings_with_participants` appends those users, with the
configured opening balances, to the exchange settings.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from engine.errors import ConfigError
from engine.exchange.agents import Agent, AgentStats, LiquidityProvider, Taker, poisson_first_wake
from engine.exchange.fairvalue import FairValue
from engine.exchange.settings import ExchangeSettings, UserSettings
from engine.limits import Limit
from engine.scale import Market, ScaleError, Scales, market_by_name, parse_price

if TYPE_CHECKING:
    from engine.exchange.core import Exchange


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class MarketParticipants(_Config, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The simulated crowd of one order book.

    Sizes are in lots of ``lot`` (decimal text in the base asset); rates are per second or
    per minute as named; ``*_bps`` are basis points of the fair value.
    """

    market: str = "XBT:GBP"
    initial_price: str = "30000.00"
    volatility: float = 0.8
    """Annualised volatility of the fair value (GBM); 0.8 is about 0.85% per hour."""
    jump_rate_per_hour: float = 0.5
    jump_size: float = 0.004
    """Standard deviation of a jump in log-price (0.004 is about 0.4%)."""
    step_seconds: float = 1.0
    """How often the fair value moves."""
    lot: str = "0.0001"
    liquidity_providers: int = 4
    orders_per_side: int = 60
    half_spread_bps: float = 4.0
    level_spacing_bps: float = 2.0
    lp_lots: tuple[int, int] = (10, 2000)
    lp_actions_per_second: float = 0.8
    """Each LP sends at most this many commands per second on average (LIMITS.md allows 1)."""
    requote_probability: float = 0.5
    takers: int = 3
    taker_arrivals_per_minute: float = 20.0
    taker_lots: tuple[int, int] = (10, 3000)
    market_fraction: float = 0.3
    total_fraction: float = 0.3
    """Of market orders, the share given by counter total instead of base quantity."""
    passive_fraction: float = 0.2
    slippage_bps: float = 3.0
    passive_bps: tuple[float, float] = (2.0, 30.0)
    resting_seconds: float = 120.0

    def __post_init__(self) -> None:
        try:
            market_by_name(self.market)
        except ScaleError as e:
            raise ValueError(str(e)) from None
        for name in ("volatility", "jump_rate_per_hour", "jump_size", "half_spread_bps",
                     "level_spacing_bps", "slippage_bps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, was {getattr(self, name)}")
        for name in ("step_seconds", "lp_actions_per_second", "taker_arrivals_per_minute", "resting_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, was {getattr(self, name)}")
        for name in ("liquidity_providers", "takers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, was {getattr(self, name)}")
        if self.orders_per_side <= 0:
            raise ValueError(f"orders_per_side must be > 0, was {self.orders_per_side}")
        for name in ("lp_lots", "taker_lots"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be [min, max] with 0 < min <= max, was [{lo}, {hi}]")
        for name in ("requote_probability", "market_fraction", "total_fraction", "passive_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1], was {getattr(self, name)}")
        if self.market_fraction + self.passive_fraction > 1:
            raise ValueError("market_fraction + passive_fraction must not exceed 1")
        lo_bps, hi_bps = self.passive_bps
        if not 0 <= lo_bps <= hi_bps:
            raise ValueError(f"passive_bps must be [min, max] with 0 <= min <= max, was [{lo_bps}, {hi_bps}]")


def _default_markets() -> list[MarketParticipants]:
    return [
        MarketParticipants(market="XBT:GBP", initial_price="30000.00"),
        MarketParticipants(market="XBT:EUR", initial_price="35000.00", liquidity_providers=2, takers=2),
    ]


def _default_balances() -> dict[str, str]:
    return {"XBT": "100000", "GBP": "5000000000.00", "EUR": "5000000000.00"}


class ParticipantsConfig(_Config, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The ``participants:`` section of the exchange YAML."""

    enabled: bool = True
    seed: int = 1
    first_user_id: int = 1_000_000
    balances: dict[str, str] = msgspec.field(default_factory=_default_balances)
    """Opening balances of every participant (decimal text per asset symbol)."""
    budget_fraction: float = 0.9
    """Participants keep their order rate within this share of the LIMITS.md orders limit."""
    markets: list[MarketParticipants] = msgspec.field(default_factory=_default_markets)

    def __post_init__(self) -> None:
        if self.first_user_id <= 0:
            raise ValueError(f"first_user_id must be > 0, was {self.first_user_id}")
        if not 0 < self.budget_fraction <= 1:
            raise ValueError(f"budget_fraction must be within (0, 1], was {self.budget_fraction}")
        names = [m.market for m in self.markets]
        if len(set(names)) != len(names):
            raise ValueError(f"participants.markets lists a market twice: {names}")

    @property
    def user_count(self) -> int:
        return sum(m.liquidity_providers + m.takers for m in self.markets) if self.enabled else 0

    def user_ids(self) -> list[int]:
        return list(range(self.first_user_id, self.first_user_id + self.user_count))


def settings_with_participants(settings: ExchangeSettings, config: ParticipantsConfig) -> ExchangeSettings:
    """``settings`` plus one credential-less user per participant, with the opening balances.

    Raises ConfigError if a participant id collides with a configured user or a participant
    market is not one of the exchange's markets.
    """
    if not config.enabled or config.user_count == 0:
        return settings
    taken = {u.user_id for u in settings.users}
    clash = sorted(taken.intersection(config.user_ids()))
    if clash:
        raise ConfigError(
            f"participants.first_user_id {config.first_user_id}: participant user ids "
            f"{config.first_user_id}..{config.first_user_id + config.user_count - 1} collide with "
            f"configured user(s) {clash[:5]}; choose another first_user_id"
        )
    books = {f"{m.base}:{m.counter}" for m in settings.markets}
    for i, m in enumerate(config.markets):
        if market_by_name(m.market).name not in books:
            raise ConfigError(f"participants.markets[{i}].market {m.market!r} is not an exchange market ({sorted(books)})")
    extra = [UserSettings(user_id=uid, balances=dict(config.balances)) for uid in config.user_ids()]
    return msgspec.structs.replace(settings, users=[*settings.users, *extra])


class ManualClock:
    """A ``clock_us`` the simulator advances itself (stepping mode: no trio, no wall clock)."""

    __slots__ = ("now_us",)

    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


class _FairValueDriver:
    """Moves one market's fair value every ``step`` microseconds."""

    role = "fair_value"

    def __init__(self, fv: FairValue, step_us: int) -> None:
        self.fv = fv
        self.step_us = step_us

    def wake(self, now_us: int) -> int:
        self.fv.advance(self.step_us)
        return now_us + self.step_us


class MarketSimulator:
    """Runs the participants of every configured market against one exchange.

    Events are (time, sequence, actor) in a heap; :meth:`step_until` runs them in time order
    (ties by insertion), each actor returning its next wake time.  With a
    :class:`ManualClock` the simulator sets the exchange's clock to each event's time first,
    so order times, ticker windows and rate limits see the simulated time.
    """

    def __init__(
        self,
        exchange: Exchange,
        config: ParticipantsConfig,
        *,
        start_us: int,
        api_version: int | None = None,
        orders_limit: Limit | None = None,
        clock: ManualClock | None = None,
    ) -> None:
        self.exchange = exchange
        self.config = config
        self.clock = clock
        self.now_us = start_us
        settings = getattr(exchange, "settings", None)
        if api_version is None:
            api_version = settings.api_version if settings is not None else 2
        scales = Scales(api_version)  # type: ignore[arg-type]
        if orders_limit is None:
            orders_limit = Limit(1000, 1000.0)
            if settings is not None:
                o = settings.limits.orders
                orders_limit = Limit(o.count, o.per) if settings.limits.enabled and o.enabled else None
        budget = None
        if orders_limit is not None:
            budget = Limit(max(1, int(orders_limit.count * config.budget_fraction)), orders_limit.per)
        self.fair_values: dict[str, FairValue] = {}
        self.agents: list[Agent] = []
        self._actors: list[Any] = []
        self._heap: list[tuple[int, int, int]] = []
        self._seq = 0
        self.events = 0
        if not config.enabled:
            return
        uid = config.first_user_id
        seed = config.seed
        for mcfg in config.markets:
            market = market_by_name(mcfg.market)
            # Independent streams per actor: adding a taker does not change the LPs' moves.
            fv = FairValue(
                self._opening_price(exchange, market, parse_price(mcfg.initial_price, market)),
                volatility=mcfg.volatility,
                jump_rate_per_hour=mcfg.jump_rate_per_hour,
                jump_size=mcfg.jump_size,
                rng=random.Random(f"{seed}:{market.name}:fair_value"),
            )
            self.fair_values[market.name] = fv
            step_us = max(1, int(mcfg.step_seconds * 1_000_000))
            self._add(_FairValueDriver(fv, step_us), start_us + step_us)
            lot = scales.parse_amount(mcfg.lot, market.base)
            if lot <= 0:
                raise ConfigError(f"participants: lot of {mcfg.market} must be > 0, was {mcfg.lot!r}")
            for i in range(mcfg.liquidity_providers):
                rng = random.Random(f"{seed}:{market.name}:lp:{i}")
                lp = LiquidityProvider(
                    f"{market.name}/lp{i}", exchange, uid, market, fv, rng, scales, budget,
                    per_side=mcfg.orders_per_side,
                    half_spread_bps=mcfg.half_spread_bps,
                    level_spacing_bps=mcfg.level_spacing_bps,
                    lot=lot,
                    lots=mcfg.lp_lots,
                    actions_per_second=mcfg.lp_actions_per_second,
                    requote_probability=mcfg.requote_probability,
                )
                uid += 1
                self.agents.append(lp)
                # LPs start at once (an empty book would greet the first client otherwise).
                self._add(lp, start_us)
            for i in range(mcfg.takers):
                rng = random.Random(f"{seed}:{market.name}:taker:{i}")
                tk = Taker(
                    f"{market.name}/taker{i}", exchange, uid, market, fv, rng, scales, budget,
                    arrivals_per_minute=mcfg.taker_arrivals_per_minute,
                    lot=lot,
                    lots=mcfg.taker_lots,
                    market_fraction=mcfg.market_fraction,
                    total_fraction=mcfg.total_fraction,
                    passive_fraction=mcfg.passive_fraction,
                    slippage_bps=mcfg.slippage_bps,
                    passive_bps=mcfg.passive_bps,
                    resting_seconds=mcfg.resting_seconds,
                )
                uid += 1
                self.agents.append(tk)
                self._add(tk, poisson_first_wake(rng, start_us, tk.rate))

    @classmethod
    def standalone(
        cls,
        settings: ExchangeSettings,
        config: ParticipantsConfig,
        *,
        start_us: int,
        seed: int | None = None,
    ) -> MarketSimulator:
        """A fresh exchange on a :class:`ManualClock`, with the participants' users added.

        ``seed`` seeds the exchange's stochastic rounding (default: ``config.seed``).
        """
        from engine.exchange.core import Exchange

        clock = ManualClock(start_us)
        full = settings_with_participants(settings, config)
        rng = random.Random(config.seed if seed is None else seed)
        exchange = Exchange(full, clock_us=clock, rng=rng)
        return cls(exchange, config, start_us=start_us, clock=clock)

    @staticmethod
    def _opening_price(exchange: Exchange, market: Market, configured: int) -> int:
        """The book's mid if it has both sides (a restored exchange), else ``configured``.

        Restarting the fair value at the configured price under a restored book would
        make the participants trade the book violently back to where the config says.
        """
        bids, asks = exchange.book(*market.codes)
        if bids and asks:
            return (bids[0].price + asks[0].price) // 2
        return configured

    def _add(self, actor: Any, t_us: int) -> None:
        idx = len(self._actors)
        self._actors.append(actor)
        self._push(t_us, idx)

    def _push(self, t_us: int, idx: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t_us, self._seq, idx))

    def next_event_us(self) -> int | None:
        """Time of the next event, or None when there is nothing to do."""
        return self._heap[0][0] if self._heap else None

    def step_until(self, t_us: int, *, check_every: int = 0) -> int:
        """Run every event due at or before ``t_us``; returns how many ran.

        ``check_every`` > 0 calls ``exchange.check_invariants()`` after every that-many
        events (and once at the end), for tests.
        """
        heap, actors, clock = self._heap, self._actors, self.clock
        ran = 0
        while heap and heap[0][0] <= t_us:
            t, _, idx = heapq.heappop(heap)
            if clock is not None and t > clock.now_us:
                clock.now_us = t
            nxt = actors[idx].wake(t)
            if nxt is not None:
                self._push(max(nxt, t + 1), idx)
            ran += 1
            if check_every and ran % check_every == 0:
                self.exchange.check_invariants()
        if clock is not None and t_us > clock.now_us:
            clock.now_us = t_us
        if t_us > self.now_us:
            self.now_us = t_us
        self.events += ran
        if check_every and ran:
            self.exchange.check_invariants()
        return ran

    def statistics(self) -> dict[str, Any]:
        """Totals per role, error codes seen, resting orders and fair values (JSON-able)."""
        roles: dict[str, AgentStats] = {}
        errors: dict[int, int] = {}
        resting = 0
        for a in self.agents:
            s = roles.setdefault(a.role, AgentStats())
            st = a.stats
            s.commands += st.commands
            s.placed += st.placed
            s.market_orders += st.market_orders
            s.cancels += st.cancels
            s.fills += st.fills
            s.filled_base += st.filled_base
            s.skipped_budget += st.skipped_budget
            for code, n in st.errors.items():
                errors[code] = errors.get(code, 0) + n
            resting += len(a.orders)
        return {
            "events": self.events,
            "now_us": self.now_us,
            "resting_orders": resting,
            "errors": {str(k): v for k, v in sorted(errors.items())},
            "fair_values": {name: fv.price for name, fv in self.fair_values.items()},
            "roles": {name: dataclasses.asdict(s) for name, s in roles.items()},
        }


async def run_participants(
    sim: MarketSimulator,
    clock_us: Callable[[], int],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Drive ``sim`` in trio time (real, or virtual under MockClock) until cancelled.

    ``clock_us`` must be the exchange's clock.  Each loop sleeps until the next event, then
    runs everything due; a checkpoint between batches keeps connections responsive even when
    the simulator is behind.
    """
    task_status.started()
    while True:
        t = sim.next_event_us()
        if t is None:
            await trio.sleep_forever()
            return
        delay = (t - clock_us()) / 1_000_000
        if delay > 0:
            await trio.sleep(delay)
            sim.step_until(max(t, clock_us()))
        else:
            await trio.lowlevel.checkpoint()
            sim.step_until(clock_us())
