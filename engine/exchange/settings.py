"""Settings of the local exchange: one frozen msgspec schema for Python and YAML alike.

The same classes are the YAML schema of ``cftrade exchange --config FILE`` (unknown keys are
refused) and the keyword arguments tests and simulations build directly::

    ExchangeSettings(
        users=[UserSettings(user_id=1, demo=True, balances={"GBP": "10000.00", "XBT": "5"})],
        fees=[FeeTier(min_volume="0", maker_ppm=100, taker_ppm=300)],
    )

Secrets never live in these structs: a user names an environment variable or a 0600 file
for the cookie and the passphrase, and :func:`resolve_credentials` turns those names into
:class:`~engine.secret.Secret` values.  The AUTH.md example user (cookie
``HGREqcILTz8blHa/jsUTVTNBJlg=``, passphrase ``opensesame``) is available only behind an
explicit ``demo: true``.  A user with no credentials at all can trade only through an
internal session (simulated participants, backtests); over the wire it looks like no user.

Amounts are decimal *text* ("10000.00"), parsed exactly at the configured API version's
scales when the exchange is built; floats are refused by the schema.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import msgspec

from engine.errors import ConfigError, ScaleError
from engine.scale import INT64_MAX, Market, Scales, asset_by_symbol, market_by_name
from engine.secret import Secret, from_env, from_file

__all__ = [
    "DEMO_COOKIE",
    "DEMO_PASSPHRASE",
    "ExchangeSettings",
    "FeeTier",
    "InvalidSettings",
    "LimitsSettings",
    "MarketSettings",
    "PolicySettings",
    "RateLimitSettings",
    "UserCredentials",
    "UserSettings",
    "resolve_credentials",
]

DEMO_COOKIE = "HGREqcILTz8blHa/jsUTVTNBJlg="
"""The AUTH.md example cookie: usable only by users with ``demo: true``."""
DEMO_PASSPHRASE = "opensesame"
"""The AUTH.md example passphrase: usable only by users with ``demo: true``."""

PPM = 1_000_000


class InvalidSettings(ConfigError, ValueError):
    """A settings value is out of range.  A ValueError so that msgspec, when it builds the
    settings from YAML data, reports it with the JSON path of the offending struct."""


class _Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class UserSettings(_Settings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One account: its id, where its secrets come from, and its opening balances.

    ``balances`` maps an asset symbol to decimal text, e.g. ``{"GBP": "10000.00"}``.
    At most one cookie source and one passphrase source; both or neither (unless ``demo``).
    """

    user_id: int
    demo: bool = False
    cookie_env: str | None = None
    cookie_file: str | None = None
    passphrase_env: str | None = None
    passphrase_file: str | None = None
    balances: dict[str, str] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.user_id <= INT64_MAX:
            raise InvalidSettings(f"user_id must be a positive 64-bit integer, was {self.user_id}")
        if self.cookie_env is not None and self.cookie_file is not None:
            raise InvalidSettings(f"user {self.user_id}: give cookie_env or cookie_file, not both")
        if self.passphrase_env is not None and self.passphrase_file is not None:
            raise InvalidSettings(f"user {self.user_id}: give passphrase_env or passphrase_file, not both")
        has_cookie = self.cookie_env is not None or self.cookie_file is not None
        has_phrase = self.passphrase_env is not None or self.passphrase_file is not None
        if self.demo and (has_cookie or has_phrase):
            raise InvalidSettings(
                f"user {self.user_id}: demo users use the AUTH.md example credentials; "
                "remove cookie_*/passphrase_* or set demo: false"
            )
        if has_cookie != has_phrase:
            raise InvalidSettings(
                f"user {self.user_id}: give both a cookie source and a passphrase source, or neither "
                "(a user without credentials trades only through internal sessions)"
            )

    @property
    def can_authenticate(self) -> bool:
        """True iff this user can log in over the wire (demo or configured credentials)."""
        return self.demo or self.cookie_env is not None or self.cookie_file is not None


