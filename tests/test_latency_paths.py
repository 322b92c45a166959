"""The tick-to-order fast paths (bench latency, session 3) decide exactly like the slow ones.

Each lean path is checked against the definition it replaced: the risk view built in one
pass over the open orders, ``Governor.take_nowait``, ``RiskGovernor.is_halted``,
``NoticeQueue.pop_nowait``, the inlined bid reservation and Market's hash, and the balance
view's reservation for a sent order.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.client.notices import NoticeQueue, SessionStarted
from engine.governor import Governor
from engine.limits import Limit
from engine.protocol.messages import ErrorReply, OrderOpened, TickerChanged
from engine.risk import RiskGovernor, TradingState
from engine.risk.model import MarketView, RiskLimits
from engine.runtime import TradingCore
from engine.scale import DEFAULT, V1, V2, XBT_EUR, XBT_GBP, Market, Scales, ceil_div
from engine.state.orders import OrderState
from engine.state.tonces import TonceAllocator
from engine.strategy import PlaceLimit, Side, Strategy, StrategyConfig


class Idle(Strategy):
    class Config(StrategyConfig, frozen=True, forbid_unknown_fields=True, kw_only=True):
        pass


def make_core() -> TradingCore:
    clock = [1.0]
    core = TradingCore(
        markets=[XBT_GBP, XBT_EUR],
        risk=RiskGovernor(state_path=None, now=lambda: clock[0]),
        tonces=TonceAllocator(None, clock=lambda: int(clock[0] * 1e6)),
        clock=lambda: clock[0],
        clock_us=lambda: int(clock[0] * 1e6),
    )
    for name in ("a", "b"):
        core.add_strategy(name, Idle(name, Idle.Config()), XBT_GBP, RiskLimits())
    return core


def reference_view(core: TradingCore, name: str, market: Market) -> MarketView:
    """The risk view as it was defined before the one-pass version (three list scans)."""
    book = core.books[market]
    live = OrderState.PENDING_CANCEL
    mine = [o for o in core.tracker.open_orders(strategy=name, market=market) if o.state is not live]
    user = [o for o in core.tracker.open_orders(market=market) if o.state is not live]
    own_bids = [o.price for o in user if o.side is Side.BUY and o.price is not None]
    own_asks = [o.price for o in user if o.side is Side.SELL and o.price is not None]
    return MarketView(
        best_bid=book.best_bid,
        best_ask=book.best_ask,
        last=core.last_price.get(market),
        position=core.slots[name].positions.position(market).base,
        open_orders=len(mine),
        user_open_orders=len(core.tracker.open_orders()),
        open_buy_quantity=sum(o.remaining for o in mine if o.side is Side.BUY and not o.is_market),
        open_sell_quantity=sum(o.remaining for o in mine if o.side is Side.SELL and not o.is_market),
        own_best_bid=max(own_bids) if own_bids else None,
        own_best_ask=min(own_asks) if own_asks else None,
    )


ORDER = st.tuples(
    st.sampled_from(["a", "b", "other"]),
    st.sampled_from([XBT_GBP, XBT_EUR]),
    st.sampled_from([Side.BUY, Side.SELL]),
    st.integers(1, 10**9),  # quantity
    st.none() | st.integers(1, 10**7),  # price (None: a market order)
    st.sampled_from(["pending", "cancelling", "rejected"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(ORDER, max_size=12), st.none() | st.integers(1, 10**7))
def test_one_pass_risk_view_equals_the_three_scan_definition(orders, last):
    core = make_core()
    if last is not None:
        core.last_price[XBT_GBP] = last
    for ref, (strategy, market, side, qty, price, fate) in enumerate(orders, start=1):
        o = core.tracker.place(ref, market, side, quantity=qty, price=price, tonce=1000 + ref, strategy=strategy)
        if fate == "cancelling" and price is not None:
            core.tracker.on_cancel_sent(o)
        elif fate == "rejected":
            core.tracker.on_place_reply(o, ErrorReply(error_code=4, error_msg="Insufficient funds"))
    for name in ("a", "b"):
        assert core._view(name, XBT_GBP) == reference_view(core, name, XBT_GBP)


async def test_take_nowait_is_waiting_then_headroom_then_acquire(autojump_clock):
    parent = Governor({"orders": Limit(3, 10.0)}, safety_factor=1.0)
    child = parent.child("s", fraction=1.0)
    parent.acquire_nowait("orders")  # someone else spent one of the user's three
    assert child.take_nowait("orders") and child.take_nowait("orders")
    # The child has headroom left, its parent none: nothing is taken from either.
    assert child.headroom("orders") == 0
    assert not child.take_nowait("orders")
    assert child.statistics().metrics["orders"].granted == 2
    assert parent.statistics().metrics["orders"].headroom == 0
    await trio.sleep(10.0)  # the window passes
    root = Governor({"orders": Limit(1, 10.0)}, safety_factor=1.0)
    assert root.take_nowait("orders") and not root.take_nowait("orders")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(root.acquire, "orders")  # waits ~10 s for the token, holding the lock
        await trio.sleep(1.0)
        assert root.waiting("orders")
        await trio.sleep(9.5)  # the token is free again but the waiter comes first
        assert not root.waiting("orders")
    assert not root.take_nowait("orders")  # the waiter took it


async def test_take_nowait_agrees_with_headroom_in_a_burst():
    g = Governor({"orders": Limit(5, 1.0)}, safety_factor=1.0)
    took = [g.take_nowait("orders") for _ in range(8)]
    assert took == [True] * 5 + [False] * 3
    assert g.headroom("orders") == 0


def test_is_halted_agrees_with_state():
    g = RiskGovernor(state_path=None, now=lambda: 0.0)
    g.add_strategy("a", RiskLimits())
    g.add_strategy("b", RiskLimits())

    def agree() -> None:
        for name in ("a", "b"):
            assert g.is_halted(name) == (g.state(name) is TradingState.HALTED)

    agree()
    g.halt("a", "test")
    agree()
    assert g.is_halted("a") and not g.is_halted("b")
    g.reduce("b", "test")
    agree()
    g.halt(None, "global kill")
    agree()
    assert g.is_halted("b")
    g.resume(None)
    agree()
    assert not g.is_halted("a")


def test_pop_nowait_drains_in_order_then_none_even_when_closed():
    q = NoticeQueue()
    assert q.pop_nowait() is None
    a = OrderOpened(id=1, base=XBT_GBP.base.code, counter=XBT_GBP.counter.code, quantity=5, price=7, time=1)
    t1 = TickerChanged(base=XBT_GBP.base.code, counter=XBT_GBP.counter.code, bid=7)
    t2 = TickerChanged(base=XBT_GBP.base.code, counter=XBT_GBP.counter.code, ask=9)
    marker = SessionStarted(1, 1)
    q.put(t1)
    q.put(a)
    q.put(t2)  # conflated forward into one ticker behind ``a`` (t1's slot goes dead)
    q.put(marker)
    got = []
    while (ev := q.pop_nowait()) is not None:
        got.append(ev)
    assert got[0] is a and got[2] is marker
    assert got[1] == TickerChanged(base=XBT_GBP.base.code, counter=XBT_GBP.counter.code, bid=7, ask=9)
    assert q.statistics().public_queued == 0
    q.close()
    assert q.pop_nowait() is None
    with pytest.raises(trio.EndOfChannel):
        q.receive_nowait()


@given(st.integers(-(10**12), 10**12), st.integers(1, 10**9), st.sampled_from([V1, V2]),
       st.sampled_from([XBT_GBP, XBT_EUR]))
def test_inlined_bid_reservation_is_the_total_divisor_ceiling(q, p, scales: Scales, market):
    mul, den = scales.total_divisor(market)
    assert scales.bid_reservation(q, p, market) == ceil_div(abs(q) * p * mul, den)


def test_market_hash_is_consistent_with_equality():
    twin = Market(XBT_GBP.base, XBT_GBP.counter, XBT_GBP.price_scale)
    assert twin == XBT_GBP and twin is not XBT_GBP
    assert hash(twin) == hash(XBT_GBP)
    assert {XBT_GBP: 1}[twin] == 1
    assert Market(XBT_GBP.base, XBT_GBP.counter, 1000) != XBT_GBP


@given(st.sampled_from([Side.BUY, Side.SELL]), st.integers(1, 10**10), st.integers(1, 10**7))
def test_sent_order_reserves_what_scales_reservation_says(side, quantity, price):
    core = make_core()
    order = core.tracker.place(1, XBT_GBP, side, quantity=quantity, price=price, tonce=5, strategy="a")
    delta = core.balances.on_place_sent(order)
    asset, amount = DEFAULT.reservation(order.signed_quantity, price, XBT_GBP)
    assert delta is not None
    assert (delta.asset, delta.amount) == (asset.code, -amount)
    assert core.balances.available(asset.code) == -amount


# -- session 4 ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    algorithm=st.sampled_from(["window", "bucket"]),
    count=st.integers(1, 5),
    steps=st.lists(st.tuples(st.floats(0.0, 1.5, allow_nan=False), st.integers(1, 7)), max_size=40),
)
def test_limiter_take_decides_like_try_acquire(algorithm, count, steps):
    """``take`` is ``headroom >= n`` then ``try_acquire`` in one call: the same grants, the
    same tokens left, on twin limiters fed the same requests (False, not ValueError, above
    the limit), and a grant always takes its tokens."""
    from engine.limits import make_limiter

    fast, slow = make_limiter(Limit(count, 1.0), algorithm), make_limiter(Limit(count, 1.0), algorithm)
    now = 0.0
    for dt, n in steps:
        now += dt
        if n > count:
            with pytest.raises(ValueError):
                slow.try_acquire(now, n)
            assert fast.take(now, n) is False
        else:
            before = fast.headroom(now)
            granted = slow.headroom(now) >= n
            if granted:
                assert slow.try_acquire(now, n) == 0.0
            assert fast.take(now, n) is granted
            assert fast.headroom(now) == before - (n if granted else 0)
        assert fast.headroom(now) == slow.headroom(now)


def test_take_refuses_where_try_acquire_reports_a_zero_wait_without_taking():
    """The float edge the risk gate used to read as a grant: the oldest event sits on the
    window's edge up to rounding, so try_acquire takes nothing yet answers 0.0."""
    from engine.limits import SlidingWindow

    w = SlidingWindow(Limit(1, 1.0))
    assert w.take(0.9)
    now = 0.9 + 1.0  # 1.9 in floats, and 1.9 - 1.0 < 0.9
    assert w.try_acquire(now) == 0.0 and w.headroom(now) == 0  # took nothing, "no wait"
    assert w.take(now) is False and w.headroom(now) == 0


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 117, 124, 125, 126, 127, 300, 65535, 65536])
def test_text_frame_is_encode_frame_for_text(n):
    """The looked-up short header is the one encode_frame builds, masked or not, on both
    sides of the 126-byte boundary; a masked frame unmasks to the payload with its own key."""
    from engine.ws import OP_TEXT, _xor, encode_frame, text_frame

    payload = bytes((i * 7 + 3) % 256 for i in range(n))
    assert text_frame(payload, mask=False) == encode_frame(OP_TEXT, payload, mask=False)
    masked, reference = text_frame(payload, mask=True), encode_frame(OP_TEXT, payload, mask=True)
    head = len(reference) - n - 4
    assert len(masked) == len(reference) and masked[:head] == reference[:head]
    key = masked[head : head + 4]
    assert _xor(masked[head + 4 :], key) == payload
    assert text_frame(payload, mask=True)[head : head + 4] != key  # a fresh key per frame


