"""Pre-trade checks: one intent, one view, one verdict.  Pure functions, no state, no clock.

:func:`pre_trade` runs, in order: the intent's shape (RELIABILITY B4/B8: types, signs, int64
range, order-total overflow), the trading state (HALTED/REDUCING), then the per-order rules
(quantity, notional, worst-case position, open orders per strategy and per user, price band,
no self-crossing).  The first failing rule wins and comes back as a :class:`Refusal` whose
reason names the rule and the numbers, formatted with :mod:`engine.scale`::

    max_order_quantity: 5.00000000 XBT > limit 1.00000000 XBT

Rate budgets need a clock and live in :mod:`engine.risk.governor`; :func:`token_cost` says how
many exchange "order placements" (LIMITS.md) an intent will spend.

All arithmetic is on ints.  The price band, in particular, compares
``|price - ref| * 10000 <= band_bps * ref`` with the reference kept as an exact fraction (the
mid of 100 and 101 is 201/2), so the boundary is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.risk.model import MarketView, RiskLimits, TradingState, UserRiskLimits
from engine.scale import INT64_MAX, Market, Scales, ceil_div, format_price, from_scaled
from engine.strategy import Cancel, CancelAll, PlaceLimit, PlaceMarket, Replace, Side

__all__ = ["Refusal", "pre_trade", "safe_repr", "token_cost"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A failed check: the stable ``rule`` name and a human ``reason`` that starts with it."""

    rule: str
    reason: str


def _refuse(rule: str, detail: str) -> Refusal:
    return Refusal(rule, f"{rule}: {detail}")


# -- shape -------------------------------------------------------------------------------------


def safe_repr(value: object, limit: int = 40) -> str:
    """``repr`` cut to ``limit`` characters that cannot raise (a 5000-digit int's repr does)."""
    if type(value) is int and value.bit_length() > 256:
        return f"<{value.bit_length()}-bit int>"
    try:
        text = repr(value)
    except Exception as e:  # a hostile __repr__ must not break the gate
        return f"<unrepresentable {type(value).__name__}: {type(e).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: object) -> str:
    return f"{type(value).__name__} {safe_repr(value)}"


def _bad_count(value: object, what: str, unit: str) -> str | None:
    """Why ``value`` is not a positive int64, or None if it is."""
    if type(value) is not int:  # bool, float (NaN!), Decimal, str and numpy ints all land here
        hint = " (convert numpy integers with int())" if type(value).__module__ == "numpy" else ""
        return f"{what} must be an int in {unit}, got {_describe(value)}{hint}"
    if value <= 0:
        return f"{what} must be > 0, got {value}"
    if value > INT64_MAX:
        return f"{what} {_describe(value)} does not fit a signed 64-bit integer"
    return None


def _bad_ref(value: object, what: str) -> str | None:
    if type(value) is not int:
        return f"{what} must be an int, got {_describe(value)}"
    return None


def _bad_side(value: object) -> str | None:
    if not isinstance(value, Side):
        return f"side must be Side.BUY or Side.SELL, got {_describe(value)}"
    return None


def _shape(intent: object, market: Market) -> str | None:
    """Why ``intent`` is malformed, or None.  Never raises, whatever ``intent`` is.

    (The common case, a well-formed PlaceLimit outside HALTED, is decided inline by
    :func:`pre_trade` before any text is built and never comes here.)"""
    qty_unit = f"scaled {market.base.symbol} units"
    price_unit = f"scaled {market.name} price units"
    if isinstance(intent, PlaceLimit):
        return (
            _bad_side(intent.side)
            or _bad_count(intent.price, "price", price_unit)
            or _bad_count(intent.quantity, "quantity", qty_unit)
            or (None if type(intent.persist) is bool else f"persist must be a bool, got {_describe(intent.persist)}")
            or _bad_ref(intent.ref, "ref")
        )
    if isinstance(intent, PlaceMarket):
        bad = _bad_side(intent.side) or _bad_ref(intent.ref, "ref")
        if bad:
            return bad
        if (intent.quantity is None) == (intent.total is None):
            return "a market order needs exactly one of quantity or total"
        if intent.quantity is not None:
            return _bad_count(intent.quantity, "quantity", qty_unit)
        return _bad_count(intent.total, "total", f"scaled {market.counter.symbol} units")
    if isinstance(intent, Replace):
        return (
            _bad_ref(intent.ref, "ref")
            or _bad_count(intent.price, "price", price_unit)
            or _bad_count(intent.quantity, "quantity", qty_unit)
            or _bad_ref(intent.new_ref, "new_ref")
        )
    if isinstance(intent, Cancel):
        return _bad_ref(intent.ref, "ref")
    if isinstance(intent, CancelAll):
        return None
    return f"not an intent (PlaceLimit, PlaceMarket, Cancel, CancelAll, Replace): {_describe(intent)}"


