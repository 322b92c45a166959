"""Every command, reply and notice of WEBSOCKET-README as a typed, immutable message.

Conventions (the same in both directions, for the client and the local exchange):

* Numbers are ``int`` within int64.  Booleans, floats and numeric strings are refused.
* A field the spec marks optional is ``UNSET`` when absent; ``None`` only where the spec
  allows ``null`` (``tonce`` on one's own orders, ticker prices).  Absent and null are kept
  apart: a present ``tonce`` key marks the recipient's own order, and an absent ticker field
  means "unchanged" while ``null`` means "no value".
* ``tag`` is ``UNSET`` unless given; the exchange echoes it iff it was given and non-zero.
* Field combinations of the spec tables (PlaceOrder, CancelOrder, EstimateMarketOrder) are
  checked when a message is built *and* when it is decoded; the error text is the exchange's
  own error_msg for that case, so the local exchange can answer with it verbatim.

Fields are declared in the order the spec lists them, which is the order they are encoded.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import UNSET, UnsetType

from engine.errors import LocalProtocolError

__all__ = [
    "UNSET",
    "UnsetType",
    "Int64",
    "Command",
    "Authenticate",
    "GetBalances",
    "GetOrders",
    "EstimateMarketOrder",
    "PlaceOrder",
    "CancelOrder",
    "CancelAllOrders",
    "GetTradeVolume",
    "WatchOrders",
    "WatchTicker",
    "Reply",
    "ErrorReply",
    "AuthenticateReply",
    "Balance",
    "GetBalancesReply",
    "OpenOrder",
    "GetOrdersReply",
    "EstimateMarketOrderReply",
    "PlaceOrderReply",
    "CancelOrderReply",
    "CancelAllOrdersReply",
    "GetTradeVolumeReply",
    "BookOrder",
    "WatchOrdersReply",
    "WatchTickerReply",
    "Notice",
    "Welcome",
    "BalanceChanged",
    "OrderOpened",
    "OrdersMatched",
    "OrderClosed",
    "TickerChanged",
    "TradeVolumeChanged",
    "COMMANDS",
    "NOTICES",
    "REPLY_FOR",
]

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""A JSON integer within the signed 64-bit range (bools and floats are refused by msgspec)."""

Tonce = Int64 | None | UnsetType
"""Absent (another user's order), null (own order placed without tonce) or the tonce."""


class InvalidMessage(LocalProtocolError, ValueError):
    """Raised by ``__post_init__``: msgspec turns a ValueError into a ValidationError on
    decode (so the peer's frame is refused), while direct construction raises this
    LocalProtocolError (so we never send it)."""


def _is_set(value: object) -> bool:
    return value is not UNSET


# ---------------------------------------------------------------------------------------
# Commands (client -> server).  ``method`` is the tag field and is encoded first.


class Command(msgspec.Struct, tag_field="method", kw_only=True, frozen=True):
    """Base of every command.  ``tag`` is optional and must be non-zero to be echoed."""

    tag: Int64 | UnsetType = UNSET

    info_request: ClassVar[bool] = False  # may be answered ahead of state changes
    needs_auth: ClassVar[bool] = True


class Authenticate(Command, tag="Authenticate", frozen=True, kw_only=True):
    user_id: Int64
    cookie: str
    nonce: str
    signature: tuple[str, str]

    needs_auth: ClassVar[bool] = False

    def __repr__(self) -> str:  # the cookie is a secret; the signature is not useful in logs
        return f"Authenticate(tag={self.tag!r}, user_id={self.user_id}, cookie='***', nonce={self.nonce!r})"


class GetBalances(Command, tag="GetBalances", frozen=True, kw_only=True):
    info_request: ClassVar[bool] = True


class GetOrders(Command, tag="GetOrders", frozen=True, kw_only=True):
    info_request: ClassVar[bool] = True


class EstimateMarketOrder(Command, tag="EstimateMarketOrder", frozen=True, kw_only=True):
    base: Int64
    counter: Int64
    quantity: Int64 | UnsetType = UNSET
    total: Int64 | UnsetType = UNSET

    needs_auth: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if _is_set(self.quantity) == _is_set(self.total):
            raise InvalidMessage("You must specify either quantity or total for a market order.")