@pytest.mark.parametrize("client", [True, False])
@pytest.mark.parametrize("n", [0, 125, 126, 200, 65535, 65536])
async def test_websocket_text_frame_is_its_roles_text_frame(client, n):
    """WebSocket.text_frame (the client's inline masked case) frames like encode_frame."""
    from engine.ws import OP_TEXT, WebSocket, _xor, encode_frame

    a, _ = trio.testing.memory_stream_pair()
    ws = WebSocket(a, client=client)
    payload = bytes(i % 251 for i in range(n))
    frame, reference = ws.text_frame(payload), encode_frame(OP_TEXT, payload, mask=client)
    assert len(frame) == len(reference)
    head = len(reference) - n - (4 if client else 0)
    assert frame[:head] == reference[:head]
    assert (_xor(frame[head + 4 :], frame[head : head + 4]) if client else frame[head:]) == payload


async def test_websocket_idle_is_nothing_pending_and_not_sending():
    """``idle`` (tested before every order sent, and by the server before every write) is
    ``not pending_bytes and not sending`` while bytes are queued, flushing and written."""
    from engine.ws import WebSocket

    a, b = trio.testing.lockstep_stream_pair()  # send_all waits for the peer's read
    ws = WebSocket(a, client=True)

    def agrees() -> bool:
        assert ws.idle is (not ws.pending_bytes and not ws.sending)
        return ws.idle

    assert agrees()
    ws.write_nowait(b"abc")  # not a socket: queued for flush
    assert not agrees()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.flush)
        await trio.testing.wait_all_tasks_blocked()
        assert ws.sending and not agrees()  # flushing, peer not reading yet
        assert await b.receive_some() == b"abc"
    assert agrees()


