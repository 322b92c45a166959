"""Server behaviour in virtual time: memory streams + ``autojump_clock``, exact times asserted.

F7 (idle timeout), X10 (slow reader dropped, healthy client unaffected), the handshake
timeout (slowloris) and chaos mode (P4: replies reordered within the spec's rules, notices
never reordered).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed

from engine.exchange.server import ChaosOptions, ExchangeServer
from engine.protocol.codec import CODEC
from engine.protocol.messages import Notice
from tests.test_exchange_server_support import (
    BASE,
    COUNTER,
    authenticate_frame,
    connect_memory,
    limit_order,
    make_exchange,
)

WATCH = {"method": "WatchOrders", "base": BASE, "counter": COUNTER, "watch": True}


async def _closed_at(client: Any) -> tuple[float, int, str]:
    """Read until the server closes; (virtual time, close code, reason).  Fails after a
    virtual day rather than hanging if the server never closes."""
    with trio.fail_after(24 * 3600):
        while True:
            try:
                await client.ws.get_message()
            except ConnectionClosed as e:
                return trio.current_time(), e.reason.code, e.reason.reason or ""


async def test_f7_idle_connection_closed_at_exactly_60_s(nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    server = ExchangeServer(make_exchange())
    t0 = trio.current_time()
    c = await connect_memory(server, nursery)
    await c.welcome()
    when, code, reason = await _closed_at(c)
    assert when - t0 == pytest.approx(60.0, abs=1e-6)
    assert code == 1000 and "idle timeout" in reason
    assert server.statistics().closed_idle == 1


async def test_f7_pings_keep_a_quiet_connection_open_for_a_day(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = ExchangeServer(make_exchange())
    c = await connect_memory(server, nursery)
    await c.login()
    t0 = trio.current_time()
    for _ in range(24 * 3600 // 45):
        await trio.sleep(45)
        await c.ws.ping()  # a control frame only: no data frame in either direction
    assert trio.current_time() - t0 >= 24 * 3600 - 45
    assert server.statistics().open_connections == 1
    last_ping = trio.current_time()
    when, code, _ = await _closed_at(c)  # stop pinging: closed 60 s after the last pong
    assert when - last_ping == pytest.approx(60.0, abs=1e-6) and code == 1000


async def test_f7_notices_from_the_server_count_as_traffic(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = ExchangeServer(make_exchange())
    watcher = await connect_memory(server, nursery)
    await watcher.welcome()
    assert (await watcher.request(WATCH))["error_code"] == 0
    trader = await connect_memory(server, nursery)
    await trader.login()
    got: list[dict[str, Any]] = []

    async def read_watcher() -> None:
        while True:
            got.append(await watcher.recv())

    nursery.start_soon(read_watcher)
    for i in range(20):  # every 50 s for ~17 minutes: both stay open
        await trio.sleep(50)
        assert (await trader.request(limit_order(1000 + i, 2_000_000)))["error_code"] == 0
    assert server.statistics().open_connections == 2
    assert sum(1 for n in got if n.get("notice") == "OrderOpened") == 20
    assert server.statistics().closed_idle == 0


async def test_handshake_timeout_closes_a_silent_tcp_connection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = ExchangeServer(make_exchange(), handshake_timeout=10.0)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(server.handle_stream, server_stream, "memory")
    t0 = trio.current_time()
    await client_stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # slowloris: never finishes
    assert await client_stream.receive_some() == b""
    assert trio.current_time() - t0 == pytest.approx(10.0, abs=1e-6)
    assert server.statistics().handshake_failures == 1


async def test_x10_slow_reader_dropped_engine_and_healthy_client_unaffected(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    ex = make_exchange()
    server = ExchangeServer(ex, send_queue_frames=50)
    # The slow client: lockstep streams (no buffering) and a trio-websocket queue of 1 that
    # it never drains, so the server's sender blocks after a frame or two.
    slow = await connect_memory(server, nursery, lockstep=True, message_queue_size=1)
    await slow.login(user_id=2)
    assert (await slow.request(limit_order(5_000, 1_000_000, persist=False)))["error_code"] == 0
    assert (await slow.request(WATCH))["error_code"] == 0
    healthy = await connect_memory(server, nursery)
    await healthy.login(user_id=1)
    t0 = trio.current_time()
    ids = []
    for i in range(200):  # each order is a notice to the slow watcher
        reply = await healthy.request(limit_order(1_000 + i, 2_000_000 + i, tag=i + 1))
        assert reply["tag"] == i + 1 and reply["error_code"] == 0
        ids.append(reply["id"])
    # Nothing waited on the slow socket: the 200 round trips took no virtual time at all.
    assert trio.current_time() == t0
    stats = server.statistics()
    assert stats.dropped_slow == 1 and stats.open_connections == 1
    # Dropping it closed its session: user 2's persist:false order is cancelled.
    assert ex.open_orders(2) == []
    assert [o.id for o in ex.open_orders(1)] == ids
    ex.check_invariants()


def _notice_dicts(notices: list[Notice]) -> list[dict[str, Any]]:
    return [json.loads(CODEC.encode(n)) for n in notices]


async def test_p4_chaos_reorders_replies_never_notices(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    ex = make_exchange()
    server = ExchangeServer(ex, chaos=ChaosOptions(seed=3, reply_delay=0.2, notice_delay=0.05))
    # What user 1 must see, in engine order: an internal session of the same user.
    engine_order: list[Notice] = []
    ex.open_internal_session(1, engine_order.append)
    c = await connect_memory(server, nursery)
    await c.welcome()
    assert (await c.request(authenticate_frame(c.nonce)))["error_code"] == 0
    sent: list[tuple[int, str]] = []
    tag = 0
    for i in range(60):  # pipelined, without waiting for replies
        tag += 1
        if i % 6 == 5:
            frame: dict[str, Any] = {"method": "GetOrders", "tag": tag}
        elif i % 3 == 2:
            frame = {"method": "CancelOrder", "tonce": i, "tag": tag}  # the order placed just before
        else:
            frame = limit_order(1_000 + i, 2_000_000 + (i % 7) * 100, tonce=i + 1, tag=tag)
        sent.append((tag, frame["method"]))
        await c.send(frame)
    replies: list[dict[str, Any]] = []
    with trio.fail_after(60):
        while len(replies) < len(sent):
            replies.append(await c.reply())
        while len(c.notices) < len(engine_order):
            c.notices.append(await c.recv())
    tags = [r["tag"] for r in replies]
    assert sorted(tags) == [t for t, _ in sent]  # every tag answered exactly once
    assert tags != sorted(tags)  # and the order was shuffled
    # Info requests were answered ahead of earlier state-changing commands.
    method = dict(sent)
    first_info = next(i for i, t in enumerate(tags) if method[t] == "GetOrders")
    assert any(method[t] != "GetOrders" and t < tags[first_info] for t in tags[first_info + 1 :])
    # Notices: exactly the engine's sequence for user 1.
    assert c.notices == _notice_dicts(engine_order)
    ex.check_invariants()



async def test_housekeeping_pushes_ticker_changes_when_trades_leave_the_24h_window(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    ex = make_exchange()
    server = ExchangeServer(ex, ticker_refresh=60.0)
    nursery.start_soon(server.run_housekeeping)
    a = await connect_memory(server, nursery)
    await a.login(user_id=1)
    b = await connect_memory(server, nursery)
    await b.login(user_id=2)
    assert (await a.request(limit_order(50_000, 2_000_000)))["error_code"] == 0
    assert (await b.request(limit_order(-50_000, 2_000_000)))["error_code"] == 0  # trades
    ticker = await b.request({"method": "WatchTicker", "base": BASE, "counter": COUNTER, "watch": True})
    assert ticker["volume"] > 0 and ticker["low"] == ticker["high"] == 2_000_000
    b.notices.clear()
    t_trade = trio.current_time()

    async def keep_alive(c: Any) -> None:  # pings: the 60 s idle timeout must not interfere
        while True:
            await trio.sleep(45)
            await c.ws.ping()

    nursery.start_soon(keep_alive, a)
    nursery.start_soon(keep_alive, b)
    with trio.fail_after(25 * 3600):
        while True:
            n = await b.recv()
            if n.get("notice") == "TickerChanged":
                break
    # Nobody sent a command: the refresh carried it, within a refresh period plus the
    # one-minute bucket after 24 hours.
    assert n == {"notice": "TickerChanged", "base": BASE, "counter": COUNTER,
                 "low": None, "high": None, "volume": 0}
    assert 24 * 3600 <= trio.current_time() - t_trade <= 24 * 3600 + 60 + 60