class PlaceOrder(Command, tag="PlaceOrder", frozen=True, kw_only=True):
    """A limit order (quantity and price) or a market order (quantity, or total)."""

    tonce: Int64 | UnsetType = UNSET
    base: Int64
    counter: Int64
    quantity: Int64 | UnsetType = UNSET
    price: Int64 | UnsetType = UNSET
    total: Int64 | UnsetType = UNSET
    persist: bool | UnsetType = UNSET

    def __post_init__(self) -> None:
        # Inline identity tests, not _is_set: this runs for every PlaceOrder built or decoded.
        q, p, t = self.quantity is not UNSET, self.price is not UNSET, self.total is not UNSET
        # The spec table admits exactly: q+p (limit), q (market), t (market).
        if not ((q and not t) or (t and not q and not p)):
            raise InvalidMessage("You must specify either quantity or total for a market order.")

    @property
    def is_limit(self) -> bool:
        return self.price is not UNSET


class CancelOrder(Command, tag="CancelOrder", frozen=True, kw_only=True):
    id: Int64 | UnsetType = UNSET
    tonce: Int64 | UnsetType = UNSET

    def __post_init__(self) -> None:
        if _is_set(self.id) == _is_set(self.tonce):
            raise InvalidMessage("You must specify either order ID or tonce.")


class CancelAllOrders(Command, tag="CancelAllOrders", frozen=True, kw_only=True):
    pass


class GetTradeVolume(Command, tag="GetTradeVolume", frozen=True, kw_only=True):
    asset: Int64

    info_request: ClassVar[bool] = True


class WatchOrders(Command, tag="WatchOrders", frozen=True, kw_only=True):
    base: Int64
    counter: Int64
    watch: bool

    needs_auth: ClassVar[bool] = False


class WatchTicker(Command, tag="WatchTicker", frozen=True, kw_only=True):
    base: Int64
    counter: Int64
    watch: bool

    needs_auth: ClassVar[bool] = False


COMMANDS: tuple[type[Command], ...] = (
    Authenticate,
    GetBalances,
    GetOrders,
    EstimateMarketOrder,
    PlaceOrder,
    CancelOrder,
    CancelAllOrders,
    GetTradeVolume,
    WatchOrders,
    WatchTicker,
)

# ---------------------------------------------------------------------------------------
# Replies (server -> client).  No type marker on the wire: the client knows the type from
# the command it sent with that tag.


class Reply(msgspec.Struct, kw_only=True, frozen=True):
    tag: Int64 | UnsetType = UNSET
    error_code: Int64 = 0


class ErrorReply(Reply, frozen=True, kw_only=True):
    error_msg: str


class AuthenticateReply(Reply, frozen=True, kw_only=True):
    pass


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    asset: Int64
    balance: Int64


class GetBalancesReply(Reply, frozen=True, kw_only=True):
    balances: list[Balance]


class OpenOrder(msgspec.Struct, frozen=True, kw_only=True):
    """An own order as GetOrders, CancelOrder and CancelAllOrders describe it."""

    id: Int64
    tonce: Int64 | None
    base: Int64
    counter: Int64
    quantity: Int64
    price: Int64
    time: Int64


class GetOrdersReply(Reply, frozen=True, kw_only=True):
    orders: list[OpenOrder]


class EstimateMarketOrderReply(Reply, frozen=True, kw_only=True):
    quantity: Int64
    total: Int64


class PlaceOrderReply(Reply, frozen=True, kw_only=True):
    """``id`` and ``time`` for a limit order; ``remaining`` for a market order."""

    id: Int64 | UnsetType = UNSET
    time: Int64 | UnsetType = UNSET
    remaining: Int64 | UnsetType = UNSET


class CancelOrderReply(Reply, frozen=True, kw_only=True):
    id: Int64
    tonce: Int64 | None
    base: Int64
    counter: Int64
    quantity: Int64
    price: Int64
    time: Int64


class CancelAllOrdersReply(Reply, frozen=True, kw_only=True):
    orders: list[OpenOrder]


class GetTradeVolumeReply(Reply, frozen=True, kw_only=True):
    volume: Int64