async def test_take_nowait_with_the_callers_time_decides_as_without(autojump_clock):
    """``take_nowait(metric, now)`` (the connection passes its bound clock's reading) takes
    exactly what ``take_nowait(metric)`` takes, and an unknown metric still names the known."""
    with_now = Governor({"orders": Limit(3, 2.0)}, safety_factor=1.0)
    without = Governor({"orders": Limit(3, 2.0)}, safety_factor=1.0)
    for _ in range(4):
        for _ in range(5):
            assert with_now.take_nowait("orders", trio.current_time()) is without.take_nowait("orders")
        await trio.sleep(0.7)
    assert with_now.statistics().metrics["orders"].granted == without.statistics().metrics["orders"].granted > 3
    # A time later than trio's says the window has passed (the caller's reading is used).
    late = Governor({"orders": Limit(1, 10.0)}, safety_factor=1.0)
    assert late.take_nowait("orders") and not late.take_nowait("orders")
    assert late.take_nowait("orders", trio.current_time() + 10.0)
    with pytest.raises(ValueError, match="known: orders"):
        late.take_nowait("bogus", trio.current_time())


async def test_websocket_bound_fileno_is_the_sockets_and_minus_one_once_closed():
    """The transport reads and writes through the stdlib socket's own ``fileno`` (bound
    once, one Python call fewer per system call than trio's forwarding method): the same
    descriptor while open, -1 once closed, and no descriptor at all after ``abort``."""
    from engine.errors import WebSocketClosed
    from engine.ws import WebSocket

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    ws = WebSocket(client, client=True)
    assert ws._fileno is not None and ws._fileno() == client.socket.fileno() >= 0
    assert ws.write_nowait(b"hello")  # a direct write through it
    assert await server.receive_some(5) == b"hello"
    await client.aclose()
    assert ws._fileno() == client.socket.fileno() == -1
    assert not ws.write_nowait(b"late")  # the descriptor is gone: nothing written...
    with pytest.raises(WebSocketClosed):
        await ws.flush()  # ...and the flush reports it
    ws.abort()
    assert ws._fileno is None and ws._sock is None
    await server.aclose()
    await listeners[0].aclose()


