"""Assets, scale factors and price scales (SCALE.md): the only place text meets integers.

Every quantity, total and price in this project is an ``int`` carrying an implicit scale
factor, exactly as on the wire.  Decimal text is converted here and nowhere else:

    >>> V2.parse_amount("12.3456", XBT)
    1234560000
    >>> V1.parse_amount("12.3456", XBT)
    123456
    >>> parse_price("543.21", XBT_GBP)
    54321
    >>> V2.format_amount(1234560000, XBT)
    '12.34560000'

Amounts the scale cannot represent are refused with :class:`ScaleError`, never rounded.

The reservation a bid takes out (IMPL-GUIDE "How Balance Reservations Work") is written in
the guide with API v1 scales as ``ceil(q * p / 10000)``; :meth:`Scales.bid_reservation`
derives the divisor from the scale table instead::

    ceil(q * p * counter_scale / (base_scale * price_scale))

which gives ``10000`` under v1 and ``10**8`` under v2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from engine.errors import ScaleError

ApiVersion = Literal[1, 2]

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


@dataclass(frozen=True, slots=True)
class Asset:
    """An asset code with its scale factor under each API version."""

    code: int
    symbol: str
    scale_v1: int
    scale_v2: int

    def scale(self, api: ApiVersion = 2) -> int:
        return self.scale_v2 if api == 2 else self.scale_v1

    def __str__(self) -> str:
        return self.symbol


@dataclass(frozen=True, slots=True)
class Market:
    """An asset pair (order book) with the scale factor of its prices."""

    base: Asset
    counter: Asset
    price_scale: int

    @property
    def name(self) -> str:
        return f"{self.base.symbol}:{self.counter.symbol}"

    @property
    def codes(self) -> tuple[int, int]:
        return (self.base.code, self.counter.code)

    def __hash__(self) -> int:
        # Consistent with the generated __eq__ (equal fields give equal codes), in one
        # Python call instead of three (Market and both Assets): markets key the runtime's
        # dicts, looked up several times per notice.
        return hash((self.base.code, self.counter.code, self.price_scale))

    def __str__(self) -> str:
        return self.name


XBT = Asset(0xF800, "XBT", scale_v1=10**4, scale_v2=10**8)
EUR = Asset(0xFA00, "EUR", scale_v1=100, scale_v2=100)
GBP = Asset(0xFA20, "GBP", scale_v1=100, scale_v2=100)

XBT_EUR = Market(XBT, EUR, price_scale=100)
XBT_GBP = Market(XBT, GBP, price_scale=100)

ASSETS: dict[int, Asset] = {a.code: a for a in (XBT, EUR, GBP)}
MARKETS: dict[tuple[int, int], Market] = {m.codes: m for m in (XBT_EUR, XBT_GBP)}


def asset_by_code(code: int) -> Asset:
    try:
        return ASSETS[code]
    except KeyError:
        raise ScaleError(f"unknown asset code {code:#x}") from None


def asset_by_symbol(symbol: str) -> Asset:
    for a in ASSETS.values():
        if a.symbol == symbol:
            return a
    raise ScaleError(f"unknown asset {symbol!r}; known: {', '.join(a.symbol for a in ASSETS.values())}")


def market_by_codes(base: int, counter: int) -> Market:
    try:
        return MARKETS[(base, counter)]
    except KeyError:
        raise ScaleError(f"unknown asset pair {base:#x}:{counter:#x}") from None


def market_by_name(name: str) -> Market:
    """Look up ``"XBT:GBP"`` (also accepts ``"XBT/GBP"``)."""
    parts = re.split(r"[:/]", name)
    if len(parts) == 2:
        for m in MARKETS.values():
            if (m.base.symbol, m.counter.symbol) == (parts[0], parts[1]):
                return m
    raise ScaleError(f"unknown market {name!r}; known: {', '.join(m.name for m in MARKETS.values())}")


_DECIMAL = re.compile(r"^([+-]?)(\d+)(?:\.(\d+))?$")


def _digits(scale: int) -> int:
    d = len(str(scale)) - 1
    if scale <= 0 or 10**d != scale:
        raise ScaleError(f"scale {scale} is not a power of ten")
    return d


def to_scaled(value: str | int | Decimal, scale: int, what: str = "value") -> int:
    """Convert decimal text (or an int, or a finite Decimal) to an exact scaled integer.

    Refuses floats, exponents, NaN/Infinity and any digit the scale cannot hold.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise ScaleError(f"{what} must be given as decimal text like \"1.25\", not {type(value).__name__} {value!r}")
    if isinstance(value, int):
        out = value * scale
    else:
        text = str(value) if isinstance(value, Decimal) else value
        if isinstance(value, Decimal) and not value.is_finite():
            raise ScaleError(f"{what} {text!r} is not a finite number")
        if isinstance(value, Decimal) and "E" in text.upper():
            text = format(value, "f")
        m = _DECIMAL.match(text.strip())
        if m is None:
            raise ScaleError(f"{what} {text!r} is not a plain decimal number (digits, optional sign and point)")
        sign, whole, frac = m.group(1), m.group(2), m.group(3) or ""
        digits = _digits(scale)
        if len(frac) > digits:
            if frac[digits:].strip("0"):
                raise ScaleError(
                    f"{what} {text!r} has more precision than its scale allows "
                    f"(at most {digits} decimal places)"
                )
            frac = frac[:digits]
        out = int(whole) * scale + (int(frac.ljust(digits, "0")) if digits else 0)
        if sign == "-":
            out = -out
    if not INT64_MIN <= out <= INT64_MAX:
        raise ScaleError(f"{what} {value!r} does not fit a signed 64-bit integer at scale {scale}")
    return out


