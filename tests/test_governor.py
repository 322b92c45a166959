"""The rate-limit governor under trio virtual time (autojump_clock): exact grant times."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from engine.errors import RateLimited
from engine.governor import OPEN_ORDERS, Governor, metric_for, scaled_limit
from engine.limits import DEFAULT_LIMITS, Limit
from engine.protocol.messages import (
    CancelOrder,
    EstimateMarketOrder,
    GetBalances,
    PlaceOrder,
    WatchOrders,
)


def test_metric_for_commands():
    assert metric_for(PlaceOrder(base=1, counter=2, quantity=1, price=1)) == "orders"
    assert metric_for(CancelOrder(id=5)) == "orders"
    assert metric_for(EstimateMarketOrder(base=1, counter=2, total=5)) == "orders"
    assert metric_for(GetBalances) == "info"
    assert metric_for("Authenticate") == "auth"
    assert metric_for(WatchOrders(base=1, counter=2, watch=True)) is None


def test_safety_factor_scales_counts_not_periods():
    g = Governor()
    assert g.limit("orders") == Limit(900, 1000.0, "user")
    assert g.limit("info") == Limit(9, 10.0, "session")
    assert g.limit("auth") == Limit(900, 3600.0, "user")
    assert g.limit("records") == Limit(9, 60.0, "user")
    assert Governor(safety_factor=1.0).limit("orders") == DEFAULT_LIMITS["orders"]
    assert scaled_limit(Limit(1, 5.0), 0.1).count == 1  # never below one


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, True, "0.9", math.nan])
def test_bad_safety_factor_is_refused(bad):
    with pytest.raises(ValueError, match="safety_factor must be a number in"):
        Governor(safety_factor=bad)


async def test_unknown_metric_and_bad_counts_named():
    g = Governor()
    with pytest.raises(ValueError, match="unknown rate-limit metric 'order'"):
        g.acquire_nowait("order")
    with pytest.raises(ValueError, match="cannot take 901 tokens"):
        g.acquire_nowait("orders", 901)
    with pytest.raises(ValueError, match="unknown rate-limit algorithm"):
        Governor(algorithm="leaky")  # type: ignore[arg-type]


async def test_L_1001st_order_waits_until_exactly_t1000(autojump_clock):
    g = Governor(safety_factor=1.0)
    for _ in range(1000):
        await g.acquire("orders")
    assert trio.current_time() == 0.0
    assert g.headroom("orders") == 0
    await g.acquire("orders")
    assert trio.current_time() == 1000.0


async def test_acquire_nowait_message_and_retry_after(autojump_clock):
    g = Governor(safety_factor=1.0)
    await trio.sleep(10.0)
    for _ in range(1000):
        g.acquire_nowait("orders")
    await trio.sleep(996.8)
    with pytest.raises(RateLimited) as info:
        g.acquire_nowait("orders")
    e = info.value
    assert str(e) == "orders: 1000 per 1000 s used, next token in 3.2 s"
    assert e.metric == "orders"
    assert e.retry_after == pytest.approx(3.2)
    st = g.statistics().metrics["orders"]
    assert (st.granted, st.denied, st.headroom) == (1000, 1, 0)
    await trio.sleep(e.retry_after)
    g.acquire_nowait("orders")  # exactly when promised


async def test_default_factor_refuses_the_901st(autojump_clock):
    g = Governor()
    for _ in range(900):
        g.acquire_nowait("orders")
    with pytest.raises(RateLimited, match=r"orders: 900 per 1000 s used"):
        g.acquire_nowait("orders")


async def test_info_window_10_per_10s_exact(autojump_clock):
    g = Governor(safety_factor=1.0)
    times = []
    for i in range(25):
        await g.acquire("info")
        times.append(trio.current_time())
        if i == 3:
            await trio.sleep(2.5)  # a gap: later tokens follow the window, not a fixed grid
    # 4 at t=0, 6 at t=2.5, then each token frees exactly 10 s after the one it replaces
    assert times == [0.0] * 4 + [2.5] * 6 + [10.0] * 4 + [12.5] * 6 + [20.0] * 4 + [22.5]


async def test_waiters_served_first_come_first_served(autojump_clock):
    g = Governor({"orders": Limit(2, 100.0)}, safety_factor=1.0)
    g.acquire_nowait("orders")
    await trio.sleep(1.0)
    g.acquire_nowait("orders")
    order: list[tuple[int, float]] = []

    async def waiter(i: int) -> None:
        await g.acquire("orders")
        order.append((i, trio.current_time()))

    async with trio.open_nursery() as n:
        for i in range(4):
            n.start_soon(waiter, i)
            await trio.sleep(0.01)  # fix the arrival order
        await trio.sleep(0.5)
        assert g.statistics().metrics["orders"].tasks_waiting == 4
    assert order == [(0, 100.0), (1, 101.0), (2, 200.0), (3, 201.0)]


async def test_cancelled_waiter_takes_nothing(autojump_clock):
    g = Governor({"orders": Limit(1, 10.0)}, safety_factor=1.0)
    g.acquire_nowait("orders")
    with trio.move_on_after(5.0):
        await g.acquire("orders")
    assert trio.current_time() == 5.0
    await trio.sleep(5.0)
    g.acquire_nowait("orders")  # the token freed at t=10 is still there


async def test_token_bucket_algorithm(autojump_clock):
    g = Governor({"orders": Limit(10, 10.0)}, safety_factor=1.0, algorithm="bucket")
    for _ in range(10):
        g.acquire_nowait("orders")
    await g.acquire("orders")
    assert trio.current_time() == pytest.approx(1.0)


async def test_statistics_is_a_frozen_snapshot(autojump_clock):
    g = Governor()
    g.acquire_nowait("info")
    st = g.statistics()
    assert st.headroom("info") == 8
    assert st.headroom("orders") == 900
    assert st.metrics["info"].exchange_limit == DEFAULT_LIMITS["info"]
    with pytest.raises(AttributeError):
        st.open_orders = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        st.metrics["x"] = None  # type: ignore[index]
    g.acquire_nowait("info")
    assert st.headroom("info") == 8  # the snapshot does not move


async def test_open_order_budget(autojump_clock):
    g = Governor(max_open_orders=3)
    for _ in range(3):
        g.open_order_slot_nowait()
    with pytest.raises(RateLimited, match="open_orders: 3 of 3 orders open") as info:
        g.open_order_slot_nowait()
    assert info.value.metric == OPEN_ORDERS and info.value.retry_after == math.inf
    got: list[float] = []

    async def place() -> None:
        await g.open_order_slot()
        got.append(trio.current_time())

    async with trio.open_nursery() as n:
        n.start_soon(place)
        await trio.sleep(7.0)
        assert got == [] and g.statistics().open_order_waiters == 1
        g.release_open_order_slot()  # an OrderClosed
    assert got == [7.0] and g.open_orders == 3
    g.set_open_orders(1)  # reconciliation found only one open order
    g.open_order_slot_nowait()
    g.open_order_slot_nowait()
    assert g.open_orders == 3
    g.release_open_order_slot(10)
    assert g.open_orders == 0
    with pytest.raises(ValueError, match="non-negative int"):
        g.set_open_orders(-1)


async def test_child_budgets_draw_on_the_parent(autojump_clock):
    parent = Governor(safety_factor=1.0)
    a = parent.child("a", fraction=0.5)
    b = parent.child("b", fraction=0.5)
    assert parent.child("a", fraction=0.5) is a
    assert a.limit("orders").count == 500 and a.max_open_orders == 500
    for _ in range(500):
        a.acquire_nowait("orders")
    with pytest.raises(RateLimited, match="orders: 500 per 1000 s used"):
        a.acquire_nowait("orders")
    assert parent.headroom("orders") == 500
    for _ in range(400):
        parent.acquire_nowait("orders")
    # b has its own 500 but the parent has only 100 left
    assert b.headroom("orders") == 100
    for _ in range(100):
        b.acquire_nowait("orders")
    with pytest.raises(RateLimited):
        b.acquire_nowait("orders")
    assert b.statistics().headroom("orders") == 0
    await b.acquire("orders")
    assert trio.current_time() == 1000.0
    a.open_order_slot_nowait()
    assert parent.open_orders == 1
    a.release_open_order_slot()
    assert parent.open_orders == 0


async def test_child_waits_on_full_parent_slots(autojump_clock):
    parent = Governor(max_open_orders=2)
    a = parent.child("a", fraction=1.0)
    b = parent.child("b", fraction=1.0)
    a.open_order_slot_nowait()
    b.open_order_slot_nowait()
    with pytest.raises(RateLimited):
        a.open_order_slot_nowait()
    async with trio.open_nursery() as n:
        n.start_soon(a.open_order_slot)
        await trio.sleep(3.0)
        b.release_open_order_slot()  # a sibling's release wakes the waiter
    assert trio.current_time() == 3.0
    assert (a.open_orders, b.open_orders, parent.open_orders) == (2, 0, 2)