class BookOrder(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One order of a WatchOrders snapshot (bids positive, asks negative quantity)."""

    id: Int64
    quantity: Int64
    price: Int64
    time: Int64


class WatchOrdersReply(Reply, frozen=True, kw_only=True):
    orders: list[BookOrder] | UnsetType = UNSET


class WatchTickerReply(Reply, frozen=True, kw_only=True):
    last: Int64 | None | UnsetType = UNSET
    bid: Int64 | None | UnsetType = UNSET
    ask: Int64 | None | UnsetType = UNSET
    low: Int64 | None | UnsetType = UNSET
    high: Int64 | None | UnsetType = UNSET
    volume: Int64 | UnsetType = UNSET


REPLY_FOR: dict[type[Command], type[Reply]] = {
    Authenticate: AuthenticateReply,
    GetBalances: GetBalancesReply,
    GetOrders: GetOrdersReply,
    EstimateMarketOrder: EstimateMarketOrderReply,
    PlaceOrder: PlaceOrderReply,
    CancelOrder: CancelOrderReply,
    CancelAllOrders: CancelAllOrdersReply,
    GetTradeVolume: GetTradeVolumeReply,
    WatchOrders: WatchOrdersReply,
    WatchTicker: WatchTickerReply,
}

# ---------------------------------------------------------------------------------------
# Notices (server -> client).  ``notice`` is the tag field and is encoded first.


class Notice(msgspec.Struct, tag_field="notice", kw_only=True, frozen=True, gc=False):
    """Base of every notice. Notices never carry a tag."""


class Welcome(Notice, tag="Welcome", frozen=True, kw_only=True, gc=False):
    nonce: str


class BalanceChanged(Notice, tag="BalanceChanged", frozen=True, kw_only=True, gc=False):
    asset: Int64
    balance: Int64


class OrderOpened(Notice, tag="OrderOpened", frozen=True, kw_only=True, gc=False):
    id: Int64
    tonce: Tonce = UNSET
    base: Int64
    counter: Int64
    quantity: Int64
    price: Int64
    time: Int64

    @property
    def own(self) -> bool:
        return self.tonce is not UNSET


class OrdersMatched(Notice, tag="OrdersMatched", frozen=True, kw_only=True, gc=False):
    bid: Int64 | UnsetType = UNSET
    bid_tonce: Tonce = UNSET
    ask: Int64 | UnsetType = UNSET
    ask_tonce: Tonce = UNSET
    base: Int64
    counter: Int64
    quantity: Int64
    price: Int64
    total: Int64
    bid_rem: Int64 | UnsetType = UNSET
    ask_rem: Int64 | UnsetType = UNSET
    time: Int64
    bid_base_fee: Int64 | UnsetType = UNSET
    bid_counter_fee: Int64 | UnsetType = UNSET
    ask_base_fee: Int64 | UnsetType = UNSET
    ask_counter_fee: Int64 | UnsetType = UNSET

    @property
    def own_bid(self) -> bool:
        return self.bid_tonce is not UNSET

    @property
    def own_ask(self) -> bool:
        return self.ask_tonce is not UNSET


class OrderClosed(Notice, tag="OrderClosed", frozen=True, kw_only=True, gc=False):
    id: Int64
    tonce: Tonce = UNSET
    base: Int64
    counter: Int64
    quantity: Int64
    price: Int64

    @property
    def own(self) -> bool:
        return self.tonce is not UNSET


class TickerChanged(Notice, tag="TickerChanged", frozen=True, kw_only=True, gc=False):
    """Only changed fields are present; ``None`` means "no such value", UNSET "unchanged"."""

    base: Int64
    counter: Int64
    last: Int64 | None | UnsetType = UNSET
    bid: Int64 | None | UnsetType = UNSET
    ask: Int64 | None | UnsetType = UNSET
    low: Int64 | None | UnsetType = UNSET
    high: Int64 | None | UnsetType = UNSET
    volume: Int64 | UnsetType = UNSET


class TradeVolumeChanged(Notice, tag="TradeVolumeChanged", frozen=True, kw_only=True, gc=False):
    asset: Int64
    volume: Int64


NOTICES: tuple[type[Notice], ...] = (
    Welcome,
    BalanceChanged,
    OrderOpened,
    OrdersMatched,
    OrderClosed,
    TickerChanged,
    TradeVolumeChanged,
)