async def test_websocket_write_during_a_flush_queues_behind_it():
    """While :meth:`flush` is writing bytes it took off the queue, ``sending`` holds and a
    direct write must queue behind them (written by that flush, in order), not interleave;
    once the flush has ended the next write goes to the socket at once again."""
    from engine.ws import WebSocket

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    ws = WebSocket(client, client=True)
    big = b"x" * (8 << 20)  # more than the socket buffers take while nobody reads
    ws.write_nowait(big)
    assert ws.pending_bytes > 0 and not ws.sending
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.flush)
        await trio.testing.wait_all_tasks_blocked()
        assert ws.sending and not ws.idle  # flush took the rest and waits for the peer
        # Make room in the socket without a checkpoint (the flush cannot run meanwhile): a
        # direct write would now land in the middle of the bytes the flush still holds.
        received += os.read(server.socket.fileno(), 1 << 20)
        assert not ws.write_nowait(b"tail")  # queued behind them instead
        while len(received) < len(big) + 4:
            received += await server.receive_some(1 << 20)
    assert not ws.sending and ws.idle
    assert bytes(received[-4:]) == b"tail" and received.count(b"tail") == 1
    assert ws.write_nowait(b"next") and await server.receive_some(4) == b"next"
    await client.aclose()
    await server.aclose()
    await listeners[0].aclose()


