"""Own-order state machine, fills and reconciliation (P5, B5, F1, F3, F4, F13)."""

from __future__ import annotations

import itertools
import random

import pytest

from engine.errors import (
    InsufficientFunds,
    InvalidTransition,
    RemoteProtocolError,
    TonceOutOfSequence,
)
from engine.protocol.messages import (
    UNSET,
    CancelAllOrdersReply,
    CancelOrder,
    CancelOrderReply,
    ErrorReply,
    GetOrdersReply,
    OpenOrder,
    OrderClosed,
    OrderOpened,
    OrdersMatched,
    PlaceOrder,
    PlaceOrderReply,
    TickerChanged,
)
from engine.scale import XBT_EUR, XBT_GBP, Market
from engine.state.orders import (
    TERMINAL,
    TRANSITIONS,
    Closed,
    Filled,
    Opened,
    OrderState,
    OrderTracker,
)
from engine.strategy import Side

S = OrderState
M = XBT_GBP


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- notice builders (shared with the balance tests) ------------------------------------------


def opened(oid, tonce, qty, price, market: Market = M, time=1):
    """OrderOpened; ``tonce=UNSET`` makes it someone else's order. ``qty`` signed."""
    return OrderOpened(
        id=oid, tonce=tonce, base=market.base.code, counter=market.counter.code, quantity=qty, price=price, time=time
    )


def closed(oid, tonce, qty, price, market: Market = M):
    return OrderClosed(id=oid, tonce=tonce, base=market.base.code, counter=market.counter.code, quantity=qty, price=price)


def matched(
    *,
    qty,
    price,
    total,
    bid=UNSET,
    bid_tonce=UNSET,
    ask=UNSET,
    ask_tonce=UNSET,
    bid_rem=UNSET,
    ask_rem=UNSET,
    bid_fee=UNSET,
    ask_fee=UNSET,
    market: Market = M,
    time=2,
):
    own_bid, own_ask = bid_tonce is not UNSET, ask_tonce is not UNSET
    return OrdersMatched(
        bid=bid,
        bid_tonce=bid_tonce,
        ask=ask,
        ask_tonce=ask_tonce,
        base=market.base.code,
        counter=market.counter.code,
        quantity=qty,
        price=price,
        total=total,
        bid_rem=bid_rem,
        ask_rem=ask_rem,
        time=time,
        bid_base_fee=0 if own_bid else UNSET,
        bid_counter_fee=(bid_fee if bid_fee is not UNSET else 0) if own_bid else UNSET,
        ask_base_fee=0 if own_ask else UNSET,
        ask_counter_fee=(ask_fee if ask_fee is not UNSET else 0) if own_ask else UNSET,
    )


def ok(oid, time=1):
    return PlaceOrderReply(id=oid, time=time)


def err(code, msg="nope"):
    return ErrorReply(error_code=code, error_msg=msg)


def cancelled_reply(oid, tonce, qty, price, market: Market = M):
    return CancelOrderReply(
        id=oid, tonce=tonce, base=market.base.code, counter=market.counter.code, quantity=qty, price=price, time=1
    )


def open_order(oid, tonce, qty, price, market: Market = M):
    return OpenOrder(id=oid, tonce=tonce, base=market.base.code, counter=market.counter.code, quantity=qty, price=price, time=1)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def tr(clock):
    return OrderTracker(clock=clock)


def bid(tr, ref=1, qty=100, price=5000, tonce=None, **kw):
    return tr.place(ref, M, Side.BUY, quantity=qty, price=price, tonce=tonce if tonce is not None else 1000 + ref, **kw)


def ask(tr, ref=1, qty=100, price=5000, tonce=None, **kw):
    return tr.place(ref, M, Side.SELL, quantity=qty, price=price, tonce=tonce if tonce is not None else 1000 + ref, **kw)


# -- the table itself ---------------------------------------------------------------------------


def test_transition_table_covers_every_state_and_terminals_only_refine():
    assert set(TRANSITIONS) == set(OrderState)
    assert TERMINAL == {S.FILLED, S.CANCELLED, S.REJECTED}
    # Nothing goes back to PENDING except a resubmission (UNKNOWN, rate-limited REJECTED) or
    # a failed cancel of a pending order.
    assert {s for s, ts in TRANSITIONS.items() if S.PENDING in ts} == {S.UNKNOWN, S.REJECTED, S.PENDING_CANCEL}
    assert S.UNKNOWN not in TRANSITIONS[S.OPEN]