# -- helpers -----------------------------------------------------------------------------------


class _Fmt:
    """Readable amounts for reasons: ``1.50000000 XBT``, ``543.21 GBP``."""

    __slots__ = ("market", "scales")

    def __init__(self, market: Market, scales: Scales) -> None:
        self.market = market
        self.scales = scales

    def qty(self, q: int, signed: bool = False) -> str:
        text = self.scales.format_amount(q, self.market.base)
        if signed and q > 0:
            text = "+" + text
        return f"{text} {self.market.base.symbol}"

    def total(self, t: int) -> str:
        return f"{self.scales.format_amount(t, self.market.counter)} {self.market.counter.symbol}"

    def price(self, p: int) -> str:
        return f"{format_price(p, self.market)} {self.market.counter.symbol}"

    def ratio(self, num: int, den: int) -> str:
        """A reference price kept as num/den with den 1 or 2 (a mid)."""
        if den == 1 or num % den == 0:
            return self.price(num // den)
        return f"{from_scaled(num * 5, self.market.price_scale * 10)} {self.market.counter.symbol}"


def _reference(view: MarketView, which: str) -> tuple[int, int, str] | None:
    """The band's reference price as an exact fraction (num, den, label), or None."""
    mid = None
    if view.best_bid is not None and view.best_ask is not None:
        mid = (view.best_bid + view.best_ask, 2, "mid")
    last = (view.last, 1, "last") if view.last is not None else None
    first, second = (mid, last) if which == "mid" else (last, mid)
    return first or second


def _own_best(view: MarketView) -> tuple[int | None, int | None]:
    """(highest own resting bid, lowest own resting ask) of the user in this market."""
    hi_bid, lo_ask = view.own_best_bid, view.own_best_ask
    for side, price in view.own_resting:
        if side is Side.BUY:
            if hi_bid is None or price > hi_bid:
                hi_bid = price
        elif lo_ask is None or price < lo_ask:
            lo_ask = price
    return hi_bid, lo_ask


@dataclass(slots=True)
class _Order:
    """A placement normalised for the rules."""

    kind: str  # "limit", "market", "replace"
    side: Side
    price: int | None  # None for market orders
    quantity: int | None  # base units; a market order by total has an estimate (or None)
    notional: int | None  # counter units (None: cannot be valued without a far-side price)
    by_total: bool = False


def _normalise(intent: PlaceLimit | PlaceMarket, view: MarketView, market: Market, scales: Scales) -> _Order:
    if isinstance(intent, PlaceMarket):
        side = intent.side
        far = view.best_ask if side is Side.BUY else view.best_bid
        if intent.quantity is not None:
            notional = scales.bid_reservation(intent.quantity, far, market) if far else None
            return _Order("market", side, None, intent.quantity, notional)
        assert intent.total is not None
        # By total the base quantity is unknown; estimate it at the far-side best price (exact
        # for a buy's upper bound: deeper asks are dearer, so fewer units are bought).
        mul, den = scales.total_divisor(market)
        estimate = ceil_div(intent.total * den, far * mul) if far else None
        return _Order("market", side, None, estimate, intent.total, by_total=True)
    return _Order(
        "limit",
        intent.side,
        intent.price,
        intent.quantity,
        scales.bid_reservation(intent.quantity, intent.price, market),
    )


# -- the checks --------------------------------------------------------------------------------


def pre_trade(
    intent: object,
    view: MarketView,
    market: Market,
    limits: RiskLimits,
    user: UserRiskLimits,
    state: TradingState,
    scales: Scales,
    *,
    replace_side: Side | None = None,
) -> Refusal | None:
    """Judge one intent; ``None`` means every rule passed (rate budgets are checked after).

    ``replace_side`` is the side of the order a :class:`Replace` replaces (the runner knows
    it); without it a Replace is judged on both sides (it must pass as a buy *and* a sell).
    """
    if (
        type(intent) is PlaceLimit
        and state is not TradingState.HALTED
        # well formed (what _shape accepts, tested without building any text: every quote)
        and type(intent.side) is Side
        and type(intent.price) is int
        and 0 < intent.price <= INT64_MAX
        and type(intent.quantity) is int
        and 0 < intent.quantity <= INT64_MAX
        and type(intent.persist) is bool
        and type(intent.ref) is int
    ):
        # Without the isinstance chain, _normalise, an _Order or a _Fmt (built only to word
        # a refusal): the rules read the fields directly.
        price, quantity = intent.price, intent.quantity
        return _judge("limit", intent.side, price, quantity, scales.bid_reservation(quantity, price, market),
                      False, view, market, limits, user, state, scales)
    bad = _shape(intent, market)
    if bad is not None:
        return _refuse("invalid_intent", bad)
    if isinstance(intent, (Cancel, CancelAll)):
        return None  # cancels are allowed in every state; only the rate budget applies
    if state is TradingState.HALTED:
        return _refuse("halted", f"trading is HALTED; only cancels are allowed, not {type(intent).__name__}")
    assert isinstance(intent, (PlaceLimit, PlaceMarket, Replace))
    if isinstance(intent, Replace):
        sides = (replace_side,) if replace_side is not None else (Side.BUY, Side.SELL)
        notional = scales.bid_reservation(intent.quantity, intent.price, market)
        for side in sides:
            refusal = _judge("replace", side, intent.price, intent.quantity, notional, False,
                             view, market, limits, user, state, scales)
            if refusal is not None:
                return refusal
        return None
    o = _normalise(intent, view, market, scales)
    return _judge(o.kind, o.side, o.price, o.quantity, o.notional, o.by_total, view, market, limits, user, state, scales)


def _judge(
    kind: str,
    side: Side,
    price: int | None,
    quantity: int | None,
    notional: int | None,
    by_total: bool,
    view: MarketView,
    market: Market,
    limits: RiskLimits,
    user: UserRiskLimits,
    state: TradingState,
    scales: Scales,
) -> Refusal | None:
    """The per-order rules for one placement (the fields of an :class:`_Order`).  The
    :class:`_Fmt` that words a refusal is made only for one (not for every order)."""
    buy = side is Side.BUY
    verb = "buy" if buy else "sell"
    if notional is not None and notional > INT64_MAX:
        fmt = _Fmt(market, scales)
        return _refuse("invalid_intent", f"order total would overflow: {fmt.total(notional)} does not fit 64 bits")

    # Worst case: this order and every open order of the strategy on the same side fill.
    worst, open_same = view.position, 0
    if quantity is not None:
        if buy:
            worst = view.position + view.open_buy_quantity + quantity
            open_same = view.open_buy_quantity
        else:
            worst = view.position - view.open_sell_quantity - quantity
            open_same = view.open_sell_quantity

    if state is TradingState.REDUCING:
        if quantity is None:
            return _refuse(
                "reducing",
                "trading is REDUCING and a market order by total cannot be sized without a far-side price",
            )
        # Only towards zero, never past it: the position must be on the other side and stay there.
        ok = (view.position < 0 and worst <= 0) if buy else (view.position > 0 and worst >= 0)
        if not ok:
            fmt = _Fmt(market, scales)
            return _refuse(
                "reducing",
                f"trading is REDUCING; a {verb} of {fmt.qty(quantity)} with open {verb}s "
                f"{fmt.qty(open_same)} would take the position from {fmt.qty(view.position, True)} "
                f"to {fmt.qty(worst, True)}, not towards zero",
            )

    if limits.max_order_quantity is not None:
        if quantity is None:
            return _refuse("max_order_quantity", f"cannot size a market {verb} by total: no best {'ask' if buy else 'bid'}")
        if quantity > limits.max_order_quantity:
            est = " (estimated at the best price)" if by_total else ""
            fmt = _Fmt(market, scales)
            return _refuse(
                "max_order_quantity",
                f"{fmt.qty(quantity)}{est} > limit {fmt.qty(limits.max_order_quantity)}",
            )

    if limits.max_order_notional is not None:
        if notional is None:
            return _refuse("max_order_notional", f"cannot value a market {verb}: no best {'ask' if buy else 'bid'}")
        if notional > limits.max_order_notional:
            fmt = _Fmt(market, scales)
            return _refuse("max_order_notional", f"{fmt.total(notional)} > limit {fmt.total(limits.max_order_notional)}")

    if limits.max_position is not None:
        if quantity is None:
            return _refuse("max_position", f"cannot size a market {verb} by total: no best {'ask' if buy else 'bid'}")
        # A sell only moves the position down, so only the short bound can break (and a long
        # position above the limit can always be sold down), and vice versa.
        if (worst > limits.max_position) if buy else (worst < -limits.max_position):
            fmt = _Fmt(market, scales)
            return _refuse(
                "max_position",
                f"worst-case position {fmt.qty(worst, True)} exceeds limit {fmt.qty(limits.max_position)} "
                f"(position {fmt.qty(view.position, True)}, open {verb}s {fmt.qty(open_same)}, "
                f"this {verb} {fmt.qty(quantity)})",
            )

    if kind == "limit":  # market orders never rest; a replace swaps one resting order for another
        if limits.max_open_orders is not None and view.open_orders + 1 > limits.max_open_orders:
            return _refuse("max_open_orders", f"{view.open_orders} open + 1 > limit {limits.max_open_orders}")
        if view.user_open_orders + 1 > user.max_open_orders:
            return _refuse(
                "user_max_open_orders",
                f"the user has {view.user_open_orders} open + 1 > limit {user.max_open_orders} (LIMITS.md)",
            )

    if price is not None and limits.price_band_bps is not None:
        ref = _reference(view, limits.price_band_reference)
        if ref is None:
            # Fail closed: with a band configured and nothing to measure against, refuse.
            fmt = _Fmt(market, scales)
            return _refuse("price_band", f"no reference price (no bid and ask for a mid, no last trade) for a {verb} at {fmt.price(price)}")
        num, den, label = ref
        off = abs(price * den - num) * 10000  # |price - num/den| * 10000 * den
        if off > limits.price_band_bps * num:
            fmt = _Fmt(market, scales)
            return _refuse(
                "price_band",
                f"{verb} at {fmt.price(price)} is {ceil_div(off, num)} bps from the {label} "
                f"{fmt.ratio(num, den)} > band {limits.price_band_bps} bps",
            )

    if view.own_resting or view.own_best_bid is not None or view.own_best_ask is not None:
        hi_bid, lo_ask = _own_best(view)
        if price is None:
            # A market order may sweep any depth, so any own resting order on the far side
            # could become a self-trade.
            own = lo_ask if buy else hi_bid
            if own is not None:
                fmt = _Fmt(market, scales)
                return _refuse(
                    "self_cross",
                    f"a market {verb} could trade with the user's own resting {'ask' if buy else 'bid'} at {fmt.price(own)}",
                )
        elif buy and lo_ask is not None and price >= lo_ask:
            fmt = _Fmt(market, scales)
            return _refuse("self_cross", f"buy at {fmt.price(price)} would cross the user's own resting ask at {fmt.price(lo_ask)}")
        elif not buy and hi_bid is not None and price <= hi_bid:
            fmt = _Fmt(market, scales)
            return _refuse("self_cross", f"sell at {fmt.price(price)} would cross the user's own resting bid at {fmt.price(hi_bid)}")
    return None


def token_cost(intent: object, view: MarketView) -> int:
    """Exchange "order placements" (LIMITS.md, cancels included) this intent will spend.

    A Replace is a CancelOrder plus a PlaceOrder; a strategy's CancelAll becomes one
    CancelOrder per open order (never the user-wide CancelAllOrders, which would also reset
    the tonce counter).
    """
    if isinstance(intent, Replace):
        return 2
    if isinstance(intent, CancelAll):
        return max(view.open_orders, 0)
    return 1