async def test_lazy_reply_event_behaves_like_the_eager_one():
    """A command's reply Event is made only when a task awaits it (``_Pending.wait_event``):
    a waiter that comes first is woken by the outcome, one that comes after finds it set (and
    still checkpoints, as ``Event.wait`` does), and the callback runs after the Event is set,
    as with the Event made for every command before."""
    from engine.connection import _Pending
    from engine.protocol.messages import PlaceOrder, PlaceOrderReply

    cmd = PlaceOrder(tag=1, base=1, counter=2, quantity=1, price=1)
    early = _Pending(cmd, PlaceOrderReply, False)
    assert not early.done and early.event is None  # nothing made until someone waits
    seen: list[bool] = []
    woken: list[bool] = []

    async def waiter() -> None:
        await early.wait_event().wait()
        woken.append(early.done)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert early.event is not None and not early.event.is_set() and not woken
        early.callback = lambda: seen.append(early.event is not None and early.event.is_set())
        early.resolve(PlaceOrderReply(tag=1, id=7))
    assert woken == [True] and seen == [True] and early.reply == PlaceOrderReply(tag=1, id=7)

    late = _Pending(cmd, PlaceOrderReply, False)
    late.fail(RuntimeError("lost"))
    assert late.done and late.event is None and isinstance(late.error, RuntimeError)
    event = late.wait_event()
    assert event.is_set() and late.wait_event() is event
    with trio.testing.assert_checkpoints():
        await event.wait()


WIRE_INT = st.integers(1, 2**63 - 1) | st.integers(2**63 - 2, 2**64 + 1)  # both sides of the int64 bound


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([Side.BUY, Side.SELL]),
    st.sampled_from(["limit", "market", "total"]),
    WIRE_INT,
    WIRE_INT,
    st.none() | WIRE_INT,
    st.sampled_from([True, False, 1, 0, None]),
    st.integers(1, 2**63 - 1),
)
def test_vouched_place_encodes_like_the_checked_path(side, kind, amount, price, tonce, persist, tag):
    """``Order.wire_checked`` vouches only for orders whose PlaceOrder the codec's check
    accepts, and the vouched path (tag set in place, ``Codec.encode_trusted``) writes the
    same bytes as the checked one (``structs.replace`` + ``Codec.encode``) did."""
    import msgspec

    from engine.errors import LocalProtocolError
    from engine.protocol.codec import CODEC
    from engine.state.orders import OrderTracker

    tracker = OrderTracker(clock=lambda: 1.0)
    order = tracker.place(
        1, XBT_GBP, side,
        quantity=None if kind == "total" else amount,
        price=price if kind == "limit" else None,
        total=amount if kind == "total" else None,
        tonce=tonce, persist=persist,  # type: ignore[arg-type]  # a non-bool on purpose
    )
    try:
        checked: bytes | None = CODEC.encode(msgspec.structs.replace(order.to_command(), tag=tag))
    except LocalProtocolError:
        checked = None
    # Vouched exactly when every amount is within int64 (a sell of -2**63 passes the check
    # but is not vouched: it takes the checked path, as before)...
    amounts = (amount, price if kind == "limit" else None, tonce)
    assert order.wire_checked == (all(v is None or v < 2**63 for v in amounts)
                                  and (kind != "limit" or type(persist) is bool))
    # ...and only for what the check accepts.
    assert not order.wire_checked or checked is not None
    if order.wire_checked:
        cmd = order.to_command()
        msgspec.structs.force_setattr(cmd, "tag", tag)
        assert CODEC.encode_trusted(cmd) == checked
        assert cmd == msgspec.structs.replace(order.to_command(), tag=tag)


