"""The run config: one YAML file -> one frozen :class:`RunConfig`, validated before any I/O.

::

    cfg = load_run_config("configs/mm.yaml")      # ConfigError names file:line: key.path: why
    for s in cfg.strategies:
        cls = s.strategy_class                   # resolved through engine.registry
        strategy = cls(s.name, s.params)         # params: an instance of cls.Config

A minimal file (every section but ``strategies`` has defaults; the exchange defaults to the
embedded local exchange, so nothing touches the network)::

    strategies:
      - name: mm1
        class: market_maker
        market: "XBT:GBP"
        params: {size: "0.01"}

The sections, top to bottom: ``exchange`` (``embedded``, the default, or a ``url`` with credentials named by
:class:`~engine.configload.SecretRef`), ``markets``, ``strategies`` (each with its own
``params`` validated by the strategy's ``Config`` class, plus optional ``risk`` and
``order_rate``), ``risk`` (global limits), ``rate_limits`` (safety factor against
LIMITS.md), ``run``, ``logging`` and ``recording``.  The JSON Schema of this file is
generated from these classes (``cftrade check --schema``), field docstrings included.

Decimal amounts and prices are quoted strings (``"0.5"``); :meth:`RunConfig.scales` and
:func:`engine.configload.amount_to_int` turn them into exchange integers.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta
from msgspec.structs import force_setattr

from engine import registry
from engine.configload import (
    Amount,
    ConfigPath,
    ConfigStruct,
    SecretRef,
    decimal_fields,
    invalid,
    load,
)
from engine.errors import ConfigError, ScaleError
from engine.limits import DEFAULT_LIMITS, MAX_OPEN_ORDERS, Limit
from engine.scale import Market, Scales, asset_by_symbol, market_by_name, parse_price

__all__ = [
    "ExchangeConfig",
    "LoggingConfig",
    "OrderRate",
    "RateLimitConfig",
    "RecordingConfig",
    "RiskLimits",
    "RunConfig",
    "RunSection",
    "StrategySpec",
    "load_run_config",
]

MarketName = Annotated[
    str,
    Meta(pattern=r"^[A-Z]{3}[:/][A-Z]{3}$", description='A market as "BASE:COUNTER", e.g. "XBT:GBP".',
         examples=["XBT:GBP", "XBT:EUR"]),
]
AssetSymbol = Literal["XBT", "EUR", "GBP"]
OpenOrders = Annotated[int, Meta(ge=1, le=MAX_OPEN_ORDERS)]
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ExchangeConfig(ConfigStruct, frozen=True, kw_only=True):
    """Where orders go.  Without ``url``: the embedded local exchange, in-process (default).

    With ``url``: a Coinfloor-protocol endpoint reached over WebSocket.  ``wss://`` is
    required except to loopback hosts (127.0.0.0/8, ::1, localhost).  A non-loopback URL is
    live trading: it needs ``live: true`` here *and* the ``--live`` flag on the command line
    (the runner checks the flag; see :meth:`assert_live_allowed`).

    ``exchange: embedded`` is the same as leaving the section out (or ``exchange: {}``).
    """

    __config_shorthands__: ClassVar[tuple[str, ...]] = ("embedded",)

    url: str | None = None
    """WebSocket URL of the exchange (wss://host/path), or null for the embedded exchange."""
    config: ConfigPath | None = None
    """Embedded exchange only: path of its own settings file (users, balances, fees)."""
    user_id: Annotated[int, Meta(ge=1)] | None = None
    """Coinfloor user id to authenticate as (required with url)."""
    cookie: SecretRef | None = None
    """Where the API cookie lives: {env: NAME} or {file: PATH} (required with url)."""
    passphrase: SecretRef | None = None
    """Where the passphrase lives: {env: NAME} or {file: PATH} (required with url)."""
    live: bool = False
    """Must be true to trade against a non-loopback URL (and the --live flag must be given)."""

    def __post_init__(self) -> None:
        if self.url is None:
            for key in ("user_id", "cookie", "passphrase"):
                if getattr(self, key) is not None:
                    raise invalid(key, "only used with 'url' (the embedded exchange provisions its own user)")
            if self.live:
                raise invalid("live", "the embedded exchange is never live; remove 'live' or set a 'url'")
            return
        if self.config is not None:
            raise invalid("config", "only for the embedded exchange (without 'url')")
        try:
            parts = urlsplit(self.url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as e:
            raise invalid("url", f"is not a valid URL: {e}") from None
        if parts.username is not None or parts.password is not None:
            # Do not echo the URL: it carries credentials.
            raise invalid("url", "must not contain a user name or password; use 'cookie' and 'passphrase'")
        if parts.scheme not in ("ws", "wss"):
            raise invalid("url", f"must start with wss:// (or ws:// to a loopback host), was {parts.scheme or 'no'} scheme")
        if not host:
            raise invalid("url", f"has no host: {self.url!r}")
        if parts.scheme == "ws" and not _is_loopback(host):
            raise invalid("url", f"ws:// (no TLS) is only allowed to loopback hosts, not {host!r}; use wss://")
        if not _is_loopback(host) and not self.live:
            raise invalid("url", f"{host!r} is not a loopback host: trading there is live; set 'live: true' (and pass --live)")
        for key in ("user_id", "cookie", "passphrase"):
            if getattr(self, key) is None:
                raise invalid(key, "required key is missing (needed with 'url')")

    @property
    def embedded(self) -> bool:
        """True for the in-process local exchange (no url)."""
        return self.url is None

    @property
    def host(self) -> str | None:
        return None if self.url is None else urlsplit(self.url).hostname

    @property
    def requires_live_flag(self) -> bool:
        """True when the target is not loopback: the runner must also see ``--live`` (X11)."""
        return self.url is not None and not _is_loopback(self.host or "")

    def assert_live_allowed(self, cli_live: bool) -> None:
        """Raise ConfigError unless a live target has both ``live: true`` and ``--live``."""
        if self.requires_live_flag and not (self.live and cli_live):
            raise ConfigError(f"exchange {self.host} is live: it needs 'live: true' in the config and --live on the command line")

    def describe(self) -> str:
        """One line for start-up banners and ``cftrade check`` (no secrets)."""
        if self.url is None:
            return "embedded local exchange (in-process)" + (f", settings {self.config}" if self.config else "")
        mode = "LIVE (needs --live)" if self.requires_live_flag else "loopback"
        return f"{self.url} as user {self.user_id} [{mode}]"


class RiskLimits(ConfigStruct, frozen=True, kw_only=True):
    """Pre-trade risk limits.  Null means "no limit at this level".

    Quantities are in the market's base asset, notional, loss and drawdown in its counter
    asset, all as decimal strings.  The same keys serve each strategy's ``risk`` and the
    global ``risk`` section.  The global ``max_open_orders`` is the user's limit (all
    strategies together); every other global key tightens each strategy's own limit
    (the stricter wins), checked in that strategy's market (see
    :meth:`RunConfig.strategy_risk`).
    """

    max_order_quantity: Amount | None = None
    """Largest quantity of one order, base asset (e.g. "0.5" XBT)."""
    max_order_notional: Amount | None = None
    """Largest quantity x price of one order, counter asset (e.g. "10000" GBP)."""
    max_position: dict[AssetSymbol, Amount] = {}
    """Largest absolute position per asset, e.g. {XBT: "2"}."""
    max_open_orders: OpenOrders | None = None
    """Most open orders at once (1..1000; the exchange allows 1000 per user)."""
    price_band_bps: Annotated[int, Meta(ge=1, le=10_000)] | None = None
    """Refuse limit prices further than this many basis points from the reference price."""
    price_band_reference: Literal["mid", "last"] = "mid"
    """Reference price of the band: the book's mid or the last traded price (ticker)."""
    max_loss: Amount | None = None
    """Halt when the realised plus unrealised loss reaches this much, counter asset."""
    max_drawdown: Amount | None = None
    """Halt when the equity falls this much below its peak, counter asset."""
    reduce_at_loss: Amount | None = None
    """Go REDUCING when the loss reaches this much, counter asset: the strategy's orders are
    cancelled and from then on only orders that bring its position towards zero pass (a
    soft limit below max_loss; `cftrade kill CONFIG --resume NAME` returns it to ACTIVE)."""

    def check_scale(self, markets: list[Market], scales: Scales) -> None:
        """Raise ``invalid`` if an amount has more decimals than its asset's scale holds."""
        for key, side in (("max_order_quantity", "base"), ("max_order_notional", "counter"),
                          ("max_loss", "counter"), ("max_drawdown", "counter"), ("reduce_at_loss", "counter")):
            text = getattr(self, key)
            if text is None:
                continue
            for m in markets:
                try:
                    scales.parse_amount(text, m.base if side == "base" else m.counter)
                except ScaleError as e:
                    raise invalid(key, str(e)) from None
        for sym, text in self.max_position.items():
            try:
                scales.parse_amount(text, asset_by_symbol(sym))
            except ScaleError as e:
                raise invalid(("max_position", sym), str(e)) from None


class OrderRate(ConfigStruct, frozen=True, kw_only=True):
    """A budget of order commands: at most ``count`` per ``per`` seconds.

    Counts what LIMITS.md counts as order placements: PlaceOrder, CancelOrder,
    CancelAllOrders and EstimateMarketOrder.
    """

    count: Annotated[int, Meta(ge=1)]
    """Order commands allowed in any window of ``per`` seconds."""
    per: Annotated[float, Meta(gt=0)]
    """Window length in seconds."""

    @property
    def rate(self) -> float:
        """Commands per second."""
        return self.count / self.per


class StrategySpec(ConfigStruct, frozen=True, kw_only=True):
    """One strategy instance: which class, on which market, with which parameters."""

    name: Annotated[str, Meta(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
    """Unique name of this instance (letters, digits, _ . -), used in logs, state and kill switch."""
    class_: str = msgspec.field(name="class")
    """A registered strategy name (e.g. market_maker) or "package.module:ClassName"."""
    market: MarketName
    """The market it trades, e.g. "XBT:GBP"."""
    params: Annotated[Any, Meta(extra_json_schema={"type": "object"})] = msgspec.field(default_factory=dict)
    """Parameters, validated by the strategy class's own Config (after loading: a Config instance)."""
    risk: RiskLimits | None = None
    """Limits for this strategy alone, on top of the global risk section."""
    order_rate: OrderRate | None = None
    """This strategy's share of the order-command budget (null: an equal share)."""

    _config_dynamic: ClassVar[tuple[str, ...]] = ("params",)

    @classmethod
    def _config_types(cls, values: dict[str, Any]) -> dict[str, Any]:
        # params are converted by the strategy's own Config, so their errors keep
        # the full key path (strategies[0].params.spread_ticks) and line.
        try:
            strategy = registry.resolve(values["class_"])
        except ConfigError as e:
            raise invalid("class", str(e)) from None
        return {"params": strategy.Config}  # type: ignore[attr-defined]

    def __post_init__(self) -> None:
        try:
            canonical = market_by_name(self.market).name
        except ScaleError as e:
            raise invalid("market", str(e)) from None
        force_setattr(self, "market", canonical)  # "XBT/GBP" -> "XBT:GBP"

    @property
    def strategy_class(self) -> type:
        """The strategy class named by ``class`` (resolved through engine.registry)."""
        return registry.resolve(self.class_)

    @property
    def market_info(self) -> Market:
        return market_by_name(self.market)


class RateLimitConfig(ConfigStruct, frozen=True, kw_only=True):
    """How much of the exchange's LIMITS.md budgets the client allows itself."""

    safety_factor: Annotated[float, Meta(gt=0, le=1)] = 0.9
    """Fraction of every LIMITS.md budget used (0.9: 900 order commands per 1000 s)."""
    algorithm: Literal["window", "bucket"] = "window"
    """Client limiter: sliding window (strictest reading of LIMITS.md) or token bucket."""


class RunSection(ConfigStruct, frozen=True, kw_only=True):
    """Run-wide settings."""

    duration: Annotated[float, Meta(gt=0)] | None = None
    """Seconds to run before a graceful stop, or null to run until stopped."""
    seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0
    """Seed of the embedded exchange's stochastic rounding (also a backtest's, and the
    client's reconnect jitter).  The simulated market's agents have their own seed,
    ``participants.seed`` in the exchange's settings file (configs/exchange.yaml), so runs
    with different ``run.seed`` see the same market until that changes."""
    api_version: Literal[1, 2] = 2
    """Coinfloor API version, which fixes the scale of amounts (SCALE.md): 1 or 2."""
    state_dir: ConfigPath = "state"
    """Directory for the tonce high-water mark, intent journal and HALTED flags."""


class LoggingConfig(ConfigStruct, frozen=True, kw_only=True):
    """Logging (secrets are redacted whatever the level)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    file: ConfigPath | None = None
    """Log file, or null for standard error."""
    json: bool = False
    """One JSON object per line instead of plain text."""


class RecordingConfig(ConfigStruct, frozen=True, kw_only=True):
    """Recording of market data and own events, for backtests and live-vs-backtest diffs."""

    enabled: bool = False
    """Record this run."""
    path: ConfigPath = "recordings"
    """Directory the recordings are written to."""


class RunConfig(ConfigStruct, frozen=True, kw_only=True):
    """A cftrade run: exchange target, markets, strategies, risk and rate limits."""

    exchange: ExchangeConfig = ExchangeConfig()
    """Where orders go (default: the embedded local exchange)."""
    markets: tuple[MarketName, ...] = ()
    """Markets to subscribe to; empty means the strategies' markets."""
    strategies: Annotated[tuple[StrategySpec, ...], Meta(min_length=1)]
    """The strategies to run (at least one), each with a unique name."""
    risk: RiskLimits = RiskLimits()
    """Global risk limits over all strategies of the user."""
    rate_limits: RateLimitConfig = RateLimitConfig()
    """Client-side rate limiting against LIMITS.md."""
    run: RunSection = RunSection()
    """Duration, seed, API version and state directory."""
    logging: LoggingConfig = LoggingConfig()
    """Log level, file and format."""
    recording: RecordingConfig = RecordingConfig()
    """Whether and where to record the run."""

    def __post_init__(self) -> None:
        markets: list[str] = []
        for i, name in enumerate(self.markets):
            try:
                canonical = market_by_name(name).name
            except ScaleError as e:
                raise invalid(("markets", i), str(e)) from None
            if canonical in markets:
                raise invalid(("markets", i), f"market {canonical} is listed twice")
            markets.append(canonical)
        explicit = bool(markets)
        seen: dict[str, int] = {}
        for i, s in enumerate(self.strategies):
            if s.name in seen:
                raise invalid(("strategies", i, "name"), f"duplicate strategy name {s.name!r} (also strategies[{seen[s.name]}])")
            seen[s.name] = i
            m = s.market_info.name
            if m not in markets:
                if explicit:
                    raise invalid(("strategies", i, "market"), f"{m} is not in markets ({', '.join(markets)})")
                markets.append(m)
        force_setattr(self, "markets", tuple(markets))
        scales = self.scales
        infos = [market_by_name(m) for m in markets]
        try:
            self.risk.check_scale(infos, scales)
        except ConfigError as e:
            raise invalid(("risk", *getattr(e, "key", ())), getattr(e, "why", str(e))) from None
        for i, s in enumerate(self.strategies):
            if s.risk is not None:
                try:
                    s.risk.check_scale([s.market_info], scales)
                except ConfigError as e:
                    raise invalid(("strategies", i, "risk", *getattr(e, "key", ())), getattr(e, "why", str(e))) from None
        # A strategy's decimal params must fit the scales of its market (checked here, not at
        # its on_start, where a ScaleError halts the strategy and the halt persists).  Prices
        # have the market's price scale; an Amount is in the base or the counter asset (the
        # strategy knows which), so it must fit at least one of them.
        for i, s in enumerate(self.strategies):
            mk = s.market_info
            for key, kind, text in decimal_fields(s.params):
                try:
                    if kind == "price":
                        parse_price(text, mk)
                    else:
                        try:
                            scales.parse_amount(text, mk.base)
                        except ScaleError:
                            scales.parse_amount(text, mk.counter)
                except ScaleError as e:
                    why = str(e) if kind == "price" else (
                        f"amount {text!r} has more decimal places than {mk.base.symbol} or "
                        f"{mk.counter.symbol} amounts allow")
                    raise invalid(("strategies", i, "params", key), why) from None
        # Per-strategy budgets must fit the user's order budget (LIMITS.md x safety factor).
        lim = DEFAULT_LIMITS["orders"]
        allowed = self.rate_limits.safety_factor * lim.count / lim.per
        total = 0.0
        for i, s in enumerate(self.strategies):
            if s.order_rate is not None:
                total += s.order_rate.rate
                if total > allowed * (1 + 1e-12):
                    raise invalid(
                        ("strategies", i, "order_rate"),
                        f"order budgets add up to {total:g}/s, above {self.rate_limits.safety_factor:g} x "
                        f"{lim} = {allowed:g}/s",
                    )

    @property
    def scales(self) -> Scales:
        """Scale arithmetic of the configured API version."""
        return Scales(self.run.api_version)

    @property
    def market_infos(self) -> list[Market]:
        return [market_by_name(m) for m in self.markets]

    def strategy(self, name: str) -> StrategySpec:
        """The strategy entry called ``name`` (KeyError if none)."""
        for s in self.strategies:
            if s.name == name:
                return s
        raise KeyError(name)

    def strategy_risk(self, name: str) -> Any:
        """Strategy ``name``'s limits for the risk governor: an ``engine.risk.model.RiskLimits``
        of scaled ints, its own ``risk`` tightened by the global section.

        The conversion from decimal text goes through :mod:`engine.scale` at the configured API
        version.  ``max_position`` is taken for the market's base asset (the governor tracks
        base positions).  The global ``max_open_orders`` is the user's limit
        (:meth:`user_risk`), so it does not tighten the strategy's own.
        """
        from engine.risk.model import RiskLimits as Scaled

        spec = self.strategy(name)
        market = spec.market_info

        def scaled(r: RiskLimits, own: bool) -> Any:
            sc = self.scales

            def amt(text: str | None, asset: Any) -> int | None:
                return None if text is None else sc.parse_amount(text, asset)

            pos = r.max_position.get(market.base.symbol)  # type: ignore[call-overload]
            rate = spec.order_rate if own else None
            return Scaled(
                max_order_quantity=amt(r.max_order_quantity, market.base),
                max_order_notional=amt(r.max_order_notional, market.counter),
                max_position=amt(pos, market.base),
                max_open_orders=r.max_open_orders if own else None,
                price_band_bps=r.price_band_bps,
                price_band_reference=r.price_band_reference,
                max_loss=amt(r.max_loss, market.counter),
                max_drawdown=amt(r.max_drawdown, market.counter),
                reduce_at_loss=amt(r.reduce_at_loss, market.counter),
                order_rate=None if rate is None else Limit(rate.count, rate.per, "user"),
            )

        own = scaled(spec.risk or RiskLimits(), True)
        return own.tighten(scaled(self.risk, False))

    def user_risk(self) -> Any:
        """The user-wide limits for the risk governor (``engine.risk.model.UserRiskLimits``)."""
        from engine.risk.model import UserRiskLimits

        return UserRiskLimits(
            max_open_orders=self.risk.max_open_orders or MAX_OPEN_ORDERS,
            safety_factor=self.rate_limits.safety_factor,
            algorithm=self.rate_limits.algorithm,
        )

    def order_budget(self, name: str) -> tuple[int, float]:
        """(count, per seconds) of strategy ``name``'s order-command budget.

        An explicit ``order_rate`` is used as written; strategies without one share what the
        explicit ones leave of the user budget equally, over the LIMITS.md window.
        """
        lim = DEFAULT_LIMITS["orders"]
        spec = self.strategy(name)
        if spec.order_rate is not None:
            return (spec.order_rate.count, spec.order_rate.per)
        allowed = self.rate_limits.safety_factor * lim.count / lim.per
        used = sum(s.order_rate.rate for s in self.strategies if s.order_rate is not None)
        n = sum(1 for s in self.strategies if s.order_rate is None)
        return (max(1, math.floor((allowed - used) / n * lim.per)), lim.per)


def load_run_config(path: str, *, resolve_secrets: bool = True) -> RunConfig:
    """Load and fully validate a run config (strategy params and secret references too)."""
    return load(path, RunConfig, resolve_secrets=resolve_secrets)