class MarketSettings(_Settings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An order book, named by asset symbols (must be a pair of engine.scale.MARKETS)."""

    base: str = "XBT"
    counter: str = "GBP"

    def __post_init__(self) -> None:
        try:
            market_by_name(f"{self.base}:{self.counter}")
        except ScaleError as e:
            raise InvalidSettings(str(e)) from None

    @property
    def market(self) -> Market:
        return market_by_name(f"{self.base}:{self.counter}")


class FeeTier(_Settings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Fee rates (parts per million of the trade total) for users whose 30-day trailing
    volume in the market's base asset is at least ``min_volume`` (decimal text, e.g. "10").

    300 ppm = 0.03%, the rate of IMPL-GUIDE's worked example.  The maker is the resting
    order, the taker the incoming one (limit or market).
    """

    min_volume: str = "0"
    maker_ppm: int = 300
    taker_ppm: int = 300

    def __post_init__(self) -> None:
        for name in ("maker_ppm", "taker_ppm"):
            v = getattr(self, name)
            if not 0 <= v < PPM:
                raise InvalidSettings(f"{name} must be in [0, {PPM}) parts per million, was {v}")
        if self.min_volume.strip().startswith("-"):
            raise InvalidSettings(f"min_volume must not be negative, was {self.min_volume!r}")


class RateLimitSettings(_Settings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``count`` requests per ``per`` seconds, counted per ``scope`` (LIMITS.md metric)."""

    count: int
    per: float
    scope: Literal["user", "session"] = "user"
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.count <= 0 or not self.per > 0:
            raise InvalidSettings(f"rate limit must be positive, was {self.count} per {self.per} s")


def _orders_limit() -> RateLimitSettings:
    return RateLimitSettings(count=1000, per=1000.0, scope="user")


def _info_limit() -> RateLimitSettings:
    return RateLimitSettings(count=10, per=10.0, scope="session")


def _auth_limit() -> RateLimitSettings:
    return RateLimitSettings(count=1000, per=3600.0, scope="user")


class LimitsSettings(_Settings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """LIMITS.md, enforced with error 6.  ``algorithm``: "window" (sliding window, the
    strictest reading and the default) or "bucket" (token bucket).  ``enabled: false``
    switches every rate limit off (benchmarks); the open-order cap is separate
    (``ExchangeSettings.max_open_orders``)."""

    enabled: bool = True
    algorithm: Literal["window", "bucket"] = "window"
    orders: RateLimitSettings = msgspec.field(default_factory=_orders_limit)
    info: RateLimitSettings = msgspec.field(default_factory=_info_limit)
    auth: RateLimitSettings = msgspec.field(default_factory=_auth_limit)


class PolicySettings(_Settings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Choices the spec leaves open (docs/EXCHANGE.md, "Where the spec is silent").

    ``self_trade``: "allow" (default) matches a user's orders against each other like any
    others, fees included; "cancel_resting" closes the user's resting order instead and
    goes on matching.
    ``open_notice_before_match``: False (default) sends OrderOpened only for the part of a
    crossing limit order that comes to rest, after its matches; True sends OrderOpened for
    the whole order first, then the matches.
    ``verify_each_command``: debug mode (below).
    """

    self_trade: Literal["allow", "cancel_resting"] = "allow"
    open_notice_before_match: bool = False
    verify_each_command: bool = False
    """Debug mode: run every invariant check (conservation, reservations, book) after each
    command and raise AssertionError at the first broken one.  Costs O(book) per command."""


def _default_markets() -> list[MarketSettings]:
    return [MarketSettings(base="XBT", counter="GBP"), MarketSettings(base="XBT", counter="EUR")]


def _default_fees() -> list[FeeTier]:
    return [FeeTier(min_volume="0", maker_ppm=300, taker_ppm=300)]


class ExchangeSettings(_Settings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Everything that defines a local exchange (besides its clock and its random source).

    ``fees`` is a schedule: the tier with the highest ``min_volume`` not above the user's
    30-day volume applies; the default is one tier of 0.03% for maker and taker.
    ``seed`` seeds the stochastic rounding when the caller does not pass an rng (test and
    simulation mode); ``None`` means an OS-seeded generator.
    """

    users: list[UserSettings] = msgspec.field(default_factory=list)
    markets: list[MarketSettings] = msgspec.field(default_factory=_default_markets)
    fees: list[FeeTier] = msgspec.field(default_factory=_default_fees)
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    api_version: Literal[1, 2] = 2
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    seed: int | None = None
    max_open_orders: int = 1000
    watch_depth: int = 1000

    def __post_init__(self) -> None:
        seen: set[int] = set()
        for u in self.users:
            if u.user_id in seen:
                raise InvalidSettings(f"user_id {u.user_id} appears twice in users")
            seen.add(u.user_id)
        names = [f"{m.base}:{m.counter}" for m in self.markets]
        if len(set(names)) != len(names):
            raise InvalidSettings(f"markets lists a pair twice: {names}")
        if not self.markets:
            raise InvalidSettings("markets must list at least one pair")
        if not self.fees:
            raise InvalidSettings("fees must list at least one tier (use maker_ppm: 0 for free trading)")
        if self.max_open_orders <= 0:
            raise InvalidSettings(f"max_open_orders must be > 0, was {self.max_open_orders}")
        if self.watch_depth <= 0:
            raise InvalidSettings(f"watch_depth must be > 0, was {self.watch_depth}")
        # Balances and fee volumes must parse at this API version's scales.
        scales = Scales(self.api_version)
        supply: dict[str, int] = {}
        for i, u in enumerate(self.users):
            for sym, text in u.balances.items():
                where = f"users[{i}].balances.{sym}"
                try:
                    asset = asset_by_symbol(sym)
                    amount = scales.parse_amount(text, asset)
                except ScaleError as e:
                    raise InvalidSettings(f"{where}: {e}") from None
                if amount < 0:
                    raise InvalidSettings(f"{where} must not be negative, was {text!r}")
                supply[sym] = supply.get(sym, 0) + amount
                if supply[sym] > INT64_MAX:
                    raise InvalidSettings(f"the total {sym} of all users exceeds a 64-bit integer")
        for i, tier in enumerate(self.fees):
            try:
                for m in self.markets:
                    scales.parse_amount(tier.min_volume, m.market.base)
            except ScaleError as e:
                raise InvalidSettings(f"fees[{i}].min_volume: {e}") from None

    @property
    def scales(self) -> Scales:
        return Scales(self.api_version)

    @property
    def market_list(self) -> list[Market]:
        return [m.market for m in self.markets]

    def opening_balances(self) -> dict[int, dict[int, int]]:
        """user_id -> asset code -> scaled opening balance (exact)."""
        scales = self.scales
        out: dict[int, dict[int, int]] = {}
        for u in self.users:
            bal: dict[int, int] = {}
            for sym, text in u.balances.items():
                asset = asset_by_symbol(sym)
                bal[asset.code] = scales.parse_amount(text, asset)
            out[u.user_id] = bal
        return out

    @staticmethod
    def with_demo_users(n: int, balances: dict[str, str], **kwargs: object) -> ExchangeSettings:
        """Settings with users 1..n, all ``demo`` (AUTH.md credentials), for tests and sims."""
        users = [UserSettings(user_id=i, demo=True, balances=dict(balances)) for i in range(1, n + 1)]
        return ExchangeSettings(users=users, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class UserCredentials:
    """A user's login secrets, resolved from env vars, files or the demo flag."""

    cookie: Secret[str]
    passphrase: Secret[str]


def resolve_credentials(
    settings: ExchangeSettings, environ: dict[str, str] | None = None
) -> dict[int, UserCredentials]:
    """Read every user's cookie and passphrase into Secrets (users without any: skipped).

    Raises :class:`~engine.errors.SecretError` naming the variable or file, never the value.
    """
    env = dict(os.environ) if environ is None else environ
    out: dict[int, UserCredentials] = {}
    for u in settings.users:
        if u.demo:
            out[u.user_id] = UserCredentials(
                Secret(DEMO_COOKIE, f"user {u.user_id} demo cookie"),
                Secret(DEMO_PASSPHRASE, f"user {u.user_id} demo passphrase"),
            )
            continue
        if not u.can_authenticate:
            continue
        label = f"user {u.user_id}"
        cookie = (
            from_env(u.cookie_env, f"{label} cookie", env)
            if u.cookie_env is not None
            else from_file(u.cookie_file or "", f"{label} cookie")
        )
        phrase = (
            from_env(u.passphrase_env, f"{label} passphrase", env)
            if u.passphrase_env is not None
            else from_file(u.passphrase_file or "", f"{label} passphrase")
        )
        out[u.user_id] = UserCredentials(cookie, phrase)
    return out