@pytest.mark.parametrize(
    ("src", "dst"),
    [(a, b) for a in OrderState for b in OrderState if a is not b and b not in TRANSITIONS[a]],
)
def test_every_move_outside_the_table_raises(tr, src, dst):
    order = bid(tr)
    order.state = src
    with pytest.raises(InvalidTransition, match=f"{src.name} -> {dst.name} is not allowed"):
        tr._move(order, dst, "test")


def test_confirmed_terminal_states_never_move(tr):
    order = bid(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_closed(closed(7, order.tonce, 100, 5000))
    assert order.state is S.CANCELLED and order.closed_confirmed
    for dst in (S.FILLED, S.OPEN, S.PARTIALLY_FILLED):
        with pytest.raises(InvalidTransition, match="confirmed by the exchange"):
            tr._move(order, dst, "test")


# -- legal paths --------------------------------------------------------------------------------


def test_happy_path_pending_open_partial_filled(tr, clock):
    order = ask(tr, qty=300)
    assert order.state is S.PENDING and order.created_at == 0.0
    clock.now = 1.0
    assert tr.on_place_reply(order, ok(7)) == []
    assert order.state is S.OPEN and order.id == 7 and tr.by_id(7) is order
    ev = tr.on_notice(matched(qty=100, price=5000, total=5, ask=7, ask_tonce=order.tonce, ask_rem=200, ask_fee=1))
    assert order.state is S.PARTIALLY_FILLED and order.remaining == 200
    assert isinstance(ev[0], Filled) and ev[0].prev_remaining == 300 and ev[0].remaining == 200
    clock.now = 2.0
    tr.on_notice(matched(qty=200, price=5000, total=10, ask=7, ask_tonce=order.tonce, ask_rem=0, ask_fee=1, time=3))
    assert order.state is S.FILLED and order.closed_confirmed and order.closed_at == 2.0
    assert (order.filled, order.filled_total, order.counter_fees) == (300, 15, 2)
    ev = tr.on_notice(closed(7, order.tonce, 0, 5000))
    assert ev == [Closed(order, M, Side.SELL, 0, 5000)] and order.state is S.FILLED
    assert tr.open_orders() == []


def test_error_reply_rejects_with_the_exchange_error(tr):
    order = bid(tr)
    tr.on_place_reply(order, err(4, "You have insufficient funds."))
    assert order.state is S.REJECTED and isinstance(order.error, InsufficientFunds)
    assert "insufficient funds" in order.reason and order not in tr.open_orders()


def test_b5_late_success_after_timeout_moves_unknown_to_open_without_resend(tr):
    order = bid(tr)
    tr.on_place_lost(order, "timeout after 5 s")
    assert order.state is S.UNKNOWN and tr.unknown_orders() == [order]
    tr.on_place_reply(order, ok(7))
    assert order.state is S.OPEN and order.attempts == 1  # settled, and nothing was resent
    assert tr.unknown_orders() == []


def test_b5_duplicate_reply_is_harmless(tr):
    order = bid(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_place_reply(order, ok(7))
    assert order.state is S.OPEN
    with pytest.raises(RemoteProtocolError, match="now calls it id 8"):
        tr.on_place_reply(order, ok(8))


def test_place_lost_after_notices_showed_it_placed_changes_nothing(tr):
    order = bid(tr)
    tr.on_notice(opened(7, order.tonce, 100, 5000))
    tr.on_place_lost(order)
    assert order.state is S.OPEN


def test_f1_resubmit_with_same_tonce_then_success(tr):
    order = bid(tr)
    tr.on_place_lost(order)
    tr.resubmit(order)
    assert order.state is S.PENDING and order.attempts == 2
    cmd = order.to_command(tag=9)
    assert isinstance(cmd, PlaceOrder) and cmd.tonce == order.tonce and cmd.quantity == 100 and cmd.tag == 9
    tr.on_place_reply(order, ok(7))
    assert order.state is S.OPEN


@pytest.mark.parametrize("code", [3, 4, 6])
def test_f3_any_error_on_a_resubmission_means_maybe_placed(tr, code):
    order = bid(tr)
    tr.on_place_lost(order)
    tr.resubmit(order)
    tr.on_place_reply(order, err(code))
    assert order.state is S.UNKNOWN and "maybe placed" in order.reason
    if code == 3:
        assert isinstance(order.error, TonceOutOfSequence)


def test_b5_late_first_reply_then_error_3_for_the_resubmission_is_ignored(tr):
    order = bid(tr)
    tr.on_place_lost(order)
    tr.resubmit(order)
    tr.on_place_reply(order, ok(7))  # the first attempt's reply, late
    tr.on_place_reply(order, err(3, "Tonce is out of sequence."))  # the resubmission's
    assert order.state is S.OPEN and order.id == 7


def test_f11_rate_limited_rejection_may_be_resubmitted_others_may_not(tr):
    limited, broke = bid(tr, ref=1), bid(tr, ref=2)
    tr.on_place_reply(limited, err(6, "You are sending orders too rapidly."))
    tr.on_place_reply(broke, err(4))
    tr.resubmit(limited)
    assert limited.state is S.PENDING and limited in tr.open_orders()
    with pytest.raises(InvalidTransition, match="may be resubmitted"):
        tr.resubmit(broke)
    open_one = bid(tr, ref=3)
    tr.on_place_reply(open_one, ok(9))
    with pytest.raises(InvalidTransition, match="may be resubmitted"):
        tr.resubmit(open_one)


def test_cancel_by_id_then_reply_then_closed_notice(tr):
    order = bid(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_cancel_sent(order)
    assert order.state is S.PENDING_CANCEL
    assert order.cancel_command(tag=5) == CancelOrder(tag=5, id=7)
    tr.on_cancel_reply(order, cancelled_reply(7, order.tonce, 100, 5000))
    assert order.state is S.CANCELLED and order.closed_confirmed
    ev = tr.on_notice(closed(7, order.tonce, 100, 5000))
    assert ev == [Closed(order, M, Side.BUY, 100, 5000)] and order.state is S.CANCELLED


def test_closed_notice_before_cancel_reply(tr):
    order = bid(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_cancel_sent(order)
    tr.on_notice(closed(7, order.tonce, 100, 5000))
    assert order.state is S.CANCELLED and order.reason == "cancelled"
    tr.on_cancel_reply(order, cancelled_reply(7, order.tonce, 100, 5000))
    assert order.state is S.CANCELLED


def test_fill_while_cancel_pending_then_cancel_succeeds(tr):
    order = bid(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_cancel_sent(order)
    tr.on_notice(matched(qty=40, price=5000, total=2, bid=7, bid_tonce=order.tonce, bid_rem=59))
    assert order.state is S.PENDING_CANCEL and order.filled == 40
    tr.on_cancel_reply(order, err(6, "You are sending orders too rapidly."))
    assert order.state is S.PARTIALLY_FILLED  # the cancel did not happen; the fill did


def test_late_fill_after_cancel_reply_is_applied_to_the_terminal_order(tr):
    order = bid(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_cancel_sent(order)
    tr.on_cancel_reply(order, cancelled_reply(7, order.tonce, 60, 5000))
    ev = tr.on_notice(matched(qty=40, price=5000, total=2, bid=7, bid_tonce=order.tonce, bid_rem=60))
    assert [type(e) for e in ev] == [Filled]
    assert order.state is S.CANCELLED and order.filled == 40


def test_f4a_cancel_not_found_is_terminal_filled_then_the_notices_confirm(tr):
    order = ask(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_cancel_sent(order)
    tr.on_cancel_reply(order, err(1, "The specified order was not found."))
    assert order.state is S.FILLED and not order.closed_confirmed and order not in tr.open_orders()
    tr.on_notice(matched(qty=100, price=5000, total=5, ask=7, ask_tonce=order.tonce, ask_rem=0))
    tr.on_notice(closed(7, order.tonce, 0, 5000))
    assert order.state is S.FILLED and order.closed_confirmed and order.filled == 100


def test_f4a_cancel_not_found_refined_to_cancelled_by_the_exchange(tr):
    order = ask(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_cancel_sent(order)
    tr.on_cancel_reply(order, err(1))
    tr.on_notice(closed(7, order.tonce, -100, 5000))  # e.g. cancelled by another session
    assert order.state is S.CANCELLED and order.closed_confirmed


def test_f4b_cancel_by_tonce_before_the_place_reply(tr):
    order = bid(tr)
    tr.on_cancel_sent(order)
    assert order.cancel_command() == CancelOrder(tonce=order.tonce)
    tr.on_cancel_reply(order, cancelled_reply(7, order.tonce, 100, 5000))
    assert order.state is S.CANCELLED and order.id == 7
    tr.on_place_reply(order, ok(7))  # the place reply overtaken by the cancel's
    assert order.state is S.CANCELLED


def test_f4b_place_reply_then_cancel_reply(tr):
    order = bid(tr)
    tr.on_cancel_sent(order)
    tr.on_place_reply(order, ok(7))
    assert order.state is S.PENDING_CANCEL
    tr.on_cancel_reply(order, cancelled_reply(7, order.tonce, 100, 5000))
    assert order.state is S.CANCELLED


def test_f4c_cancel_by_tonce_when_the_place_failed(tr):
    order = bid(tr)
    tr.on_cancel_sent(order)
    tr.on_cancel_reply(order, err(1))  # expected, not alarming: the place failed
    assert order.state is S.PENDING
    tr.on_place_reply(order, err(4))
    assert order.state is S.REJECTED


def test_cancel_lost_returns_to_the_previous_state(tr):
    order = bid(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_cancel_sent(order)
    tr.on_cancel_lost(order)
    assert order.state is S.OPEN


def test_cancel_needs_an_id_or_a_tonce(tr):
    order = tr.place(1, M, Side.BUY, quantity=1, price=1)
    with pytest.raises(InvalidTransition, match="without a tonce"):
        order.cancel_command()


def test_cancel_all_reply_cancels_the_listed_orders(tr):
    a, b, c = bid(tr, ref=1), ask(tr, ref=2), bid(tr, ref=3)
    for o, oid in ((a, 7), (b, 8), (c, 9)):
        tr.on_place_reply(o, ok(oid))
    reply = CancelAllOrdersReply(orders=[open_order(7, a.tonce, 100, 5000), open_order(8, b.tonce, -100, 5000)])
    assert tr.on_cancel_all_reply(reply) == [a, b]
    assert (a.state, b.state, c.state) == (S.CANCELLED, S.CANCELLED, S.OPEN)
    assert tr.on_cancel_all_reply(err(6)) == []


def test_market_order_fills_before_reply_by_tonce(tr):
    order = tr.place(1, M, Side.BUY, quantity=300, tonce=77)
    assert order.to_command().price is UNSET and order.to_command().persist is UNSET
    tr.on_notice(matched(qty=100, price=5000, total=5, ask=3, bid_tonce=77, bid_fee=1))
    tr.on_notice(matched(qty=150, price=5001, total=8, ask=4, bid_tonce=77, bid_fee=1, time=3))
    assert order.state is S.PARTIALLY_FILLED and order.filled == 250 and order.remaining == 50
    tr.on_place_reply(order, PlaceOrderReply(remaining=50))
    assert order.state is S.CANCELLED and "50 not traded" in order.reason
    assert order.counter_fees == 2


def test_market_order_by_total_fully_traded(tr):
    order = tr.place(1, M, Side.SELL, total=1000, tonce=77)
    assert order.to_command().total == -1000 and order.to_command().quantity is UNSET
    tr.on_place_reply(order, PlaceOrderReply(remaining=0))
    assert order.state is S.FILLED


def test_market_order_without_tonce_is_attributed_by_elimination(tr):
    order = tr.place(1, M, Side.SELL, quantity=10)
    tr.on_notice(matched(qty=10, price=5000, total=1, bid=3, ask_tonce=None))
    assert order.filled == 10 and tr.stats.unattributed == 0


def test_bid_remaining_follows_bid_rem_not_quantity_minus_traded(tr):
    order = bid(tr, qty=12345, price=1234500)
    tr.on_place_reply(order, ok(7))
    tr.on_notice(matched(qty=1234, price=1234500, total=152338, bid=7, bid_tonce=order.tonce, bid_rem=11110, bid_fee=46))
    assert order.remaining == 11110 and order.filled == 1234  # not 11111: the fee ate into it


# -- invalid moves raise ------------------------------------------------------------------------


def test_invalid_local_actions_raise(tr):
    order = bid(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_notice(matched(qty=100, price=5000, total=5, bid=7, bid_tonce=order.tonce, bid_rem=0))
    with pytest.raises(InvalidTransition, match="cannot cancel a FILLED order"):
        tr.on_cancel_sent(order)
    with pytest.raises(InvalidTransition, match="already has an order"):
        bid(tr, ref=1, tonce=5)
    with pytest.raises(InvalidTransition, match="tonce 1001 already used by ref 1"):
        bid(tr, ref=2, tonce=1001)
    with pytest.raises(InvalidTransition, match="quantity must be a positive int, was 0"):
        bid(tr, ref=3, qty=0)
    with pytest.raises(InvalidTransition, match="price must be a positive int, was True"):
        bid(tr, ref=3, price=True)
    with pytest.raises(InvalidTransition, match="tonce must be a positive int"):
        bid(tr, ref=3, tonce=-1)
    with pytest.raises(InvalidTransition, match="give quantity"):
        tr.place(3, M, Side.BUY, total=5, price=5)


def test_remote_contradictions_raise(tr):
    rejected = bid(tr, ref=1)
    tr.on_place_reply(rejected, err(4))
    for notice_or_reply in (
        lambda: tr.on_place_reply(rejected, ok(7)),
        lambda: tr.on_notice(opened(7, rejected.tonce, 100, 5000)),
        lambda: tr.on_notice(matched(qty=1, price=5000, total=1, bid=7, bid_tonce=rejected.tonce, bid_rem=99)),
        lambda: tr.on_notice(closed(7, rejected.tonce, 100, 5000)),
    ):
        with pytest.raises(InvalidTransition, match="PlaceOrder failed"):
            notice_or_reply()
    live = bid(tr, ref=2)
    tr.on_place_reply(live, ok(8))
    with pytest.raises(InvalidTransition, match="already confirmed"):
        tr.on_place_reply(live, err(4))
    with pytest.raises(RemoteProtocolError, match="names it as the SELL side"):
        tr.on_notice(matched(qty=1, price=5000, total=1, ask=8, ask_tonce=live.tonce, ask_rem=99))
    tr.on_cancel_sent(live)
    tr.on_cancel_reply(live, cancelled_reply(8, live.tonce, 100, 5000))
    with pytest.raises(InvalidTransition, match="contradicts the confirmed state"):
        tr.on_notice(closed(8, live.tonce, 0, 5000))


# -- notices: ownership, P5, dedupe -------------------------------------------------------------


def test_p8_foreign_notices_are_ignored_own_ones_counted(tr):
    order = bid(tr)
    tr.on_place_reply(order, ok(7))
    # Same id, but no tonce key: someone else's notice (cannot be ours), ignored.
    assert tr.on_notice(opened(7, UNSET, 100, 5000)) == []
    assert tr.on_notice(matched(qty=1, price=5000, total=1, bid=7, ask=9, bid_rem=5, ask_rem=5)) == []
    assert tr.on_notice(closed(7, UNSET, 0, 5000)) == []
    assert tr.on_notice(TickerChanged(base=M.base.code, counter=M.counter.code, last=5)) == []
    assert order.state is S.OPEN and order.filled == 0
    assert (tr.stats.notices, tr.stats.own_notices) == (3, 0)


def test_own_notice_without_tonce_is_held_until_the_reply_names_the_id(tr):
    order = tr.place(1, M, Side.BUY, quantity=100, price=5000)  # no tonce
    assert tr.on_notice(opened(7, None, 100, 5000)) == []
    assert tr.on_notice(matched(qty=30, price=5000, total=2, bid=7, bid_tonce=None, bid_rem=70)) == []
    assert tr.stats.held_back == 2 and order.state is S.PENDING
    events = tr.on_place_reply(order, ok(7))
    assert [type(e) for e in events] == [Opened, Filled]
    assert order.state is S.PARTIALLY_FILLED and order.filled == 30 and order.remaining == 70
    assert tr.stats.unattributed == 0


def test_unknown_own_tonce_is_unattributed_but_still_reported(tr):
    ev = tr.on_notice(closed(9, 555, -40, 5000))
    assert ev == [Closed(None, M, Side.SELL, 40, 5000)] and tr.stats.unattributed == 1
    ev = tr.on_notice(matched(qty=1, price=5000, total=1, ask=9, ask_tonce=555, ask_rem=39))
    assert ev[0].order is None and ev[0].remaining == 39 and tr.stats.unattributed == 2


def test_self_trade_fills_both_own_orders(tr):
    b, a = bid(tr, ref=1), ask(tr, ref=2)
    tr.on_place_reply(b, ok(7))
    tr.on_place_reply(a, ok(8))
    ev = tr.on_notice(
        matched(qty=100, price=5000, total=5, bid=7, bid_tonce=b.tonce, ask=8, ask_tonce=a.tonce, bid_rem=0, ask_rem=0)
    )
    assert [(e.order, e.side) for e in ev] == [(b, Side.BUY), (a, Side.SELL)]
    assert b.state is a.state is S.FILLED


def test_p5_notices_before_the_reply_attributed_by_tonce_10k_orders():
    """10^4 random orders, many in flight at once; every own notice comes *before* the
    PlaceOrder reply, interleaved with other orders' notices and with foreign traffic."""
    rng = random.Random(5)
    tr = OrderTracker(clock=Clock())
    truth: dict[int, tuple[int, int, int, S]] = {}
    stream: list[tuple[int, object]] = []  # (ref, message) in delivery order
    in_flight: list[list[tuple[int, object]]] = []
    next_id = itertools.count(1)
    for ref in range(10_000):
        market = rng.choice((XBT_GBP, XBT_EUR))
        side = rng.choice((Side.BUY, Side.SELL))
        qty, price, tonce = rng.randrange(1, 10**6), rng.randrange(1, 10**7), 10**12 + ref
        is_market = rng.random() < 0.2
        order = tr.place(ref, market, side, quantity=qty, price=None if is_market else price, tonce=tonce)
        oid = next(next_id)
        msgs: list[tuple[int, object]] = []
        rem, filled, fees = qty, 0, 0
        if not is_market and rng.random() < 0.5:
            msgs.append((ref, opened(oid, tonce, qty * side, price, market)))
        for k in range(rng.randrange(0, 4)):
            if rem == 0:
                break
            q = rng.randrange(1, rem + 1)
            fee = rng.randrange(0, 3)
            rem_after = max(0, rem - q - (fee if side is Side.BUY else 0))  # bid fee shrinks rem
            kw = {"bid_tonce": tonce, "bid_fee": fee} if side is Side.BUY else {"ask_tonce": tonce, "ask_fee": fee}
            if not is_market:
                kw.update({"bid": oid, "bid_rem": rem_after} if side is Side.BUY else {"ask": oid, "ask_rem": rem_after})
            msgs.append((ref, matched(qty=q, price=price, total=q + k, market=market, time=k, **kw)))
            filled, fees, rem = filled + q, fees + fee, rem_after
        if is_market:
            final = S.FILLED if rem == 0 else S.CANCELLED
            reply: object = PlaceOrderReply(remaining=rem)
        else:
            if rem == 0:
                final = S.FILLED
            elif rng.random() < 0.3:
                msgs.append((ref, closed(oid, tonce, rem * side, price, market)))
                final = S.CANCELLED
            else:
                final = S.PARTIALLY_FILLED if filled else S.OPEN
            reply = ok(oid)
        msgs.append((ref, reply))  # the reply always comes after every notice of its order
        truth[ref] = (filled, fees, rem, final)
        in_flight.append(msgs)
        # Deliver from the orders in flight in random interleavings (engine order per order).
        while len(in_flight) > 8 or (ref == 9_999 and in_flight):
            i = rng.randrange(len(in_flight))
            stream.append(in_flight[i].pop(0))
            if rng.random() < 0.2:  # foreign traffic on the same ids
                stream.append((-1, matched(qty=1, price=1, total=1, bid=oid, ask=oid + 1, bid_rem=1, ask_rem=1)))
            if not in_flight[i]:
                in_flight.pop(i)
    for ref, msg in stream:
        if isinstance(msg, (PlaceOrderReply, ErrorReply)):
            tr.on_place_reply(tr.get(ref), msg)
        else:
            tr.on_notice(msg)
    assert tr.stats.unattributed == 0 and tr.stats.held_back == 0
    for ref, (filled, fees, rem, final) in truth.items():
        order = tr.get(ref)
        assert (order.filled, order.counter_fees, order.state) == (filled, fees, final), order
        if order.price is not None:
            assert order.remaining == rem
    assert sum(len(o.fills) for o in tr) == tr.stats.fills


def test_f13_fill_counted_once_duplicate_notice_and_audit(tr):
    order = ask(tr, qty=100)
    tr.on_place_reply(order, ok(7))
    fill = matched(qty=40, price=5000, total=2, ask=7, ask_tonce=order.tonce, ask_rem=60, ask_fee=1)
    assert len(tr.on_notice(fill)) == 1
    assert tr.on_notice(fill) == []  # a replayed/duplicated notice
    report = tr.apply_open_orders(GetOrdersReply(orders=[open_order(7, order.tonce, -60, 5000)]))
    assert report.clean
    assert (order.filled, order.counter_fees, len(order.fills), tr.stats.duplicate_fills) == (40, 1, 1, 1)


def test_f13_lost_fill_found_by_audit_then_inferred_then_late_notice_is_absorbed(tr):
    order = ask(tr, qty=100)
    tr.on_place_reply(order, ok(7))
    report = tr.apply_open_orders([open_order(7, order.tonce, -60, 5000)])
    assert report.drift == [(order, 100, 60)] and order.exchange_remaining == 60
    # The notices may still be on their way: only they (or an inferred fill) move remaining.
    assert (order.remaining, order.filled, order.state) == (100, 0, S.OPEN)
    ev = tr.record_inferred_fill(order, quantity=40, total=2, counter_fee=1)
    assert ev.inferred and order.filled == 40 and order.remaining == 60
    assert (ev.prev_remaining, ev.remaining, order.state) == (100, 60, S.PARTIALLY_FILLED)
    # The notice was only late, not lost: it must not count a second time.
    assert tr.on_notice(matched(qty=40, price=5000, total=2, ask=7, ask_tonce=order.tonce, ask_rem=60, ask_fee=1)) == []
    assert (order.filled, order.counter_fees, tr.stats.absorbed_fills) == (40, 1, 1)
    # A genuinely new fill afterwards counts normally.
    tr.on_notice(matched(qty=10, price=5000, total=1, ask=7, ask_tonce=order.tonce, ask_rem=50, time=9))
    assert order.filled == 50 and order.remaining == 50


def test_inferred_fill_needs_positive_quantity(tr):
    order = ask(tr)
    with pytest.raises(InvalidTransition, match="quantity > 0"):
        tr.record_inferred_fill(order, quantity=0, total=1)


# -- reconciliation -----------------------------------------------------------------------------


def test_f5_adopt_unknown_open_orders_by_tonce_to_intent(tr):
    report = tr.apply_open_orders(
        GetOrdersReply(orders=[open_order(7, 5001, 100, 5000), open_order(8, None, -5, 6000, XBT_EUR)]),
        intents={5001: (42, "mm")},
    )
    a, b = report.adopted
    assert (a.ref, a.strategy, a.state, a.side, a.remaining, a.id) == (42, "mm", S.OPEN, Side.BUY, 100, 7)
    assert (b.ref, b.strategy, b.market, b.side) == (-8, "", XBT_EUR, Side.SELL)
    assert tr.open_orders(strategy="mm") == [a] and tr.open_orders(market=XBT_EUR) == [b]
    assert tr.by_tonce(5001) is a and tr.get(-8) is b
    assert tr.apply_open_orders([open_order(7, 5001, 100, 5000), open_order(8, None, -5, 6000, XBT_EUR)]).clean


def test_unknown_orders_present_become_open_absent_are_settled(tr):
    present, absent, pending = bid(tr, ref=1), bid(tr, ref=2), bid(tr, ref=3)
    tr.on_place_lost(present)
    tr.on_place_lost(absent)
    report = tr.apply_open_orders([open_order(7, present.tonce, 100, 5000)])
    assert report.confirmed_unknown == [present] and present.state is S.OPEN and present.id == 7
    assert report.settled_unknown == [absent] and absent.state is S.REJECTED and "reply lost" in absent.reason
    assert pending.state is S.PENDING  # its PlaceOrder may not have run yet
    assert tr.unknown_orders() == []
    # A late success for the one we settled as "not placed" revives it (provisional).
    tr.on_place_reply(absent, ok(8))
    assert absent.state is S.OPEN and absent in tr.open_orders()


def test_unknown_order_that_traded_then_vanished_is_settled_filled(tr):
    order = bid(tr)
    tr.on_notice(matched(qty=100, price=5000, total=5, bid=7, bid_tonce=order.tonce, bid_rem=0))
    tr.on_place_lost(order)
    assert order.state is S.FILLED  # notices already settled it: nothing unknown


def test_vanished_orders_are_closed_provisionally(tr, clock):
    full, part = ask(tr, ref=1), ask(tr, ref=2)
    tr.on_place_reply(full, ok(7))
    tr.on_place_reply(part, ok(8))
    report = tr.apply_open_orders([], requested_at=clock.now)
    assert report.vanished == [full, part]
    assert full.state is S.CANCELLED and not full.closed_confirmed and "unknown" in full.reason
    # The exchange's OrderClosed, late, has the last word.
    tr.on_notice(closed(7, full.tonce, 0, 5000))
    assert full.state is S.FILLED and full.closed_confirmed
    # A stale-looking audit followed by one that lists it again reopens it.
    report = tr.apply_open_orders([open_order(8, part.tonce, -100, 5000)])
    assert report.reopened == [part] and part.state is S.OPEN


def test_audit_ignores_orders_touched_after_the_request_was_sent(tr, clock):
    order = ask(tr)
    requested_at = clock.now
    clock.now = 1.0
    tr.on_place_reply(order, ok(7))  # opened after GetOrders was sent
    report = tr.apply_open_orders([], requested_at=requested_at)
    assert report.clean and order.state is S.OPEN


def test_audit_keeps_confirmed_closes_and_ignores_larger_remaining(tr):
    order = ask(tr)
    tr.on_place_reply(order, ok(7))
    tr.on_notice(matched(qty=40, price=5000, total=2, ask=7, ask_tonce=order.tonce, ask_rem=60))
    report = tr.apply_open_orders([open_order(7, order.tonce, -100, 5000)])  # older than the fill
    assert report.clean and order.remaining == 60
    tr.on_notice(closed(7, order.tonce, -60, 5000))
    assert tr.apply_open_orders([open_order(7, order.tonce, -60, 5000)]).clean
    assert order.state is S.CANCELLED


def test_queries_and_prune(tr, clock):
    a = tr.place(1, M, Side.BUY, quantity=1, price=1, tonce=11, strategy="a")
    b = tr.place(2, XBT_EUR, Side.SELL, quantity=1, price=1, tonce=12, strategy="b")
    assert tr.open_orders("a") == [a] and tr.open_orders(market=XBT_EUR) == [b] and len(tr) == 2
    tr.on_place_reply(a, ok(7))
    assert tr.by_id(7) is a and tr.by_tonce(12) is b and tr.get(2) is b and a.intent_id == 1
    tr.on_place_reply(b, err(4))
    clock.now = 31.0
    assert tr.prune(closed_before=30.0) == 1  # b closed at t=0; a is still open
    assert tr.get(2) is None and tr.by_tonce(12) is None and list(tr) == [a]
    assert "XBT:GBP BUY 1 @ 1" in repr(a)


def test_identical_market_side_trades_against_one_resting_order_both_count(tr):
    # A market buy may trade twice with the same resting ask at the same time, price and
    # size; only the ask's remainder tells the trades apart (seen on the exchange core).
    buy = tr.place(1, M, Side.BUY, quantity=1000, tonce=77)
    first = matched(qty=620, price=5000, total=31, ask=372, bid_tonce=77, ask_rem=13071, bid_fee=1)
    second = matched(qty=620, price=5000, total=31, ask=372, bid_tonce=77, ask_rem=12451, bid_fee=1)
    assert len(tr.on_notice(first)) == 1 and len(tr.on_notice(second)) == 1
    assert tr.on_notice(second) == []  # an exact repeat is still dropped
    assert (buy.filled, buy.counter_fees, tr.stats.duplicate_fills) == (1240, 2, 1)