async def test_send_nowait_vouched_writes_what_the_checked_path_writes():
    """On a connection: a vouched PlaceOrder reaches the exchange as the same command, tag
    included, as the checked path sends; a bad command the caller built is still refused
    with LocalProtocolError on the checked path (and sends nothing)."""
    from engine.connection import open_connection
    from engine.errors import LocalProtocolError
    from engine.protocol.messages import Command, PlaceOrder, PlaceOrderReply
    from tests.scripted_peer import PeerSession, ScriptedPeer
    from tests.test_connection import creds, tcp_url

    async def on_command(session: PeerSession, command: Command) -> None:
        await session.send(PlaceOrderReply(tag=command.tag, id=7, time=1))

    peer = ScriptedPeer(on_command=on_command)
    async with tcp_url(peer) as url:
        async with open_connection(url, creds(), allow_insecure=True) as conn:
            fields: dict[str, Any] = dict(tonce=5, base=1, counter=2, quantity=3, price=4, persist=False)
            vouched = conn.send_nowait(PlaceOrder(**fields), vouched=True)
            await vouched.wait()
            checked = conn.send_nowait(PlaceOrder(**fields))
            await checked.wait()
            with pytest.raises(LocalProtocolError):
                conn.send_nowait(PlaceOrder(**{**fields, "quantity": 1.5}))
    got = [c for c in peer.sessions[0].commands if isinstance(c, PlaceOrder)]
    assert got == [PlaceOrder(tag=vouched.tag, **fields), PlaceOrder(tag=checked.tag, **fields)]


class _SlowPlaceLimit(PlaceLimit):
    """A PlaceLimit that is not exactly one: pre_trade judges it by the general path
    (_shape, the isinstance chain, _normalise, an _Order), as every PlaceLimit was before."""

    __slots__ = ()


_SlowPlaceLimit.__name__ = "PlaceLimit"  # refusals name the intent's class


MAYBE_PRICE = st.none() | st.integers(1, 4_000_000)
BAD = st.sampled_from([0, -1, 2**63, 1.5, True, None, "1"])


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([Side.BUY, Side.SELL, 1]),
    st.integers(1, 4_000_000) | BAD,
    st.integers(1, 10**9) | BAD,
    st.sampled_from([False, True, 0]),
    st.sampled_from(list(TradingState)),
    st.tuples(MAYBE_PRICE, MAYBE_PRICE, MAYBE_PRICE, st.integers(-(10**9), 10**9), st.integers(0, 12),
              st.integers(0, 12), st.integers(0, 10**9), st.integers(0, 10**9), MAYBE_PRICE, MAYBE_PRICE),
    st.tuples(st.none() | st.integers(1, 10**9), st.none() | st.integers(1, 10**12), st.none() | st.integers(1, 10**9),
              st.none() | st.integers(1, 12), st.none() | st.integers(1, 2000), st.sampled_from(["mid", "last"])),
)
def test_pre_trade_fast_limit_path_judges_like_the_general_path(side, price, quantity, persist, state, v, lim):
    """A PlaceLimit is judged inline (no _Order, no _Fmt unless refused): the verdict and its
    wording are those of the general path."""
    from engine.risk.checks import pre_trade
    from engine.risk.model import UserRiskLimits

    view = MarketView(best_bid=v[0], best_ask=v[1], last=v[2], position=v[3], open_orders=v[4],
                      user_open_orders=v[5], open_buy_quantity=v[6], open_sell_quantity=v[7],
                      own_best_bid=v[8], own_best_ask=v[9])
    limits = RiskLimits(max_order_quantity=lim[0], max_order_notional=lim[1], max_position=lim[2],
                        max_open_orders=lim[3], price_band_bps=lim[4], price_band_reference=lim[5])
    user = UserRiskLimits(max_open_orders=10)
    fast = pre_trade(PlaceLimit(side, price, quantity, persist), view, XBT_GBP, limits, user, state, V2)
    slow = pre_trade(_SlowPlaceLimit(side, price, quantity, persist), view, XBT_GBP, limits, user, state, V2)
    assert fast == slow