def from_scaled(value: int, scale: int) -> str:
    """Format a scaled integer as exact decimal text with all the scale's digits."""
    digits = _digits(scale)
    sign = "-" if value < 0 else ""
    q, r = divmod(abs(value), scale)
    return f"{sign}{q}.{r:0{digits}d}" if digits else f"{sign}{q}"


def to_decimal(value: int, scale: int) -> Decimal:
    """For display and reports only: the exact Decimal of a scaled integer."""
    return Decimal(value).scaleb(-_digits(scale))


def parse_price(text: str | int | Decimal, market: Market) -> int:
    """``parse_price("543.21", XBT_GBP) == 54321``; prices have the same scale in v1 and v2."""
    return to_scaled(text, market.price_scale, f"{market.name} price")


def format_price(value: int, market: Market) -> str:
    return from_scaled(value, market.price_scale)


def ceil_div(a: int, b: int) -> int:
    """Exact ceiling of a / b for b > 0 (no floats)."""
    return -((-a) // b)


@dataclass(frozen=True, slots=True)
class Scales:
    """Scale arithmetic under one API version (v2 is the default everywhere)."""

    api: ApiVersion = 2

    def amount_scale(self, asset: Asset) -> int:
        return asset.scale(self.api)

    def parse_amount(self, text: str | int | Decimal, asset: Asset) -> int:
        return to_scaled(text, asset.scale(self.api), f"{asset.symbol} amount")

    def format_amount(self, value: int, asset: Asset) -> str:
        return from_scaled(value, asset.scale(self.api))

    def total_divisor(self, market: Market) -> tuple[int, int]:
        """(numerator multiplier, denominator) turning ``q * p`` into a counter amount.

        total = q * p * counter_scale / (base_scale * price_scale)
        """
        return (market.counter.scale(self.api), market.base.scale(self.api) * market.price_scale)

    def exact_total(self, quantity: int, price: int, market: Market) -> tuple[int, int]:
        """The exact counter total of ``quantity`` at ``price`` as a fraction (num, den)."""
        mul, den = self.total_divisor(market)
        return (abs(quantity) * price * mul, den)

    def bid_reservation(self, quantity: int, price: int, market: Market) -> int:
        """Counter-asset units a bid of ``quantity`` at ``price`` reserves (always rounded up)."""
        # total_divisor and ceil_div inlined: this runs twice before every bid is sent (the
        # risk gate's notional, the balance view's reservation).
        if self.api == 2:
            mul, den = market.counter.scale_v2, market.base.scale_v2 * market.price_scale
        else:
            mul, den = market.counter.scale_v1, market.base.scale_v1 * market.price_scale
        return -((-(abs(quantity) * price * mul)) // den)

    def reservation(self, quantity: int, price: int, market: Market) -> tuple[Asset, int]:
        """(asset, amount) an order reserves: counter for a bid (quantity > 0), base for an ask."""
        if quantity > 0:
            return (market.counter, self.bid_reservation(quantity, price, market))
        return (market.base, -quantity)

    def max_bid_quantity(self, reserve: int, price: int, market: Market) -> int:
        """The largest quantity whose bid reservation at ``price`` fits into ``reserve``."""
        mul, den = self.total_divisor(market)
        # ceil(q*p*mul/den) <= reserve  <=>  q*p*mul <= reserve*den  <=>  q <= floor(reserve*den/(p*mul))
        return (reserve * den) // (price * mul)


V1 = Scales(1)
V2 = Scales(2)
DEFAULT = V2
