"""Own orders and their fills: an explicit state machine fed by replies and notices.

Every PlaceOrder we send becomes an :class:`Order` in the :class:`OrderTracker`.  From then on
three kinds of input move it, all plain ``def`` calls made by the runner in arrival order:

* our own actions: :meth:`~OrderTracker.place`, :meth:`~OrderTracker.on_cancel_sent`,
  :meth:`~OrderTracker.resubmit`;
* replies: :meth:`~OrderTracker.on_place_reply`, :meth:`~OrderTracker.on_cancel_reply`,
  :meth:`~OrderTracker.on_cancel_all_reply`, or their loss (:meth:`~OrderTracker.on_place_lost`,
  :meth:`~OrderTracker.on_cancel_lost`);
* notices: :meth:`~OrderTracker.on_notice` (OrderOpened, OrdersMatched, OrderClosed), and the
  periodic audit :meth:`~OrderTracker.apply_open_orders` (a GetOrders reply).

States and the moves between them (``TRANSITIONS`` is this table as data; any other move
raises :class:`~engine.errors.InvalidTransition`)::

    PENDING ──reply ok──> OPEN ──fill──> PARTIALLY_FILLED ──fill rem=0──> FILLED
       │  └─error reply─> REJECTED          │  (cancel sent)           ┌──> CANCELLED
       └──reply lost──> UNKNOWN             └──────> PENDING_CANCEL ───┘

* **UNKNOWN is not failed** (RELIABILITY §0.1): a lost reply leaves the order UNKNOWN until a
  notice, a late reply (B5: UNKNOWN -> OPEN, and nothing is re-sent), a resubmission with the
  same tonce, or reconciliation settles it.
* **Notices may come before the reply** (P5): OrderOpened/OrdersMatched/OrderClosed carry our
  tonce (``tonce``/``bid_tonce``/``ask_tonce``), so a PENDING order is found by tonce; after
  the reply, by id.  A notice is *ours* iff the tonce key is present (msgspec ``UNSET`` =
  absent = someone else's order; ``None`` = ours, placed without a tonce).  Own notices for
  an order placed without a tonce, whose id we do not know yet, are held back and replayed
  when the PlaceOrder reply names the id (IMPL-GUIDE's second strategy).
* **Late notices after a terminal state are legal**: replies and notices travel on two
  unsynchronised channels, so a CancelOrder reply may overtake the OrdersMatched that beat the
  cancel.  Fills are applied to terminal orders; an OrderClosed refines a *provisional*
  terminal state (one we inferred: cancel answered "not found", or the order vanished from
  GetOrders) and confirms it.
* **Each fill is counted once** (F13, Hummingbot #1663): the protocol has no trade ids, so an
  exact repeat of a trade (time, quantity, price, total, both order ids and both
  remainders) is dropped.  Fills are
  counted only from OrdersMatched notices; GetOrders updates ``remaining`` but never invents
  fill quantities.  When a later balance check proves a fill was lost, the runner records one
  aggregate with :meth:`~OrderTracker.record_inferred_fill`; a notice for a fill already
  covered by that aggregate then only refines the detail (no second count).
* **The bid remaining follows ``bid_rem``**: the buyer's fee comes out of the reservation, so
  the remaining quantity shrinks by more than the traded quantity (IMPL-GUIDE).
* **Only notices move ``remaining``.**  Notices come in engine order; replies do not (a
  CancelOrder or GetOrders reply can overtake the OrdersMatched that preceded it), and the
  remaining *before* each fill is what the balance view needs for the bid refund.  What a
  reply or audit says is kept in ``exchange_remaining``; an inferred fill adopts it.

The notice handlers return :class:`Opened`, :class:`Filled` and :class:`Closed` events that
carry everything the balance view and positions need (the order's limit price and its
remaining *before* the fill, for the bid refund), so the runner feeds all three from one
notice stream in order::

    for event in orders.on_notice(notice):
        balances.apply(event)
        positions.apply(event)
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, ValuesView
from dataclasses import dataclass, field

from engine.errors import ExchangeError, InvalidTransition, RemoteProtocolError, TonceOutOfSequence
from engine.protocol.messages import (
    UNSET,
    CancelAllOrdersReply,
    CancelOrder,
    CancelOrderReply,
    ErrorReply,
    GetOrdersReply,
    Notice,
    OpenOrder,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
)
from engine.scale import INT64_MAX, INT64_MIN, Market, market_by_codes
from engine.strategy import Side

__all__ = [
    "OrderState",
    "TERMINAL",
    "TRANSITIONS",
    "Fill",
    "Order",
    "Opened",
    "Filled",
    "Closed",
    "OrderEvent",
    "ReconcileReport",
    "TrackerStats",
    "OrderTracker",
]


_TradeKey = tuple[int, int, int, int, object, object, object, object]


def _trade_key(n: OrdersMatched) -> _TradeKey:
    """What identifies one trade without a trade id: time, amounts, and both orders with
    their remainders (a remainder strictly falls with every trade of a limit order, and a
    market order's trades differ in the resting order or its remainder)."""
    return (n.time, n.quantity, n.price, n.total, n.bid, n.bid_rem, n.ask, n.ask_rem)


class OrderState(enum.Enum):
    PENDING = "pending"
    """PlaceOrder sent, no reply yet."""
    OPEN = "open"
    """Resting on the book, nothing traded."""
    PARTIALLY_FILLED = "partially_filled"
    """Something traded, more may trade (also a market order that is trading)."""
    PENDING_CANCEL = "pending_cancel"
    """CancelOrder sent; fills may still arrive."""
    UNKNOWN = "unknown"
    """The PlaceOrder reply was lost (timeout or dead connection): maybe placed, maybe not."""
    FILLED = "filled"
    CANCELLED = "cancelled"
    """Closed with a quantity left (cancelled, expired with its session, or a market order
    that ran out of liquidity or balance)."""
    REJECTED = "rejected"
    """The PlaceOrder got an error reply: the order never existed."""

    # Members are singletons compared by identity, so identity hashing is consistent and
    # spares Enum's Python-level __hash__ on every table lookup of the notice hot path.
    __hash__ = object.__hash__


_S = OrderState
TERMINAL = frozenset({_S.FILLED, _S.CANCELLED, _S.REJECTED})

TRANSITIONS: Mapping[OrderState, frozenset[OrderState]] = {
    _S.PENDING: frozenset(
        {_S.OPEN, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED, _S.REJECTED, _S.UNKNOWN, _S.PENDING_CANCEL}
    ),
    _S.UNKNOWN: frozenset(
        {_S.PENDING, _S.OPEN, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED, _S.REJECTED, _S.PENDING_CANCEL}
    ),
    _S.OPEN: frozenset({_S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED, _S.PENDING_CANCEL}),
    _S.PARTIALLY_FILLED: frozenset({_S.FILLED, _S.CANCELLED, _S.PENDING_CANCEL}),
    _S.PENDING_CANCEL: frozenset(
        {_S.PENDING, _S.OPEN, _S.PARTIALLY_FILLED, _S.UNKNOWN, _S.FILLED, _S.CANCELLED, _S.REJECTED}
    ),
    # Terminal states move only while *provisional* (our inference, not the exchange's word:
    # ``Order.closed_confirmed`` is False), when the exchange's OrderClosed, a late reply or
    # GetOrders corrects them; and a rate-limited REJECTED may be resubmitted (F11).
    _S.FILLED: frozenset({_S.CANCELLED, _S.OPEN, _S.PARTIALLY_FILLED}),
    _S.CANCELLED: frozenset({_S.FILLED, _S.OPEN, _S.PARTIALLY_FILLED}),
    _S.REJECTED: frozenset({_S.PENDING, _S.OPEN, _S.PARTIALLY_FILLED, _S.FILLED, _S.CANCELLED}),
}
"""Every legal state change.  Staying in the same state is always allowed (a late or
repeated input); the extra guards on terminal states are checked by the tracker."""


@dataclass(frozen=True, slots=True)
class Fill:
    """One trade of one of our orders, as OrdersMatched reported it (or inferred by an audit).

    ``remaining`` is the order's remaining base quantity after the trade (``None`` for a
    market order).  ``counter_fee``/``base_fee`` are *our* side's fees.
    """

    time: int
    quantity: int
    price: int
    total: int
    counter_fee: int
    base_fee: int
    remaining: int | None
    inferred: bool = False


@dataclass(slots=True, eq=False)
class Order:
    """One of our orders.  Mutated only by the :class:`OrderTracker`; read it, do not write.

    ``quantity`` is the asked base quantity (positive; ``None`` for a market order by
    ``total``).  ``price`` is ``None`` for a market order.  ``remaining`` is the base
    quantity still on the book (limit orders; it follows ``bid_rem``/``ask_rem``), or what a
    market order's reply said could not be traded (base or counter, like the request).
    ``ref`` is the client intent id, ``strategy`` the owner's name.  Local timestamps come
    from the tracker's injected clock; ``exchange_time`` is the exchange's µs open time.
    """

    ref: int
    strategy: str
    market: Market
    side: Side
    quantity: int | None
    price: int | None
    total: int | None
    tonce: int | None
    epoch: int
    persist: bool
    state: OrderState = OrderState.PENDING
    id: int | None = None
    remaining: int = 0
    filled: int = 0
    filled_total: int = 0
    counter_fees: int = 0
    base_fees: int = 0
    fills: list[Fill] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    closed_at: float | None = None
    exchange_time: int | None = None
    attempts: int = 1
    reason: str = ""
    error: ExchangeError | None = None
    closed_confirmed: bool = False
    """False while a terminal state is our inference; True once the exchange said so."""
    inferred_pending: int = 0
    """Base quantity of inferred (audit) fills not yet matched by a real notice."""
    exchange_remaining: int | None = None
    """The remaining the last reply or audit reported (GetOrders, CancelOrder); ``remaining``
    itself moves only with the ordered notice stream (see ``OrderTracker``)."""
    wire_checked: bool = False
    """Set by :meth:`OrderTracker.place` when every field :meth:`to_command` puts on the wire
    is what the codec's check accepts (ints within int64, a limit order's ``persist`` a bool), so the runner
    sends its PlaceOrder without that check (``Connection.send_nowait(..., vouched=True)``).
    The fields it covers never change after the placement."""
    _cancel_from: OrderState | None = None
    _fill_keys: set[_TradeKey] = field(default_factory=set)
    _told: OrderState | None = None  # the state the strategy last saw (on_order), TradingCore's

    @property
    def is_open(self) -> bool:
        """True while the order may still trade (pending, open, partially filled, unknown)."""
        return self.state not in TERMINAL

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def is_market(self) -> bool:
        return self.price is None

    @property
    def intent_id(self) -> int:
        """Alias of ``ref``: the client intent id this order carries out."""
        return self.ref

    @property
    def signed_quantity(self) -> int:
        """The wire sign convention: positive for a bid, negative for an ask."""
        return (self.quantity or 0) * int(self.side)

    def to_command(self, tag: int | None = None) -> PlaceOrder:
        """The PlaceOrder command that places (or resubmits) this order."""
        return PlaceOrder(
            tag=UNSET if tag is None else tag,
            tonce=UNSET if self.tonce is None else self.tonce,
            base=self.market.base.code,
            counter=self.market.counter.code,
            quantity=UNSET if self.quantity is None else self.quantity * int(self.side),
            price=UNSET if self.price is None else self.price,
            total=UNSET if self.total is None else self.total * int(self.side),
            persist=UNSET if self.price is None else self.persist,
        )

    def cancel_command(self, tag: int | None = None) -> CancelOrder:
        """CancelOrder by id once known, else by tonce (F4b: cancel before the reply)."""
        t = UNSET if tag is None else tag
        if self.id is not None:
            return CancelOrder(tag=t, id=self.id)
        if self.tonce is not None:
            return CancelOrder(tag=t, tonce=self.tonce)
        raise InvalidTransition(f"order ref={self.ref}: cannot cancel before its id is known without a tonce")

    def __repr__(self) -> str:
        what = "market" if self.price is None else f"@ {self.price}"
        size = self.quantity if self.quantity is not None else f"total {self.total}"
        return (
            f"Order(ref={self.ref}, {self.strategy or '-'}, {self.market.name} {self.side.name} {size} {what}, "
            f"{self.state.name}, id={self.id}, tonce={self.tonce}, filled={self.filled}, rem={self.remaining})"
        )


# -- events the notice handlers return ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    """An own order is now resting (OrderOpened)."""

    order: Order | None
    market: Market
    side: Side
    quantity: int
    price: int


@dataclass(frozen=True, slots=True)
class Filled:
    """One fill of an own order with what the balance view needs for the bid refund.

    ``order_price`` is the order's limit price (``None``: market order) and
    ``prev_remaining``/``remaining`` its remaining base quantity before and after the
    trade (``None`` when unknown or a market order).  ``order`` is ``None`` for an own
    notice we cannot attribute (another process of the same user, or a previous run).
    ``inferred`` marks an aggregate recorded by an audit: the balance already moved.
    """

    order: Order | None
    market: Market
    side: Side
    fill: Fill
    order_price: int | None
    prev_remaining: int | None
    remaining: int | None
    inferred: bool = False


@dataclass(frozen=True, slots=True)
class Closed:
    """An own order left the book (OrderClosed); ``remaining`` base units were left in it."""

    order: Order | None
    market: Market
    side: Side
    remaining: int
    price: int


OrderEvent = Opened | Filled | Closed


@dataclass(slots=True)
class ReconcileReport:
    """What :meth:`OrderTracker.apply_open_orders` changed, for the log and the runner."""

    adopted: list[Order] = field(default_factory=list)
    """Open on the exchange, unknown here: now tracked (strategy from the intent map, if any)."""
    confirmed_unknown: list[Order] = field(default_factory=list)
    """UNKNOWN orders found open: now OPEN (they were placed)."""
    settled_unknown: list[Order] = field(default_factory=list)
    """UNKNOWN orders absent from GetOrders: settled terminal with a reason."""
    vanished: list[Order] = field(default_factory=list)
    """Open here, absent there: closed with notices lost; FILLED or CANCELLED provisionally."""
    reopened: list[Order] = field(default_factory=list)
    """Provisionally terminal here, open there: back to OPEN/PARTIALLY_FILLED."""
    drift: list[tuple[Order, int, int]] = field(default_factory=list)
    """(order, our remaining, exchange remaining) where the exchange's is smaller: lost fills."""

    @property
    def clean(self) -> bool:
        """True when the audit found nothing to repair."""
        return not (self.adopted or self.settled_unknown or self.vanished or self.reopened or self.drift)


@dataclass(slots=True)
class TrackerStats:
    notices: int = 0
    own_notices: int = 0
    fills: int = 0
    duplicate_fills: int = 0
    absorbed_fills: int = 0
    unattributed: int = 0
    held_back: int = 0


_MAX_HELD = 10_000  # own notices for not-yet-known ids kept for replay (tonce-less orders)


class OrderTracker:
    """All of one user's own orders, indexed by intent ref, tonce and exchange id.

    ``clock`` gives local time in seconds (inject ``trio.current_time`` in the runner, a fake
    in tests); it stamps ``created_at``/``updated_at``/``closed_at``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_ref: dict[int, Order] = {}
        self._by_tonce: dict[int, Order] = {}
        self._by_id: dict[int, Order] = {}
        self._open: dict[int, Order] = {}  # ref -> order, non-terminal only
        self._held: dict[int, list[Notice]] = {}  # exchange id -> own notices awaiting a reply
        self.stats = TrackerStats()

    # -- queries -----------------------------------------------------------------------------

    def get(self, ref: int) -> Order | None:
        """The order for intent ``ref`` (or None)."""
        return self._by_ref.get(ref)

    def by_tonce(self, tonce: int) -> Order | None:
        return self._by_tonce.get(tonce)

    def by_id(self, order_id: int) -> Order | None:
        return self._by_id.get(order_id)

    def open_orders(self, strategy: str | None = None, market: Market | None = None) -> list[Order]:
        """Non-terminal orders, optionally of one strategy and/or market, oldest first."""
        return [
            o
            for o in self._open.values()
            if (strategy is None or o.strategy == strategy) and (market is None or o.market is market)
        ]

    def open_values(self) -> ValuesView[Order]:
        """A live view of every non-terminal order (no copy: do not change the tracker while
        iterating it).  ``len()`` of it is the open-order count."""
        return self._open.values()

    def unknown_orders(self) -> list[Order]:
        """Orders whose PlaceOrder outcome is still unknown (RELIABILITY O7 wants none)."""
        return [o for o in self._open.values() if o.state is OrderState.UNKNOWN]

    def __iter__(self) -> Iterator[Order]:
        return iter(self._by_ref.values())

    def __len__(self) -> int:
        return len(self._by_ref)

    # -- our own actions ---------------------------------------------------------------------

    def place(
        self,
        ref: int,
        market: Market,
        side: Side,
        *,
        quantity: int | None = None,
        price: int | None = None,
        total: int | None = None,
        tonce: int | None = None,
        epoch: int = 0,
        strategy: str = "",
        persist: bool = True,
        now: float | None = None,
    ) -> Order:
        """Record a PlaceOrder being sent now; the order starts PENDING.

        A limit order has ``quantity`` and ``price``; a market order ``quantity`` or
        ``total``.  All amounts are positive scaled ints; ``side`` carries the sign.
        ``now`` is the tracker's clock read by a caller that has it at hand (the runtime
        reads it once for the order and its balance reservation).
        """
        # Checked without building a message first: this runs before every PlaceOrder.
        if ref in self._by_ref:
            raise InvalidTransition(f"place(ref={ref}): intent ref {ref} already has an order")
        if type(side) is not Side:
            side = Side(side)
        if not (total is None and type(quantity) is int and quantity > 0
                and (price is None or (type(price) is int and price > 0))):  # else: say what is wrong
            for name, v in (("quantity", quantity), ("price", price), ("total", total)):
                if v is not None and (type(v) is not int or v <= 0):
                    raise InvalidTransition(f"place(ref={ref}): {name} must be a positive int, was {v!r}")
            if not ((quantity is not None and total is None)
                    or (total is not None and quantity is None and price is None)):
                raise InvalidTransition(
                    f"place(ref={ref}): give quantity (and price for a limit order), or total for a market order")
        if tonce is not None:
            if type(tonce) is not int or tonce <= 0:
                raise InvalidTransition(f"place(ref={ref}): tonce must be a positive int, was {tonce!r}")
            if tonce in self._by_tonce:
                raise InvalidTransition(
                    f"place(ref={ref}): tonce {tonce} already used by ref {self._by_tonce[tonce].ref}")
        # The amounts and the tonce are positive ints here (else we raised above), and
        # ``side`` a Side (so ``quantity * side`` keeps the bound): only the int64 bound,
        # ``persist`` and the asset codes are left to vouch for the PlaceOrder (wire_checked).
        base, counter = market.base.code, market.counter.code
        wire_checked = (
            (quantity is None or quantity <= INT64_MAX)
            and (price is None or (price <= INT64_MAX and type(persist) is bool))  # persist: limit orders only
            and (total is None or total <= INT64_MAX)
            and (tonce is None or tonce <= INT64_MAX)
            and type(base) is int and INT64_MIN <= base <= INT64_MAX
            and type(counter) is int and INT64_MIN <= counter <= INT64_MAX
        )
        if now is None:
            now = self._clock()
        # Order's ten leading fields by position, in their declared order (ref, strategy,
        # market, side, quantity, price, total, tonce, epoch, persist): ~200 ns less than by
        # keyword, before every order.
        order = Order(
            ref, strategy, market, side, quantity, price, total, tonce, epoch, persist,
            remaining=quantity or 0,
            created_at=now,
            updated_at=now,
            wire_checked=wire_checked,
        )
        self._by_ref[ref] = order
        self._open[ref] = order
        if tonce is not None:
            self._by_tonce[tonce] = order
        return order

    def resubmit(self, order: Order) -> Order:
        """The same PlaceOrder (same tonce) is being sent again: UNKNOWN (or rate-limited
        REJECTED) -> PENDING.  Check ``TonceAllocator.may_resubmit`` first."""
        if order.state is OrderState.REJECTED:
            rate_limited = order.error is not None and order.error.error_code == 6
            if order.closed_confirmed and not rate_limited:
                raise InvalidTransition(f"{order!r}: only an UNKNOWN or rate-limited (error 6) order may be resubmitted")
            self._open[order.ref] = order
            order.closed_at = None
        elif order.state is not OrderState.UNKNOWN:
            raise InvalidTransition(f"{order!r}: only an UNKNOWN or rate-limited (error 6) order may be resubmitted")
        self._move(order, OrderState.PENDING, "resubmit")
        order.closed_confirmed = False
        order.attempts += 1
        order.error = None
        order.reason = ""
        return order

    def on_cancel_sent(self, order: Order) -> None:
        """A CancelOrder for ``order`` is being sent (by id, or by tonce before the reply)."""
        if order.state is OrderState.PENDING_CANCEL:
            return  # a repeated cancel is harmless
        if order.is_terminal:
            raise InvalidTransition(f"{order!r}: cannot cancel a {order.state.name} order")
        order._cancel_from = order.state
        self._move(order, OrderState.PENDING_CANCEL, "cancel sent")

    # -- replies -----------------------------------------------------------------------------

    def on_place_reply(self, order: Order, reply: PlaceOrderReply | ErrorReply) -> list[OrderEvent]:
        """Apply the PlaceOrder reply; returns events of own notices held back for its id."""
        if isinstance(reply, ErrorReply):
            self._on_place_error(order, ExchangeError.from_reply(reply.error_code, reply.error_msg))
            return []
        self._revive(order, "success reply")
        if order.price is None:
            return self._on_market_reply(order, reply)
        if reply.id is UNSET:
            raise RemoteProtocolError(f"PlaceOrder reply for a limit order without an id ({order!r})", field="$.id")
        self._bind_id(order, reply.id)
        if reply.time is not UNSET and order.exchange_time is None:
            order.exchange_time = reply.time
        if order.state in (OrderState.PENDING, OrderState.UNKNOWN):
            # B5: a late success after a timeout lands here too: UNKNOWN -> OPEN, no resend.
            self._move(order, OrderState.PARTIALLY_FILLED if order.filled else OrderState.OPEN, "place reply")
        elif order.state is OrderState.PENDING_CANCEL and order._cancel_from in (OrderState.PENDING, OrderState.UNKNOWN):
            order._cancel_from = OrderState.PARTIALLY_FILLED if order.filled else OrderState.OPEN
        order.updated_at = self._clock()
        return self._replay_held(order)

    def on_place_lost(self, order: Order, reason: str = "reply lost") -> None:
        """No reply will come (connection died, or our timeout fired): PENDING -> UNKNOWN.

        Orders that notices already showed to be placed keep their state: the id and fills
        are known, nothing is unknown about them.
        """
        if order.state is OrderState.PENDING:
            self._move(order, OrderState.UNKNOWN, reason)
            order.reason = reason
        elif order.state is OrderState.PENDING_CANCEL and order._cancel_from is OrderState.PENDING:
            order._cancel_from = OrderState.UNKNOWN
            order.reason = reason

    def on_cancel_reply(self, order: Order, reply: CancelOrderReply | ErrorReply) -> None:
        """Apply the CancelOrder reply.  The balance release comes with the OrderClosed notice.

        Error 1 ("not found") means the order is no longer open: it was filled (the usual
        race, F4a), closed some other way, or never placed (F4c).  It never leads to a
        retry; the state becomes terminal at once (FILLED unless we know better) and stays
        provisional until the exchange's OrderClosed or an audit confirms it.
        """
        now = self._clock()
        if isinstance(reply, ErrorReply):
            err = ExchangeError.from_reply(reply.error_code, reply.error_msg)
            if err.error_code == 1:
                if order.is_terminal:
                    return
                if order.id is None and order.filled == 0 and order.state is OrderState.PENDING_CANCEL and (
                    order._cancel_from in (OrderState.PENDING, OrderState.UNKNOWN)
                ):
                    # Cancel by tonce before the place reply: the place itself may have
                    # failed (F4c) or not run yet; its own reply settles the order.
                    self._move(order, order._cancel_from, "cancel: not found")
                    return
                # F4a: the usual cause is a fill racing the cancel; its notices are on the way.
                order.reason = "cancel: order not found (filled or closed before the cancel)"
                self._close(order, OrderState.FILLED, now, confirmed=False)
                return
            # Any other error: the cancel did not happen; the order is as it was.
            order.error = err
            if order.state is OrderState.PENDING_CANCEL and order._cancel_from is not None:
                self._move(order, order._cancel_from, f"cancel failed: {err}")
            return
        self._bind_id(order, reply.id)
        order.exchange_remaining = abs(reply.quantity)
        if order.state is OrderState.CANCELLED and order.closed_confirmed:
            return  # the OrderClosed notice got here first
        if order.state is OrderState.FILLED and order.closed_confirmed:
            raise InvalidTransition(f"{order!r}: cancel succeeded for an order the exchange said was filled")
        order.reason = order.reason or "cancelled"
        self._close(order, OrderState.CANCELLED, now, confirmed=True)

    def on_cancel_lost(self, order: Order) -> None:
        """The CancelOrder reply will not come: back to the state before the cancel (the
        next audit, or the OrderClosed notice if it did happen, settles it)."""
        if order.state is OrderState.PENDING_CANCEL and order._cancel_from is not None:
            self._move(order, order._cancel_from, "cancel reply lost")

    def on_cancel_all_reply(self, reply: CancelAllOrdersReply | ErrorReply) -> list[Order]:
        """Mark every order the CancelAllOrders reply lists as CANCELLED; returns them.

        Orders it does not list were already closed or not yet placed; their own notices
        and replies settle them.
        """
        if isinstance(reply, ErrorReply):
            return []
        now = self._clock()
        done = []
        for o in reply.orders:
            order = self._find(o.id, o.tonce)
            if order is None:
                continue
            self._bind_id(order, o.id)
            order.exchange_remaining = abs(o.quantity)
            if not (order.state is OrderState.CANCELLED and order.closed_confirmed):
                order.reason = "cancelled by CancelAllOrders"
                self._close(order, OrderState.CANCELLED, now, confirmed=True)
            done.append(order)
        return done

    # -- notices -----------------------------------------------------------------------------

    def on_notice(self, notice: Notice) -> list[OrderEvent]:
        """Apply any notice; own-order notices return events, everything else returns []."""
        t = type(notice)
        if t is OrdersMatched:
            return self.on_matched(notice)  # type: ignore[arg-type]
        if t is OrderOpened:
            return self.on_opened(notice)  # type: ignore[arg-type]
        if t is OrderClosed:
            return self.on_closed(notice)  # type: ignore[arg-type]
        return []

    def on_opened(self, n: OrderOpened) -> list[OrderEvent]:
        """OrderOpened: a PENDING/UNKNOWN order is now OPEN (P5: maybe before the reply)."""
        self.stats.notices += 1
        if n.tonce is UNSET:
            return []  # someone else's order
        self.stats.own_notices += 1
        return self._opened(n)

    def on_matched(self, n: OrdersMatched) -> list[OrderEvent]:
        """OrdersMatched: one :class:`Filled` per own side (both sides on a self-trade)."""
        self.stats.notices += 1
        if n.bid_tonce is UNSET and n.ask_tonce is UNSET:
            return []
        self.stats.own_notices += 1
        return self._matched(n)

    def on_closed(self, n: OrderClosed) -> list[OrderEvent]:
        """OrderClosed: FILLED when nothing was left, else CANCELLED; always a :class:`Closed`."""
        self.stats.notices += 1
        if n.tonce is UNSET:
            return []
        self.stats.own_notices += 1
        return self._closed(n)

    def _apply(self, n: Notice) -> list[OrderEvent]:
        if isinstance(n, OrdersMatched):
            return self._matched(n)
        if isinstance(n, OrderOpened):
            return self._opened(n)
        if isinstance(n, OrderClosed):
            return self._closed(n)
        return []

    def _opened(self, n: OrderOpened) -> list[OrderEvent]:
        order = self._find(n.id, n.tonce)
        if order is None:
            return self._unattributed(n, n.id, n.tonce)
        self._revive(order, "OrderOpened")
        self._bind_id(order, n.id)
        order.exchange_time = n.time
        order.remaining = abs(n.quantity)
        if order.state in (OrderState.PENDING, OrderState.UNKNOWN):
            self._move(order, OrderState.PARTIALLY_FILLED if order.filled else OrderState.OPEN, "OrderOpened")
        elif order.state is OrderState.PENDING_CANCEL and order._cancel_from in (OrderState.PENDING, OrderState.UNKNOWN):
            order._cancel_from = OrderState.PARTIALLY_FILLED if order.filled else OrderState.OPEN
        order.updated_at = self._clock()
        return [Opened(order, order.market, order.side, abs(n.quantity), n.price)]

    def _matched(self, n: OrdersMatched) -> list[OrderEvent]:
        events: list[OrderEvent] = []
        if n.bid_tonce is not UNSET:
            fee_c = 0 if n.bid_counter_fee is UNSET else n.bid_counter_fee
            fee_b = 0 if n.bid_base_fee is UNSET else n.bid_base_fee
            rem = None if n.bid_rem is UNSET else n.bid_rem
            oid = None if n.bid is UNSET else n.bid
            events.extend(self._own_fill(n, Side.BUY, oid, n.bid_tonce, rem, fee_c, fee_b))
        if n.ask_tonce is not UNSET:
            fee_c = 0 if n.ask_counter_fee is UNSET else n.ask_counter_fee
            fee_b = 0 if n.ask_base_fee is UNSET else n.ask_base_fee
            rem = None if n.ask_rem is UNSET else n.ask_rem
            oid = None if n.ask is UNSET else n.ask
            events.extend(self._own_fill(n, Side.SELL, oid, n.ask_tonce, rem, fee_c, fee_b))
        return events

    def _closed(self, n: OrderClosed) -> list[OrderEvent]:
        order = self._find(n.id, n.tonce)
        if order is None:
            return self._unattributed(n, n.id, n.tonce)
        self._revive(order, "OrderClosed")
        self._bind_id(order, n.id)
        left = abs(n.quantity)
        target = OrderState.FILLED if left == 0 else OrderState.CANCELLED
        if order.closed_confirmed and order.state is not target:
            raise InvalidTransition(f"{order!r}: OrderClosed with {left} left contradicts the confirmed state")
        order.remaining = left
        if not order.closed_confirmed:
            if left and not order.reason:
                order.reason = "cancelled" if order.state is OrderState.PENDING_CANCEL else "closed by the exchange"
            self._close(order, target, self._clock(), confirmed=True)
        return [Closed(order, order.market, order.side, left, n.price)]

    # -- audits ------------------------------------------------------------------------------

    def apply_open_orders(
        self,
        open_orders: GetOrdersReply | Iterable[OpenOrder],
        *,
        intents: Mapping[int, tuple[int, str]] | None = None,
        requested_at: float | None = None,
    ) -> ReconcileReport:
        """Reconcile with a GetOrders reply (F5 start-up barrier, F13 periodic audit).

        * An exchange order we do not track is *adopted*: its tonce is looked up in
          ``intents`` (tonce -> (ref, strategy), from the intent journal); without a match it
          gets ``ref = -id`` and no strategy, and the runner applies its orphan policy.
        * UNKNOWN orders found open become OPEN; absent ones are settled terminal (REJECTED
          when no fill was seen: not placed, or closed with every notice lost).
        * Orders open here but absent there were closed while their notices were lost:
          FILLED if nothing was left, else CANCELLED, both *provisional* (a later OrderClosed
          or balance check may correct them; the runner may add an inferred fill).
        * A smaller remaining on the exchange is recorded as ``drift`` (and in
          ``exchange_remaining``); ``remaining`` waits for the notices, which may still be on
          their way.  If a balance check shows they were lost, :meth:`record_inferred_fill`.

        GetOrders may be answered ahead of commands sent before it, so only orders untouched
        since ``requested_at`` (local clock when the GetOrders was sent) are judged absent,
        and PENDING orders never are: their PlaceOrder may not have run yet.
        """
        items = open_orders.orders if isinstance(open_orders, GetOrdersReply) else open_orders
        intents = intents or {}
        report = ReconcileReport()
        now = self._clock()
        present: set[int] = set()
        for o in items:
            order = self._find(o.id, o.tonce)
            left = abs(o.quantity)
            if order is None:
                order = self._adopt(o, intents, now)
                report.adopted.append(order)
                present.add(order.ref)
                continue
            present.add(order.ref)
            self._bind_id(order, o.id)
            if order.exchange_time is None:
                order.exchange_time = o.time
            if order.state is OrderState.UNKNOWN:
                self._move(order, OrderState.PARTIALLY_FILLED if order.filled else OrderState.OPEN, "found by GetOrders")
                report.confirmed_unknown.append(order)
            elif order.is_terminal:
                if order.closed_confirmed or order.state is OrderState.REJECTED:
                    continue  # the reply is older than the close we saw
                self._reopen(order)
                report.reopened.append(order)
            order.exchange_remaining = left
            if left < order.remaining:
                report.drift.append((order, order.remaining, left))
        for order in list(self._open.values()):
            if order.ref in present or order.state is OrderState.PENDING:
                continue
            if requested_at is not None and order.updated_at > requested_at:
                continue  # touched after the request: the reply may predate it
            if order.state is OrderState.PENDING_CANCEL and order._cancel_from is OrderState.PENDING:
                continue
            if order.state is OrderState.UNKNOWN or (
                order.state is OrderState.PENDING_CANCEL and order._cancel_from is OrderState.UNKNOWN
            ):
                if order.filled:
                    target = OrderState.FILLED if order.remaining == 0 else OrderState.CANCELLED
                    order.reason = "reply lost; absent from GetOrders after trading"
                    self._close(order, target, now, confirmed=False)
                else:
                    order.reason = "reply lost; absent from GetOrders: not placed, or closed with no notice seen"
                    self._close(order, OrderState.REJECTED, now, confirmed=False)
                report.settled_unknown.append(order)
                continue
            order.reason = "absent from GetOrders: closed while its notices were lost (filled or cancelled unknown)"
            target = OrderState.FILLED if order.remaining == 0 else OrderState.CANCELLED
            self._close(order, target, now, confirmed=False)
            report.vanished.append(order)
        return report

    def settle_vanished(self, order: Order, reason: str) -> None:
        """An order known to have been placed and absent from GetOrders: closed while its
        notices were lost, FILLED or CANCELLED provisionally (as an audit's ``vanished``)."""
        if order.is_terminal:
            return
        order.reason = reason
        target = OrderState.FILLED if order.remaining == 0 else OrderState.CANCELLED
        self._close(order, target, self._clock(), confirmed=False)

    def record_inferred_fill(
        self,
        order: Order,
        *,
        quantity: int,
        total: int,
        counter_fee: int = 0,
        base_fee: int = 0,
        remaining: int | None = None,
        time: int = 0,
    ) -> Filled:
        """Record one aggregate fill that an audit proved happened (balances moved) although
        no OrdersMatched was seen.  ``remaining`` (default: the audit's
        ``exchange_remaining``) becomes the order's remaining; notices for trades down to it
        that turn up later are absorbed, not counted again.  Returns the event for
        positions; the balance view ignores it (the observed balance already includes it)."""
        if type(quantity) is not int or quantity <= 0 or type(total) is not int or total < 0:
            raise InvalidTransition(f"{order!r}: inferred fill needs quantity > 0 and total >= 0")
        if remaining is None:
            remaining = order.exchange_remaining if order.exchange_remaining is not None else order.remaining
        prev = order.remaining
        order.remaining = min(order.remaining, remaining)
        price = (total * order.market.price_scale) // max(quantity, 1) if order.price is None else order.price
        fill = Fill(time, quantity, price, total, counter_fee, base_fee, order.remaining, inferred=True)
        order.fills.append(fill)
        order.filled += quantity
        order.filled_total += total
        order.counter_fees += counter_fee
        order.base_fees += base_fee
        order.inferred_pending += quantity
        if order.state is OrderState.OPEN:
            self._move(order, OrderState.PARTIALLY_FILLED, "inferred fill")
        order.updated_at = self._clock()
        return Filled(order, order.market, order.side, fill, order.price, prev, order.remaining, inferred=True)

    def prune(self, closed_before: float) -> int:
        """Forget terminal orders closed before ``closed_before`` (keep a while for late
        notices, B5); returns how many were dropped."""
        drop = [o for o in self._by_ref.values() if o.is_terminal and o.closed_at is not None and o.closed_at < closed_before]
        for o in drop:
            del self._by_ref[o.ref]
            if o.tonce is not None and self._by_tonce.get(o.tonce) is o:
                del self._by_tonce[o.tonce]
            if o.id is not None and self._by_id.get(o.id) is o:
                del self._by_id[o.id]
        return len(drop)

    # -- internals ---------------------------------------------------------------------------

    def _move(self, order: Order, target: OrderState, why: str) -> None:
        if target is not order.state and target not in TRANSITIONS[order.state]:
            raise InvalidTransition(f"{order!r}: {order.state.name} -> {target.name} is not allowed ({why})")
        if order.state in TERMINAL and target is not order.state and order.closed_confirmed:
            if not (order.state is OrderState.REJECTED and target is OrderState.PENDING):
                raise InvalidTransition(f"{order!r}: {order.state.name} is confirmed by the exchange ({why})")
        order.state = target
        order.updated_at = self._clock()

    def _close(self, order: Order, target: OrderState, now: float, *, confirmed: bool) -> None:
        self._move(order, target, order.reason or target.name)
        order.closed_confirmed = confirmed
        if order.closed_at is None:
            order.closed_at = now
        self._open.pop(order.ref, None)

    def _revive(self, order: Order, why: str) -> None:
        """A sign of life from an order we settled REJECTED.  Only a provisional REJECTED
        (an UNKNOWN settled by an audit) may come back; the exchange's own error may not."""
        if order.state is OrderState.REJECTED:
            if order.closed_confirmed:
                raise InvalidTransition(f"{order!r}: {why} for an order whose PlaceOrder failed")
            self._reopen(order)

    def _reopen(self, order: Order) -> None:
        target = OrderState.PARTIALLY_FILLED if order.filled else OrderState.OPEN
        self._move(order, target, "open on the exchange")
        order.closed_at = None
        order.reason = ""
        self._open[order.ref] = order

    def _bind_id(self, order: Order, order_id: int) -> None:
        if order.id is None:
            order.id = order_id
            self._by_id[order_id] = order
        elif order.id != order_id:
            raise RemoteProtocolError(f"{order!r}: the exchange now calls it id {order_id}")

    def _find(self, order_id: int | None, tonce: object) -> Order | None:
        if type(tonce) is int:
            order = self._by_tonce.get(tonce)
            if order is not None:
                return order
        if order_id is not None:
            return self._by_id.get(order_id)
        return None

    def _on_place_error(self, order: Order, err: ExchangeError) -> None:
        order.error = err
        if order.attempts > 1:
            # F3a/b: on a resubmission an error proves only that *this* attempt failed; an
            # earlier one may have placed the order (error 3 says exactly that: a tonce >=
            # this one succeeded).  Reconciliation settles it.  If a late reply or notice
            # already showed the earlier attempt placed it, the error is expected: ignore.
            kind = "tonce out of sequence" if isinstance(err, TonceOutOfSequence) else str(err)
            if order.state is OrderState.PENDING:
                order.reason = f"{kind} on resubmission: maybe placed, reconcile"
                self._move(order, OrderState.UNKNOWN, order.reason)
            elif order.state is OrderState.PENDING_CANCEL and order._cancel_from is OrderState.PENDING:
                order.reason = f"{kind} on resubmission: maybe placed, reconcile"
                order._cancel_from = OrderState.UNKNOWN
            return
        if order.state is OrderState.REJECTED and not order.closed_confirmed:
            order.reason = str(err)  # an audit guessed "not placed"; the exchange agrees
            order.closed_confirmed = True
            return
        if order.state not in (OrderState.PENDING, OrderState.UNKNOWN, OrderState.PENDING_CANCEL):
            raise InvalidTransition(f"{order!r}: error reply ({err}) for an order the exchange already confirmed")
        if order.filled or order.id is not None:
            raise InvalidTransition(f"{order!r}: error reply ({err}) for an order notices showed was placed")
        order.reason = str(err)
        self._close(order, OrderState.REJECTED, self._clock(), confirmed=True)

    def _on_market_reply(self, order: Order, reply: PlaceOrderReply) -> list[OrderEvent]:
        if reply.remaining is UNSET:
            raise RemoteProtocolError(f"PlaceOrder reply for a market order without remaining ({order!r})", field="$.remaining")
        order.remaining = reply.remaining
        if order.is_terminal and order.closed_confirmed:
            return []
        if reply.remaining == 0:
            self._close(order, OrderState.FILLED, self._clock(), confirmed=True)
        else:
            order.reason = f"market order: {reply.remaining} not traded (liquidity or balance exhausted)"
            self._close(order, OrderState.CANCELLED, self._clock(), confirmed=True)
        return []

    def _own_fill(
        self,
        n: OrdersMatched,
        side: Side,
        oid: int | None,
        tonce: object,
        rem: int | None,
        fee_c: int,
        fee_b: int,
    ) -> list[OrderEvent]:
        market = market_by_codes(n.base, n.counter)
        fill = Fill(n.time, n.quantity, n.price, n.total, fee_c, fee_b, rem)
        order = self._find(oid, tonce)
        if order is None and oid is None and tonce is None:
            order = self._sole_pending_market(market, side)
        if order is None:
            if oid is not None and tonce is None:
                return self._hold(n, oid)
            self.stats.unattributed += 1
            return [Filled(None, market, side, fill, None, None, rem)]
        if order.side is not side:
            raise RemoteProtocolError(f"{order!r}: OrdersMatched names it as the {side.name} side")
        if oid is not None:
            self._bind_id(order, oid)
        key = _trade_key(n)
        if key in order._fill_keys:
            self.stats.duplicate_fills += 1
            return []
        self._revive(order, "OrdersMatched")
        order._fill_keys.add(key)
        prev = order.remaining if order.price is not None else None
        if order.inferred_pending and rem is not None and rem >= order.remaining:
            # An audit already counted this trade in an aggregate: refine, do not count twice.
            order.inferred_pending = max(0, order.inferred_pending - n.quantity)
            order.fills.append(fill)
            self.stats.absorbed_fills += 1
            return []
        order.fills.append(fill)
        order.filled += n.quantity
        order.filled_total += n.total
        order.counter_fees += fee_c
        order.base_fees += fee_b
        self.stats.fills += 1
        if rem is not None:
            order.remaining = min(order.remaining, rem) if order.price is not None else rem
        elif order.price is None and order.quantity is not None:
            order.remaining = max(0, order.quantity - order.filled)
        self._after_fill(order, rem)
        return [Filled(order, market, side, fill, order.price, prev, rem if order.price is not None else None)]

    def _after_fill(self, order: Order, rem: int | None) -> None:
        st = order.state
        if order.price is not None and rem == 0:
            if st in TERMINAL:
                if not order.closed_confirmed:
                    self._move(order, OrderState.FILLED, "fill left nothing")
                    order.closed_confirmed = True
            else:
                # rem 0 is the exchange's word: nothing is left to trade.
                self._close(order, OrderState.FILLED, self._clock(), confirmed=True)
            return
        if st in (OrderState.PENDING, OrderState.UNKNOWN, OrderState.OPEN):
            self._move(order, OrderState.PARTIALLY_FILLED, "fill")
        elif st is OrderState.PENDING_CANCEL and order._cancel_from in (
            OrderState.PENDING,
            OrderState.UNKNOWN,
            OrderState.OPEN,
        ):
            order._cancel_from = OrderState.PARTIALLY_FILLED
        order.updated_at = self._clock()

    def _sole_pending_market(self, market: Market, side: Side) -> Order | None:
        # A market order placed without a tonce has no id either: attribute its fills by
        # elimination when exactly one such order can be trading.
        found = [
            o
            for o in self._open.values()
            if o.price is None and o.tonce is None and o.market is market and o.side is side
        ]
        return found[0] if len(found) == 1 else None

    def _hold(self, n: Notice, order_id: int) -> list[OrderEvent]:
        held = self._held.get(order_id)
        if held is None:
            if len(self._held) >= _MAX_HELD:
                self.stats.unattributed += 1
                return []
            held = self._held[order_id] = []
        held.append(n)
        self.stats.held_back += 1
        return []

    def _unattributed(self, n: Notice, order_id: int, tonce: object) -> list[OrderEvent]:
        if tonce is None:
            return self._hold(n, order_id)
        self.stats.unattributed += 1
        market = market_by_codes(n.base, n.counter)  # type: ignore[attr-defined]
        qty: int = n.quantity  # type: ignore[attr-defined]
        side = Side.BUY if qty > 0 else Side.SELL
        if isinstance(n, OrderClosed):
            return [Closed(None, market, side, abs(qty), n.price)]
        if isinstance(n, OrderOpened):
            return [Opened(None, market, side, abs(qty), n.price)]
        return []

    def _replay_held(self, order: Order) -> list[OrderEvent]:
        assert order.id is not None
        held = self._held.pop(order.id, None)
        if not held:
            return []
        events: list[OrderEvent] = []
        for n in held:
            events.extend(self._apply(n))
        return events

    def _adopt(self, o: OpenOrder, intents: Mapping[int, tuple[int, str]], now: float) -> Order:
        market = market_by_codes(o.base, o.counter)
        ref, strategy = intents.get(o.tonce, (-o.id, "")) if o.tonce is not None else (-o.id, "")
        if ref in self._by_ref:
            ref = -o.id
        qty = abs(o.quantity)
        order = Order(
            ref=ref,
            strategy=strategy,
            market=market,
            side=Side.BUY if o.quantity > 0 else Side.SELL,
            quantity=qty,
            price=o.price,
            total=None,
            tonce=o.tonce,
            epoch=0,
            persist=True,
            state=OrderState.OPEN,
            id=o.id,
            remaining=qty,
            created_at=now,
            updated_at=now,
            exchange_time=o.time,
            reason="adopted from GetOrders",
        )
        self._by_ref[ref] = order
        self._open[ref] = order
        self._by_id[o.id] = order
        if o.tonce is not None:
            self._by_tonce[o.tonce] = order
        return order