EVENT = st.sampled_from(["public", "own", "ticker_bid", "ticker_ask", "marker"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(EVENT, st.integers(0, 2)), max_size=30), st.integers(1, 4))
def test_pop_nowait_is_the_pop_of_receive_nowait(puts, max_public):
    """``pop_nowait`` is now the queue's pop itself (one call per event, not two): it takes
    the same events in the same order, with the same statistics, as ``receive_nowait``."""
    base, counter = XBT_GBP.base.code, XBT_GBP.counter.code

    def make(kind: str, i: int) -> object:
        if kind == "public":
            return OrderOpened(id=i + 1, base=base, counter=counter + i, quantity=5, price=7, time=1)
        if kind == "own":
            return OrderOpened(id=i + 1, base=base, counter=counter, quantity=5, price=7, time=1, tonce=i + 1)
        if kind == "ticker_bid":
            return TickerChanged(base=base, counter=counter + i, bid=7 + i)
        if kind == "ticker_ask":
            return TickerChanged(base=base, counter=counter + i, ask=9 + i)
        return SessionStarted(i, 1)

    queues = [NoticeQueue(max_public=max_public), NoticeQueue(max_public=max_public)]
    for q in queues:
        for kind, i in puts:
            q.put(make(kind, i), 1)  # type: ignore[arg-type]
    fast, slow = queues
    got_fast = []
    while (ev := fast.pop_nowait()) is not None:
        got_fast.append(ev)
    got_slow = []
    while True:
        try:
            got_slow.append(slow.receive_nowait())
        except trio.WouldBlock:
            break
    assert got_fast == got_slow
    assert fast.statistics() == slow.statistics()


@given(st.sampled_from([Side.BUY, Side.SELL]), st.integers(1, 10**10), st.integers(1, 10**7),
       st.floats(0, 1e6, allow_nan=False))
def test_place_with_the_callers_now_records_what_the_clock_would(side, quantity, price, t):
    """``OrderTracker.place(now=t)`` and ``BalanceView.on_place_sent(order, t)`` record what
    the same calls record when their own clock reads ``t``; the runtime reads its clock once
    for both (they are built with the same clock)."""
    from engine.state.balances import BalanceView
    from engine.state.orders import OrderTracker

    def fail() -> float:
        raise AssertionError("the clock was read although now was given")

    given_now = OrderTracker(clock=fail).place(1, XBT_GBP, side, quantity=quantity, price=price, tonce=5, now=t)
    clocked = OrderTracker(clock=lambda: t).place(1, XBT_GBP, side, quantity=quantity, price=price, tonce=5)
    assert repr(given_now) == repr(clocked)
    assert (given_now.created_at, given_now.updated_at) == (clocked.created_at, clocked.updated_at) == (t, t)
    d1 = BalanceView(V2, clock=fail).on_place_sent(given_now, t)
    d2 = BalanceView(V2, clock=lambda: t).on_place_sent(clocked)
    assert d1 == d2 and d1 is not None and d1.created_at == t


