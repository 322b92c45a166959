"""Building and delivering notices, each recipient in its own form.

WEBSOCKET-README gives every order notice two forms:

* the **owner's** form carries the order's ``tonce`` (``null`` if it had none) and, in
  OrdersMatched, that side's ``*_tonce`` and ``*_base_fee``/``*_counter_fee``;
* the **public** form, for watchers of the book, has those keys *absent* (not null).

Owners get their own-order notices on every authenticated session, watching or not; a
session that is both owner and watcher gets each notice once, in the owner's form.  A
notice object is built only when someone will receive it, and shared by all recipients
of the same form (notices are immutable).

``owners`` and ``watchers`` map session id -> session (insertion order, so delivery order
is deterministic); a session only needs ``user_id`` and ``deliver``.
"""

from __future__ import annotations

from typing import Any

from engine.exchange.book import Book, Order
from engine.protocol.messages import OrderClosed, OrderOpened, OrdersMatched


def order_opened(o: Order, owners: dict[int, Any], watchers: dict[int, Any]) -> None:
    q = o.quantity if o.is_bid else -o.quantity  # Order.signed_quantity without the property call
    if owners:
        n = OrderOpened(id=o.id, tonce=o.tonce, base=o.base, counter=o.counter, quantity=q, price=o.price, time=o.time)
        for s in owners.values():
            s.deliver(n)
    pub = None
    for w in watchers.values():
        if w.user_id != o.user_id:
            if pub is None:
                pub = OrderOpened(id=o.id, base=o.base, counter=o.counter, quantity=q, price=o.price, time=o.time)
            w.deliver(pub)


def order_closed(o: Order, owners: dict[int, Any], watchers: dict[int, Any]) -> None:
    q = o.quantity if o.is_bid else -o.quantity  # Order.signed_quantity without the property call
    if owners:
        n = OrderClosed(id=o.id, tonce=o.tonce, base=o.base, counter=o.counter, quantity=q, price=o.price)
        for s in owners.values():
            s.deliver(n)
    pub = None
    for w in watchers.values():
        if w.user_id != o.user_id:
            if pub is None:
                pub = OrderClosed(id=o.id, base=o.base, counter=o.counter, quantity=q, price=o.price)
            w.deliver(pub)


def orders_matched(
    book: Book,
    buyer_id: int,
    buyers: dict[int, Any],
    seller_id: int,
    sellers: dict[int, Any],
    bid: Order | None,
    ask: Order | None,
    x: int,
    p: int,
    t: int,
    fb: int,
    fa: int,
    now: int,
    bid_mkt_tonce: int | None,
    ask_mkt_tonce: int | None,
) -> None:
    """One fill.  A market-order side (``bid``/``ask`` None) has no id and no remainder;
    its owner still gets its tonce (the PlaceOrder's, or null) and its fees."""
    common: dict[str, Any] = {"base": book.base, "counter": book.counter, "quantity": x, "price": p, "total": t, "time": now}
    if bid is not None:
        common["bid"] = bid.id
        common["bid_rem"] = bid.quantity
    if ask is not None:
        common["ask"] = ask.id
        common["ask_rem"] = ask.quantity
    bid_own: dict[str, Any] = {
        "bid_tonce": bid.tonce if bid is not None else bid_mkt_tonce,
        "bid_base_fee": 0,
        "bid_counter_fee": fb,
    }
    ask_own: dict[str, Any] = {
        "ask_tonce": ask.tonce if ask is not None else ask_mkt_tonce,
        "ask_base_fee": 0,
        "ask_counter_fee": fa,
    }
    if buyer_id == seller_id:  # a self-trade: the owner's form of both sides at once
        if buyers:
            n = OrdersMatched(**common, **bid_own, **ask_own)
            for s in buyers.values():
                s.deliver(n)
    else:
        if buyers:
            n = OrdersMatched(**common, **bid_own)
            for s in buyers.values():
                s.deliver(n)
        if sellers:
            n = OrdersMatched(**common, **ask_own)
            for s in sellers.values():
                s.deliver(n)
    watchers = book.order_watchers
    if watchers:
        pub = None
        for w in watchers.values():
            uid = w.user_id
            if uid != buyer_id and uid != seller_id:
                if pub is None:
                    pub = OrdersMatched(**common)
                w.deliver(pub)