def test_core_place_reads_its_clock_once_for_the_order_and_its_reservation():
    core = make_core()
    reads: list[float] = []
    t = [5.0]

    def clock() -> float:
        reads.append(t[0])
        t[0] += 1.0  # every reading differs: a second one would show
        return reads[-1]

    core.tracker._clock = clock
    core.balances._clock = clock
    core.clock = clock
    ref = core._place("a", XBT_GBP, Side.BUY, quantity=10, price=100)
    order = core.tracker.get(ref)
    assert order is not None and len(reads) == 1
    assert order.created_at == order.updated_at == core.balances._reserve[ref].created_at == reads[0]


def test_on_notice_flushes_deferred_denials_as_before_and_skips_the_call_without():
    """``on_notice`` calls ``_flush_denials`` only when a denial waits: with one waiting the
    strategy hears of it at the end of the notice, as before; with none the call (a no-op
    then) is skipped."""
    from engine.protocol.messages import BalanceChanged
    from engine.strategy import Denial, PlaceLimit

    core = make_core()
    core.start()
    heard: list[Denial] = []
    core.slots["a"].strategy.on_risk_denied = lambda ctx, d: heard.append(d)  # type: ignore[method-assign]
    core.slots["a"].noop = frozenset()  # Idle does not define the hook: now it does
    denial = Denial(PlaceLimit(Side.BUY, 1, 1), "test: denied", "test")
    core._deferred.append(("a", denial))
    core.on_notice(BalanceChanged(asset=XBT_GBP.base.code, balance=5))
    assert heard == [denial] and not core._deferred
    calls: list[int] = []
    flush = core._flush_denials
    core._flush_denials = lambda: (calls.append(1), flush())[1]  # type: ignore[method-assign]
    core.on_notice(BalanceChanged(asset=XBT_GBP.base.code, balance=6))
    assert calls == [] and heard == [denial]


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 5),
    steps=st.lists(st.tuples(st.floats(0.0, 1.5, allow_nan=False), st.integers(1, 7)), max_size=40),
)
def test_sliding_window_headroom_is_expire_then_count(count, steps):
    """``SlidingWindow.headroom`` with ``_expire`` inline: the same headroom, and the same
    events left in the window, as ``_expire(now)`` then ``count - len``."""
    from engine.limits import SlidingWindow

    fast, slow = SlidingWindow(Limit(count, 1.0, "t")), SlidingWindow(Limit(count, 1.0, "t"))
    now = 0.0
    for dt, n in steps:
        now += dt
        slow._expire(now)
        assert fast.headroom(now) == slow.limit.count - len(slow._times)
        assert list(fast._times) == list(slow._times)
        if n <= count:
            assert fast.try_acquire(now, n) == slow.try_acquire(now, n)


@given(st.sampled_from([Side.BUY, Side.SELL]), st.sampled_from(["limit", "market", "total"]),
       st.integers(1, 10**12), st.integers(1, 10**7), st.none() | st.integers(1, 10**15), st.booleans(),
       st.integers(0, 5), st.sampled_from(["", "a"]))
def test_tracker_place_builds_the_order_the_keyword_construction_does(side, kind, amount, price, tonce, persist,
                                                                      epoch, strategy):
    """``OrderTracker.place`` passes Order's leading fields by position: the order is the
    one the keyword construction it replaced makes, field for field."""
    import dataclasses

    from engine.state.orders import Order, OrderTracker

    quantity = None if kind == "total" else amount
    total = amount if kind == "total" else None
    limit_price = price if kind == "limit" else None
    order = OrderTracker(clock=lambda: 2.5).place(
        9, XBT_GBP, side, quantity=quantity, price=limit_price, total=total, tonce=tonce, epoch=epoch,
        strategy=strategy, persist=persist)
    expected = Order(
        ref=9, strategy=strategy, market=XBT_GBP, side=side, quantity=quantity, price=limit_price, total=total,
        tonce=tonce, epoch=epoch, persist=persist, remaining=quantity or 0, created_at=2.5, updated_at=2.5,
        wire_checked=True,
    )
    for f in dataclasses.fields(Order):
        assert getattr(order, f.name) == getattr(expected, f.name), f.name
